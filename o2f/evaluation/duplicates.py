"""Duplicate rate: how often a detector reports the same object twice (what NMS would remove).

A detection is a duplicate when it overlaps a higher-scored detection of the same class in the
same image at IoU >= ``iou_thr``. Only confident detections (score >= ``score_thr``) are counted,
on both sides: low-score leftovers that the COCO metric barely notices do not count. The rate is
the share of the confident detections that are duplicates; a detector that needs no NMS has a
rate near 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor
from torchvision.ops import box_iou


def count_duplicates(
    boxes: Tensor, scores: Tensor, labels: Tensor, score_thr: float = 0.3, iou_thr: float = 0.7
) -> tuple[int, int]:
    """Duplicates among one image's detections.

    Args:
        boxes: (K, 4) x1, y1, x2, y2; scores: (K,); labels: (K,) class of each detection.

    Returns:
        (number of duplicates, number of detections with score >= score_thr). Among equal scores
        the detection listed first counts as the higher one.
    """
    keep = scores >= score_thr
    boxes, scores, labels = boxes[keep].float(), scores[keep], labels[keep]
    num = int(scores.numel())
    if num < 2:
        return 0, num
    order = torch.argsort(scores, descending=True, stable=True)
    boxes, labels = boxes[order], labels[order]
    overlaps = (box_iou(boxes, boxes) >= iou_thr) & (labels[:, None] == labels[None, :])
    higher = torch.ones(num, num, dtype=torch.bool, device=boxes.device).tril(-1)  # [i, j]: j < i
    return int((overlaps & higher).any(dim=1).sum()), num


def duplicate_rate(
    detections: Iterable[Mapping[str, Tensor]] | Mapping[object, Mapping[str, Tensor]],
    score_thr: float = 0.3,
    iou_thr: float = 0.7,
) -> float:
    """Share of detections with score >= ``score_thr`` that overlap a higher-scored detection of
    the same class in the same image at IoU >= ``iou_thr``.

    Args:
        detections: per image dicts with ``boxes`` (K, 4), ``scores`` (K,), ``labels`` (K,), as
            a sequence or a mapping image id -> dict (as ``run_inference`` returns them).

    Returns:
        the rate in [0, 1]; 0.0 when no detection reaches ``score_thr``.
    """
    images = detections.values() if isinstance(detections, Mapping) else detections
    duplicates = total = 0
    for det in images:
        d, n = count_duplicates(det["boxes"], det["scores"], det["labels"], score_thr, iou_thr)
        duplicates += d
        total += n
    return duplicates / total if total else 0.0
