"""Training targets and losses from the head's flattened maps.

:class:`O2FCriterion` is the paper (SPEC §2-3); :class:`O2OCriterion` (one-to-one, POTO-style)
and :class:`FCOSCriterion` (one-to-many FCOS) are the baselines that measure what one-to-few
assignment buys. All three take the same inputs, so the detector does not know which it has.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from o2f.assigners import (
    FCOS_REGRESS_RANGES,
    LevelGrid,
    fcos_assign,
    o2f_assign,
    soft_label_ceiling,
)
from o2f.boxes import centerness_target, decode_ltrb
from o2f.distributed import reduce_mean
from o2f.losses import giou_loss, soft_focal_loss

#: GIoU loss weight of each assigner's published recipe: o2f (SPEC §3) and the o2o baseline that
#: shares its losses use 2.0; FCOS's centre-sampling / GIoU recipe uses 1.0.
RECIPE_BBOX_WEIGHT: dict[str, float] = {"o2f": 2.0, "o2o": 2.0, "fcos": 1.0}


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


class O2OCriterion(O2FCriterion):
    """One-to-one baseline in the spirit of POTO (Wang et al., "End-to-End Object Detection with
    Fully Convolutional Network"): the prediction-aware quality of the one-to-few assigner with
    k = 1, so each gt picks its single best candidate point, and the same losses.

    There are no soft anchors: with k = 1 a gt never keeps a second point, and the soft-label
    weight and ceiling are 0 besides, so nothing of the soft-label schedule remains. A gt whose
    best point is won by another gt of higher quality (SPEC §2 step 6) has no positive in that
    iteration; this greedy resolution differs from POTO's Hungarian matching, which would give it
    its next-best free point.
    """

    def __init__(
        self, num_classes: int, *, alpha: float = 0.8, center_radius: float = 1.5,
        cls_weight: float = 1.0, bbox_weight: float = 2.0,
    ) -> None:
        super().__init__(
            num_classes, topk=1, alpha=alpha, center_radius=center_radius, soft_weight=0.0,
            soft_t_start=0.0, soft_t_end=0.0, cls_weight=cls_weight, bbox_weight=bbox_weight,
        )

    def set_epoch(self, epoch: int, max_epoch: int) -> None:
        """No epoch schedule: the one-to-one targets do not change with the epoch."""


class FCOSCriterion:
    """The one-to-many FCOS baseline: :func:`o2f.assigners.fcos_assign` per image, then

    - ``loss_cls``: sigmoid focal loss (alpha 0.25, gamma 2) on the class logits alone, summed
      over every (point, class) and divided by max(1, mean over ranks of the positives);
    - ``loss_bbox``: GIoU loss of the positives, each weighted by its centerness target, divided
      by max(1e-6, mean over ranks of the sum of those targets);
    - ``loss_ctr``: BCE of the centerness logit against the centerness target on positives,
      divided by the same positive count as ``loss_cls``.

    Each is multiplied by its weight. The defaults are the FCOS centre-sampling / GIoU recipe
    (all weights 1.0; the o2f recipe weighs its GIoU by 2.0). At test time the detector scores
    sigmoid(cls) * sigmoid(ctr), FCOS's test score, and FCOS needs NMS.
    """

    def __init__(
        self, num_classes: int, *, center_radius: float = 1.5,
        regress_ranges: Sequence[tuple[float, float]] = FCOS_REGRESS_RANGES,
        focal_alpha: float = 0.25, focal_gamma: float = 2.0, cls_weight: float = 1.0,
        bbox_weight: float = 1.0, ctr_weight: float = 1.0,
    ) -> None:
        self.num_classes = num_classes
        self.center_radius = center_radius
        self.regress_ranges = tuple((float(lo), float(hi)) for lo, hi in regress_ranges)
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.cls_weight, self.bbox_weight, self.ctr_weight = cls_weight, bbox_weight, ctr_weight

    def set_epoch(self, epoch: int, max_epoch: int) -> None:
        """No epoch schedule in FCOS."""

    @torch.no_grad()
    def assign(
        self, points: Tensor, strides: Tensor, grids: Sequence[LevelGrid] | None,
        targets: Sequence[dict],
    ) -> tuple[Tensor, Tensor]:
        """Per-image FCOS targets stacked over the batch: labels (B, N), box targets (B, N, 4)."""
        results = [
            fcos_assign(
                points, strides, t["boxes"].to(points), t["labels"].to(points.device),
                self.num_classes, regress_ranges=self.regress_ranges,
                center_radius=self.center_radius, grids=grids,
            )
            for t in targets
        ]
        return tuple(torch.stack(parts) for parts in zip(*results, strict=True))

    def __call__(
        self, cls_logits: Tensor, ltrb: Tensor, ctr_logits: Tensor, points: Tensor,
        strides: Tensor, grids: Sequence[LevelGrid] | None, targets: Sequence[dict],
    ) -> dict[str, Tensor]:
        """Losses of a batch (computed in float32 whatever the autocast state).

        Args:
            cls_logits: (B, N, C); ltrb: (B, N, 4) pixels; ctr_logits: (B, N).
            points: (N, 2); strides: (N,); grids: the level layout of the points (or None).
            targets: per image dicts with ``boxes`` (G, 4) x1, y1, x2, y2 and ``labels`` (G,).

        Returns:
            ``loss_cls``, ``loss_bbox`` and ``loss_ctr``, already multiplied by their weights.
        """
        cls_logits, ltrb, ctr_logits = cls_logits.float(), ltrb.float(), ctr_logits.float()
        points = points.float()
        labels, box_targets = self.assign(points, strides, grids, targets)
        labels = labels.flatten()  # (B N,)
        positive = labels < self.num_classes
        num_pos = reduce_mean(positive.sum().float()).clamp(min=1.0)

        onehot = F.one_hot(labels, self.num_classes + 1)[:, : self.num_classes]
        loss_cls = sigmoid_focal_loss(
            cls_logits.flatten(0, 1), onehot.to(cls_logits.dtype), alpha=self.focal_alpha,
            gamma=self.focal_gamma, reduction="sum",
        ) / num_pos

        batch_points = points.expand(ltrb.shape[0], -1, -1).flatten(0, 1)[positive]
        target_pos = box_targets.flatten(0, 1)[positive]
        ctr_targets = centerness_target(batch_points, target_pos)  # (P,)
        ctr_norm = reduce_mean(ctr_targets.sum()).clamp(min=1e-6)
        pred_boxes = decode_ltrb(points, ltrb).flatten(0, 1)
        if positive.any():
            loss_bbox = giou_loss(pred_boxes[positive], target_pos, ctr_targets, ctr_norm)
            loss_ctr = F.binary_cross_entropy_with_logits(
                ctr_logits.flatten()[positive], ctr_targets, reduction="sum"
            ) / num_pos
        else:  # zero, but connected to the graph (every parameter still gets a gradient)
            loss_bbox = pred_boxes.sum() * 0.0
            loss_ctr = ctr_logits.sum() * 0.0
        return {
            "loss_cls": self.cls_weight * loss_cls,
            "loss_bbox": self.bbox_weight * loss_bbox,
            "loss_ctr": self.ctr_weight * loss_ctr,
        }
