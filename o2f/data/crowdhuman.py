"""CrowdHuman ``.odgt`` files: read, write, and convert to and from COCO format.

An ``.odgt`` file holds one JSON object per line. Ground truth records have ``ID`` and
``gtboxes`` (each with ``tag``, ``fbox`` full-body ``[x, y, w, h]``, ``vbox`` visible box,
``hbox`` head box, ``extra``, ``head_attr``); detection records have ``ID`` and ``dtboxes``
(each with ``box`` ``[x, y, w, h]``, ``score`` and optionally ``tag``). Either may carry the
image's ``height`` and ``width``.

COCO conversion (single category ``person``, id 1):
    * image ``id`` = 1-based position in the ``.odgt``; ``file_name`` = the image file found in
      ``img_dir`` (else ``<ID>.jpg``); the odgt ``ID`` is kept as ``odgt_id``.
    * annotation ``bbox`` = ``fbox``; ``area`` = w * h; ``iscrowd`` = 1 for ignore regions (tag
      not ``person`` or ``extra.ignore`` non-zero), else 0. Every other key of the odgt box
      (``vbox``, ``hbox``, ``tag``, ``extra``, ``head_attr``, ...) is kept on the annotation, so
      ``coco_to_odgt(odgt_to_coco(x))`` gives ``x`` back (plus ``height``/``width``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = [
    "coco_to_odgt",
    "detections_to_odgt",
    "odgt_to_coco",
    "read_odgt",
    "write_odgt",
]

PathLike = str | os.PathLike
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
PERSON_CATEGORY = {"id": 1, "name": "person", "supercategory": "person"}
_COCO_ANN_KEYS = ("id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation")


def read_odgt(path: PathLike) -> list[dict]:
    """Records of an ``.odgt`` file (blank lines skipped)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_odgt(records: Iterable[dict], path: PathLike) -> None:
    """Write records as an ``.odgt`` file, one JSON object per line."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def is_ignore_box(box: dict) -> bool:
    """Whether an odgt gt box is an ignore region (tag not person, or extra.ignore != 0)."""
    extra = box.get("extra")
    ignored = isinstance(extra, dict) and extra.get("ignore", 0) != 0
    return box.get("tag") != "person" or ignored


def _find_image(img_dir: PathLike | None, image_id: str) -> Path | None:
    if img_dir is None:
        return None
    for ext in IMAGE_EXTENSIONS:
        candidate = Path(img_dir) / f"{image_id}{ext}"
        if candidate.is_file():
            return candidate
    return None


def _image_entry(index: int, record: dict, img_dir: PathLike | None) -> dict:
    image_id = record["ID"]
    path = _find_image(img_dir, image_id)
    height, width = record.get("height"), record.get("width")
    if height is None or width is None:
        if path is None:
            where = f"in {img_dir}" if img_dir is not None else "(no image directory given)"
            raise ValueError(
                f"image {image_id!r}: no height/width in the odgt and no image {where}"
            )
        from PIL import Image

        with Image.open(path) as im:
            width, height = im.size
    return {
        "id": index,
        "file_name": path.name if path is not None else f"{image_id}.jpg",
        "height": int(height),
        "width": int(width),
        "odgt_id": image_id,
    }


def odgt_to_coco(
    odgt_path: PathLike, img_dir: PathLike | None, out_json: PathLike | None = None
) -> dict:
    """Convert CrowdHuman ground truth to a COCO-format dict (and write it to ``out_json``).

    Image sizes come from the records' ``height``/``width`` or, failing that, from the image
    file ``img_dir/<ID>.{jpg,jpeg,png}`` (header only).
    """
    images, annotations = [], []
    for index, record in enumerate(read_odgt(odgt_path), start=1):
        images.append(_image_entry(index, record, img_dir))
        for box in record.get("gtboxes", []):
            x, y, w, h = (float(v) for v in box["fbox"])
            ann = {
                "id": len(annotations) + 1,
                "image_id": index,
                "category_id": PERSON_CATEGORY["id"],
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": int(is_ignore_box(box)),
            }
            ann.update({k: v for k, v in box.items() if k != "fbox" and k not in ann})
            annotations.append(ann)
    coco = {"images": images, "annotations": annotations, "categories": [dict(PERSON_CATEGORY)]}
    if out_json is not None:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        with open(out_json, "w", encoding="utf-8") as f:
            json.dump(coco, f)
    return coco


def coco_to_odgt(coco_json: PathLike | dict, out_odgt: PathLike | None = None) -> list[dict]:
    """Convert COCO-format ground truth to ``.odgt`` records (and write them to ``out_odgt``).

    Every annotation becomes a gt box: ``fbox`` = ``bbox``; ``tag`` and ``extra`` are taken from
    the annotation when present, else ``'person'`` and ``{'ignore': iscrowd}``; other non-COCO
    keys (``vbox``, ``hbox``, ...) are copied. The ``ID`` is the image's ``odgt_id`` or its file
    name without extension. Records carry ``height`` and ``width``.
    """
    if isinstance(coco_json, dict):
        coco = coco_json
    else:
        with open(coco_json, encoding="utf-8") as f:
            coco = json.load(f)
    per_image: dict[int, list[dict]] = {img["id"]: [] for img in coco["images"]}
    for ann in coco.get("annotations", []):
        box = {"tag": ann.get("tag", "person"), "fbox": [float(v) for v in ann["bbox"]]}
        box.update({k: v for k, v in ann.items() if k not in _COCO_ANN_KEYS and k not in box})
        box.setdefault("extra", {"ignore": int(ann.get("iscrowd", 0))})
        per_image[ann["image_id"]].append(box)
    records = []
    for img in coco["images"]:
        image_id = img.get("odgt_id") or Path(img["file_name"]).stem
        records.append(
            {
                "ID": image_id,
                "gtboxes": per_image[img["id"]],
                "height": img["height"],
                "width": img["width"],
            }
        )
    if out_odgt is not None:
        write_odgt(records, out_odgt)
    return records


def detections_to_odgt(
    detections: Sequence[dict],
    ids: Sequence[str],
    sizes: Sequence[tuple[int, int]] | None = None,
) -> list[dict]:
    """Detection records for ``evaluate_odgt``.

    Args:
        detections: one dict per image with ``boxes`` (K, 4) x1, y1, x2, y2 in original-image
            pixels and ``scores`` (K,) (tensors or arrays).
        ids: the odgt ``ID`` of each image.
        sizes: optional (height, width) of each image, written as ``height``/``width``.
    """
    records = []
    for i, (det, image_id) in enumerate(zip(detections, ids, strict=True)):
        boxes = _to_list(det["boxes"])
        scores = _to_list(det["scores"])
        dtboxes = [
            {"box": [x1, y1, x2 - x1, y2 - y1], "score": s, "tag": 1}
            for (x1, y1, x2, y2), s in zip(boxes, scores, strict=True)
        ]
        record = {"ID": image_id, "dtboxes": dtboxes}
        if sizes is not None:
            record["height"], record["width"] = (int(v) for v in sizes[i])
        records.append(record)
    return records


def _to_list(values) -> list:
    if hasattr(values, "detach"):
        values = values.detach().cpu()
    if hasattr(values, "tolist"):
        return values.tolist()
    return list(values)
