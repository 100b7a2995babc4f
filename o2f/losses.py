"""Losses of SPEC §3, each returning the normalised loss before its loss weight.

Both work in float32 whatever the autocast state, since BCE on probabilities is not safe in
half precision.
"""

from __future__ import annotations

import torch
from torch import Tensor

from o2f.boxes import pair_giou

_LOG_FLOOR = -100.0  # torch.nn.functional.binary_cross_entropy clamps its logs here


def _bce(p: Tensor, target: Tensor) -> Tensor:
    log_p = torch.log(p).clamp(min=_LOG_FLOOR)
    log_1mp = torch.log(1 - p).clamp(min=_LOG_FLOOR)
    return -(target * log_p + (1 - target) * log_1mp)


def soft_focal_loss(
    scores: Tensor, labels: Tensor, soft_labels: Tensor, soft_weights: Tensor, avg_factor: float,
    *, gamma: float = 2.0, neg_weight: float = 0.75,
) -> Tensor:
    """O2F classification loss on joint probabilities.

    Every entry costs ``BCE(p, 0) * p**gamma * neg_weight``; the entry (n, labels[n]) of each
    assigned point is replaced by ``BCE(p, soft_labels[n]) * soft_weights[n]``.

    Args:
        scores: (N, C) joint probabilities p = sigmoid(cls) * sigmoid(ctr).
        labels: (N,) int64 class of each point, C for background.
        soft_labels, soft_weights: (N,) as the assigner returns them.
        avg_factor: the normaliser (number of assigned points, at least 1).

    Returns:
        scalar loss.
    """
    p = scores.float()
    loss = _bce(p, torch.zeros_like(p)) * p.pow(gamma) * neg_weight
    num_classes = p.shape[1]
    # The entry (n, labels[n]) of every point (any class for background, where it keeps its
    # value): a gather and a scatter of one column per point, no data-dependent sizes.
    col = labels.clamp(max=num_classes - 1)[:, None]  # (N, 1)
    pos = _bce(p.gather(1, col), soft_labels[:, None].float()) * soft_weights[:, None].float()
    assigned = (labels < num_classes)[:, None]
    loss = loss.scatter(1, col, torch.where(assigned, pos, loss.gather(1, col)))
    return loss.sum() / avg_factor


def giou_loss(
    pred_boxes: Tensor, target_boxes: Tensor, weights: Tensor, avg_factor: float
) -> Tensor:
    """Weighted GIoU loss ``sum(weights * (1 - GIoU)) / avg_factor``.

    Args:
        pred_boxes, target_boxes: (M, 4) x1, y1, x2, y2.
        weights: (M,) per-box weights (centerness targets).
        avg_factor: the normaliser (sum of the weights over ranks, at least 1e-6).

    A box of weight 0 adds nothing, so a caller may pass every point with the weights of the
    unassigned ones at 0 instead of selecting the assigned ones (no data-dependent size).
    """
    giou = pair_giou(pred_boxes.float(), target_boxes.float())
    return ((1 - giou) * weights.float()).sum() / avg_factor


def dice_loss(pred: Tensor, target: Tensor, eps: float = 1e-5) -> Tensor:
    """CondInst's dice loss of each mask: ``1 - 2 sum(p g) / (sum(p^2) + sum(g^2) + eps)``.

    The squared denominator and ``eps`` = 1e-5 (added to the denominator only) are those of
    AdelaiDet's ``dice_coefficient``, which the o2f authors' CondInst head uses unchanged.

    Args:
        pred: (M, ...) mask probabilities in [0, 1].
        target: (M, ...) binary (or soft) targets, same shape.

    Returns:
        (M,) per-mask losses in [0, 1] (float32), not reduced.
    """
    p, g = pred.float().flatten(1), target.float().flatten(1)
    inter = (p * g).sum(1)
    denom = (p * p).sum(1) + (g * g).sum(1) + eps
    return 1 - 2 * inter / denom
