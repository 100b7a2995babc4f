"""COCO-format detection dataset (SPEC §5): validated annotations, contiguous labels, targets."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset

from o2f.data.transforms import Target, Transform

logger = logging.getLogger(__name__)

# Required fields of each record, per top-level list ("annotations" may be absent: test sets).
_REQUIRED = {
    "images": ("id", "file_name", "width", "height"),
    "annotations": ("id", "image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def load_coco_json(ann_file: str | Path, img_dir: str | Path | None = None) -> dict:
    """Read and validate a COCO-format annotation file, or a CrowdHuman ``.odgt`` file
    (converted with :func:`o2f.data.crowdhuman.odgt_to_coco`: full-body boxes, ignore regions
    as crowd boxes; image sizes from the records or the images in ``img_dir``).

    Checks that ``images`` and ``categories`` (and ``annotations`` if present) are lists of
    objects with the required fields, that ids are integers and unique, that boxes are four
    finite numbers, and that annotations refer to existing images and categories.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: malformed JSON or a missing / invalid field; the message names the file
            and the field.
    """
    path = Path(ann_file)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        if path.suffix == ".odgt":
            from o2f.data.crowdhuman import odgt_to_coco

            data = odgt_to_coco(path, img_dir)
        else:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be a JSON object, got {type(data).__name__}")
    data.setdefault("annotations", [])

    def fail(where: str, msg: str) -> ValueError:
        return ValueError(f"{path}: {where}: {msg}")

    for key, fields in _REQUIRED.items():
        if key not in data:
            raise fail(key, "missing required field")
        if not isinstance(data[key], list):
            raise fail(key, f"must be a list, got {type(data[key]).__name__}")
        seen: set[int] = set()
        for i, rec in enumerate(data[key]):
            if not isinstance(rec, dict):
                raise fail(f"{key}[{i}]", "must be an object")
            for field in fields:
                if field not in rec:
                    raise fail(f"{key}[{i}]", f"missing required field '{field}'")
            if not _is_int(rec["id"]):
                raise fail(f"{key}[{i}].id", f"must be an integer, got {rec['id']!r}")
            if rec["id"] in seen:
                raise fail(f"{key}[{i}].id", f"duplicate id {rec['id']}")
            seen.add(rec["id"])

    for i, img in enumerate(data["images"]):
        for field in ("width", "height"):
            if not _is_int(img[field]) or img[field] <= 0:
                raise fail(
                    f"images[{i}].{field}", f"must be a positive integer, got {img[field]!r}"
                )
        if not isinstance(img["file_name"], str) or not img["file_name"]:
            raise fail(f"images[{i}].file_name", "must be a non-empty string")

    image_ids = {img["id"] for img in data["images"]}
    cat_ids = {cat["id"] for cat in data["categories"]}
    for i, ann in enumerate(data["annotations"]):
        if ann["image_id"] not in image_ids:
            raise fail(f"annotations[{i}].image_id", f"unknown image id {ann['image_id']!r}")
        if ann["category_id"] not in cat_ids:
            raise fail(
                f"annotations[{i}].category_id", f"unknown category id {ann['category_id']!r}"
            )
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))):
            raise fail(
                f"annotations[{i}].bbox", f"must be 4 finite numbers [x, y, w, h], got {bbox!r}"
            )
        if ann.get("iscrowd", 0) not in (0, 1):
            raise fail(f"annotations[{i}].iscrowd", f"must be 0 or 1, got {ann['iscrowd']!r}")
    return data


def load_rgb_image(path: str | Path, image_id: int | None = None) -> Image.Image:
    """Open an image as RGB with its EXIF orientation applied.

    Grayscale, palette, RGBA (alpha dropped) and CMYK images all come back as mode "RGB".

    Raises:
        FileNotFoundError / OSError naming the path and the image id.
    """
    what = f"{path}" + ("" if image_id is None else f" (image id {image_id})")
    if not Path(path).is_file():
        raise FileNotFoundError(f"image file not found: {what}")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode == "P":  # palette with transparency must pass through RGBA first
                img = img.convert("RGBA")
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # PIL reports some corrupt files as SyntaxError / ValueError rather than OSError.
        raise OSError(f"cannot read image {what}: {e}") from e


def _usable_boxes(
    data: dict, image_ids: list[int], label_of: dict[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training targets of every image, as one flat array with per-image offsets.

    Drops crowd boxes, boxes with w < 1 or h < 1 and boxes with no overlap with the image;
    clips the rest to the image.

    Returns:
        boxes float32 (M, 4) x1, y1, x2, y2 grouped by image (in ``image_ids`` order);
        labels int64 (M,); offsets int64 (len(image_ids) + 1,): image i owns rows
        offsets[i]:offsets[i + 1].
    """
    pos_of = {img_id: i for i, img_id in enumerate(image_ids)}
    imgs = {img["id"]: img for img in data["images"]}
    anns = data["annotations"]
    pos = np.array([pos_of[a["image_id"]] for a in anns], dtype=np.int64)
    xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
    labels = np.array([label_of[a["category_id"]] for a in anns], dtype=np.int64)
    sizes = np.array(
        [(imgs[i]["width"], imgs[i]["height"]) for i in image_ids], dtype=np.float64
    ).reshape(-1, 2)

    w_img, h_img = sizes[pos, 0], sizes[pos, 1]
    x1 = np.clip(xywh[:, 0], 0, w_img)
    y1 = np.clip(xywh[:, 1], 0, h_img)
    x2 = np.clip(xywh[:, 0] + xywh[:, 2], 0, w_img)
    y2 = np.clip(xywh[:, 1] + xywh[:, 3], 0, h_img)
    keep = ~crowd & (xywh[:, 2] >= 1) & (xywh[:, 3] >= 1) & (x2 > x1) & (y2 > y1)

    order = np.argsort(pos[keep], kind="stable")
    boxes = np.stack((x1, y1, x2, y2), axis=1)[keep][order].astype(np.float32)
    counts = np.bincount(pos[keep], minlength=len(image_ids))
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    return boxes.reshape(-1, 4), labels[keep][order], offsets


class CocoDetection(Dataset):
    """COCO-format detection dataset.

    Categories, sorted by id, map to contiguous labels 0..C-1: ``cat_ids[label]`` is the
    category id of a label, ``class_names[label]`` its name. Targets exclude crowd boxes, boxes
    with w < 1 or h < 1 and boxes outside the image; the rest are clipped to the image. With
    ``train=True`` images without a usable box are skipped (``num_skipped``); otherwise every
    image is kept. Images are in ascending id order.

    Item ``i`` is ``(image, target)``: image uint8 (3, h, w) RGB; target as described in
    :mod:`o2f.data.transforms` (``boxes`` (G, 4) float32, ``labels`` (G,) int64, ``image_id``,
    ``orig_size``, ``img_size``, ``scale_factor``, ``flipped``). ``transforms`` maps
    ``(image, target)`` to ``(image, target)``, e.g. :func:`o2f.data.build_transforms`.
    """

    def __init__(
        self,
        ann_file: str | Path,
        img_dir: str | Path,
        transforms: Transform | None = None,
        train: bool = False,
    ):
        self.ann_file = Path(ann_file)
        self.img_dir = Path(img_dir)
        self.transforms = transforms
        self.train = train

        data = load_coco_json(self.ann_file, self.img_dir)
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco.createIndex()

        cats = sorted(data["categories"], key=lambda c: c["id"])
        self.cat_ids: list[int] = [c["id"] for c in cats]
        self.class_names: list[str] = [str(c["name"]) for c in cats]
        self.label_of: dict[int, int] = {cid: i for i, cid in enumerate(self.cat_ids)}

        all_ids = sorted(self.coco.imgs)
        self._boxes, self._labels, self._offsets = _usable_boxes(data, all_ids, self.label_of)
        counts = np.diff(self._offsets)
        positions = [i for i in range(len(all_ids)) if counts[i] > 0 or not train]
        self._positions = np.array(positions, dtype=np.int64)
        self.ids: list[int] = [all_ids[i] for i in positions]
        self.num_skipped = len(all_ids) - len(self.ids)
        if self.num_skipped:
            logger.info(
                "%s: skipped %d of %d images without usable boxes (train mode)",
                self.ann_file,
                self.num_skipped,
                len(all_ids),
            )

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def __len__(self) -> int:
        return len(self.ids)

    def image_info(self, index: int) -> dict:
        """The ``images`` record of item ``index`` (id, file_name, width, height, ...)."""
        return self.coco.imgs[self.ids[index]]

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        info = self.image_info(index)
        path = self.img_dir / info["file_name"]
        img = load_rgb_image(path, info["id"])
        if img.size != (info["width"], info["height"]):
            raise ValueError(
                f"image {path} (image id {info['id']}) is {img.size[0]}x{img.size[1]} after EXIF "
                f"orientation but the annotations say {info['width']}x{info['height']}"
            )
        # np.array copies, so the tensor owns writable memory.
        image = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()

        pos = self._positions[index]
        lo, hi = self._offsets[pos], self._offsets[pos + 1]
        h, w = info["height"], info["width"]
        target: Target = {
            "boxes": torch.from_numpy(self._boxes[lo:hi].copy()),
            "labels": torch.from_numpy(self._labels[lo:hi].copy()),
            "image_id": int(info["id"]),
            "orig_size": (h, w),
            "img_size": (h, w),
            "scale_factor": (1.0, 1.0),
            "flipped": False,
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def collate(batch: Sequence[tuple[Tensor, Target]]) -> tuple[list[Tensor], list[Target]]:
    """DataLoader collate: images stay a list of (3, h_i, w_i) tensors (the model pads)."""
    images = [item[0] for item in batch]
    targets = [item[1] for item in batch]
    return images, targets


def category_ids_from_labels(labels: Tensor, cat_ids: Sequence[int]) -> Tensor:
    """Map contiguous labels (N,) int64 back to dataset category ids (N,) int64."""
    table = torch.as_tensor(list(cat_ids), dtype=torch.int64, device=labels.device)
    return table[labels.long()]
