"""Memory of the training set's annotation index: what every rank and loader worker holds.

``data_memory``: a synthetic COCO-format file of 100,000 annotations (``--annotations``), each
with a 24-point polygon ``segmentation`` as COCO's are, about 7 per image (COCO's ratio), image
files present but empty (nothing is decoded). In a fresh child process per measurement:

* ``main_mb``: the resident set (VmRSS) after ``CocoDetection(..., train=True)`` and
  ``gc.collect()``, minus VmRSS after the imports;
* ``worker_mb``: a forked loader worker's private memory (``Private_Clean + Private_Dirty`` of
  ``/proc/self/smaps_rollup``) after one ``gc.collect()`` and 200 target look-ups, minus the
  same for a worker forked before the dataset was built: the pages that copy-on-write and
  Python's reference counts made the worker copy from its parent;
* ``pickle_mb``: the pickled dataset (what a ``spawn`` / ``forkserver`` worker receives).

``ours`` is the dataset as built (``with_masks=False``: the compact index); ``baseline`` is the
same file with ``with_masks=True``, which keeps the annotation records (polygons) for the
masks, as every training set did before the compact index. ``ratio`` = ours / baseline of
``main_mb``.

    python benchmarks/data_memory.py [--annotations N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, emit, markdown_table, result  # noqa: E402

ANNS_PER_IMAGE = 7
POLYGON_POINTS = 24


def write_annotations(folder: Path, num_annotations: int, seed: int = 0) -> tuple[Path, Path]:
    """A COCO-format file of ``num_annotations`` polygon annotations on 640x480 / 480x640
    images, and a folder of empty image files. Returns (annotation file, image folder)."""
    rng = random.Random(seed)
    img_dir = folder / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    num_images = -(-num_annotations // ANNS_PER_IMAGE)
    images, anns = [], []
    for i in range(num_images):
        w, h = (640, 480) if i % 3 else (480, 640)
        name = f"{i:012d}.jpg"
        (img_dir / name).touch()
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h,
                       "license": 1, "date_captured": "2013-11-14 16:28:13",
                       "coco_url": f"http://images.cocodataset.org/train2017/{name}"})
    for a in range(num_annotations):
        img = images[a // ANNS_PER_IMAGE]
        x, y = rng.uniform(0, img["width"] - 60), rng.uniform(0, img["height"] - 60)
        bw, bh = rng.uniform(4, 60), rng.uniform(4, 60)
        poly = [round(v, 2) for _ in range(POLYGON_POINTS)
                for v in (x + rng.uniform(0, bw), y + rng.uniform(0, bh))]
        anns.append({"id": a + 1, "image_id": img["id"], "category_id": 1 + a % 80,
                     "bbox": [round(x, 2), round(y, 2), round(bw, 2), round(bh, 2)],
                     "area": round(bw * bh * 0.6, 2), "iscrowd": 0, "segmentation": [poly]})
    cats = [{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in range(1, 81)]
    path = folder / "train.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path, img_dir


_CHILD = r"""
import gc, json, os, pickle, sys
sys.path.insert(0, {root!r})
from o2f.data import CocoDetection

def kb(key, path="/proc/self/status"):
    total = 0
    with open(path) as f:
        for line in f:
            if line.split(":")[0] in key:
                total += int(line.split()[1])
    return total

def worker_private_kb(ds):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a loader worker: a gc pass and some look-ups, then its private memory
        os.close(r)
        gc.collect()
        if ds is not None:
            for i in range(0, len(ds), max(1, len(ds) // 200)):
                ds._labels[ds._offsets[ds._positions[i]]:ds._offsets[ds._positions[i] + 1]]
                ds.image_info(i)
        private = kb(("Private_Clean", "Private_Dirty"), "/proc/self/smaps_rollup")
        os.write(w, str(private).encode())
        os._exit(0)
    os.close(w)
    out = int(os.read(r, 64).decode())
    os.waitpid(pid, 0)
    return out

gc.collect()
before = kb(("VmRSS",))
worker_before = worker_private_kb(None)
ds = CocoDetection({ann!r}, {img!r}, train=True, with_masks={masks!r})
gc.collect()
main_kb = kb(("VmRSS",)) - before
worker_kb = worker_private_kb(ds) - worker_before
print("@@" + json.dumps({{"main_mb": main_kb / 1024, "worker_mb": worker_kb / 1024,
                         "pickle_mb": len(pickle.dumps(ds)) / 2**20, "images": len(ds)}}))
"""


def measure(ann: Path, img_dir: Path, masks: bool) -> dict:
    """The memory figures (see the module doc) of one dataset, in a fresh child process."""
    code = _CHILD.format(root=str(ROOT), ann=str(ann), img=str(img_dir), masks=masks)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "MALLOC_ARENA_MAX": "2"}, timeout=1200)
    for line in proc.stdout.splitlines():
        if line.startswith("@@"):
            return json.loads(line[2:])
    raise RuntimeError(proc.stderr[-2000:])


def run(num_annotations: int = 100_000) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="o2f-mem-") as tmp:
        ann, img_dir = write_annotations(Path(tmp), num_annotations)
        size_mb = ann.stat().st_size / 2**20
        ours, base = measure(ann, img_dir, False), measure(ann, img_dir, True)
    return [emit(result(
        "data_memory", ours["main_mb"], base["main_mb"], "MB", annotations=num_annotations,
        images=ours["images"], json_mb=size_mb,
        worker_ours_mb=ours["worker_mb"], worker_baseline_mb=base["worker_mb"],
        pickle_ours_mb=ours["pickle_mb"], pickle_baseline_mb=base["pickle_mb"],
        note=f"training-set RSS, compact index vs annotation records ({num_annotations} "
             f"polygon annotations, {size_mb:.0f} MB JSON); forked worker private "
             f"{ours['worker_mb']:.1f} vs {base['worker_mb']:.1f} MB; pickled "
             f"{ours['pickle_mb']:.1f} vs {base['pickle_mb']:.1f} MB"))]


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--annotations", type=int, default=100_000)
    a = p.parse_args(argv)
    rows = run(a.annotations)
    print(markdown_table(rows))
    return rows


if __name__ == "__main__":
    main()
