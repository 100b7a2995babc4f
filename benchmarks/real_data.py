"""A real held-out dataset: tree crowns in aerial photographs, tiled into COCO format.

    python benchmarks/real_data.py --out data/heldout/trees [--cache DIR]

The photographs and their Pascal VOC boxes are the sample data that the ``deepforest`` package
(Weinstein et al., NEON airborne imagery, 10 cm per pixel) ships in its wheel; the wheel is
fetched once with ``pip download --no-deps`` into ``--cache`` (only its data files are read;
nothing is installed or imported). The set:

- train: the 2299 x 2472 photograph ``2019_YELL_2_528000_4978000_image_crop2`` cut into 400 x 400
  tiles every 300 px (8 x 8 = 64 tiles, overlapping by 100 px: about 1,000 crowns of 15-75 px);
- val: another photograph of the same site, ``2019_YELL_2_541000_4977000_image_crop``
  (1249 x 1035), cut into 9 tiles of 400 x 400 that cover it, plus two 400 x 400 images of other
  sites (``OSBS_029``: Florida, ``SOAP_061``: California), one class ``tree``.

A box cut by a tile border keeps its clipped part when at least ``MIN_VISIBLE`` of its area lies
in the tile; a smaller remainder is an ``iscrowd`` box (no training target, ignored by COCO
evaluation), so a detector is neither taught nor scored on slivers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

from PIL import Image

WHEEL = "deepforest==2.1.0"
TILE, TRAIN_STEP = 400, 300
MIN_VISIBLE = 0.5
TRAIN_IMAGE = "2019_YELL_2_528000_4978000_image_crop2"
VAL_IMAGE = "2019_YELL_2_541000_4977000_image_crop"
VAL_EXTRA = ("OSBS_029", "SOAP_061")
CATEGORY = {"id": 1, "name": "tree", "supercategory": "plant"}


def fetch_source(cache: Path) -> Path:
    """The deepforest sample data folder under ``cache`` (wheel downloaded when missing)."""
    data = cache / "deepforest" / "data"
    if (data / f"{TRAIN_IMAGE}.xml").is_file():
        return data
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("deepforest-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL,
                        "-d", str(cache)], check=True)
        wheels = sorted(cache.glob("deepforest-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as zf:
        zf.extractall(cache, [n for n in zf.namelist() if n.startswith("deepforest/data/")])
    return data


def read_voc(path: Path) -> list[tuple[float, float, float, float]]:
    """x1, y1, x2, y2 of every object of a Pascal VOC file (pixel edges: xmax is exclusive)."""
    root = ET.parse(path).getroot()
    boxes = []
    for i, obj in enumerate(root.iter("object")):
        bb = obj.find("bndbox")
        if bb is None:
            raise ValueError(f"{path}: object {i} has no bndbox")
        x1, y1, x2, y2 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        if x2 > x1 and y2 > y1:
            boxes.append((x1, y1, x2, y2))
    return boxes


def tile_origins(size: int, step: int) -> list[int]:
    """Left (or top) edges of TILE-wide tiles every ``step`` px, the last one flush with the
    image edge, covering ``size`` px."""
    if size <= TILE:
        return [0]
    starts = list(range(0, size - TILE, step))
    return starts + [size - TILE]


def _tile_annotations(boxes, x0: int, y0: int, w: int, h: int):
    out = []
    for x1, y1, x2, y2 in boxes:
        cx1, cy1 = max(x1 - x0, 0.0), max(y1 - y0, 0.0)
        cx2, cy2 = min(x2 - x0, float(w)), min(y2 - y0, float(h))
        if cx2 <= cx1 or cy2 <= cy1:
            continue
        visible = (cx2 - cx1) * (cy2 - cy1) / ((x2 - x1) * (y2 - y1))
        out.append(([cx1, cy1, cx2 - cx1, cy2 - cy1], int(visible < MIN_VISIBLE)))
    return out


def _write_split(images: list[tuple[str, Image.Image, list]], root: Path, split: str) -> None:
    (root / split).mkdir(parents=True, exist_ok=True)
    coco = {"images": [], "annotations": [], "categories": [CATEGORY]}
    for i, (name, img, anns) in enumerate(images, start=1):
        img.save(root / split / f"{name}.png")
        coco["images"].append({"id": i, "file_name": f"{name}.png", "width": img.width,
                               "height": img.height})
        for bbox, crowd in anns:
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": i, "category_id": 1,
                "bbox": [round(v, 2) for v in bbox], "area": round(bbox[2] * bbox[3], 2),
                "iscrowd": crowd})
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"{split}.json").write_text(json.dumps(coco))


def _tiles(data: Path, stem: str, step: int) -> list[tuple[str, Image.Image, list]]:
    img = Image.open(data / f"{stem}.png").convert("RGB")
    boxes = read_voc(data / f"{stem}.xml")
    out = []
    for y0 in tile_origins(img.height, step):
        for x0 in tile_origins(img.width, step):
            tile = img.crop((x0, y0, x0 + TILE, y0 + TILE))
            out.append((f"{stem}_{x0}_{y0}", tile, _tile_annotations(boxes, x0, y0, TILE, TILE)))
    return out


def make_trees(out_dir: str | Path, cache: str | Path = "data/cache") -> dict[str, Path]:
    """Write the tree-crown set to ``out_dir`` (see the module docstring); returns the paths in
    the layout of ``benchmarks.custom_data.make_family``."""
    root = Path(out_dir)
    ann = root / "annotations"
    if not ((ann / "train.json").is_file() and (ann / "val.json").is_file()):
        data = fetch_source(Path(cache))
        _write_split(_tiles(data, TRAIN_IMAGE, TRAIN_STEP), root, "train")
        val = _tiles(data, VAL_IMAGE, 318)  # 3 x 3 tiles cover 1249 x 1035
        for stem in VAL_EXTRA:
            val += _tiles(data, stem, TILE)
        _write_split(val, root, "val")
    return {"root": root, "train_ann": ann / "train.json", "val_ann": ann / "val.json",
            "train_images": root / "train", "val_images": root / "val"}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="data/heldout/trees")
    p.add_argument("--cache", default="data/cache")
    args = p.parse_args(argv)
    paths = make_trees(args.out, args.cache)
    for split in ("train", "val"):
        d = json.loads(paths[f"{split}_ann"].read_text())
        crowd = sum(a["iscrowd"] for a in d["annotations"])
        print(f"{split}: {len(d['images'])} images, {len(d['annotations']) - crowd} boxes "
              f"(+{crowd} ignored slivers)")


if __name__ == "__main__":
    main()
