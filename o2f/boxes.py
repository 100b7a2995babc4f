"""Box and point geometry shared by the assigner, the losses and post-processing.

All boxes are (x1, y1, x2, y2) in input-image pixels; "pairs" functions compare row i of one
tensor with row i of the other (elementwise), not every row with every row.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def level_points(
    sizes: Sequence[tuple[int, int]], strides: Sequence[int], device=None, dtype=torch.float32
) -> tuple[Tensor, Tensor]:
    """Points of every feature level, concatenated in level order, each level row-major.

    Args:
        sizes: (H_l, W_l) of each level.
        strides: stride s_l of each level.

    Returns:
        points (N, 2) x, y with the point of cell (i, j) at ((j + 0.5) s, (i + 0.5) s);
        point_strides (N,) the stride of each point's level.
    """
    points, point_strides = [], []
    for (h, w), s in zip(sizes, strides, strict=True):
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) * s
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) * s
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((xx.reshape(-1), yy.reshape(-1)), dim=1))
        point_strides.append(torch.full((h * w,), float(s), device=device, dtype=dtype))
    return torch.cat(points), torch.cat(point_strides)


def decode_ltrb(points: Tensor, ltrb: Tensor) -> Tensor:
    """Boxes from distances: points (..., 2) x, y and ltrb (..., 4) -> (..., 4) x1, y1, x2, y2."""
    x, y = points[..., 0], points[..., 1]
    return torch.stack(
        (x - ltrb[..., 0], y - ltrb[..., 1], x + ltrb[..., 2], y + ltrb[..., 3]), dim=-1
    )


def encode_ltrb(points: Tensor, boxes: Tensor) -> Tensor:
    """Distances from points (..., 2) to the sides of boxes (..., 4) -> (..., 4) l, t, r, b."""
    x, y = points[..., 0], points[..., 1]
    return torch.stack(
        (x - boxes[..., 0], y - boxes[..., 1], boxes[..., 2] - x, boxes[..., 3] - y), dim=-1
    )


def centerness_target(points: Tensor, boxes: Tensor) -> Tensor:
    """FCOS centerness sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)) of points (M, 2) in boxes (M, 4).

    Points must lie strictly inside their boxes (as every assigned point does). Returns (M,).
    """
    ltrb = encode_ltrb(points, boxes)
    lr, tb = ltrb[:, 0::2], ltrb[:, 1::2]
    ratio = (lr.min(-1).values / lr.max(-1).values) * (tb.min(-1).values / tb.max(-1).values)
    return ratio.sqrt()


def box_area(boxes: Tensor) -> Tensor:
    """(..., 4) -> (...,) area, negative extents counted as zero."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(
        min=0
    )


def _pair_inter_union(a: Tensor, b: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = (box_area(a) + box_area(b) - inter).clamp(min=eps)
    return inter, union


def pair_iou(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """IoU of a[i] with b[i]: (..., 4), (..., 4) -> (...,), union clamped to at least eps."""
    inter, union = _pair_inter_union(a, b, eps)
    return inter / union


def pair_giou(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """Generalised IoU of a[i] with b[i] -> (...,); union and enclosing area clamped at eps."""
    inter, union = _pair_inter_union(a, b, eps)
    lt = torch.minimum(a[..., :2], b[..., :2])
    rb = torch.maximum(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    enclose = (wh[..., 0] * wh[..., 1]).clamp(min=eps)
    return inter / union - (enclose - union) / enclose
