"""Training targets and losses from the head's flattened maps.

:class:`O2FCriterion` is the paper (SPEC §2-3); :class:`O2OCriterion` (one-to-one, POTO-style)
and :class:`FCOSCriterion` (one-to-many FCOS) are the baselines that measure what one-to-few
assignment buys. All three take the same inputs, so the detector does not know which it has.
:class:`CondInstMaskLoss` adds the mask losses of a CondInst-style model on top of the o2f / o2o
assignment (which can return the matched gt of each point).

The box criteria assign a whole batch in one call (gts padded to the batch's largest G, see
:func:`pad_targets`) and select the assigned points by weights, not by boolean indexing, so a
training step of the box model never waits for the GPU (``tests/test_host_syncs.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torchvision.ops import sigmoid_focal_loss

from o2f.assigners import (
    FCOS_REGRESS_RANGES,
    LevelGrid,
    fcos_assign_batch,
    o2f_assign_batch,
    soft_label_ceiling,
)
from o2f.boxes import centerness_target, decode_ltrb
from o2f.distributed import reduce_mean
from o2f.losses import dice_loss, giou_loss, soft_focal_loss

if TYPE_CHECKING:
    from o2f.models.dynamic_mask_head import DynamicMaskHead

#: GIoU loss weight of each assigner's published recipe: o2f (SPEC §3) and the o2o baseline that
#: shares its losses use 2.0; FCOS's centre-sampling / GIoU recipe uses 1.0.
RECIPE_BBOX_WEIGHT: dict[str, float] = {"o2f": 2.0, "o2o": 2.0, "fcos": 1.0}


def pad_targets(
    targets: Sequence[dict], device: torch.device, dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """The per-image gts as padded batch tensors (the size from the tensors' shapes, no sync).

    Args:
        targets: per image dicts with ``boxes`` (G_i, 4), ``labels`` (G_i,) and optionally
            ``centers`` (G_i, 2) (in every image or none).

    Returns:
        boxes (B, G, 4) ``dtype``, labels (B, G) int64, valid (B, G) bool (False in the
        padding, which holds zeros), centers (B, G, 2) or None; G = max G_i (may be 0).
    """
    def pad(key: str, dt: torch.dtype) -> Tensor:  # host targets: copied without waiting
        return pad_sequence([t[key].to(device, dt, non_blocking=True) for t in targets],
                            batch_first=True)

    boxes, labels = pad("boxes", dtype), pad("labels", torch.long)
    valid = pad_sequence([torch.ones(t["boxes"].shape[0], dtype=torch.bool, device=device)
                          for t in targets], batch_first=True)
    centers = pad("centers", dtype) if all("centers" in t for t in targets) else None
    return boxes, labels, valid, centers


def _centerness_weights(points: Tensor, box_targets: Tensor, assigned: Tensor) -> Tensor:
    """Centerness target of every assigned point, 0 elsewhere: points (N, 2), box_targets
    (B, N, 4), assigned (B N,) -> (B N,). (An unassigned point's zero box gives a meaningless
    value, replaced by 0; targets carry no gradient.)"""
    batch_points = points.expand(box_targets.shape[0], -1, -1).flatten(0, 1)
    ctr = centerness_target(batch_points, box_targets.flatten(0, 1))
    return torch.where(assigned, ctr, torch.zeros_like(ctr))


class O2FCriterion:
    """One-to-few assignment of the batch, then the soft focal loss and the centerness-weighted
    GIoU loss, normalised by data-parallel means as SPEC §3 says.

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
        with_gt_index: bool = False,
    ) -> tuple[Tensor, ...]:
        """Assignment of the batch in one call (:func:`o2f.assigners.o2f_assign_batch`):
        labels (B, N), box targets (B, N, 4), soft labels (B, N), soft weights (B, N), and with
        ``with_gt_index`` the matched gt row of each point (B, N) (-1: background).

        A target may give ``centers`` (G, 2): the centres of the candidate regions instead of
        the box centres (CondInst's mask centres of mass)."""
        boxes, labels, valid, centers = pad_targets(targets, cls_logits.device, pred_boxes.dtype)
        return o2f_assign_batch(
            points, strides, cls_logits, ctr_logits, pred_boxes, boxes, labels, valid,
            topk=self.topk, alpha=self.alpha, center_radius=self.center_radius,
            soft_t=self.soft_t, soft_weight=self.soft_weight,
            grids=None if grids is None else list(grids), gt_centers=centers,
            return_gt_index=with_gt_index,
        )

    def __call__(
        self, cls_logits: Tensor, ltrb: Tensor, ctr_logits: Tensor, points: Tensor,
        strides: Tensor, grids: Sequence[LevelGrid], targets: Sequence[dict],
        return_gt_index: bool = False,
    ) -> dict[str, Tensor] | tuple[dict[str, Tensor], Tensor]:
        """Losses of a batch.

        Args:
            cls_logits: (B, N, C); ltrb: (B, N, 4) pixels; ctr_logits: (B, N).
            points: (N, 2); strides: (N,); grids: the level layout of the points.
            targets: per image dicts with ``boxes`` (G, 4) x1, y1, x2, y2 and ``labels`` (G,)
                (and optionally ``centers``, see :meth:`assign`).
            return_gt_index: also return the matched gt row of each point (B, N), -1 for
                background (what the mask loss needs).

        Returns:
            ``loss_cls`` and ``loss_bbox``, already multiplied by their weights (and the gt
            index with ``return_gt_index``).
        """
        cls_logits, ltrb, ctr_logits = cls_logits.float(), ltrb.float(), ctr_logits.float()
        pred_boxes = decode_ltrb(points, ltrb)
        labels, box_targets, soft_labels, soft_weights, *gt_index = self.assign(
            cls_logits.detach(), ctr_logits.detach(), pred_boxes.detach(), points, strides,
            grids, targets, with_gt_index=return_gt_index,
        )
        scores = torch.sigmoid(cls_logits) * torch.sigmoid(ctr_logits)[..., None]
        labels, soft_labels, soft_weights = labels.flatten(), soft_labels.flatten(), \
            soft_weights.flatten()
        assigned = labels < self.num_classes
        num_assigned = reduce_mean(assigned.sum().to(scores.dtype)).clamp(min=1.0)
        loss_cls = soft_focal_loss(scores.flatten(0, 1), labels, soft_labels, soft_weights,
                                   num_assigned)

        # GIoU of every point, the unassigned ones at weight 0 (so a batch without assigned
        # points gives 0, still in the graph)
        ctr_targets = _centerness_weights(points, box_targets, assigned)
        ctr_norm = reduce_mean(ctr_targets.sum()).clamp(min=1e-6)
        loss_bbox = giou_loss(pred_boxes.flatten(0, 1), box_targets.flatten(0, 1), ctr_targets,
                              ctr_norm)
        losses = {"loss_cls": self.cls_weight * loss_cls, "loss_bbox": self.bbox_weight * loss_bbox}
        return (losses, gt_index[0]) if return_gt_index else losses


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
    """The one-to-many FCOS baseline: :func:`o2f.assigners.fcos_assign` on every image, then

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
        """FCOS targets of the batch in one call (:func:`o2f.assigners.fcos_assign_batch`):
        labels (B, N), box targets (B, N, 4)."""
        boxes, labels, valid, _ = pad_targets(targets, points.device, points.dtype)
        return fcos_assign_batch(
            points, strides, boxes, labels, valid, self.num_classes,
            regress_ranges=self.regress_ranges, center_radius=self.center_radius, grids=grids,
        )

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

        # one-hot of the labels, background a zero row (a comparison: F.one_hot checks the
        # labels' range with .item() off CUDA)
        onehot = labels[:, None] == torch.arange(self.num_classes, device=labels.device)
        loss_cls = sigmoid_focal_loss(
            cls_logits.flatten(0, 1), onehot.to(cls_logits.dtype), alpha=self.focal_alpha,
            gamma=self.focal_gamma, reduction="sum",
        ) / num_pos

        # every point, the negatives at weight 0 (so a batch without positives gives 0, still
        # in the graph)
        target_boxes = box_targets.flatten(0, 1)
        ctr_targets = _centerness_weights(points, box_targets, positive)  # (B N,)
        ctr_norm = reduce_mean(ctr_targets.sum()).clamp(min=1e-6)
        pred_boxes = decode_ltrb(points, ltrb).flatten(0, 1)
        loss_bbox = giou_loss(pred_boxes, target_boxes, ctr_targets, ctr_norm)
        loss_ctr = F.binary_cross_entropy_with_logits(
            ctr_logits.flatten(), ctr_targets, weight=positive.to(ctr_targets.dtype),
            reduction="sum",
        ) / num_pos
        return {
            "loss_cls": self.cls_weight * loss_cls,
            "loss_bbox": self.bbox_weight * loss_bbox,
            "loss_ctr": self.ctr_weight * loss_ctr,
        }


def _instance_masks(target: dict, index: int) -> Tensor:
    masks = target.get("masks")
    if masks is None:
        raise ValueError(f"model.mask.enabled needs instance masks, but targets[{index}] has no "
                         "'masks' (the dataset must load the annotations' segmentations)")
    if masks.dim() != 3 or masks.shape[0] != target["boxes"].shape[0]:
        raise ValueError(f"targets[{index}]['masks'] must be (G, h, w) with one mask per box "
                         f"(G = {target['boxes'].shape[0]}), got {tuple(masks.shape)}")
    return masks


def mask_centers(masks: Tensor, boxes: Tensor) -> Tensor:
    """Centre of mass of each mask, the box centre for an empty mask.

    Args:
        masks: (G, h, w) bool / uint8 instance masks in input pixels.
        boxes: (G, 4) x1, y1, x2, y2 of the same instances.

    Returns:
        (G, 2) x, y float32 on the device of ``boxes``, with pixel (i, j) at (j + 0.5, i + 0.5),
        the frame in which a box's centre is (x1 + x2) / 2.
    """
    m = masks.to(boxes.device)
    cols = m.sum(1, dtype=torch.float32)  # (G, w)
    rows = m.sum(2, dtype=torch.float32)  # (G, h)
    area = cols.sum(1)
    xs = torch.arange(cols.shape[1], device=m.device, dtype=torch.float32) + 0.5
    ys = torch.arange(rows.shape[1], device=m.device, dtype=torch.float32) + 0.5
    com = torch.stack(((cols * xs).sum(1), (rows * ys).sum(1)), 1) / area.clamp(min=1)[:, None]
    box_centers = (boxes[:, :2].float() + boxes[:, 2:].float()) / 2
    return torch.where(area[:, None] > 0, com, box_centers)


def sample_masks(masks: Tensor, stride: int, size: tuple[int, int]) -> Tensor:
    """Masks (G, h, w) at the image size -> (G, H', W') samples at rows and columns
    ``stride // 2 + k * stride`` (CondInst's targets at the mask stride), zero beyond the image
    (the batch padding); same dtype and device."""
    start = stride // 2
    sub = masks[:, start::stride, start::stride][:, : size[0], : size[1]]
    out = masks.new_zeros((masks.shape[0], *size))
    out[:, : sub.shape[1], : sub.shape[2]] = sub
    return out


def semantic_targets(masks: Tensor, labels: Tensor, num_classes: int, stride: int,
                     size: tuple[int, int]) -> Tensor:
    """CondInst's semantic targets of one image: (H', W') int64, at each location sampled as in
    :func:`sample_masks` the label of the smallest (full-resolution area) mask covering it,
    ``num_classes`` where none does."""
    device = labels.device
    if masks.shape[0] == 0:
        return torch.full(size, num_classes, dtype=torch.long, device=device)
    areas = masks.sum((1, 2), dtype=torch.float32).to(device)
    cover = sample_masks(masks, stride, size).to(device).bool()
    cost = torch.where(cover, areas[:, None, None], float("inf"))
    best, idx = cost.min(0)
    return torch.where(torch.isfinite(best), labels[idx], torch.full_like(idx, num_classes))


class CondInstMaskLoss:
    """Mask losses of the CondInst-style head trained with one-to-few assignment.

    - ``loss_mask``: :func:`o2f.losses.dice_loss` of the mask of every assigned point
      (positives and soft anchors alike, unweighted by their o2f soft weight, as in the o2f
      authors' CondInst head), predicted at the mask head's ``out_stride`` and compared with the
      gt mask of the point's matched gt sampled by :func:`sample_masks`; summed and divided by
      max(1, mean over ranks of the number of those points) (on one process: the authors' mean),
      times ``dice_weight`` (2.0 in the authors' code).
    - ``loss_sem`` (when the mask branch has a semantic head): sigmoid focal loss (alpha 0.25,
      gamma 2) of the semantic logits against :func:`semantic_targets` at the mask-feature
      stride, summed and divided by max(1, mean over ranks of the foreground locations), times
      ``sem_weight``.

    ``max_proposals`` >= 0 caps the points of the dice loss per batch with a random subset
    (CondInst's MAX_PROPOSALS; -1, the authors' setting, keeps all). With ``center_from_mask``
    :meth:`prepare_targets` gives the assigner each instance mask's centre of mass as the centre
    of its candidate region (CondInst's and the authors' centre sampling).
    """

    def __init__(
        self, num_classes: int, *, dice_weight: float = 2.0, sem_weight: float = 1.0,
        max_proposals: int = -1, center_from_mask: bool = True, focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        self.num_classes = num_classes
        self.dice_weight, self.sem_weight = dice_weight, sem_weight
        self.max_proposals = max_proposals
        self.center_from_mask = center_from_mask
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma

    def prepare_targets(self, targets: Sequence[dict], device: torch.device) -> list[dict]:
        """Copies of the targets with their ``masks`` on ``device`` (once, before every use)
        and, with ``center_from_mask``, ``centers`` (G, 2): the masks' centres of mass for the
        assigner. Checks that every target has one mask per box."""
        out = []
        for i, t in enumerate(targets):
            masks = _instance_masks(t, i).to(device, non_blocking=True)
            t = {**t, "masks": masks}
            if self.center_from_mask:
                t["centers"] = mask_centers(masks, t["boxes"].to(device))
            out.append(t)
        return out

    def __call__(
        self, mask_head: DynamicMaskHead, gt_index: Tensor, params: Tensor, mask_feats: Tensor,
        sem_logits: Tensor | None, points: Tensor, point_soi: Tensor, targets: Sequence[dict],
    ) -> dict[str, Tensor]:
        """Mask losses of a batch.

        Args:
            mask_head: the :class:`o2f.models.dynamic_mask_head.DynamicMaskHead`.
            gt_index: (B, N) matched gt row of each point, -1 for background.
            params: (B, N, P) controller outputs of every point.
            mask_feats: (B, num_bases, H, W) mask branch output at the mask head's feat_stride.
            sem_logits: (B, C, H, W) semantic logits or None.
            points: (N, 2) x, y; point_soi: (N,) size of interest of each point's level.
            targets: per image dicts with ``masks`` (G, h, w) at the input image size, rows
                aligned with ``boxes`` and ``labels``.

        Returns:
            ``loss_mask`` (and ``loss_sem``), already multiplied by their weights.
        """
        device = params.device
        img_idx, pt_idx = (gt_index >= 0).nonzero(as_tuple=True)
        if 0 <= self.max_proposals < img_idx.numel():
            pick = torch.randperm(img_idx.numel(), device=device)[: self.max_proposals]
            img_idx, pt_idx = img_idx[pick], pt_idx[pick]
        count = torch.full((), float(img_idx.numel()), device=device)
        num = reduce_mean(count).clamp(min=1.0)
        if img_idx.numel():
            logits = mask_head(mask_feats, params[img_idx, pt_idx], img_idx, points[pt_idx],
                               point_soi[pt_idx])
            gt = self._gt_masks(targets, img_idx, gt_index[img_idx, pt_idx],
                                mask_head.out_stride, tuple(logits.shape[-2:]))
            loss_mask = dice_loss(torch.sigmoid(logits), gt).sum() / num
        else:  # zero, but connected to the graph (every parameter still gets a gradient)
            loss_mask = params.sum() * 0.0 + mask_feats.sum() * 0.0
        losses = {"loss_mask": self.dice_weight * loss_mask}
        if sem_logits is not None:
            losses["loss_sem"] = self.sem_weight * self._semantic_loss(
                sem_logits, targets, mask_head.feat_stride)
        return losses

    def _gt_masks(self, targets: Sequence[dict], img_idx: Tensor, gt_rows: Tensor, stride: int,
                  size: tuple[int, int]) -> Tensor:
        """(M, H', W') float target of each selected point: its gt's mask at ``stride``."""
        sampled = [sample_masks(_instance_masks(t, i), stride, size).to(gt_rows.device)
                   for i, t in enumerate(targets)]
        counts = torch.tensor([0] + [s.shape[0] for s in sampled]).to(gt_rows.device,
                                                                      non_blocking=True)
        offsets = counts.cumsum(0)[:-1]
        return torch.cat(sampled)[offsets[img_idx] + gt_rows].float()

    def _semantic_loss(self, sem_logits: Tensor, targets: Sequence[dict], stride: int) -> Tensor:
        num_classes = sem_logits.shape[1]
        size = tuple(sem_logits.shape[-2:])
        labels = torch.stack([
            semantic_targets(_instance_masks(t, i), t["labels"].to(sem_logits.device),
                             num_classes, stride, size)
            for i, t in enumerate(targets)
        ])  # (B, H, W)
        # (B, C, H, W) one-hot, background all zeros (F.one_hot would check the range with
        # .item() off CUDA)
        onehot = labels[:, None] == torch.arange(num_classes, device=labels.device)[:, None, None]
        num_fg = reduce_mean((labels < num_classes).sum().float()).clamp(min=1.0)
        return sigmoid_focal_loss(sem_logits.float(), onehot.float(), alpha=self.focal_alpha,
                                  gamma=self.focal_gamma, reduction="sum") / num_fg
