"""Candidate windows on level grids, and the per-point conflict resolution the window-based
assigners share.

Only a point within ``center_radius`` strides of a gt centre can be a candidate for that gt, so
per level the candidates lie in a small window of grid cells around each gt centre; working on
those (gt, slot) windows costs O(G) instead of the O(N x G) of dense matrices. Every window has
the same number of slots, so a batch of images with gts padded to the batch maximum is one set
of (B, G, S) tensors, and nothing on the way has a data-dependent size (no host sync on a GPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class LevelGrid:
    """Layout of one level's points: index ``start + i * width + j`` is at (x0 + j s, y0 + i s)."""

    start: int
    height: int
    width: int
    stride: float
    x0: float
    y0: float


def level_grids(points: Tensor, strides: Tensor, tol: float = 1e-3) -> list[LevelGrid] | None:
    """Recover the grid of each level from points (N, 2) and strides (N,), or None when the points
    are not regular row-major grids (the assigner then falls back to a dense candidate search)."""
    if points.numel() == 0:
        return []
    values, counts = torch.unique_consecutive(strides, return_counts=True)
    grids, start = [], 0
    for s, n in zip(values.tolist(), counts.tolist(), strict=True):
        pts = points[start : start + n]
        width = int((pts[:, 1] == pts[0, 1]).sum())
        if width == 0 or n % width:
            return None
        height = n // width
        x0, y0 = pts[0].tolist()
        xs = x0 + torch.arange(width, device=pts.device, dtype=pts.dtype) * s
        ys = y0 + torch.arange(height, device=pts.device, dtype=pts.dtype) * s
        grid = pts.view(height, width, 2)
        if not (
            torch.allclose(grid[..., 0], xs.expand(height, width), atol=tol * s, rtol=0)
            and torch.allclose(grid[..., 1], ys[:, None].expand(height, width), atol=tol * s,
                               rtol=0)
        ):
            return None
        grids.append(LevelGrid(start, height, width, float(s), x0, y0))
        start += n
    return grids


def window_slots(
    grids: list[LevelGrid], centers: Tensor, center_radius: float,
) -> tuple[Tensor, Tensor]:
    """The candidate window of every gt: per level the ``size x size`` grid cells
    (``size = ceil(2 center_radius) + 2``, one cell of margin on each side) around its centre,
    which cover every point within ``center_radius`` strides of it.

    Args:
        grids: the level layout of the points.
        centers: (..., G, 2) x, y centres (any leading batch dimensions).

    Returns:
        point_idx (..., G, S) int64, the point of each slot (S = levels x size^2; levels in
        order, each window row-major, so the index increases along S over the slots inside the
        grid), clamped into the grid where the window leaves it;
        in_grid (..., G, S) bool, False for those clamped slots.
    """
    size = math.ceil(2 * center_radius) + 2
    offsets = torch.arange(size, device=centers.device)
    point_ids, inside = [], []
    for g in grids:
        radius = center_radius * g.stride
        j0 = torch.floor((centers[..., 0] - radius - g.x0) / g.stride).long()
        i0 = torch.floor((centers[..., 1] - radius - g.y0) / g.stride).long()
        js = j0[..., None] + offsets  # (..., G, size)
        is_ = i0[..., None] + offsets
        valid = (((is_ >= 0) & (is_ < g.height))[..., :, None]
                 & ((js >= 0) & (js < g.width))[..., None, :])
        idx = (g.start + is_.clamp(0, g.height - 1)[..., :, None] * g.width
               + js.clamp(0, g.width - 1)[..., None, :])
        point_ids.append(idx.flatten(-2))
        inside.append(valid.flatten(-2))
    return torch.cat(point_ids, -1), torch.cat(inside, -1)


def candidate_slots(
    points: Tensor, strides: Tensor, grids: list[LevelGrid] | None, centers: Tensor,
    center_radius: float,
) -> tuple[Tensor, Tensor]:
    """:func:`window_slots` of the gts with ``centers`` (B, G, 2), or, when the points are not
    regular grids (``grids`` None after :func:`level_grids`), every point as a slot of every gt:
    point_idx (B, G, S) and in_grid (B, G, S), the point index increasing along S."""
    if grids is None:
        grids = level_grids(points, strides)
    if grids is None:
        shape = (*centers.shape[:-1], points.shape[0])
        idx = torch.arange(points.shape[0], device=centers.device).expand(shape)
        return idx, torch.ones(shape, dtype=torch.bool, device=centers.device)
    return window_slots(grids, centers, center_radius)


def owner_of_points(
    point_idx: Tensor, allowed: Tensor, score: Tensor, num_points: int, prefer: str,
) -> Tensor:
    """For each point, the gt that wins it among the slots that reach it: the best ``score``
    (``prefer`` "max" or "min"), ties to the lowest gt index; scatters only, no host sync.

    Args:
        point_idx: (B, G, S) point of each slot, in [0, num_points).
        allowed: (B, G, S) bool, the slots that compete.
        score: (B, G, S) or broadcastable float.
        num_points: N.

    Returns:
        (B, N) int64, the winning gt's row (in [0, G)), G where no slot competes.
    """
    batch, num_gt = point_idx.shape[:2]
    flat = (point_idx + torch.arange(batch, device=point_idx.device)[:, None, None] * num_points)
    flat = flat.flatten()
    score = score.expand(point_idx.shape)
    fill = -math.inf if prefer == "max" else math.inf
    masked = torch.where(allowed, score, torch.full_like(score, fill)).flatten()
    best = torch.full((batch * num_points,), fill, dtype=score.dtype, device=score.device)
    best.scatter_reduce_(0, flat, masked, reduce="amax" if prefer == "max" else "amin")
    contender = allowed & (score == best[flat].view(point_idx.shape))
    gt_ids = torch.arange(num_gt, device=point_idx.device)[None, :, None].expand(point_idx.shape)
    owner = torch.full((batch * num_points,), num_gt, dtype=torch.long, device=point_idx.device)
    owner.scatter_reduce_(0, flat, torch.where(contender, gt_ids, num_gt).flatten(), reduce="amin")
    return owner.view(batch, num_points)
