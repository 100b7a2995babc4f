"""COCO metrics: box (and mask) AP, overall and per class, through ``faster_coco_eval`` (the
default: a maintained drop-in whose matching and accumulation run in C++) or the reference
``pycocotools`` (``evaluator=``; the config key ``test.evaluator``). Both give the same AP
(``tests/evaluation/test_evaluators.py`` holds them to 1e-4, box and mask) and the same
``eval["precision"]`` array that per-class AP and the PR plots read (:func:`run_coco_eval`).

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
      the area ranges use mask areas (pycocotools would otherwise take box areas). Every
      ground-truth annotation of the evaluated images needs a ``segmentation`` (polygons or
      RLE, crowd regions included).
    * Masks travel as compressed COCO RLE (``encode_masks``: ``{"size": [H, W], "counts":
      str}``), a few hundred bytes per detection instead of H * W.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO

__all__ = ["EVALUATORS", "annotations_without_masks", "detections_to_coco_results",
           "encode_masks", "evaluate_boxes_and_masks", "evaluate_coco", "format_per_class_table",
           "ground_truth", "run_coco_eval"]

#: COCO evaluation back ends (``test.evaluator``); the first is the default
EVALUATORS = ("faster_coco_eval", "pycocotools")

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
            the instance masks at the original image size: ``rles`` (K compressed RLEs, see
            `encode_masks`) or ``masks`` (K, H, W) binary (encoded here).
        image_ids: the dataset's image id of each entry of ``detections``.
        cat_ids: ``cat_ids[label]`` is the dataset's category id of a contiguous label.

    Returns:
        One dict per detection: ``image_id``, ``category_id``, ``bbox`` [x, y, w, h] and
        ``score`` as Python numbers (nothing rounded), plus the RLE ``segmentation`` (counts a
        str, JSON-ready) with masks.
    """
    results = []
    for det, image_id in zip(detections, image_ids, strict=True):
        boxes = _as_numpy(det["boxes"]).reshape(-1, 4).tolist()
        scores = _as_numpy(det["scores"]).reshape(-1).tolist()
        labels = _as_numpy(det["labels"]).reshape(-1).tolist()
        rles = det.get("rles")
        if rles is None and "masks" in det:
            rles = encode_masks(det["masks"])
        if rles is not None and len(rles) != len(boxes):
            raise ValueError(f"image {image_id}: {len(rles)} masks for {len(boxes)} boxes")
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


def encode_masks(masks) -> list[dict]:
    """Binary masks (K, H, W) (a tensor on any device, or an array; nonzero = inside) as K
    compressed COCO RLEs ``{"size": [H, W], "counts": str}``."""
    from pycocotools import mask as mask_utils

    if masks.ndim != 3:
        raise ValueError(f"masks must be (K, H, W), got shape {tuple(masks.shape)}")
    if hasattr(masks, "detach"):  # transposed on the device, so one copy makes (K, W, H)
        binary = masks.detach()
        binary = binary if binary.dtype == torch.bool else binary != 0
        kwh = binary.view(torch.uint8).transpose(1, 2).contiguous().cpu().numpy()
    else:
        binary = np.asarray(masks)
        binary = binary if binary.dtype == bool else binary != 0
        kwh = np.ascontiguousarray(binary.view(np.uint8).transpose(0, 2, 1))
    rles = mask_utils.encode(kwh.transpose(2, 1, 0))  # (H, W, K) Fortran-ordered view
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def _backend(evaluator: str) -> tuple[type, type]:
    """The ``(COCO, COCOeval)`` classes of an evaluator of :data:`EVALUATORS`."""
    if evaluator == "faster_coco_eval":
        from faster_coco_eval import COCO as FasterCOCO
        from faster_coco_eval import COCOeval_faster

        return FasterCOCO, COCOeval_faster
    if evaluator == "pycocotools":
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval
    raise ValueError(f"evaluator must be one of {EVALUATORS}, got {evaluator!r}")


def _quiet(*args: Any, **kwargs: Any) -> None:
    """faster_coco_eval's print function when not verbose."""


def ground_truth(gt: Any, evaluator: str = "faster_coco_eval") -> Any:
    """The ground truth as the COCO object of ``evaluator``.

    Args:
        gt: a COCO-format dict (``images``, ``annotations``, ``categories``), or a COCO object
            of either evaluator (its ``dataset`` is re-indexed when it is the other one's).
        evaluator: one of :data:`EVALUATORS`.

    Returns:
        ``gt`` itself when it already is that evaluator's COCO object, else a new one indexing
        the same dict (not copied).
    """
    coco_cls, _ = _backend(evaluator)
    if isinstance(gt, coco_cls):
        return gt
    data = gt if isinstance(gt, dict) else gt.dataset
    if evaluator == "faster_coco_eval":
        return coco_cls(data, print_function=_quiet)
    coco = coco_cls()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _load_results(coco_gt: Any, results: list[dict], iou_type: str, coco_cls: type) -> Any:
    """A results COCO object; copies the results (both evaluators edit them in place)."""
    anns = [dict(r) for r in results]
    if iou_type == "segm":
        for ann in anns:
            ann.pop("bbox", None)
    if anns:
        return coco_gt.loadRes(anns)
    empty = coco_cls()  # pycocotools' loadRes cannot take an empty list
    empty.dataset = {
        "images": list(coco_gt.dataset.get("images", [])),
        "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])),
        "annotations": [],
    }
    empty.createIndex()
    return empty


def _nan_if_undefined(value: float) -> float:
    return float(value) if value > -1 else math.nan


def run_coco_eval(
    coco_gt: Any,
    results: list[dict],
    image_ids: Sequence[int] | None = None,
    iou_type: str = "bbox",
    evaluator: str = "faster_coco_eval",
    verbose: bool = False,
) -> Any:
    """A COCOeval of ``evaluator`` run on ``results`` (evaluate, accumulate, summarize).

    Args: as :func:`evaluate_coco` (``coco_gt``: a dict or a COCO object of either evaluator).

    Returns:
        the evaluator's COCOeval object: ``stats`` (12,) (-1 where undefined),
        ``eval["precision"]`` float (T=10 IoU thresholds, R=101 recall points, K categories,
        A=4 area ranges, M=3 max dets) with -1 where undefined, ``eval["recall"]`` (T, K, A, M),
        ``params`` (``catIds``, ``iouThrs``, ``recThrs``, ...), the same layout for both.
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    coco_cls, eval_cls = _backend(evaluator)
    gt = ground_truth(coco_gt, evaluator)
    img_ids = sorted(gt.getImgIds()) if image_ids is None else [int(i) for i in image_ids]
    if iou_type == "segm":
        missing = annotations_without_masks(gt, img_ids)
        if missing:
            shown = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
            raise ValueError(f"mask AP needs ground-truth masks, but {len(missing)} annotation(s) "
                             f"have no 'segmentation': id(s) {shown}")
    quiet = contextlib.redirect_stdout(io.StringIO())
    with contextlib.nullcontext() if verbose else quiet:
        coco_dt = _load_results(gt, results, iou_type, coco_cls)
        if evaluator == "faster_coco_eval":
            coco_eval = eval_cls(gt, coco_dt, iouType=iou_type,
                                 print_function=print if verbose else _quiet)
        else:
            coco_eval = eval_cls(gt, coco_dt, iouType=iou_type)
        coco_eval.params.imgIds = img_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


def evaluate_coco(
    coco_gt: Any,
    results: list[dict],
    image_ids: Sequence[int] | None = None,
    iou_type: str = "bbox",
    verbose: bool = False,
    evaluator: str = "faster_coco_eval",
    details: dict | None = None,
) -> dict:
    """COCO AP of ``results`` against ``coco_gt``.

    Args:
        coco_gt: ground truth: a COCO-format dict or a COCO object of either evaluator.
        results: COCO-format results (see `detections_to_coco_results`).
        image_ids: images to evaluate (default: all of ``coco_gt``); each counts even with
            no detection.
        iou_type: ``"bbox"`` or ``"segm"``; it prefixes the metric keys.
        verbose: let the evaluator print its progress and summary (otherwise silenced).
        evaluator: ``"faster_coco_eval"`` or ``"pycocotools"`` (:data:`EVALUATORS`).
        details: when a dict, it receives the evaluator's accumulated ``precision`` array
            (T, R, K, A, M) (see :func:`run_coco_eval`), ``iou_thrs`` (T,), ``rec_thrs`` (R,)
            and ``cat_ids`` (K,) (what :mod:`o2f.evaluation.plots` draws).

    Returns:
        ``{f"{iou_type}_mAP", ..._mAP_50, ..._mAP_75, ..._mAP_s, ..._mAP_m, ..._mAP_l}`` as
        fractions (NaN where undefined, see the module docstring) and ``per_class``: a list of
        ``{"name", "category_id", "AP"}`` in category-id order.

    Raises:
        ValueError: an unknown ``iou_type`` or ``evaluator``; for ``"segm"``, ground-truth
            annotations without a ``segmentation`` (their ids are named).
    """
    coco_eval = run_coco_eval(coco_gt, results, image_ids, iou_type, evaluator, verbose)
    metrics: dict = {
        f"{iou_type}_{name}": _nan_if_undefined(coco_eval.stats[i])
        for i, name in enumerate(_STAT_NAMES)
    }
    metrics["per_class"] = _per_class_ap(coco_eval.cocoGt, coco_eval)
    if details is not None:
        details.update(precision=np.asarray(coco_eval.eval["precision"]),
                       iou_thrs=np.asarray(coco_eval.params.iouThrs),
                       rec_thrs=np.asarray(coco_eval.params.recThrs),
                       cat_ids=[int(c) for c in coco_eval.params.catIds])
    return metrics


def annotations_without_masks(coco_gt: Any, image_ids: Sequence[int] | None = None) -> list[int]:
    """Ids of the annotations (of ``image_ids``, default all) with no or an empty
    ``segmentation``, which mask AP cannot use (``coco_gt``: a COCO object of either
    evaluator)."""
    ann_ids = coco_gt.getAnnIds() if image_ids is None else coco_gt.getAnnIds(imgIds=image_ids)
    return [a["id"] for a in coco_gt.loadAnns(ann_ids) if not a.get("segmentation")]


def _per_class_ap(coco_gt: Any, coco_eval: Any) -> list[dict]:
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


def evaluate_boxes_and_masks(
    coco_gt: Any, results: list[dict], image_ids: Sequence[int] | None = None,
    masks: bool = False, evaluator: str = "faster_coco_eval", details: dict | None = None,
) -> dict:
    """Box AP and, with ``masks``, mask AP of the same ``results`` (which then carry RLE
    ``segmentation``): the ``bbox_*`` and ``segm_*`` keys of `evaluate_coco` in one dict, and
    ``per_class`` rows ``{"name", "category_id", "AP"}`` (box AP) plus ``"segm_AP"``.
    ``coco_gt``: a COCO-format dict or a COCO object of either ``evaluator`` (indexed once).
    ``details`` receives the box evaluation's precision array (see `evaluate_coco`)."""
    coco_gt = ground_truth(coco_gt, evaluator)
    metrics = evaluate_coco(coco_gt, results, image_ids, evaluator=evaluator, details=details)
    if masks:
        segm = evaluate_coco(coco_gt, results, image_ids, iou_type="segm", evaluator=evaluator)
        for row, segm_row in zip(metrics["per_class"], segm.pop("per_class"), strict=True):
            row["segm_AP"] = segm_row["AP"]
        metrics.update(segm)
    return metrics


def format_per_class_table(per_class: Sequence[dict]) -> str:
    """Markdown table of per-class AP (in percent, one decimal; ``n/a`` where undefined); a
    ``mask AP`` column is added when the rows carry ``segm_AP``."""

    def shown(ap: float | None) -> str:
        return "n/a" if ap is None or math.isnan(ap) else f"{100 * ap:.1f}"

    if per_class and "segm_AP" in per_class[0]:
        lines = ["| category | id | box AP | mask AP |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {r['name']} | {r['category_id']} | {shown(r['AP'])} | "
                  f"{shown(r['segm_AP'])} |" for r in per_class]
        return "\n".join(lines)
    lines = ["| category | id | AP |", "| --- | ---: | ---: |"]
    lines += [f"| {r['name']} | {r['category_id']} | {shown(r['AP'])} |" for r in per_class]
    return "\n".join(lines)
