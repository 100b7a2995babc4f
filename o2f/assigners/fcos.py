"""FCOS label assignment (one-to-many baseline), computed on (point, gt) pairs.

The rules of FCOS with centre sampling (Tian et al., "FCOS: Fully Convolutional One-Stage Object
Detection", and its centre-sampling / GIoU recipe):

1. Point n may belong to gt g only when it lies strictly inside the centre-sampling region of g:
   the square of half-side ``center_radius * stride_n`` around the gt centre, clipped to the box.
2. ... and when the largest of its four distances to the box's sides, max(l, t, r, b), lies in
   its level's regression range [lo, hi] (both ends inclusive).
3. A point left with several gts takes the one of smallest area (ties: lowest gt index).
4. Every point that passes for some gt is a positive of that gt; all others are background.

The candidates of rule 1 are the same windows of grid cells around each gt centre that the
one-to-few assigner enumerates, so the pairs come from :func:`o2f.assigners.pairs.window_pairs`
(dense pairs when the points are not regular grids): O(G) work instead of O(N x G).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from o2f.assigners.pairs import (
    LevelGrid,
    dense_pairs,
    first_of_runs,
    level_grids,
    sort_by,
    window_pairs,
)
from o2f.boxes import box_area, encode_ltrb

#: Regression range (lo, hi] of max(l, t, r, b) per level P3..P7 in the FCOS recipe, in pixels.
FCOS_REGRESS_RANGES: tuple[tuple[float, float], ...] = (
    (-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, math.inf),
)


def _level_ranges(
    strides: Tensor, regress_ranges: Sequence[tuple[float, float]]
) -> tuple[Tensor, Tensor]:
    """Per-point (lo (N,), hi (N,)) from each point's level: levels are the distinct strides in
    increasing order, and level l takes ``regress_ranges[l]``."""
    levels = torch.unique(strides)
    if levels.numel() != len(regress_ranges):
        raise ValueError(
            f"{levels.numel()} levels (strides {levels.tolist()}) but {len(regress_ranges)} "
            "regression ranges"
        )
    ranges = torch.tensor(regress_ranges, dtype=torch.float32, device=strides.device)
    level = torch.searchsorted(levels, strides)
    return ranges[level, 0], ranges[level, 1]


@torch.no_grad()
def fcos_assign(
    points: Tensor, strides: Tensor, gt_boxes: Tensor, gt_labels: Tensor, num_classes: int, *,
    regress_ranges: Sequence[tuple[float, float]] = FCOS_REGRESS_RANGES,
    center_radius: float = 1.5, grids: Sequence[LevelGrid] | None = None,
) -> tuple[Tensor, Tensor]:
    """FCOS assignment of one image (see the module docstring for the rules).

    Args:
        points: (N, 2) x, y of every point; levels in order, each row-major.
        strides: (N,) stride of each point's level.
        gt_boxes: (G, 4) x1, y1, x2, y2 (G may be 0).
        gt_labels: (G,) int64 in [0, num_classes).
        num_classes: C, the background label.
        regress_ranges: (lo, hi) of max(l, t, r, b) for each level, smallest stride first.
        center_radius: half-side of the centre-sampling square in strides.
        grids: the level layout of ``points`` when the caller knows it (see
            :func:`o2f.assigners.level_grids`); derived from points and strides otherwise.

    Returns:
        labels (N,) int64, the class of the assigned gt, ``num_classes`` for background;
        box_targets (N, 4), the assigned gt box (zeros for background).
    """
    num_points, device = points.shape[0], points.device
    labels = torch.full((num_points,), num_classes, dtype=torch.long, device=device)
    box_targets = torch.zeros((num_points, 4), dtype=gt_boxes.dtype, device=device)
    if gt_boxes.shape[0] == 0 or num_points == 0:
        return labels, box_targets

    grids = level_grids(points, strides) if grids is None else list(grids)
    if grids is None:
        point_idx, gt_idx = dense_pairs(num_points, gt_boxes.shape[0], device)
    else:
        point_idx, gt_idx = window_pairs(grids, gt_boxes, center_radius)

    # Rule 1: strictly inside the centre region clipped to the gt box.
    pts, gt = points[point_idx], gt_boxes[gt_idx]
    radius = (strides[point_idx] * center_radius)[:, None]
    centers = (gt[:, :2] + gt[:, 2:]) / 2
    region = torch.cat(
        (torch.maximum(centers - radius, gt[:, :2]), torch.minimum(centers + radius, gt[:, 2:])),
        dim=1,
    )
    inside = encode_ltrb(pts, region).min(dim=1).values > 0

    # Rule 2: the largest distance to the gt box's sides within the level's range.
    lo, hi = _level_ranges(strides, regress_ranges)
    reach = encode_ltrb(pts, gt).max(dim=1).values
    in_range = (reach >= lo[point_idx]) & (reach <= hi[point_idx])
    keep = inside & in_range
    point_idx, gt_idx = point_idx[keep], gt_idx[keep]

    # Rule 3: smallest gt area wins a point (ties: lowest gt index).
    area = box_area(gt_boxes)[gt_idx]
    order = sort_by([point_idx, area, gt_idx])
    winner = order[first_of_runs(point_idx[order])]
    point_idx, gt_idx = point_idx[winner], gt_idx[winner]

    labels[point_idx] = gt_labels[gt_idx].to(labels.dtype)
    box_targets[point_idx] = gt_boxes[gt_idx]
    return labels, box_targets
