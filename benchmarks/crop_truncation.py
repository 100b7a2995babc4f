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
import logging
from pathlib import Path

import torch

from o2f.boxes import box_area
from o2f.data import CocoDetection
from o2f.data.transforms import RandomCropBoxes


def crop_statistics(ann_file: Path, min_scale: float, draws: int, seed: int,
                    img_dir: Path | None = None) -> dict:
    """Shares of boxes at the border, dropped and cut by the crop (see the module docstring),
    over the target boxes the trainer would use (any format :class:`CocoDetection` reads;
    no image is read)."""
    dataset = CocoDetection(ann_file, img_dir, train=False)
    all_boxes, items = dataset.target_boxes()
    all_boxes = torch.from_numpy(all_boxes)
    items = torch.from_numpy(items)
    sizes = torch.from_numpy(dataset.image_sizes())  # (num_items, 2) width, height
    w, h = sizes[items, 0], sizes[items, 1]
    border = int(((all_boxes[:, :2] <= 0).any(1) | (all_boxes[:, 2] >= w)
                  | (all_boxes[:, 3] >= h)).sum())
    crop = RandomCropBoxes(1.0, min_scale)
    torch.manual_seed(seed)
    kept = cut = 0
    for item in items.unique().tolist():
        boxes = all_boxes[items == item]
        area = box_area(boxes)
        pixels = torch.zeros(1, int(sizes[item, 1]), int(sizes[item, 0]))
        for _ in range(draws):
            # labels carry each box's index, so the kept boxes can be matched to the originals
            _, out = crop(pixels, {"boxes": boxes, "labels": torch.arange(len(boxes))})
            new = out["boxes"].as_subclass(torch.Tensor)
            kept += len(new)
            cut += int((box_area(new) < 0.95 * area[out["labels"]]).sum())
    total = len(all_boxes) * draws
    return {"ann_file": str(ann_file), "boxes": len(all_boxes),
            "at_border": border / max(1, len(all_boxes)),
            "dropped": (total - kept) / max(1, total), "cut": cut / max(1, kept)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ann_files", nargs="+", type=Path)
    parser.add_argument("--img-dir", type=Path, default=None,
                        help="image folder, for formats that need it (YOLO, Pascal VOC)")
    parser.add_argument("--min-scale", type=float, default=0.5,
                        help="smallest window side fraction (data.crop_min_scale)")
    parser.add_argument("--draws", type=int, default=5, help="crops per image")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    # only the annotations are read: the "image files do not exist" warning would mislead
    logging.getLogger("o2f.data.coco").setLevel(logging.ERROR)
    print("| annotations | boxes | at image border | dropped by a crop | cut (of kept) |")
    print("|---|---|---|---|---|")
    for ann_file in args.ann_files:
        s = crop_statistics(ann_file, args.min_scale, args.draws, args.seed, args.img_dir)
        print(f"| {s['ann_file']} | {s['boxes']} | {s['at_border']:.2f} | {s['dropped']:.2f} "
              f"| {s['cut']:.2f} |")


if __name__ == "__main__":
    main()
