"""Annotation formats: each is a reader that gives the one in-memory COCO-format dict that
:class:`o2f.data.CocoDetection` and the COCO evaluation consume, so training, validation and
``o2f test`` read every format the same way.

* ``coco``: a ``.json`` file (:func:`o2f.data.coco.load_coco_json`);
* ``yolo``: an Ultralytics ``data.yaml``, ``.yaml`` / ``.yml`` (:func:`o2f.data.yolo.read_yolo`);
* ``voc``: a folder of Pascal VOC ``.xml`` files, or an ``ImageSets/Main/*.txt`` list
  (:func:`o2f.data.voc.read_voc`);
* ``odgt``: a CrowdHuman ``.odgt`` file (:func:`o2f.data.crowdhuman.odgt_to_coco`).

``auto`` (``data.format``'s default) tells them apart by the path as in this list.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from o2f.data.errors import DataError

FORMATS = ("auto", "coco", "yolo", "voc", "odgt")


def detect_format(ann_file: str | Path, fmt: str = "auto") -> str:
    """The format of ``ann_file``: ``fmt`` itself unless it is ``auto``, else from the path
    (``.json`` coco, ``.yaml``/``.yml`` yolo, a folder or an ``ImageSets`` ``.txt`` list voc,
    ``.odgt`` odgt).

    Raises:
        DataError: ``fmt`` is not a format, or ``auto`` cannot tell from the path.
    """
    if fmt not in FORMATS:
        raise DataError(f"unknown annotation format {fmt!r} (one of {', '.join(FORMATS)})")
    if fmt != "auto":
        return fmt
    path = Path(ann_file)
    suffix = path.suffix.lower()
    if path.is_dir():
        return "voc"
    by_suffix = {".json": "coco", ".yaml": "yolo", ".yml": "yolo", ".odgt": "odgt"}
    if suffix in by_suffix:
        return by_suffix[suffix]
    if suffix == ".txt":
        from o2f.data.voc import voc_annotation_folder

        if path.is_file() and voc_annotation_folder(path) is not None:
            return "voc"
    raise DataError(f"{path}: cannot tell the annotation format from the path (.json: COCO, "
                    ".yaml: a YOLO data.yaml, a folder of .xml files: Pascal VOC, .odgt: "
                    "CrowdHuman); set data.format")


def check_paths(ann_file: str | Path, img_dir: str | Path, fmt: str) -> str | None:
    """What is wrong with the paths of a split before reading it (None: nothing): the
    annotation file or folder must exist, and for coco and odgt the image folder too (yolo
    finds its images from the yaml, voc looks beside the annotations when ``img_dir`` is not
    a folder). ``fmt`` is a detected format (not ``auto``)."""
    ann = Path(ann_file)
    if fmt == "voc":
        if not ann.exists():
            return f"ann_file: {ann} does not exist"
    elif not ann.is_file():
        return f"ann_file: {ann} does not exist"
    if fmt in ("coco", "odgt") and not Path(img_dir).is_dir():
        return f"img_dir: {img_dir} is not a folder"
    return None


def read_dataset(
    ann_file: str | Path, img_dir: str | Path | None = None, fmt: str = "auto",
    split: str = "train", categories: Sequence[dict] | None = None, strict: bool = False,
) -> tuple[dict, Path, str]:
    """Read and validate the annotations of one split in any format.

    Args:
        ann_file: the annotation file or folder (see the module docstring).
        img_dir: the image folder (optional for yolo; see :func:`o2f.data.voc.read_voc`).
        fmt: a format of :data:`FORMATS`.
        split: the split of a YOLO data.yaml to read (``train``, ``val``, ``test``, ...).
        categories: ``[{"id", "name"}, ...]`` for formats that do not name their classes
            (voc), e.g. the training set's; ignored by the others.
        strict: records that the readers would leave out with a warning are errors.

    Returns:
        the validated COCO-format dict, the folder its ``file_name`` entries are relative to,
        and the format read.

    Raises:
        FileNotFoundError: the annotation file does not exist.
        DataError: a malformed file or record (the message names the file and record).
    """
    from o2f.data.coco import load_coco_json, validate_coco

    fmt = detect_format(ann_file, fmt)
    path = Path(ann_file)
    if not path.exists():
        raise FileNotFoundError(f"annotation file not found: {path}")
    if fmt in ("coco", "odgt"):
        data = load_coco_json(path, img_dir, odgt=fmt == "odgt")
        return data, Path(img_dir or path.parent), fmt
    if fmt == "yolo":
        from o2f.data.yolo import read_yolo

        data, folder = read_yolo(path, split, img_dir, strict)
    else:
        from o2f.data.voc import read_voc

        data, folder = read_voc(path, img_dir, categories, strict)
    return validate_coco(data, path), folder, fmt


def convert_dataset(
    src: str | Path, to: str, out: str | Path, img_dir: str | Path | None = None,
    fmt: str = "auto", split: str = "train", copy_images: bool = False,
) -> dict[str, Any]:
    """Convert one split of a dataset in any readable format to a COCO ``.json`` file
    (``to="coco"``, ``out`` the file) or to a YOLO dataset (``to="yolo"``, ``out`` a folder,
    see :func:`o2f.data.yolo.write_yolo`).

    Returns:
        counts for a message: ``format`` (read), ``images``, ``annotations``, ``categories``,
        and for yolo ``labels`` and ``skipped_crowd``; ``image_dir`` (where the images are).
    """
    data, folder, read_as = read_dataset(src, img_dir, fmt, split)
    counts: dict[str, Any] = {"format": read_as, "images": len(data["images"]),
                              "annotations": len(data["annotations"]),
                              "categories": len(data["categories"]), "image_dir": str(folder)}
    out = Path(out)
    if to == "coco":
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data), encoding="utf-8")
    elif to == "yolo":
        from o2f.data.yolo import write_yolo

        counts.update(write_yolo(data, folder, out, split, copy_images))
    else:
        raise DataError(f"cannot convert to {to!r} (coco or yolo)")
    return counts
