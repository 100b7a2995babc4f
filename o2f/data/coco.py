"""COCO-format detection dataset (SPEC §5): validated annotations, contiguous labels, targets."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset

from o2f.data.errors import DataError
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


def load_coco_json(ann_file: str | Path, img_dir: str | Path | None = None,
                   odgt: bool | None = None) -> dict:
    """Read and validate a COCO-format annotation file, or a CrowdHuman ``.odgt`` file
    (converted with :func:`o2f.data.crowdhuman.odgt_to_coco`: full-body boxes, ignore regions
    as crowd boxes; image sizes from the records or the images in ``img_dir``). ``odgt``: read
    as ``.odgt`` (None: when the suffix is ``.odgt``). Other formats: :mod:`o2f.data.formats`.

    Checks that ``images`` and ``categories`` (and ``annotations`` if present) are lists of
    objects with the required fields, that ids are integers and unique, that boxes are four
    finite numbers, and that annotations refer to existing images and categories.

    Raises:
        FileNotFoundError: the file does not exist.
        DataError (a ValueError): malformed JSON or a missing / invalid field; the message
            names the file and the field.
    """
    path = Path(ann_file)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    as_odgt = path.suffix == ".odgt" if odgt is None else odgt
    try:
        if as_odgt:
            from o2f.data.crowdhuman import odgt_to_coco

            data = odgt_to_coco(path, img_dir)
        else:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON: {e}") from e
    except (ValueError, KeyError, TypeError) as e:  # a bad .odgt record
        raise DataError(f"{path}: {e}") from e
    return validate_coco(data, path)


def validate_coco(data: Any, path: str | Path) -> dict:
    """``data`` checked as a COCO-format dict read from ``path`` (see :func:`load_coco_json`),
    with ``annotations`` set to [] when absent.

    Raises:
        DataError: a missing or invalid field, named with ``path`` and the record.
    """
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level must be a JSON object, got {type(data).__name__}")
    data.setdefault("annotations", [])

    def fail(where: str, msg: str) -> DataError:
        return DataError(f"{path}: {where}: {msg}")

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


# EXIF orientations that turn the image by 90 degrees (width and height swap)
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file after its EXIF orientation, as
    :func:`load_rgb_image` reads it, from the file's header only.

    Raises:
        OSError naming the path when the file is missing or not an image.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            width, height = img.size
            if img.getexif().get(0x0112) in _TRANSPOSING_ORIENTATIONS:  # 0x0112: Orientation
                width, height = height, width
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise OSError(f"cannot read image {path}: {e}") from e
    return int(width), int(height)


def _usable_boxes(
    data: dict, image_ids: list[int], label_of: dict[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, list[int]], np.ndarray]:
    """Training targets of every image, as one flat array with per-image offsets.

    Drops crowd boxes, boxes with w < 1 or h < 1 and boxes with no overlap with the image;
    clips the rest to the image.

    Returns:
        boxes float32 (M, 4) x1, y1, x2, y2 grouped by image (in ``image_ids`` order);
        labels int64 (M,); offsets int64 (len(image_ids) + 1,): image i owns rows
        offsets[i]:offsets[i + 1]; and the annotation ids of the dropped non-crowd boxes that
        are bad data rather than recipe filters: ``non_positive`` (w <= 0 or h <= 0) and
        ``outside`` (no overlap with the image); rows int64 (M,): the index in
        ``data["annotations"]`` of each box (to find its mask).
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
    non_positive = ~crowd & ((xywh[:, 2] <= 0) | (xywh[:, 3] <= 0))
    outside = ~crowd & ~non_positive & ((x2 <= x1) | (y2 <= y1))
    ann_ids = np.array([a["id"] for a in anns], dtype=np.int64)
    bad = {"non_positive": ann_ids[non_positive].tolist(), "outside": ann_ids[outside].tolist()}

    order = np.argsort(pos[keep], kind="stable")
    boxes = np.stack((x1, y1, x2, y2), axis=1)[keep][order].astype(np.float32)
    offsets = _offsets(pos[keep], len(image_ids))
    rows = np.flatnonzero(keep)[order].astype(np.int64)
    return boxes.reshape(-1, 4), labels[keep][order], offsets, bad, rows


def _offsets(image_pos: np.ndarray, num_images: int) -> np.ndarray:
    """Per-image row offsets (num_images + 1,) int64 of rows grouped by image, given each
    row's image position (M,): image i owns rows offsets[i]:offsets[i + 1]."""
    counts = np.bincount(image_pos, minlength=num_images)
    return np.concatenate(([0], np.cumsum(counts))).astype(np.int64)


def segmentation_problem(segm: Any, height: int, width: int) -> str | None:
    """Why ``segm`` is not a usable instance mask of a ``height`` x ``width`` image (None: it is).

    Usable: polygons (a non-empty list of lists of x, y coordinates, each with at least 3
    points), an uncompressed RLE (``{"size": [h, w], "counts": [int, ...]}`` whose counts sum
    to h * w) or a compressed RLE (``counts`` a string), its ``size`` the image's [h, w].
    Only the structure is checked (cheap enough for every annotation of COCO); a malformed
    compressed string is caught when decoded.
    """
    if segm is None or (isinstance(segm, list | dict) and not segm):
        return "no 'segmentation'"
    if isinstance(segm, list):
        for poly in segm:
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
                return ("polygons must be lists of x, y coordinates with at least 3 points, got "
                        f"{str(poly)[:60]}")
        return None
    if not isinstance(segm, dict) or "counts" not in segm or "size" not in segm:
        return f"not polygons or an RLE dict with 'size' and 'counts': {str(segm)[:60]}"
    if list(segm["size"]) != [height, width]:
        return f"RLE size {segm['size']} but the image is [{height}, {width}] (h, w)"
    counts = segm["counts"]
    if isinstance(counts, list):
        if not all(_is_int(c) and c >= 0 for c in counts) or sum(counts) != height * width:
            return f"uncompressed RLE counts must be >= 0 and sum to {height * width} (h * w)"
        return None
    if not isinstance(counts, str | bytes) or not counts:
        return f"RLE counts must be a list of ints or a non-empty string, got {str(counts)[:60]}"
    return None


def decode_segmentation(segm: Any, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` (polygons, uncompressed or compressed RLE) as a uint8 (h, w)
    0/1 mask, decoded with pycocotools (polygon parts are merged).

    Raises:
        ValueError: ``segm`` is unusable (:func:`segmentation_problem`) or cannot be decoded.
    """
    problem = segmentation_problem(segm, height, width)
    if problem:
        raise ValueError(problem)
    try:
        if isinstance(segm, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
        elif isinstance(segm["counts"], list):
            rle = mask_utils.frPyObjects(segm, height, width)
        else:
            rle = {"size": [height, width], "counts": segm["counts"]}
        with warnings.catch_warnings():  # pycocotools' decode vs numpy 2: a DeprecationWarning
            warnings.simplefilter("ignore", DeprecationWarning)
            return mask_utils.decode(rle)
    except (ValueError, TypeError) as e:
        raise ValueError(f"cannot decode the segmentation: {e}") from e


def _first(ids: Sequence[Any], n: int = 5) -> str:
    """The first ``n`` of ``ids`` for a message, with the count of the rest."""
    shown = ", ".join(str(i) for i in ids[:n])
    return shown + (f" and {len(ids) - n} more" if len(ids) > n else "")


def _missing_files(img_dir: Path, images: Sequence[dict]) -> list[int]:
    """Ids of the images whose file does not exist under ``img_dir`` (one directory listing when
    every file name is a plain name, one stat per image otherwise)."""
    names = [img["file_name"] for img in images]
    if img_dir.is_dir() and not any("/" in n or "\\" in n for n in names):
        present = {e.name for e in os.scandir(img_dir) if e.is_file()}
        return [img["id"] for img, n in zip(images, names, strict=True) if n not in present]
    return [img["id"] for img, n in zip(images, names, strict=True)
            if not (img_dir / n).is_file()]


class CocoDetection(Dataset):
    """COCO-format detection dataset, read from any annotation format of
    :mod:`o2f.data.formats` (COCO ``.json``, a YOLO ``data.yaml``, Pascal VOC ``.xml`` files,
    CrowdHuman ``.odgt``; ``fmt="auto"``: from the path), each read as the same COCO-format
    dict (``self.annotations``). ``split`` is the split of a YOLO data.yaml (default ``train``
    with ``train=True``, else ``val``); ``categories`` (``[{"id", "name"}]``, e.g. the training
    set's) names the classes of VOC data; ``img_dir`` is optional for YOLO and VOC data
    (``self.img_dir`` is the folder the images were found in) and ``self.format`` the format
    read.

    Categories, sorted by id, map to contiguous labels 0..C-1: ``cat_ids[label]`` is the
    category id of a label, ``class_names[label]`` its name. Targets exclude crowd boxes, boxes
    with w < 1 or h < 1 and boxes outside the image; the rest are clipped to the image. With
    ``train=True`` images without a usable box are skipped (``num_skipped``); otherwise every
    image is kept. Images are in ascending id order.

    Bad data (``strict=False``, the default) costs a warning and a count, never a crash hours
    into a run: non-crowd boxes with w <= 0 or h <= 0 or outside the image are dropped
    (``bad_annotations`` lists their ids); in training, images whose file is missing are left
    out (``missing_ids``) and an image that cannot be read (corrupt, truncated, size not as
    annotated) is replaced by the next readable one, its id recorded in the target under
    ``replaced_image_id``. In evaluation every image stays: one that cannot be read is
    returned black with ``unreadable=True`` in its target, so it counts with no detections.
    ``strict=True`` turns each of these into an error naming the file, image or annotation id.

    Item ``i`` is ``(image, target)``: image uint8 (3, h, w) RGB; target as described in
    :mod:`o2f.data.transforms` (``boxes`` (G, 4) float32, ``labels`` (G,) int64, ``image_id``,
    ``orig_size``, ``img_size``, ``scale_factor``, ``flipped``). ``transforms`` maps
    ``(image, target)`` to ``(image, target)``, e.g. :func:`o2f.data.build_transforms`.

    With ``with_masks=True`` the target also holds ``masks``, uint8 (G, h, w) 0/1 at the
    transformed image size, row i the instance mask of box i, decoded from the annotation's
    ``segmentation`` (polygons, uncompressed or compressed RLE; see
    :func:`decode_segmentation`) only when an item is read. A usable box whose annotation has
    no usable segmentation is dropped with a warning (``bad_annotations["no_mask"]``; an error
    with ``strict=True``, or when no annotation has a usable one: box-only data).

    Memory: the targets live in a compact index (numpy arrays: boxes (M, 4), labels (M,),
    per-image offsets, image ids, sizes and file names) built from the COCO-format dict,
    whatever format it was read from. A box-only training set (``train=True``,
    ``with_masks=False``) keeps nothing else, so each rank and loader worker holds a few bytes
    per box instead of the annotation records with their polygons; the others keep the dict
    (:attr:`annotations`; :attr:`coco` indexes it with pycocotools on first use) for masks and
    evaluation.
    """

    def __init__(
        self,
        ann_file: str | Path,
        img_dir: str | Path | None,
        transforms: Transform | None = None,
        train: bool = False,
        strict: bool = False,
        with_masks: bool = False,
        fmt: str = "auto",
        split: str | None = None,
        categories: Sequence[dict] | None = None,
    ):
        from o2f.data.formats import read_dataset

        self.ann_file = Path(ann_file)
        self.transforms = transforms
        self.train = train
        self.strict = strict
        self.with_masks = with_masks

        data, self.img_dir, self.format = read_dataset(
            self.ann_file, img_dir, fmt, split or ("train" if train else "val"), categories,
            strict)
        # The annotation records (polygons and all) are kept only where they are used: masks
        # are decoded from them, and evaluation (train=False) indexes them. A box-only training
        # set keeps the compact index below, not a copy per rank and loader worker.
        self._data: dict | None = data if (with_masks or not train) else None
        self._coco: COCO | None = None
        records = sorted(data["images"], key=lambda img: img["id"])
        self._images = (records if self._data is not None else None)  # full records, by id
        self._image_ids = np.array([img["id"] for img in records], dtype=np.int64)
        self._image_sizes = np.array([(img["width"], img["height"]) for img in records],
                                     dtype=np.int64).reshape(-1, 2)
        self._file_names = np.array([img["file_name"] for img in records], dtype=np.str_)

        cats = sorted(data["categories"], key=lambda c: c["id"])
        self.cat_ids: list[int] = [c["id"] for c in cats]
        self.class_names: list[str] = [str(c["name"]) for c in cats]
        self.label_of: dict[int, int] = {cid: i for i, cid in enumerate(self.cat_ids)}

        all_ids = self._image_ids.tolist()
        self._boxes, self._labels, self._offsets, self.bad_annotations, self._rows = (
            _usable_boxes(data, all_ids, self.label_of))
        self._report_bad_annotations()
        if with_masks:
            self._drop_boxes_without_masks(data)
        self.missing_ids = _missing_files(self.img_dir, records)
        self._report_missing_files(len(all_ids))
        missing = set(self.missing_ids) if train else set()
        counts = np.diff(self._offsets)
        positions = [i for i in range(len(all_ids))
                     if (counts[i] > 0 or not train) and all_ids[i] not in missing]
        self._positions = np.array(positions, dtype=np.int64)
        self.ids: list[int] = [all_ids[i] for i in positions]
        self.num_skipped = int((counts == 0).sum()) if train else 0
        if self.num_skipped:
            logger.info(
                "%s: skipped %d of %d images without usable boxes (train mode)",
                self.ann_file,
                self.num_skipped,
                len(all_ids),
            )
        if not self.ids:
            what = "images with usable boxes and a file" if train else "images"
            raise DataError(f"{self.ann_file}: no {what} ({len(all_ids)} images, "
                             f"{len(data['annotations'])} annotations)")

    def _report_bad_annotations(self) -> None:
        rules = {"non_positive": "a width or height <= 0", "outside": "no overlap with the image"}
        for kind, ids in self.bad_annotations.items():
            if not ids:
                continue
            msg = (f"{self.ann_file}: {len(ids)} non-crowd box(es) with {rules[kind]}, "
                   f"annotation id(s) {_first(ids)}")
            if self.strict:
                raise DataError(msg + " (data.strict=true)")
            logger.warning("%s: not used as training targets", msg)

    def _drop_boxes_without_masks(self, data: dict) -> None:
        """Drop the target rows whose annotation has no usable ``segmentation`` (warning,
        ids in ``bad_annotations["no_mask"]``); an error if strict or if no row has one."""
        anns = data["annotations"]
        sizes = {img["id"]: (img["height"], img["width"]) for img in data["images"]}
        problems = {}
        for row in self._rows.tolist():
            ann = anns[row]
            problem = segmentation_problem(ann.get("segmentation"), *sizes[ann["image_id"]])
            if problem:
                problems[row] = problem
        self.bad_annotations["no_mask"] = [anns[r]["id"] for r in problems]
        if not problems:
            return
        first = next(iter(problems))
        msg = (f"{self.ann_file}: {len(problems)} of {len(self._rows)} usable box(es) have no "
               f"usable instance mask, annotation id(s) {_first(self.bad_annotations['no_mask'])}"
               f" (annotation id {anns[first]['id']}: {problems[first]})")
        if len(problems) == len(self._rows):
            raise DataError(msg + "; masks (model.mask.enabled=true) need a 'segmentation' "
                             "(polygons or RLE) in the annotations")
        if self.strict:
            raise DataError(msg + " (data.strict=true)")
        logger.warning("%s: not used as training targets", msg)
        keep = ~np.isin(self._rows, np.array(list(problems), dtype=np.int64))
        num_images = len(self._offsets) - 1
        image_pos = np.repeat(np.arange(num_images), np.diff(self._offsets))
        self._offsets = _offsets(image_pos[keep], num_images)
        self._boxes, self._labels, self._rows = (
            self._boxes[keep], self._labels[keep], self._rows[keep])

    def _masks(self, pos: int, height: int, width: int) -> Tensor:
        """The instance masks of the image at position ``pos``: uint8 (G, height, width)."""
        rows = self._rows[self._offsets[pos]:self._offsets[pos + 1]].tolist()
        masks = np.zeros((len(rows), height, width), dtype=np.uint8)
        for i, row in enumerate(rows):
            ann = self._data["annotations"][row]
            try:
                masks[i] = decode_segmentation(ann.get("segmentation"), height, width)
            except ValueError as e:
                raise DataError(f"{self.ann_file}: annotation id {ann['id']} (image id "
                                 f"{ann['image_id']}): {e}") from e
        return torch.from_numpy(masks)

    def _report_missing_files(self, num_images: int) -> None:
        if not self.missing_ids:
            return
        pos = np.searchsorted(self._image_ids, np.array(self.missing_ids, dtype=np.int64))
        names = self._file_names[pos].tolist()
        msg = (f"{self.img_dir}: {len(names)} of {num_images} image files of {self.ann_file} "
               f"do not exist: {_first(names)} (image id(s) {_first(self.missing_ids)})")
        if self.strict:
            raise FileNotFoundError(msg + " (data.strict=true)")
        logger.warning("%s; %s", msg, "left out of training" if self.train
                       else "evaluated as images with no detections")

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    @property
    def categories(self) -> list[dict]:
        """``[{"id", "name"}, ...]`` in label order, e.g. to read a validation set with the
        training set's classes."""
        return [{"id": c, "name": n} for c, n in zip(self.cat_ids, self.class_names,
                                                     strict=True)]

    def __len__(self) -> int:
        return len(self.ids)

    def image_info(self, index: int) -> dict:
        """The ``images`` record of item ``index``: id, file_name, width, height (and the
        record's other fields where the annotation records are kept, see :attr:`coco`)."""
        pos = int(self._positions[index])
        if self._images is not None:
            return self._images[pos]
        width, height = self._image_sizes[pos].tolist()
        return {"id": int(self._image_ids[pos]), "file_name": str(self._file_names[pos]),
                "width": width, "height": height}

    def image_sizes(self) -> np.ndarray:
        """(width, height) of every item, int64 (len(self), 2), without a record per image."""
        return self._image_sizes[self._positions]

    @property
    def annotations(self) -> dict:
        """The COCO-format dict read (``images``, ``annotations``, ``categories``): kept for
        evaluation sets (``train=False``) and mask training sets.

        Raises:
            RuntimeError: a box-only training set, which keeps a compact index of its boxes
                and labels (numpy arrays) instead of the annotation records.
        """
        if self._data is None:
            raise RuntimeError(f"{self.ann_file}: a box-only training set (train=True, "
                               "with_masks=False) keeps a compact index of boxes and labels, not "
                               "the annotation records; read it with train=False to evaluate")
        return self._data

    @property
    def coco(self) -> COCO:
        """A pycocotools index of :attr:`annotations`, built on first use (evaluation with
        ``pycocotools``, CrowdHuman records); raises as :attr:`annotations` does."""
        if self._coco is None:
            coco = COCO()
            coco.dataset = self.annotations
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                coco.createIndex()
            self._coco = coco
        return self._coco

    def target_boxes(self) -> tuple[np.ndarray, np.ndarray]:
        """The target boxes of every item, without reading an image: float32 (M, 4) x1, y1, x2,
        y2 in original-image pixels, and int64 (M,) the item index of each box."""
        num_images = len(self._offsets) - 1
        item_of = np.full(num_images, -1, dtype=np.int64)
        item_of[self._positions] = np.arange(len(self._positions))
        items = np.repeat(item_of, np.diff(self._offsets))
        kept = items >= 0
        return self._boxes[kept], items[kept]

    def _read_image(self, info: dict) -> Tensor:
        """The image of an ``images`` record as uint8 (3, h, w), checked against its size."""
        path = self.img_dir / info["file_name"]
        img = load_rgb_image(path, info["id"])
        if img.size != (info["width"], info["height"]):
            raise DataError(
                f"image {path} (image id {info['id']}) is {img.size[0]}x{img.size[1]} after EXIF "
                f"orientation but the annotations say {info['width']}x{info['height']}"
            )
        # np.array copies, so the tensor owns writable memory.
        return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        problem: dict[str, Any] = {}
        for _ in range(len(self)):
            info = self.image_info(index)
            try:
                image = self._read_image(info)
                break
            except (OSError, ValueError) as err:
                if self.strict:
                    raise
                logger.warning("%s; %s", err, "using the next image" if self.train
                               else "evaluated as an image with no detections")
                if not self.train:
                    image = torch.zeros((3, info["height"], info["width"]), dtype=torch.uint8)
                    problem = {"unreadable": True}
                    break
                problem.setdefault("replaced_image_id", int(info["id"]))
                index = (index + 1) % len(self)
        else:
            raise OSError(f"{self.ann_file}: none of the {len(self)} training images can be read")

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
            **problem,
        }
        if self.with_masks:
            target["masks"] = self._masks(pos, h, w)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


class Repeated(Dataset):
    """``dataset`` seen ``times`` times per epoch: item i is ``dataset[i % len(dataset)]``, so a
    shuffling sampler visits every image ``times`` times, each with fresh augmentation."""

    def __init__(self, dataset: Dataset, times: int = 1) -> None:
        if times < 1:
            raise ValueError(f"times must be >= 1, got {times}")
        self.dataset, self.times = dataset, times

    def __len__(self) -> int:
        return len(self.dataset) * self.times

    def __getitem__(self, index: int):
        return self.dataset[index % len(self.dataset)]

    def image_info(self, index: int) -> dict:
        return self.dataset.image_info(index % len(self.dataset))


def collate(batch: Sequence[tuple[Tensor, Target]]) -> tuple[list[Tensor], list[Target]]:
    """DataLoader collate: images stay a list of (3, h_i, w_i) tensors (the model pads)."""
    images = [item[0] for item in batch]
    targets = [item[1] for item in batch]
    return images, targets


def category_ids_from_labels(labels: Tensor, cat_ids: Sequence[int]) -> Tensor:
    """Map contiguous labels (N,) int64 back to dataset category ids (N,) int64."""
    table = torch.as_tensor(list(cat_ids), dtype=torch.int64, device=labels.device)
    return table[labels.long()]
