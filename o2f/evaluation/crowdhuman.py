"""CrowdHuman evaluation on full-body boxes: AP, mMR, Recall and JI (SPEC section 7).

`evaluate_odgt(gt, dt)` reproduces the numbers of the evaluation code of Megvii's CrowdDet
(``lib/evaluate/APMRToolkits/{database,image}.py`` for AP/mMR, ``lib/evaluate/compute_JI.py``
with ``lib/evaluate/JIToolkits/JI_tools.py`` for JI, clipping from ``lib/utils/misc_utils.py``),
vectorised with numpy. Every convention below was read off that code.

Boxes and ground truth
    * Boxes are ``[x, y, w, h]`` (gt ``fbox``, detection ``box``); ``x2 = x + w``, ``y2 = y + h``.
    * A gt box whose ``tag`` is not ``'person'`` or whose ``extra.ignore`` is non-zero (a missing
      ``extra`` or ``extra.ignore`` means 0) is an ignore region. Reference quirk, mirrored: the
      reference maps tags through ``['background', 'person']``, so a box tagged
      ``'background'`` gets class 0, which the matcher treats like an ignore region but which
      still counts in the number of gt (and is matchable in JI). Real CrowdHuman files only
      use ``'person'`` and ``'mask'``, where this makes no difference.
    * The number of gt is the count of all boxes that are not ignore regions, over all images.
    * Detections' optional ``tag`` is not used (every detection is a person).
    * Detections and gt are clipped to the image: ``x1 -> min(max(x1, 0), w - 1)``,
      ``y1 -> min(max(y1, 0), h - 1)``, ``x2 -> max(min(x2, w), 0)``, ``y2 -> max(min(y2, h), 0)``.
      (A box lying wholly right of the image thus becomes a 1-pixel-wide strip at ``x = w - 1``.)
    * Image size: ``height``/``width`` of the gt record, else of the detection record;
      if neither has them a ``ValueError`` names the image ID.
    * Images are the distinct gt IDs, in gt-file order. A duplicate ID's later record replaces
      the earlier one but keeps its position (the reference's dict does the same).

Overlaps (no "+1" pixel anywhere, ``eps = 1e-6``)
    * ``IoU = inter / (area_d + area_g - inter + eps)`` with areas ``(x2-x1)*(y2-y1)`` (not clamped)
      and ``inter = max(0, iw) * max(0, ih)``.
    * AP/mMR ignore test: ``IoA = inter / (area_d + eps)`` with the unclamped detection area.
    * JI ignore test: ``IoA = inter / (max(w, 0) * max(h, 0) + eps)`` (area clamped at 0).
    * All thresholds are strict: IoU ``> 0.5``, IoA ``> 0.5``.

AP, Recall, mMR (Caltech matching)
    * Per image, detections sorted by descending score; ties keep file order (stable sort).
    * A detection matches the unmatched non-ignore gt of highest IoU ``> 0.5``; on equal IoU the
      gt that comes first in the file wins. Otherwise, if its IoA with *any* ignore region is
      ``> 0.5`` it is ignored (dropped from every count; ignore regions absorb any number of
      detections); otherwise it is a false positive.
    * All counted detections of all images are then sorted by descending score with a stable
      sort; ties keep the order of images in the gt file, then the per-image order.
    * After each counted detection: ``recall = tp / n_gt``, ``precision = tp / (tp + fp)``,
      ``fppi = fp / n_images`` where ``n_images`` is the number of distinct gt image IDs
      (images without any detection count).
    * AP: trapezoid rule over consecutive (recall, precision) points starting at the first
      detection's point (no point added at recall 0, nothing extrapolated after the last).
    * Recall: the recall after the last counted detection (the last point of the reference's
      recall curve from ``eval_AP``).
    * mMR: for each reference FPPI ``[0.0100, 0.0178, 0.03160, 0.0562, 0.1000, 0.1778,
      0.3162, 0.5623, 1.000]`` (the reference's rounded 10^-2..10^0 values, used verbatim) take
      the miss rate ``1 - recall`` at the first detection with ``fppi >= point``, else at the last
      detection; ``mMR = exp(mean(log(miss rates)))`` (a zero miss rate makes it 0).

JI (Jaccard index)
    * For each score threshold ``0.1 * i``, ``i = 0..9`` (0.0 to 0.9; 1.0 is not tried), keep the
      detections with score ``> threshold``.
    * Per image, a maximum-*weight* bipartite matching between the kept detections and the
      non-ignore gt on the pairs with IoU ``> 0.5``, weighted by IoU: ``k`` matches.
    * Unmatched kept detections whose largest IoA with an ignore region is ``> 0.5`` are
      dropped, as are unmatched non-ignore gt whose largest IoA (gt area) with an ignore
      region is ``> 0.5``: ``n`` = kept detections left, ``m`` = non-ignore gt left.
    * ``ratio = k / (m + n - k + 1e-6)``; the per-threshold score is the sum of ratios divided by
      the number of images with ``m != 0 or n != 0``; JI is the best over the thresholds.
    * The reference reads one merged record per image (gt and detections together); here the
      two files are joined by ID, over the gt images, with the same clipping as above.

Where the reference would crash (it needs every gt image to have a box and a detection
record, and every detection record a gt record), this module goes on instead:
    * A detection record whose ID is not in the gt is skipped (with a warning), so it counts
      nowhere; a gt image without a detection record has no detections (it still counts in
      FPPI and in JI); a gt image with no boxes at all is fine.

Undefined results are NaN, as in the reference: with no counted detection at all there is no
miss-rate point, so mMR is NaN (AP is 0 and Recall 0); with no non-ignore gt, recall is NaN,
and so are Recall, mMR and AP (AP is 0 when one detection is counted, or none); a JI threshold
at which no image has ``m != 0 or n != 0`` scores NaN, and ``max`` over the thresholds is
Python's, in threshold order (a NaN at 0.0 wins, later NaNs lose), like the reference's.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from o2f.data.crowdhuman import read_odgt, write_odgt
from o2f.evaluation.matching import RowSubsetMatcher

__all__ = [
    "IOU_THRESHOLD",
    "JI_SCORE_THRESHOLDS",
    "MR_FPPI_POINTS",
    "evaluate_odgt",
    "read_odgt",
    "write_odgt",
]

IOU_THRESHOLD = 0.5
EPS = 1e-6
# Reference FPPI points of the log-average miss rate, exactly as the reference writes them.
MR_FPPI_POINTS = (0.0100, 0.0178, 0.03160, 0.0562, 0.1000, 0.1778, 0.3162, 0.5623, 1.000)
# Score thresholds of the Jaccard index, computed as the reference does (1e-1 * i).
JI_SCORE_THRESHOLDS = tuple(1e-1 * i for i in range(10))

PERSON, BACKGROUND, IGNORE = 1, 0, -1

Records = str | os.PathLike | Sequence[dict]


@dataclass
class _Image:
    """One image, boxes already clipped (x1, y1, x2, y2)."""

    gt: np.ndarray  # (G, 4) float64
    gt_tag: np.ndarray  # (G,) int: PERSON, BACKGROUND (reference quirk) or IGNORE
    dt: np.ndarray  # (D, 4) float64
    score: np.ndarray  # (D,) float64


def evaluate_odgt(gt_path: Records, dt_path: Records) -> dict[str, float]:
    """CrowdHuman AP, mMR, Recall and JI (all fractions) of detections against ground truth.

    Args:
        gt_path: ``.odgt`` ground truth (or its records): ``ID``, ``gtboxes`` with ``tag``,
            ``fbox`` and optional ``extra.ignore``; optional ``height``/``width``.
        dt_path: ``.odgt`` detections (or their records): ``ID``, ``dtboxes`` with ``box``
            ``[x, y, w, h]`` and ``score``; optional ``height``/``width``.

    Returns:
        ``{"AP", "mMR", "Recall", "JI"}`` as python floats. The conventions are in the
        module docstring.
    """
    images = _load_images(_as_records(gt_path), _as_records(dt_path))
    ap, mmr, recall = _ap_mmr_recall(images)
    return {"AP": ap, "mMR": mmr, "Recall": recall, "JI": _jaccard_index(images)}


# --------------------------------------------------------------------------- loading


def _as_records(source: Records) -> list[dict]:
    if isinstance(source, str | os.PathLike):
        return read_odgt(source)
    return list(source)


def _image_size(image_id: str, *records: dict | None) -> tuple[float, float]:
    height = width = None
    for record in records:
        if record is None:
            continue
        if height is None:
            height = record.get("height")
        if width is None:
            width = record.get("width")
    if height is None or width is None:
        raise ValueError(
            f"image {image_id!r}: no 'height'/'width' in its gt or detection record; "
            "the image size is needed to clip boxes"
        )
    return height, width


def _xywh_to_xyxy(boxes: list) -> np.ndarray:
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    out[:, 2:4] += out[:, :2]
    return out


def _clip(boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    out = boxes.copy()
    out[:, 0] = np.minimum(np.maximum(out[:, 0], 0), width - 1)
    out[:, 1] = np.minimum(np.maximum(out[:, 1], 0), height - 1)
    out[:, 2] = np.maximum(np.minimum(out[:, 2], width), 0)
    out[:, 3] = np.maximum(np.minimum(out[:, 3], height), 0)
    return out


def _gt_tag(box: dict) -> int:
    tag = box.get("tag")
    value = PERSON if tag == "person" else BACKGROUND if tag == "background" else IGNORE
    extra = box.get("extra")
    if isinstance(extra, dict) and extra.get("ignore", 0) != 0:
        value = IGNORE
    return value


def _load_images(gt_records: Iterable[dict], dt_records: Iterable[dict]) -> list[_Image]:
    gts = {record["ID"]: record for record in gt_records}
    dts = {record["ID"]: record for record in dt_records}
    unknown = [image_id for image_id in dts if image_id not in gts]
    if unknown:
        warnings.warn(
            f"{len(unknown)} detection record(s) have no gt record and are skipped, "
            f"e.g. {unknown[0]!r}",
            stacklevel=3,
        )
    images = []
    for image_id, gt_record in gts.items():
        dt_record = dts.get(image_id)
        height, width = _image_size(image_id, gt_record, dt_record)
        gt_boxes = gt_record.get("gtboxes") or []
        dt_boxes = (dt_record or {}).get("dtboxes") or []
        images.append(
            _Image(
                gt=_clip(_xywh_to_xyxy([b["fbox"] for b in gt_boxes]), height, width),
                gt_tag=np.asarray([_gt_tag(b) for b in gt_boxes], dtype=np.int64),
                dt=_clip(_xywh_to_xyxy([b["box"] for b in dt_boxes]), height, width),
                score=np.asarray([b["score"] for b in dt_boxes], dtype=np.float64),
            )
        )
    return images


# --------------------------------------------------------------------------- overlaps


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.maximum(0, iw) * np.maximum(0, ih)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU with unclamped areas and eps in the denominator, as the reference."""
    inter = _intersection(a, b)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter + EPS)


def _ioa(a: np.ndarray, b: np.ndarray, clamp_area: bool) -> np.ndarray:
    """(N, M) intersection over the area of a's boxes (clamped at 0 width/height or not)."""
    inter = _intersection(a, b)
    w, h = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    if clamp_area:
        w, h = np.maximum(w, 0), np.maximum(h, 0)
    return inter / (w * h + EPS)[:, None]


def _any_ioa_above(a: np.ndarray, regions: np.ndarray, clamp_area: bool) -> np.ndarray:
    if len(a) == 0 or len(regions) == 0:
        return np.zeros(len(a), dtype=bool)
    return (_ioa(a, regions, clamp_area) > IOU_THRESHOLD).any(axis=1)


# --------------------------------------------------------------------------- AP / mMR


def _caltech_match(image: _Image) -> tuple[np.ndarray, np.ndarray]:
    """Scores (descending) and true-positive flags of an image's counted detections."""
    if len(image.score) == 0:
        return np.zeros(0), np.zeros(0, dtype=bool)
    order = np.argsort(-image.score, kind="stable")
    dt, score = image.dt[order], image.score[order]
    positive = image.gt_tag > 0
    # 0 = false positive, 1 = true positive, -1 = ignored (inside an ignore region)
    label = np.where(_any_ioa_above(dt, image.gt[~positive], clamp_area=False), -1, 0)
    if positive.any():
        iou = _iou(dt, image.gt[positive])
        rows, cols = np.nonzero(iou > IOU_THRESHOLD)
        _greedy_assign(rows.tolist(), cols.tolist(), iou[rows, cols].tolist(), label)
    counted = label >= 0
    return score[counted], label[counted] == 1


def _greedy_assign(rows: list[int], cols: list[int], vals: list[float], label: np.ndarray):
    """Walk detections in order; each takes its best still-unmatched candidate gt."""
    matched: set[int] = set()
    k, n = 0, len(rows)
    while k < n:
        row, best, best_iou = rows[k], -1, IOU_THRESHOLD
        while k < n and rows[k] == row:
            if cols[k] not in matched and vals[k] > best_iou:
                best, best_iou = cols[k], vals[k]
            k += 1
        if best >= 0:
            matched.add(best)
            label[row] = 1


def _ap_mmr_recall(images: list[_Image]) -> tuple[float, float, float]:
    num_gt = int(sum((image.gt_tag != IGNORE).sum() for image in images))
    matched = [_caltech_match(image) for image in images]
    scores = np.concatenate([s for s, _ in matched]) if matched else np.zeros(0)
    is_tp = np.concatenate([t for _, t in matched]) if matched else np.zeros(0, dtype=bool)
    if len(scores) == 0:  # no miss-rate point to average: mMR undefined, as in the reference
        return 0.0, float("nan"), 0.0 if num_gt else float("nan")
    is_tp = is_tp[np.argsort(-scores, kind="stable")]
    tp = np.cumsum(is_tp, dtype=np.float64)
    fp = np.cumsum(~is_tp, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = tp / num_gt  # all NaN when there is no gt, as in the reference
    precision = tp / (tp + fp)
    fppi = fp / len(images)

    areas = (recall[1:] - recall[:-1]) * ((precision[:-1] + precision[1:]) / 2)
    ap = float(np.cumsum(areas)[-1]) if len(areas) else 0.0  # sequential sum, as the reference

    reached = fppi[None, :] >= np.asarray(MR_FPPI_POINTS)[:, None]
    index = np.where(reached.any(axis=1), reached.argmax(axis=1), len(fppi) - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mmr = float(np.exp(np.log(1.0 - recall[index]).mean()))
    return ap, mmr, float(recall[-1])


# --------------------------------------------------------------------------- JI


def _image_ji(image: _Image, thresholds: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-threshold Jaccard ratio of one image and whether the image counts (m or n != 0)."""
    keep_gt = image.gt_tag != IGNORE
    gt, regions = image.gt[keep_gt], image.gt[~keep_gt]
    dt_in_region = _any_ioa_above(image.dt, regions, clamp_area=True)
    gt_in_region = _any_ioa_above(gt, regions, clamp_area=True)
    if len(image.dt) and len(gt):
        iou = _iou(image.dt, gt)
        weights = np.where(iou > IOU_THRESHOLD, iou, 0.0)
    else:
        weights = np.zeros((len(image.dt), len(gt)))
    matcher = RowSubsetMatcher(weights)

    ratios = np.zeros(len(thresholds))
    counts = np.zeros(len(thresholds), dtype=bool)
    for t, threshold in enumerate(thresholds):  # increasing: the kept sets are nested
        keep = image.score > threshold
        dt_matched, gt_matched = matcher(keep)
        k = int(dt_matched.sum())
        n = int(keep.sum()) - int((keep & ~dt_matched & dt_in_region).sum())
        m = len(gt) - int((~gt_matched & gt_in_region).sum())
        ratios[t] = k / (m + n - k + EPS)
        counts[t] = m != 0 or n != 0
    return ratios, counts


def _jaccard_index(images: list[_Image]) -> float:
    thresholds = JI_SCORE_THRESHOLDS
    if not images:
        return float("nan")
    per_image = [_image_ji(image, thresholds) for image in images]
    ratios = np.stack([r for r, _ in per_image])
    counts = np.stack([c for _, c in per_image]).sum(axis=0)
    means = [
        float(ratios[:, t].sum() / counts[t]) if counts[t] else float("nan")
        for t in range(len(thresholds))
    ]
    return max(means)  # Python's max, in threshold order, as the reference (NaN semantics)
