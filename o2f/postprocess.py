"""NMS-free selection of detections (SPEC §4, and the authors' CondInst variant), with optional
class-wise NMS for comparison."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms

from o2f.boxes import decode_ltrb


def _flatten(x: Tensor) -> Tensor:
    """(B, K, H, W) -> (B, H * W, K), row-major over (H, W) like the points."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])


def _level_dense(cls: Tensor, ctr: Tensor, score_thr: float, nms_pre: int
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """Static-shape selection of one level (for export): every (point, class) score, top
    ``min(nms_pre, H W C)``. Returns scores (B, k) (0 where <= score_thr), labels (B, k),
    point indices (B, k) into the level's points."""
    num_classes = cls.shape[1]
    scores = (torch.sigmoid(_flatten(cls).float()) * torch.sigmoid(_flatten(ctr).float()))
    scores = scores.flatten(1)  # (B, HW * C)
    top_scores, top_idx = scores.topk(min(nms_pre, scores.shape[1]), dim=1)
    point_idx = torch.div(top_idx, num_classes, rounding_mode="floor")
    top_scores = torch.where(top_scores > score_thr, top_scores, 0.0)
    return top_scores, top_idx % num_classes, point_idx


def _level_sparse(cls: Tensor, ctr: Tensor, score_thr: float, nms_pre: int
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """Selection of one level from its candidates only. The points whose best class scores
    above score_thr (less a margin of 1e-5 relative, far above float32 rounding) are found
    from the per-point maximum over classes, one vectorised pass over the maps in their own
    (B, C, H W) layout; only their (point, class) scores are computed, thresholded and ranked,
    keeping the top ``min(nms_pre, count)`` of each image. Same result as :func:`_level_dense`
    for every entry with score > score_thr; returns (B, k) with k = the largest kept count
    over the images, where the padding has score 0."""
    batch = cls.shape[0]
    flat_cls, flat_ctr = cls.flatten(2), ctr.flatten(2)  # (B, C, HW), (B, 1, HW): views
    best = torch.sigmoid(flat_cls.amax(1).float()) * torch.sigmoid(flat_ctr[:, 0].float())
    point_thr = score_thr * (1 - 1e-5) if score_thr > 0 else -math.inf
    b, p = (best > point_thr).nonzero(as_tuple=True)  # (B, HW) -> candidate points
    scores = torch.sigmoid(flat_cls[b, :, p].float()) * torch.sigmoid(
        flat_ctr[b, 0, p].float())[:, None]  # (points, C)
    row, c = (scores > score_thr).nonzero(as_tuple=True)
    b, p, scores = b[row], p[row], scores[row, c]  # still sorted by image
    # b is sorted (nonzero lists in row-major order): each image's run starts at ``starts``
    starts = torch.searchsorted(b, torch.arange(batch + 1, device=b.device))
    width = int(starts.diff().max()) if batch else 0
    if width == 0:
        empty = c.new_zeros((batch, 0))
        return scores.new_zeros((batch, 0)), empty, empty
    column = torch.arange(b.numel(), device=b.device) - starts[b]
    rows = scores.new_full((batch, width), -math.inf)  # -inf: padding of shorter images
    rows[b, column] = scores
    which = torch.zeros((batch, width), dtype=torch.long, device=b.device)
    which[b, column] = torch.arange(b.numel(), device=b.device)
    top_scores, top_col = rows.topk(min(nms_pre, width), dim=1)
    pick = which.gather(1, top_col)
    return top_scores.clamp(min=0.0), c[pick], p[pick]


def _level_authors(cls: Tensor, ctr: Tensor, score_thr: float, nms_pre: int
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """The o2f authors' CondInst selection of one level (``E2ECondInstHead._get_bboxes_single``
    and its ``multiclass_nms`` in their code). When the level has more than ``nms_pre`` points,
    the ``nms_pre`` points of highest max over classes of sigmoid(cls) * sigmoid(ctr) are kept,
    each with all its classes; then a (point, class) pair is a candidate when sigmoid(cls) alone
    is above ``score_thr``, and it scores sigmoid(cls) * sigmoid(ctr) (which may be below
    ``score_thr``). Static shapes. Returns scores (B, k C) (0 for pairs that are not candidates),
    labels (B, k C) and point indices (B, k C) into the level's points, k = min(nms_pre, H W),
    the pairs of each kept point together, classes in order."""
    batch, num_classes = cls.shape[:2]
    prob = torch.sigmoid(cls.flatten(2).float())  # (B, C, HW)
    quality = torch.sigmoid(ctr.flatten(2).float())[:, 0]  # (B, HW)
    num_points = prob.shape[2]
    if num_points > nms_pre:
        # max_c(p_c * q) == max_c(p_c) * q exactly: rounding a product is monotone in p_c
        keep = (prob.amax(1) * quality).topk(nms_pre, dim=1).indices  # (B, k)
    else:
        keep = torch.arange(num_points, device=cls.device).expand(batch, num_points)
    prob = prob.gather(2, keep[:, None, :].expand(-1, num_classes, -1))  # (B, C, k)
    scores = prob * quality.gather(1, keep)[:, None, :]
    scores = torch.where(prob > score_thr, scores, 0.0).transpose(1, 2).flatten(1)  # (B, k C)
    k = keep.shape[1]
    labels = torch.arange(num_classes, device=cls.device).repeat(k).expand(batch, -1)
    return scores, labels, keep.repeat_interleave(num_classes, dim=1)


SELECTIONS = ("box", "authors")


def _use_static_shapes() -> bool:
    """True while torch.export / dynamo or the TorchScript tracer captures the graph."""
    return bool(torch.compiler.is_compiling() or torch.jit.is_tracing())


def select_topk(
    cls_logits: Sequence[Tensor], ltrb: Sequence[Tensor], ctr_logits: Sequence[Tensor],
    points: Sequence[Tensor], image_sizes: Tensor, *, score_thr: float = 0.05,
    nms_pre: int = 1000, max_per_img: int = 100, static_shapes: bool | None = None,
    selection: str = "box",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Batched top-k selection over levels; padded output (score 0) where fewer pass.

    ``selection="box"`` (SPEC §4, the authors' box head): per level and image, the (point,
    class) pairs with score sigmoid(cls) * sigmoid(ctr) > score_thr are ranked and the best
    ``nms_pre`` kept; the best ``max_per_img`` of all levels are returned. In eager mode only
    the pairs of points whose best class can pass the threshold are scored
    (:func:`_level_sparse`: data-dependent shapes, three host syncs per level). While a graph
    is captured for export (``static_shapes``, default: automatic), every pair is scored and
    ``topk(min(nms_pre, H W C))`` taken per level, which has static shapes; both give the same
    detections.

    ``selection="authors"`` (the authors' CondInst head, :func:`_level_authors`): per level the
    ``nms_pre`` points of best max-class score kept with all their classes, a pair kept when
    sigmoid(cls) alone is > score_thr, scored sigmoid(cls) * sigmoid(ctr); then the best
    ``max_per_img`` of all levels. Scores may be below ``score_thr``. Static shapes in every
    mode.

    Args:
        cls_logits: per level (B, C, H_l, W_l).
        ltrb: per level (B, 4, H_l, W_l) distances in input pixels.
        ctr_logits: per level (B, 1, H_l, W_l).
        points: per level (H_l * W_l, 2) point coordinates.
        image_sizes: (B, 2) height, width of each unpadded image, to clip boxes to.
        static_shapes: force (True) or forbid (False) the static-shape path.
        selection: ``box`` or ``authors`` (above).

    Returns:
        boxes (B, K, 4), scores (B, K), labels (B, K) int64, point indices (B, K) int64 into
        all levels' points concatenated, highest score first, with K = min(max_per_img,
        sum over levels of min(nms_pre, H_l W_l C)) (``authors``: of min(nms_pre, H_l W_l) C).
        Entries that are not detections (fewer than K candidate pairs) have score 0, box 0,
        label 0 and point index 0.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    if static_shapes is None:
        static_shapes = _use_static_shapes()
    if selection == "authors":
        level, static_shapes = _level_authors, True
    else:
        level = _level_dense if static_shapes else _level_sparse
    all_scores, all_labels, all_points = [], [], []
    offset = 0
    for cls, ctr, pts in zip(cls_logits, ctr_logits, points, strict=True):
        scores, labels, point_idx = level(cls, ctr, score_thr, nms_pre)
        all_scores.append(scores)
        all_labels.append(labels)
        all_points.append(point_idx + offset)
        offset += pts.shape[0]
    scores, labels = torch.cat(all_scores, 1), torch.cat(all_labels, 1)
    point_idx = torch.cat(all_points, 1)
    if static_shapes:
        num = min(max_per_img, scores.shape[1])
    else:
        num = min(max_per_img, sum(min(nms_pre, c.shape[1:].numel()) for c in cls_logits))
        if scores.shape[1] < num:  # fewer candidates than outputs: pad with non-detections
            pad = num - scores.shape[1]
            scores, labels = F.pad(scores, (0, pad)), F.pad(labels, (0, pad))
            point_idx = F.pad(point_idx, (0, pad))
    scores, order = scores.topk(num, dim=1)
    labels = torch.gather(labels, 1, order)
    point_idx = torch.gather(point_idx, 1, order)
    valid = scores > 0  # padding gets label, point index and box 0
    labels, point_idx = labels * valid, point_idx * valid
    all_ltrb = torch.cat([r.flatten(2) for r in ltrb], 2)  # (B, 4, N)
    reg = torch.gather(all_ltrb, 2, point_idx[:, None, :].expand(-1, 4, -1)).transpose(1, 2)
    boxes = decode_ltrb(torch.cat(list(points))[point_idx], reg.float())
    boxes = torch.where(valid[..., None], boxes, 0.0)
    size = image_sizes.to(boxes.dtype)[:, None, :]  # (B, 1, 2) h, w
    limits = torch.stack((size[..., 1], size[..., 0], size[..., 1], size[..., 0]), dim=-1)
    boxes = torch.minimum(boxes.clamp(min=0), limits)
    return boxes, scores, labels, point_idx


def nms_keep(
    boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float, max_per_img: int
) -> Tensor:
    """Class-wise NMS of one image's candidates (K, 4), (K,), (K,): the indices (<= max_per_img,
    highest score first) of those kept, so that masks or point indices follow the boxes."""
    return batched_nms(boxes, scores, labels, iou_threshold)[:max_per_img]


def rescale_boxes(boxes: Tensor, scale_factor: Sequence[float]) -> Tensor:
    """Boxes (K, 4) in resized-image pixels -> original-image pixels given (sx, sy)."""
    sx, sy = float(scale_factor[0]), float(scale_factor[1])
    return boxes / boxes.new_tensor([sx, sy, sx, sy])
