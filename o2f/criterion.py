"""Training targets and losses of the O2F detector (SPEC §2-3) from the head's flattened maps."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from o2f.assigners import LevelGrid, o2f_assign, soft_label_ceiling
from o2f.boxes import centerness_target, decode_ltrb
from o2f.distributed import reduce_mean
from o2f.losses import giou_loss, soft_focal_loss


class O2FCriterion:
    """One-to-few assignment per image, then the soft focal loss and the centerness-weighted GIoU
    loss, normalised by data-parallel means as SPEC §3 says.

    The soft-label ceiling follows the epoch: call :meth:`set_epoch` before each epoch.
    """

    def __init__(
        self, num_classes: int, *, topk: int = 7, alpha: float = 0.8, center_radius: float = 1.5,
        soft_weight: float = 0.4, soft_t_start: float = 0.6, soft_t_end: float = 0.2,
        cls_weight: float = 1.0, bbox_weight: float = 2.0,
    ) -> None:
        self.num_classes = num_classes
        self.topk, self.alpha, self.center_radius = topk, alpha, center_radius
        self.soft_weight = soft_weight
        self.soft_t_start, self.soft_t_end = soft_t_start, soft_t_end
        self.soft_t = soft_t_start
        self.cls_weight, self.bbox_weight = cls_weight, bbox_weight

    def set_epoch(self, epoch: int, max_epoch: int) -> None:
        """Set the soft-label ceiling t for the 0-based ``epoch`` of a ``max_epoch`` run."""
        self.soft_t = soft_label_ceiling(epoch, max_epoch, self.soft_t_start, self.soft_t_end)

    @torch.no_grad()
    def assign(
        self, cls_logits: Tensor, ctr_logits: Tensor, pred_boxes: Tensor, points: Tensor,
        strides: Tensor, grids: Sequence[LevelGrid], targets: Sequence[dict],
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-image assignment stacked over the batch: (B, N), (B, N, 4), (B, N), (B, N)."""
        results = [
            o2f_assign(
                points, strides, cls_logits[b], ctr_logits[b], pred_boxes[b],
                t["boxes"].to(pred_boxes), t["labels"].to(cls_logits.device), topk=self.topk,
                alpha=self.alpha, center_radius=self.center_radius, soft_t=self.soft_t,
                soft_weight=self.soft_weight, grids=list(grids),
            )
            for b, t in enumerate(targets)
        ]
        return tuple(torch.stack(parts) for parts in zip(*results, strict=True))

    def __call__(
        self, cls_logits: Tensor, ltrb: Tensor, ctr_logits: Tensor, points: Tensor,
        strides: Tensor, grids: Sequence[LevelGrid], targets: Sequence[dict],
    ) -> dict[str, Tensor]:
        """Losses of a batch.

        Args:
            cls_logits: (B, N, C); ltrb: (B, N, 4) pixels; ctr_logits: (B, N).
            points: (N, 2); strides: (N,); grids: the level layout of the points.
            targets: per image dicts with ``boxes`` (G, 4) x1, y1, x2, y2 and ``labels`` (G,).

        Returns:
            ``loss_cls`` and ``loss_bbox``, already multiplied by their weights.
        """
        cls_logits, ltrb, ctr_logits = cls_logits.float(), ltrb.float(), ctr_logits.float()
        pred_boxes = decode_ltrb(points, ltrb)
        labels, box_targets, soft_labels, soft_weights = self.assign(
            cls_logits.detach(), ctr_logits.detach(), pred_boxes.detach(), points, strides,
            grids, targets,
        )
        scores = torch.sigmoid(cls_logits) * torch.sigmoid(ctr_logits)[..., None]
        labels, soft_labels, soft_weights = labels.flatten(), soft_labels.flatten(), \
            soft_weights.flatten()
        assigned = labels < self.num_classes
        num_assigned = reduce_mean(assigned.sum().to(scores.dtype)).clamp(min=1.0)
        loss_cls = soft_focal_loss(scores.flatten(0, 1), labels, soft_labels, soft_weights,
                                   num_assigned)

        batch_points = points.expand(ltrb.shape[0], -1, -1).flatten(0, 1)[assigned]
        targets_pos = box_targets.flatten(0, 1)[assigned]
        ctr_targets = centerness_target(batch_points, targets_pos)
        ctr_norm = reduce_mean(ctr_targets.sum()).clamp(min=1e-6)
        if assigned.any():
            loss_bbox = giou_loss(pred_boxes.flatten(0, 1)[assigned], targets_pos, ctr_targets,
                                  ctr_norm)
        else:
            loss_bbox = pred_boxes.sum() * 0.0
        return {"loss_cls": self.cls_weight * loss_cls, "loss_bbox": self.bbox_weight * loss_bbox}
