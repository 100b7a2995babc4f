"""COCO metrics through pycocotools: box (and mask) AP, overall and per class.

Conventions:
    * Every image of ``image_ids`` (default: all images of the ground truth) is evaluated,
      whether or not it has detections or annotations.
    * Metrics are fractions in [0, 1]. pycocotools reports -1 for a value with no ground
      truth to measure (e.g. ``mAP_s`` when no gt is small, or the AP of a class with no
      instance among ``image_ids``); such values are returned as NaN ("undefined"), which
      neither a mean nor a table can mistake for a real 0 (the detectron2 convention).
    * An empty result list is evaluated like any other: every defined AP is 0.
    * ``per_class`` AP is the mean of COCOeval's precision over IoU 0.50:0.95 and the 101 recall
      points, for area "all" and the largest ``maxDets`` (100), ignoring -1 entries.
    * For ``iou_type="segm"`` any ``bbox`` in the results is dropped before evaluation so that
      the area ranges use mask areas (pycocotools would otherwise take box areas).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

__all__ = ["detections_to_coco_results", "evaluate_coco", "format_per_class_table"]

# Order of COCOeval.stats[0:6].
_STAT_NAMES = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")
IOU_TYPES = ("bbox", "segm")


def _as_numpy(values) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def detections_to_coco_results(
    detections: Sequence[dict], image_ids: Sequence[int], cat_ids: Sequence[int]
) -> list[dict]:
    """Detections to the COCO results format.

    Args:
        detections: one dict per image with ``boxes`` (K, 4) x1, y1, x2, y2 in original-image
            pixels, ``scores`` (K,), ``labels`` (K,) contiguous class indices, and optionally
            ``masks`` (K, H, W) binary masks (encoded as RLE ``segmentation``).
        image_ids: the dataset's image id of each entry of ``detections``.
        cat_ids: ``cat_ids[label]`` is the dataset's category id of a contiguous label.

    Returns:
        One dict per detection: ``image_id``, ``category_id``, ``bbox`` [x, y, w, h] and
        ``score`` as Python numbers (nothing rounded), plus ``segmentation`` with masks.
    """
    results = []
    for det, image_id in zip(detections, image_ids, strict=True):
        boxes = _as_numpy(det["boxes"]).reshape(-1, 4).tolist()
        scores = _as_numpy(det["scores"]).reshape(-1).tolist()
        labels = _as_numpy(det["labels"]).reshape(-1).tolist()
        rles = _encode_masks(det["masks"]) if "masks" in det else None
        for i, ((x1, y1, x2, y2), score, label) in enumerate(zip(boxes, scores, labels)):
            result = {
                "image_id": int(image_id),
                "category_id": int(cat_ids[int(label)]),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": float(score),
            }
            if rles is not None:
                result["segmentation"] = rles[i]
            results.append(result)
    return results


def _encode_masks(masks) -> list[dict]:
    from pycocotools import mask as mask_utils

    array = _as_numpy(masks).astype(np.uint8)
    if array.ndim != 3:
        raise ValueError(f"masks must be (K, H, W), got shape {array.shape}")
    rles = mask_utils.encode(np.asfortranarray(array.transpose(1, 2, 0)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def _load_results(coco_gt: COCO, results: list[dict], iou_type: str) -> COCO:
    """A results COCO object; copies the results (pycocotools edits them in place)."""
    anns = [dict(r) for r in results]
    if iou_type == "segm":
        for ann in anns:
            ann.pop("bbox", None)
    if anns:
        return coco_gt.loadRes(anns)
    empty = COCO()  # loadRes cannot take an empty list
    empty.dataset = {
        "images": list(coco_gt.dataset.get("images", [])),
        "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])),
        "annotations": [],
    }
    empty.createIndex()
    return empty


def _nan_if_undefined(value: float) -> float:
    return float(value) if value > -1 else math.nan


def evaluate_coco(
    coco_gt: COCO,
    results: list[dict],
    image_ids: Sequence[int] | None = None,
    iou_type: str = "bbox",
    verbose: bool = False,
) -> dict:
    """COCO AP of ``results`` against ``coco_gt``.

    Args:
        coco_gt: ground truth.
        results: COCO-format results (see `detections_to_coco_results`).
        image_ids: images to evaluate (default: all of ``coco_gt``); each counts even with
            no detection.
        iou_type: ``"bbox"`` or ``"segm"``; it prefixes the metric keys.
        verbose: let pycocotools print its progress and summary (otherwise silenced).

    Returns:
        ``{f"{iou_type}_mAP", ..._mAP_50, ..._mAP_75, ..._mAP_s, ..._mAP_m, ..._mAP_l}`` as
        fractions (NaN where undefined, see the module docstring) and ``per_class``: a list of
        ``{"name", "category_id", "AP"}`` in category-id order.
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    img_ids = sorted(coco_gt.getImgIds()) if image_ids is None else [int(i) for i in image_ids]
    quiet = contextlib.redirect_stdout(io.StringIO())
    with contextlib.nullcontext() if verbose else quiet:
        coco_dt = _load_results(coco_gt, results, iou_type)
        coco_eval = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        coco_eval.params.imgIds = img_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    metrics: dict = {
        f"{iou_type}_{name}": _nan_if_undefined(coco_eval.stats[i])
        for i, name in enumerate(_STAT_NAMES)
    }
    metrics["per_class"] = _per_class_ap(coco_gt, coco_eval)
    return metrics


def _per_class_ap(coco_gt: COCO, coco_eval: COCOeval) -> list[dict]:
    # precision: (iou thresholds, recall points, categories, area ranges, max dets)
    precision = coco_eval.eval["precision"]
    rows = []
    for k, cat_id in enumerate(coco_eval.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        rows.append(
            {
                "name": coco_gt.loadCats([cat_id])[0]["name"],
                "category_id": int(cat_id),
                "AP": float(p.mean()) if p.size else math.nan,
            }
        )
    return rows


def format_per_class_table(per_class: Sequence[dict]) -> str:
    """Markdown table of per-class AP (in percent, one decimal; ``n/a`` where undefined)."""
    lines = ["| category | id | AP |", "| --- | ---: | ---: |"]
    for row in per_class:
        ap = row["AP"]
        shown = "n/a" if ap is None or math.isnan(ap) else f"{100 * ap:.1f}"
        lines.append(f"| {row['name']} | {row['category_id']} | {shown} |")
    return "\n".join(lines)
