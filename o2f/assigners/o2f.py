"""One-to-few label assignment (SPEC §2), computed on (point, gt) pairs.

Only a point within ``center_radius`` strides of a gt centre can be a candidate for that gt, so
instead of dense (N, G) matrices the assigner enumerates, per level, the small window of grid
cells around each gt centre, keeps the pairs that pass the exact candidate test, and does every
later step (top-k per gt, conflicts between gts, positive / soft-anchor split) with sorts and
scatters over those pairs. The cost is O(G) pairs instead of O(N x G); the result is the same as
the dense definition because every pair outside the windows has quality 0 there.
"""

from __future__ import annotations

import torch
from torch import Tensor

from o2f.assigners.pairs import (
    LevelGrid,
    dense_pairs,
    first_of_runs,
    level_grids,
    rank_in_runs,
    sort_by,
    window_pairs,
)
from o2f.boxes import pair_iou


def soft_label_ceiling(epoch: int, max_epoch: int, start: float = 0.6, end: float = 0.2) -> float:
    """Soft-label ceiling t of the 0-based ``epoch``: ``start`` at the first epoch, ``end`` at the
    last, linear in between (SPEC §2)."""
    if max_epoch <= 1:
        return start
    return start + (end - start) * epoch / (max_epoch - 1)


@torch.no_grad()
def o2f_assign(
    points: Tensor, strides: Tensor, cls_logits: Tensor, ctr_logits: Tensor,
    pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, *, topk: int = 7,
    alpha: float = 0.8, center_radius: float = 1.5, soft_t: float = 0.6,
    soft_weight: float = 0.4, grids: list[LevelGrid] | None = None,
    gt_centers: Tensor | None = None, return_gt_index: bool = False,
) -> tuple[Tensor, ...]:
    """One-to-few assignment of one image (SPEC §2).

    Args:
        points: (N, 2) x, y of every point; levels in order, each row-major.
        strides: (N,) stride of each point's level.
        cls_logits: (N, C) raw class logits.
        ctr_logits: (N,) raw centerness logits.
        pred_boxes: (N, 4) decoded predicted boxes x1, y1, x2, y2.
        gt_boxes: (G, 4) x1, y1, x2, y2 (G may be 0).
        gt_labels: (G,) int64 in [0, C).
        grids: the level layout of ``points`` when the caller already knows it
            (see :func:`level_grids`); derived from points and strides otherwise.
        gt_centers: (G, 2) x, y centres of the candidate regions (step 4) instead of the box
            centres (CondInst centres them on each instance mask's centre of mass).
        return_gt_index: also return the matched gt of each point.

    Returns:
        labels (N,) int64, class of the assigned gt, C for background;
        box_targets (N, 4), the assigned gt box (zeros for background);
        soft_labels (N,), 1 for each gt's positive, in (0, soft_t] for soft anchors, else 0;
        soft_weights (N,), 1 for positives, soft_weight for soft anchors, else 0;
        with ``return_gt_index``, gt_index (N,) int64, the assigned gt's row, -1 for background.
    """
    num_points, num_classes = cls_logits.shape
    device = cls_logits.device
    labels = torch.full((num_points,), num_classes, dtype=torch.long, device=device)
    box_targets = torch.zeros((num_points, 4), dtype=pred_boxes.dtype, device=device)
    soft_labels = torch.zeros(num_points, dtype=cls_logits.dtype, device=device)
    soft_weights = torch.zeros_like(soft_labels)
    gt_index = torch.full((num_points,), -1, dtype=torch.long, device=device)
    outputs = (labels, box_targets, soft_labels, soft_weights) + (
        (gt_index,) if return_gt_index else ())
    if gt_boxes.shape[0] == 0 or num_points == 0:
        return outputs

    if grids is None:
        grids = level_grids(points, strides)
    if grids is None:
        point_idx, gt_idx = dense_pairs(num_points, gt_boxes.shape[0], device)
    else:
        point_idx, gt_idx = window_pairs(grids, gt_boxes, center_radius, gt_centers)

    # Step 4: exact candidate test of each pair (centre square intersected with the gt box).
    px, py = points[point_idx, 0], points[point_idx, 1]
    radius = strides[point_idx] * center_radius
    gt = gt_boxes[gt_idx]
    if gt_centers is None:
        cx, cy = (gt[:, 0] + gt[:, 2]) / 2, (gt[:, 1] + gt[:, 3]) / 2
    else:
        cx, cy = gt_centers[gt_idx, 0], gt_centers[gt_idx, 1]
    inside = (
        (px - torch.maximum(cx - radius, gt[:, 0]) > 0)
        & (py - torch.maximum(cy - radius, gt[:, 1]) > 0)
        & (torch.minimum(cx + radius, gt[:, 2]) - px > 0)
        & (torch.minimum(cy + radius, gt[:, 3]) - py > 0)
    )
    point_idx, gt_idx, gt = point_idx[inside], gt_idx[inside], gt[inside]

    # Steps 1-3 on the surviving pairs only.
    prob = torch.sigmoid(cls_logits[point_idx, gt_labels[gt_idx]]) * torch.sigmoid(
        ctr_logits[point_idx]
    )
    iou = pair_iou(pred_boxes[point_idx], gt)
    quality = prob.pow(1 - alpha) * iou.pow(alpha)
    # A pick with quality 0 never wins a point (step 6 needs > 0), so only positive pairs matter.
    keep = quality > 0
    point_idx, gt_idx, prob, quality = point_idx[keep], gt_idx[keep], prob[keep], quality[keep]

    # Step 5: the top-k pairs of each gt by quality (ties: lower point index first).
    order = sort_by([gt_idx, -quality, point_idx])
    point_idx, gt_idx, prob, quality = (t[order] for t in (point_idx, gt_idx, prob, quality))
    picked = rank_in_runs(gt_idx) < topk
    point_idx, gt_idx, prob, quality = (t[picked] for t in (point_idx, gt_idx, prob, quality))

    # Step 6: a point picked by several gts goes to the largest quality (ties: lowest gt index).
    order = sort_by([point_idx, -quality, gt_idx])
    winner = order[first_of_runs(point_idx[order])]
    point_idx, gt_idx, prob, quality = (t[winner] for t in (point_idx, gt_idx, prob, quality))

    # Step 7: per gt, the best assigned point is the positive, the others are soft anchors.
    order = sort_by([gt_idx, -quality, point_idx])
    point_idx, gt_idx, prob = point_idx[order], gt_idx[order], prob[order]
    is_positive = first_of_runs(gt_idx)
    soft_max = torch.zeros(gt_boxes.shape[0], dtype=prob.dtype, device=device)
    soft_max.scatter_reduce_(0, gt_idx[~is_positive], prob[~is_positive], reduce="amax")
    soft = soft_t * prob / soft_max[gt_idx].clamp(min=torch.finfo(prob.dtype).tiny)

    labels[point_idx] = gt_labels[gt_idx]
    box_targets[point_idx] = gt_boxes[gt_idx].to(box_targets.dtype)
    soft_labels[point_idx] = torch.where(is_positive, torch.ones_like(soft), soft)
    soft_weights[point_idx] = torch.where(
        is_positive, torch.ones_like(soft), torch.full_like(soft, soft_weight)
    )
    gt_index[point_idx] = gt_idx
    return outputs
