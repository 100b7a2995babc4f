"""FCOS label assignment (one-to-many baseline), computed on candidate windows.

The rules of FCOS with centre sampling (Tian et al., "FCOS: Fully Convolutional One-Stage Object
Detection", and its centre-sampling / GIoU recipe):

1. Point n may belong to gt g only when it lies strictly inside the centre-sampling region of g:
   the square of half-side ``center_radius * stride_n`` around the gt centre, clipped to the box.
2. ... and when the largest of its four distances to the box's sides, max(l, t, r, b), lies in
   its level's regression range [lo, hi] (both ends inclusive).
3. A point left with several gts takes the one of smallest area (ties: lowest gt index).
4. Every point that passes for some gt is a positive of that gt; all others are background.

The candidates of rule 1 are the same windows of grid cells around each gt centre that the
one-to-few assigner uses (:func:`o2f.assigners.pairs.window_slots`; every point when the points
are not regular grids): O(G) work instead of O(N x G). A batch is one call with its gts padded
to the largest G (:func:`fcos_assign_batch`), free of host syncs like the one-to-few assigner.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from o2f.assigners.pairs import LevelGrid, candidate_slots, level_grids, owner_of_points
from o2f.boxes import box_area, encode_ltrb

#: Regression range (lo, hi] of max(l, t, r, b) per level P3..P7 in the FCOS recipe, in pixels.
FCOS_REGRESS_RANGES: tuple[tuple[float, float], ...] = (
    (-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, math.inf),
)


def _level_ranges(
    strides: Tensor, regress_ranges: Sequence[tuple[float, float]],
    grids: Sequence[LevelGrid] | None,
) -> tuple[Tensor, Tensor]:
    """Per-point (lo (N,), hi (N,)) from each point's level: levels are the distinct strides in
    increasing order, and level l takes ``regress_ranges[l]``. With ``grids`` the levels come
    from the layout (no host sync); otherwise from the strides tensor."""
    if grids is not None:
        levels = sorted({g.stride for g in grids})
        if len(levels) != len(regress_ranges):
            raise ValueError(f"{len(levels)} levels (strides {levels}) but "
                             f"{len(regress_ranges)} regression ranges")
        lo, hi = [], []
        for g in grids:
            r = regress_ranges[levels.index(g.stride)]
            lo.append(strides.new_full((g.height * g.width,), float(r[0])))
            hi.append(strides.new_full((g.height * g.width,), float(r[1])))
        return torch.cat(lo), torch.cat(hi)
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
    """FCOS assignment of one image (see the module docstring for the rules):
    :func:`fcos_assign_batch` of a batch of one.

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
    valid = torch.ones(gt_boxes.shape[:1], dtype=torch.bool, device=gt_boxes.device)
    labels, box_targets = fcos_assign_batch(
        points, strides, gt_boxes[None], gt_labels[None], valid[None], num_classes,
        regress_ranges=regress_ranges, center_radius=center_radius, grids=grids)
    return labels[0], box_targets[0]


@torch.no_grad()
def fcos_assign_batch(
    points: Tensor, strides: Tensor, gt_boxes: Tensor, gt_labels: Tensor, gt_valid: Tensor,
    num_classes: int, *, regress_ranges: Sequence[tuple[float, float]] = FCOS_REGRESS_RANGES,
    center_radius: float = 1.5, grids: Sequence[LevelGrid] | None = None,
) -> tuple[Tensor, Tensor]:
    """FCOS assignment of a batch of B images, each on its own gts.

    Args:
        points: (N, 2) and strides (N,) shared by the images, as in :func:`fcos_assign`.
        gt_boxes: (B, G, 4) x1, y1, x2, y2, padded to the batch's largest G (G may be 0).
        gt_labels: (B, G) int64 in [0, num_classes) (any value in the padding).
        gt_valid: (B, G) bool, False for the padding.
        num_classes, regress_ranges, center_radius, grids: as in :func:`fcos_assign`.

    Returns:
        labels (B, N) int64 and box_targets (B, N, 4), as :func:`fcos_assign` for each image.
    """
    batch, num_gt = gt_boxes.shape[:2]
    num_points, device = points.shape[0], points.device
    labels = torch.full((batch, num_points), num_classes, dtype=torch.long, device=device)
    box_targets = torch.zeros((batch, num_points, 4), dtype=gt_boxes.dtype, device=device)
    if num_gt == 0 or num_points == 0:
        return labels, box_targets

    grids = level_grids(points, strides) if grids is None else list(grids)
    centers = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2  # (B, G, 2)
    slot_pts, in_grid = candidate_slots(points, strides, grids, centers, center_radius)

    # Rule 1: strictly inside the centre region clipped to the gt box.
    pts, gt = points[slot_pts], gt_boxes[:, :, None, :]  # (B, G, S, 2), (B, G, 1, 4)
    radius = (strides[slot_pts] * center_radius)[..., None]
    c = centers[:, :, None, :]
    region = torch.cat(
        (torch.maximum(c - radius, gt[..., :2]), torch.minimum(c + radius, gt[..., 2:])), dim=-1
    )
    inside = encode_ltrb(pts, region).min(dim=-1).values > 0

    # Rule 2: the largest distance to the gt box's sides within the level's range.
    lo, hi = _level_ranges(strides, regress_ranges, grids)
    reach = encode_ltrb(pts, gt).max(dim=-1).values
    in_range = (reach >= lo[slot_pts]) & (reach <= hi[slot_pts])
    keep = in_grid & gt_valid[..., None] & inside & in_range

    # Rule 3: smallest gt area wins a point (ties: lowest gt index).
    owner = owner_of_points(slot_pts, keep, box_area(gt_boxes)[..., None], num_points, "min")
    assigned = owner < num_gt
    row = owner.clamp(max=num_gt - 1)
    labels = torch.where(assigned, gt_labels.gather(1, row).long(), labels)
    box_targets = torch.where(
        assigned[..., None], gt_boxes.gather(1, row[..., None].expand(-1, -1, 4)), box_targets)
    return labels, box_targets
