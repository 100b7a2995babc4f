"""(point, gt) candidate pairs on level grids, and the sort/run utilities the pair-based
assigners share.

Only a point within ``center_radius`` strides of a gt centre can be a candidate for that gt, so
per level the candidates lie in a small window of grid cells around each gt centre; enumerating
those windows costs O(G) instead of the O(N x G) of dense matrices.
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


def window_pairs(
    grids: list[LevelGrid], gt_boxes: Tensor, center_radius: float,
    centers: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(point, gt) index pairs covering every point within center_radius strides of each gt centre
    (``centers`` (G, 2) x, y, default the box centres), with one cell of margin on each side.
    Returns point_idx (P,), gt_idx (P,)."""
    device = gt_boxes.device
    num_gt = gt_boxes.shape[0]
    if centers is None:
        centers = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    size = math.ceil(2 * center_radius) + 2
    offsets = torch.arange(size, device=device)
    gt_ids = torch.arange(num_gt, device=device)[:, None, None].expand(num_gt, size, size)
    point_ids, pair_gts = [], []
    for g in grids:
        radius = center_radius * g.stride
        j0 = torch.floor((centers[:, 0] - radius - g.x0) / g.stride).long()
        i0 = torch.floor((centers[:, 1] - radius - g.y0) / g.stride).long()
        js = j0[:, None] + offsets  # (G, size)
        is_ = i0[:, None] + offsets
        valid = ((is_ >= 0) & (is_ < g.height))[:, :, None] & ((js >= 0) & (js < g.width))[:, None]
        idx = g.start + is_[:, :, None] * g.width + js[:, None, :]
        point_ids.append(idx[valid])
        pair_gts.append(gt_ids[valid])
    return torch.cat(point_ids), torch.cat(pair_gts)


def dense_pairs(num_points: int, num_gt: int, device: torch.device) -> tuple[Tensor, Tensor]:
    point_ids = torch.arange(num_points, device=device).repeat_interleave(num_gt)
    return point_ids, torch.arange(num_gt, device=device).repeat(num_points)


def sort_by(keys: list[Tensor]) -> Tensor:
    """Permutation ordering by keys[0], then keys[1], ... (all ascending, stable)."""
    order = torch.argsort(keys[-1], stable=True)
    for key in reversed(keys[:-1]):
        order = order[torch.argsort(key[order], stable=True)]
    return order


def first_of_runs(sorted_ids: Tensor) -> Tensor:
    """Mask of the first element of each run of equal values in a sorted (P,) tensor."""
    first = torch.ones_like(sorted_ids, dtype=torch.bool)
    first[1:] = sorted_ids[1:] != sorted_ids[:-1]
    return first


def rank_in_runs(sorted_ids: Tensor) -> Tensor:
    """0-based position of each element within its run of equal values (sorted (P,) input)."""
    pos = torch.arange(sorted_ids.numel(), device=sorted_ids.device)
    return pos - torch.searchsorted(sorted_ids, sorted_ids)
