"""Data pipeline throughput vs the small-config training step (is loading ever the bottleneck?).

``data_pipeline``: images/s out of a ``DataLoader`` over ``o2f.data.CocoDetection`` with the
training transforms of the small (``demo``) config and its ``data.workers`` / ``batch_size``,
on a synthetic COCO-format set written by ``generate_synthetic_coco`` into a temporary folder
(``ours``), against images/s of the small-config training step on batches already in memory
(``baseline``). Here ``ratio`` = loader / training throughput: above 1 the loader keeps up.
Both are measured alternately (three loader epochs over 8 batches, then 2 (quick) or 4
training steps) and the loader's workers are persistent, so worker start-up is not counted.
``end_to_end_images_per_s`` is the training step fed by the running loader (workers and
training share the 2 cores).

    python benchmarks/data_pipeline.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see run.py: before torch loads
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import emit, markdown_table, result, setup_threads  # noqa: E402
from benchmarks.workloads import small_config, trainer  # noqa: E402
from o2f.builders import build_detector  # noqa: E402


def _data_modules():
    """``(CocoDetection, build_transforms, collate, generate_synthetic_coco)`` or an error text."""
    try:
        from o2f.data import CocoDetection, build_transforms, collate, generate_synthetic_coco
    except ImportError as err:
        return f"o2f.data is not available yet: {err}"
    return CocoDetection, build_transforms, collate, generate_synthetic_coco


def run(quick: bool = False, num_images: int | None = None, rounds: int | None = None,
        workers: int | None = None) -> list[dict]:
    threads = setup_threads()
    mods = _data_modules()
    if isinstance(mods, str):
        return [emit(result("data_pipeline", None, None, "images/s", skipped=mods,
                            note="skipped: " + mods))]
    CocoDetection, build_transforms, collate, generate = mods
    cfg, cfg_name = small_config()
    d = cfg.data
    side = min(d.train_short[1], d.max_size)
    num_images = num_images or 8 * d.batch_size
    rounds = rounds or (2 if quick else 4)
    loader_epochs = 3
    workers = d.workers if workers is None else workers
    with tempfile.TemporaryDirectory(prefix="o2f-bench-") as tmp:
        paths = generate(tmp, num_train=num_images, num_val=1, image_size=(side, side), seed=0)
        tf = build_transforms(True, d.max_size, tuple(d.train_short), d.flip_prob)
        dataset = CocoDetection(paths["train_ann"], paths["train_images"], tf, train=True)
        loader = torch.utils.data.DataLoader(
            dataset, d.batch_size, shuffle=True, num_workers=workers, collate_fn=collate,
            persistent_workers=workers > 0, drop_last=True)
        torch.manual_seed(0)
        model = build_detector(cfg, dataset.num_classes).train()
        batches = list(loader)  # first epoch: starts the workers; batches for the step
        step = trainer(model, cfg.optim.name)
        step(*batches[0])  # warm-up
        train_batches = 2 if quick else 4
        loader_ips, train_ips, e2e_ips = [], [], []
        for _ in range(rounds):
            start, n = time.perf_counter(), 0
            for _epoch in range(loader_epochs):
                for imgs, _t in loader:
                    n += len(imgs)
            loader_ips.append(n / (time.perf_counter() - start))
            start = time.perf_counter()
            for imgs, tgts in batches[:train_batches]:
                step(imgs, tgts)
            train_ips.append(train_batches * d.batch_size / (time.perf_counter() - start))
            start, n = time.perf_counter(), 0
            for i, (imgs, tgts) in enumerate(loader):
                if i == train_batches:
                    break
                step(imgs, tgts)
                n += len(imgs)
            e2e_ips.append(n / (time.perf_counter() - start))
        del loader
    lo, tr, e2e = (statistics.median(x) for x in (loader_ips, train_ips, e2e_ips))
    return [emit(result(
        "data_pipeline", lo, tr, "images/s", threads=threads, workers=workers,
        batch=d.batch_size, image=f"{side}x{side}", num_images=num_images, rounds=rounds,
        end_to_end_images_per_s=e2e, loader_slowdown=1 - e2e / tr,
        note=f"loader ({workers} workers) vs {cfg_name}-config train step, images/s "
             f"(higher is better; ratio > 1: loading keeps up); end-to-end {e2e:.1f} img/s"))]


def coco_sized_set(root: Path, num_images: int) -> tuple[Path, Path]:
    """A synthetic training set at COCO's image sizes: two thirds 640x480, a third 480x640
    (about COCO's share of portrait images), JPEG and PNG as ``generate_synthetic_coco``
    writes them. Returns (annotation file, image folder)."""
    from o2f.data import generate_synthetic_coco

    merged: dict = {"images": [], "annotations": [], "categories": None}
    portrait = num_images // 3
    for name, (h, w), n in (("land", (480, 640), num_images - portrait),
                            ("port", (640, 480), portrait)):
        paths = generate_synthetic_coco(root / name, n, 1, image_size=(h, w), seed=0,
                                        size_range=(16, 300))
        data = json.loads(Path(paths["train_ann"]).read_text())
        base_img, base_ann = len(merged["images"]), len(merged["annotations"])
        rel = Path(paths["train_images"]).relative_to(root)
        for img in data["images"]:
            merged["images"].append({**img, "id": img["id"] + base_img,
                                     "file_name": str(rel / img["file_name"])})
        for ann in data["annotations"]:
            merged["annotations"].append({**ann, "id": ann["id"] + base_ann,
                                          "image_id": ann["image_id"] + base_img})
        merged["categories"] = data["categories"]
    ann_file = root / "train.json"
    ann_file.write_text(json.dumps(merged))
    return ann_file, root


def _trainer_loader_ips(ann_file: Path, img_dir: Path, workers: int | None, epochs: int,
                        work_dir: Path) -> tuple[float, dict]:
    """Images/s out of the loader of an ``r50_1x`` Trainer (its sampler, aspect grouping,
    transforms, workers, collate) over ``ann_file``; the first epoch (worker start-up) is not
    timed. Returns (images/s, the loader settings)."""
    from o2f.config import load_config
    from o2f.engine.train import Trainer

    overrides = ["model.backbone.pretrained=false", "model.backbone.depth=18",
                 "train.val_interval=0", "train.loggers=[]",
                 f"data.train.ann_file={ann_file}", f"data.train.img_dir={img_dir}"]
    if workers is not None:
        overrides.append(f"data.workers={workers}")
    cfg = load_config("r50_1x", overrides)
    trainer = Trainer(cfg, work_dir)
    times, counts = [], []
    for epoch in range(epochs + 1):
        trainer.sampler.set_epoch(epoch)
        if hasattr(trainer, "batches"):
            trainer.batches.set_epoch(epoch)
        start, n = time.perf_counter(), 0
        for imgs, _t in trainer.loader:
            n += len(imgs)
        if epoch:
            times.append(time.perf_counter() - start)
            counts.append(n)
    d = cfg.data
    settings = {"workers": d.workers, "batch": d.batch_size, "train_short": d.train_short,
                "max_size": d.max_size, "group_by_aspect": d.group_by_aspect,
                "persistent_workers": bool(getattr(trainer.loader, "persistent_workers", False))}
    del trainer
    return sum(counts) / sum(times), settings


def run_coco_sizes(quick: bool = False, num_images: int | None = None,
                   epochs: int | None = None) -> list[dict]:
    """``data_pipeline_coco``: images/s out of the ``r50_1x`` trainer's own loader (its
    ``data.workers``, batch, 800x1333 resize, flip, aspect grouping) over synthetic
    COCO-sized JPEG / PNG images (``ours``), against the same loader with ``data.workers=0``
    (``baseline``, loading in the training process): ``ratio`` is the workers' speed-up."""
    setup_threads()
    num_images = num_images or (12 if quick else 48)
    epochs = epochs or (1 if quick else 2)
    with tempfile.TemporaryDirectory(prefix="o2f-bench-") as tmp:
        ann_file, img_dir = coco_sized_set(Path(tmp) / "data", num_images)
        ours, settings = _trainer_loader_ips(ann_file, img_dir, None, epochs, Path(tmp) / "a")
        base, _ = _trainer_loader_ips(ann_file, img_dir, 0, epochs, Path(tmp) / "b")
    return [emit(result(
        "data_pipeline_coco", ours, base, "images/s", num_images=num_images, epochs=epochs,
        **settings,
        note=f"r50_1x trainer loader ({settings['workers']} workers) vs in-process loading, "
             f"COCO-sized images resized to {settings['train_short'][0]}x"
             f"{settings['max_size']} (higher is better): {ours:.1f} vs {base:.1f} img/s"))]


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--workers", type=int, default=None, help="default: the config's")
    a = p.parse_args(argv)
    rows = run(a.quick, workers=a.workers) + run_coco_sizes(a.quick)
    print(markdown_table(rows))
    return rows


if __name__ == "__main__":
    main()
