"""Sliced inference on large images, merged without NMS.

The image is cut into overlapping square tiles (``tile`` pixels of the original image; a side
of the image shorter than ``tile`` gives one tile spanning it). Adjacent tiles share
``round(overlap * tile)`` pixels, the last tile of a row or column is moved back to end at the
image border (so every tile has the same size and the last overlap may be larger). Each
tile owns a *core*: the tile less half the overlap on each inner side, the image border
keeping its full extent. Between two neighbours the core boundary is the middle of their
overlap, so the cores partition the image: each pixel position belongs to exactly one core
(a core is half-open, ``[start, end)``, except at the image's far border, which is closed).

A detection is kept only from the tile whose core contains its box centre. An object no larger
than the overlap is seen whole by the tile that keeps it, so objects on tile borders are
neither lost nor doubled, and nothing is suppressed by IoU (no NMS). An object larger than the
overlap may be reported cut by more than one tile: choose the overlap from the largest objects.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` along a side of ``length`` pixels, adjacent ones
    sharing ``overlap`` pixels, the last one moved back to end at ``length``.

    >>> tile_starts(1000, 400, 100)
    [0, 300, 600]
    """
    if tile >= length:
        return [0]
    stride = tile - overlap
    n = math.ceil((length - tile) / stride) + 1
    return sorted({min(i * stride, length - tile) for i in range(n)})


def _core_bounds(starts: list[int], size: int, length: int) -> list[tuple[float, float]]:
    """(lo, hi) of each tile's core along one side: the middle of each overlap, the image
    borders at the ends."""
    cuts = [(starts[i + 1] + min(starts[i] + size, length)) / 2 for i in range(len(starts) - 1)]
    edges = [0.0, *cuts, float(length)]
    return list(zip(edges[:-1], edges[1:]))


def tile_grid(height: int, width: int, tile: int, overlap: float) -> tuple[Tensor, Tensor]:
    """The tiles of an image and their cores.

    Args:
        height, width: the image size in pixels.
        tile: the tile side in pixels (clipped to the image's sides).
        overlap: the share of ``tile`` that adjacent tiles have in common, in [0, 1).

    Returns:
        ``tiles`` int64 (T, 4) x0, y0, x1, y1 (pixel bounds, x1 and y1 exclusive) and
        ``cores`` float32 (T, 4) x0, y0, x1, y1 of each tile's core, row by row.
    """
    if tile < 1:
        raise ValueError(f"tile must be >= 1 pixel, got {tile}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    tw, th = min(tile, width), min(tile, height)
    ox, oy = round(overlap * tw), round(overlap * th)
    xs, ys = tile_starts(width, tw, ox), tile_starts(height, th, oy)
    cx, cy = _core_bounds(xs, tw, width), _core_bounds(ys, th, height)
    tiles, cores = [], []
    for y, (cy0, cy1) in zip(ys, cy, strict=True):
        for x, (cx0, cx1) in zip(xs, cx, strict=True):
            tiles.append([x, y, x + tw, y + th])
            cores.append([cx0, cy0, cx1, cy1])
    return torch.tensor(tiles, dtype=torch.int64), torch.tensor(cores, dtype=torch.float32)


def in_core(boxes: Tensor, core: Tensor, height: int, width: int) -> Tensor:
    """Which boxes (K, 4) x1, y1, x2, y2 (image pixels) have their centre in ``core`` (4,)
    x0, y0, x1, y1 -> bool (K,). A core holds ``[x0, x1) x [y0, y1)``, and also its far edge
    where that edge is the image's border (``x1 == width``, ``y1 == height``), so a centre
    on the boundary between two cores belongs to exactly one of them."""
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    x0, y0, x1, y1 = core.tolist()
    inside_x = (cx >= x0) & ((cx < x1) | ((x1 >= width) & (cx <= x1)))
    inside_y = (cy >= y0) & ((cy < y1) | ((y1 >= height) & (cy <= y1)))
    return inside_x & inside_y


def merge_tiles(
    per_tile: list[dict[str, Tensor]], tiles: Tensor, cores: Tensor, height: int, width: int,
) -> dict[str, Tensor]:
    """Join per-tile detections into one image's: each tile's ``boxes`` (K_t, 4) in tile
    pixels are shifted by the tile's offset, and only those whose centre lies in the tile's
    core are kept (:func:`in_core`). ``masks`` (K_t, h_t, w_t), when present, are pasted into
    (K, height, width) canvases.

    Returns:
        ``boxes`` (K, 4) in image pixels, ``scores`` (K,), ``labels`` (K,) (and ``masks``),
        highest score first (ties: tile order, then the tile's own order).
    """
    kept: dict[str, list[Tensor]] = {"boxes": [], "scores": [], "labels": [], "masks": []}
    with_masks = bool(per_tile) and "masks" in per_tile[0]
    for det, (x0, y0, x1, y1), core in zip(per_tile, tiles.tolist(), cores, strict=True):
        boxes = det["boxes"] + det["boxes"].new_tensor([x0, y0, x0, y0])
        keep = in_core(boxes, core.to(boxes.device), height, width)
        kept["boxes"].append(boxes[keep])
        kept["scores"].append(det["scores"][keep])
        kept["labels"].append(det["labels"][keep])
        if with_masks:
            masks = det["masks"][keep]
            canvas = masks.new_zeros((masks.shape[0], height, width))
            canvas[:, y0:y1, x0:x1] = masks
            kept["masks"].append(canvas)
    if not with_masks:
        del kept["masks"]
    out = {k: torch.cat(v) for k, v in kept.items()}
    order = out["scores"].argsort(descending=True, stable=True)
    return {k: v[order] for k, v in out.items()}
