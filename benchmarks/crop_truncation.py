"""How much of a dataset's training boxes `data.crop_prob`'s random crop cuts (issue 14).

A random crop keeps a box that stays at least 40% visible, clipped to the window: the model then
learns from part of an object under the label of the whole. This matters where the validation
images hold whole objects only (a synthetic set whose objects lie inside the image) and less
where objects are already cut by the image border (tiles of a larger photograph). For each COCO
annotation file it prints, over ``--draws`` crops of every training image (``RandomCropBoxes``
at probability 1, the configured smallest side fraction):

- ``at_border``: share of the boxes touching the image border without any crop;
- ``dropped``: share of the boxes a crop removes;
- ``cut``: share of the kept boxes that lost more than 5% of their area.

    python benchmarks/crop_truncation.py data/heldout/*/annotations/train.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from o2f.data.transforms import RandomCropBoxes


def crop_statistics(ann_file: Path, min_scale: float, draws: int, seed: int) -> dict:
    """Shares of boxes at the border, dropped and cut by the crop (see the module docstring)."""
    data = json.loads(ann_file.read_text())
    boxes_of: dict[int, list[list[float]]] = {}
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        if w > 0 and h > 0 and not ann.get("iscrowd", 0):
            boxes_of.setdefault(ann["image_id"], []).append([x, y, x + w, y + h])
    crop = RandomCropBoxes(1.0, min_scale)
    torch.manual_seed(seed)
    total = border = dropped = kept = cut = 0
    for image in data["images"]:
        if image["id"] not in boxes_of:
            continue
        h, w = image["height"], image["width"]
        boxes = torch.tensor(boxes_of[image["id"]])
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        border += int(((boxes[:, :2] <= 0).any(1) | (boxes[:, 2] >= w) | (boxes[:, 3] >= h)).sum())
        pixels = torch.zeros(1, h, w)
        for _ in range(draws):
            # labels carry each box's index, so the kept boxes can be matched to the originals
            _, out = crop(pixels, {"boxes": boxes, "labels": torch.arange(len(boxes))})
            new = out["boxes"].as_subclass(torch.Tensor)
            new_area = (new[:, 2] - new[:, 0]) * (new[:, 3] - new[:, 1])
            total += len(boxes)
            kept += len(new)
            dropped += len(boxes) - len(new)
            cut += int((new_area < 0.95 * area[out["labels"]]).sum())
    return {"ann_file": str(ann_file), "boxes": sum(map(len, boxes_of.values())),
            "at_border": border / max(1, sum(map(len, boxes_of.values()))),
            "dropped": dropped / max(1, total), "cut": cut / max(1, kept)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ann_files", nargs="+", type=Path)
    parser.add_argument("--min-scale", type=float, default=0.5,
                        help="smallest window side fraction (data.crop_min_scale)")
    parser.add_argument("--draws", type=int, default=5, help="crops per image")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print("| annotations | boxes | at image border | dropped by a crop | cut (of kept) |")
    print("|---|---|---|---|---|")
    for ann_file in args.ann_files:
        s = crop_statistics(ann_file, args.min_scale, args.draws, args.seed)
        print(f"| {s['ann_file']} | {s['boxes']} | {s['at_border']:.2f} | {s['dropped']:.2f} "
              f"| {s['cut']:.2f} |")


if __name__ == "__main__":
    main()
