"""NMS-free selection of detections (SPEC §4), with optional class-wise NMS for comparison."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from o2f.boxes import decode_ltrb


def _flatten(x: Tensor) -> Tensor:
    """(B, K, H, W) -> (B, H * W, K), row-major over (H, W) like the points."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])


def select_topk(
    cls_logits: Sequence[Tensor], ltrb: Sequence[Tensor], ctr_logits: Sequence[Tensor],
    points: Sequence[Tensor], image_sizes: Tensor, *, score_thr: float = 0.05,
    nms_pre: int = 1000, max_per_img: int = 100,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Batched top-k selection over levels; padded output (score 0) where fewer pass.

    Args:
        cls_logits: per level (B, C, H_l, W_l).
        ltrb: per level (B, 4, H_l, W_l) distances in input pixels.
        ctr_logits: per level (B, 1, H_l, W_l).
        points: per level (H_l * W_l, 2) point coordinates.
        image_sizes: (B, 2) height, width of each unpadded image, to clip boxes to.

    Returns:
        boxes (B, K, 4), scores (B, K), labels (B, K) int64, point indices (B, K) int64 into
        all levels' points concatenated, highest score first, with K = min(max_per_img,
        candidates); entries with score <= score_thr have score 0.
    """
    all_boxes, all_scores, all_labels, all_points = [], [], [], []
    offset = 0
    for cls, reg, ctr, pts in zip(cls_logits, ltrb, ctr_logits, points, strict=True):
        num_classes = cls.shape[1]
        scores = (torch.sigmoid(_flatten(cls).float()) * torch.sigmoid(_flatten(ctr).float()))
        scores = scores.flatten(1)  # (B, HW * C)
        k = min(nms_pre, scores.shape[1])
        top_scores, top_idx = scores.topk(k, dim=1)
        point_idx = torch.div(top_idx, num_classes, rounding_mode="floor")
        reg = torch.gather(_flatten(reg).float(), 1, point_idx[..., None].expand(-1, -1, 4))
        all_boxes.append(decode_ltrb(pts[point_idx], reg))
        all_scores.append(torch.where(top_scores > score_thr, top_scores, 0.0))
        all_labels.append(top_idx % num_classes)
        all_points.append(point_idx + offset)
        offset += pts.shape[0]
    boxes, scores, labels = torch.cat(all_boxes, 1), torch.cat(all_scores, 1), torch.cat(
        all_labels, 1)
    scores, order = scores.topk(min(max_per_img, scores.shape[1]), dim=1)
    boxes = torch.gather(boxes, 1, order[..., None].expand(-1, -1, 4))
    labels = torch.gather(labels, 1, order)
    point_idx = torch.gather(torch.cat(all_points, 1), 1, order)
    size = image_sizes.to(boxes.dtype)[:, None, :]  # (B, 1, 2) h, w
    limits = torch.stack((size[..., 1], size[..., 0], size[..., 1], size[..., 0]), dim=-1)
    boxes = torch.minimum(boxes.clamp(min=0), limits)
    return boxes, scores, labels, point_idx


def nms_selection(
    boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float, max_per_img: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Class-wise NMS of one image's candidates (K, 4), (K,), (K,), keeping max_per_img."""
    keep = batched_nms(boxes, scores, labels, iou_threshold)[:max_per_img]
    return boxes[keep], scores[keep], labels[keep]


def rescale_boxes(boxes: Tensor, scale_factor: Sequence[float]) -> Tensor:
    """Boxes (K, 4) in resized-image pixels -> original-image pixels given (sx, sy)."""
    sx, sy = float(scale_factor[0]), float(scale_factor[1])
    return boxes / boxes.new_tensor([sx, sy, sx, sy])
