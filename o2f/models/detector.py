"""The O2F detector: backbone -> FPN -> head; losses in training, NMS-free detections in eval."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from o2f.assigners import LevelGrid
from o2f.boxes import level_points
from o2f.models.mask_branch import aligned_upsample
from o2f.postprocess import nms_keep, rescale_boxes, select_topk


def _flatten_levels(maps: Sequence[Tensor]) -> Tensor:
    """[(B, K, H_l, W_l)] -> (B, sum H_l W_l, K), each level row-major."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, m.shape[1]) for m in maps], 1)


class O2FDetector(nn.Module):
    """End-to-end dense detector.

    Images are RGB in 0..255 (uint8 or float), either a list of (3, h_i, w_i) tensors or one
    (B, 3, H, W) batch; the model normalises them and pads to a multiple of ``size_divisor``
    with zeros after normalisation.

    Args:
        backbone, neck, head: the network parts (the head has ``strides``).
        criterion: computes the training losses from the flattened maps (None: inference only).
        pixel_mean, pixel_std: RGB normalisation.
        score_thr, nms_pre, max_per_img: NMS-free selection (SPEC §4).
        selection: ``box`` (SPEC §4) or ``authors`` (the o2f authors' CondInst head: threshold
            on sigmoid(cls) alone, top points per level), see :func:`o2f.postprocess.select_topk`.
        nms: apply class-wise NMS at ``nms_iou`` (for comparison only).
        mask_branch, controller, mask_head: the CondInst-style mask modules (all three or none):
            :class:`o2f.models.mask_branch.MaskBranch` on the FPN levels, the controller conv on
            the head's regression tower (:func:`o2f.models.dynamic_mask_head.controller_conv`)
            and :class:`o2f.models.dynamic_mask_head.DynamicMaskHead`. With them, training adds
            the losses of ``mask_criterion`` (:class:`o2f.criterion.CondInstMaskLoss`, which
            needs an o2f / o2o ``criterion``) and each eval result gains ``masks``.
        mask_thr: threshold of the mask probabilities at test time.
        aux_head, aux_criterion: training-only one-to-many head
            (:class:`o2f.models.head.AuxO2MHead`) on the FPN levels and its criterion
            (:class:`o2f.criterion.FCOSCriterion`); their losses join the dict as ``loss_aux_*``
            times ``aux_weight``. Inference never runs them.
    """

    def __init__(
        self, backbone: nn.Module, neck: nn.Module, head: nn.Module, criterion=None, *,
        pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
        pixel_std: Sequence[float] = (58.395, 57.12, 57.375), size_divisor: int = 32,
        score_thr: float = 0.05, nms_pre: int = 1000, max_per_img: int = 100,
        nms: bool = False, nms_iou: float = 0.6, mask_branch: nn.Module | None = None,
        controller: nn.Module | None = None, mask_head: nn.Module | None = None,
        mask_criterion=None, mask_thr: float = 0.5, aux_head: nn.Module | None = None,
        aux_criterion=None, aux_weight: float = 1.0, selection: str = "box",
    ) -> None:
        super().__init__()
        self.backbone, self.neck, self.head = backbone, neck, head
        self.criterion = criterion
        if len({mask_branch is None, controller is None, mask_head is None}) != 1:
            raise ValueError("mask_branch, controller and mask_head go together (all or none)")
        self.mask_branch, self.controller, self.mask_head = mask_branch, controller, mask_head
        self.mask_criterion, self.mask_thr = mask_criterion, mask_thr
        if (aux_head is None) != (aux_criterion is None):
            raise ValueError("aux_head and aux_criterion go together (both or none)")
        self.aux_head, self.aux_criterion, self.aux_weight = aux_head, aux_criterion, aux_weight
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(3, 1, 1), False)
        self.size_divisor = size_divisor
        self.score_thr, self.nms_pre, self.max_per_img = score_thr, nms_pre, max_per_img
        self.nms, self.nms_iou = nms, nms_iou
        self.selection = selection

    @property
    def strides(self) -> tuple[int, ...]:
        return self.head.strides

    @property
    def with_masks(self) -> bool:
        """Whether the model predicts instance masks."""
        return self.mask_head is not None

    def set_epoch(self, epoch: int, max_epoch: int) -> None:
        """Tell the criterion which epoch is being trained (the soft-label schedule)."""
        if self.criterion is not None:
            self.criterion.set_epoch(epoch, max_epoch)

    def preprocess(self, images: Sequence[Tensor] | Tensor) -> tuple[Tensor, Tensor]:
        """Normalise and pad. Returns the batch (B, 3, H, W) float and sizes (B, 2) h, w."""
        if isinstance(images, Tensor):
            x = (images.float() - self.pixel_mean) / self.pixel_std
            h, w = x.shape[-2:]
            pad_h, pad_w = (-h) % self.size_divisor, (-w) % self.size_divisor
            sizes = torch.tensor([[h, w]]).to(x.device, non_blocking=True).expand(x.shape[0], 2)
            return F.pad(x, (0, pad_w, 0, pad_h)), sizes
        if len(images) == 0:
            raise ValueError("empty batch of images")
        # sizes from the host's shapes (no device read), copied without waiting for the device
        shapes = [tuple(img.shape[-2:]) for img in images]
        sizes = torch.tensor(shapes).to(self.pixel_mean.device, non_blocking=True)
        d = self.size_divisor
        height = -(-max(h for h, _ in shapes) // d) * d
        width = -(-max(w for _, w in shapes) // d) * d
        batch = self.pixel_mean.new_zeros((len(images), 3, height, width))
        for i, img in enumerate(images):
            img = img.to(batch.device, non_blocking=True).float()
            batch[i, :, : img.shape[-2], : img.shape[-1]] = (img - self.pixel_mean) / self.pixel_std
        return batch, sizes

    def forward_maps(self, batch: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Normalised batch (B, 3, H, W) -> per-level cls, ltrb and centerness maps."""
        return self.head(self.neck(self.backbone(batch)))

    def forward_mask_maps(self, batch: Tensor):
        """Normalised batch (B, 3, H, W) of a mask model -> per-level cls, ltrb and centerness
        maps as :meth:`forward_maps`, per-level controller outputs (B, P, H_l, W_l), mask
        features (B, num_bases, H_3, W_3) and semantic logits (B, C, H_3, W_3) (training with a
        semantic head only, else None)."""
        return self._mask_maps(self.neck(self.backbone(batch)))

    def _mask_maps(self, feats: Sequence[Tensor]):
        """:meth:`forward_mask_maps` from the FPN levels."""
        cls, ltrb, ctr, reg_feats = self.head.forward_with_reg_feats(feats)
        params = [self.controller(f) for f in reg_feats]
        mask_feats, sem_logits = self.mask_branch(feats)
        return cls, ltrb, ctr, params, mask_feats, sem_logits

    def point_soi(self, points: Sequence[Tensor]) -> Tensor:
        """Size of interest of each point (N,) of the per-level points (relative coordinates)."""
        soi = self.mask_head.sizes_of_interest
        if soi.numel() != len(points):
            raise ValueError(f"{soi.numel()} sizes of interest for {len(points)} levels")
        counts = [p.shape[0] for p in points]  # sizes known on the host: no device read
        return soi.repeat_interleave(torch.tensor(counts).to(soi.device, non_blocking=True),
                                     output_size=sum(counts))

    def level_points(self, maps: Sequence[Tensor]) -> tuple[list[Tensor], Tensor, list[LevelGrid]]:
        """Per-level points (H_l W_l, 2), all strides (N,), and the level layout."""
        sizes = [tuple(m.shape[-2:]) for m in maps]
        points, strides = level_points(sizes, self.strides, device=maps[0].device)
        counts = [h * w for h, w in sizes]
        grids, start = [], 0
        for (h, w), s, n in zip(sizes, self.strides, counts, strict=True):
            grids.append(LevelGrid(start, h, w, float(s), 0.5 * s, 0.5 * s))
            start += n
        return list(points.split(counts)), strides, grids

    def forward(self, images: Sequence[Tensor] | Tensor, targets: Sequence[dict] | None = None):
        """Training: returns the loss dict (targets need ``boxes`` and ``labels`` in the input
        image's pixels, and for a mask model ``masks`` (G, h, w) at the input image's size).
        Eval: returns per image dicts ``boxes`` (K, 4), ``scores`` (K,), ``labels`` (K,),
        rescaled by ``targets[i]["scale_factor"]`` when given, and for a mask model ``masks``
        (K, H0, W0) bool at ``targets[i]["orig_size"]`` (see :meth:`predict_masks`)."""
        batch, sizes = self.preprocess(images)
        feats = self.neck(self.backbone(batch))
        if self.with_masks:
            cls, ltrb, ctr, params, mask_feats, sem_logits = self._mask_maps(feats)
        else:
            cls, ltrb, ctr = self.head(feats)
        points, strides, grids = self.level_points(cls)
        if not self.training:
            # Selection and masks run in fp32 whatever precision the network ran in (autocast
            # off; the maps cast up): bf16 scores would tie and reorder detections.
            with torch.autocast(batch.device.type, enabled=False):
                f32 = [[m.float() for m in maps] for maps in (cls, ltrb, ctr)]
                mask_maps = (([p.float() for p in params], mask_feats.float())
                             if self.with_masks else None)
                return self.postprocess(*f32, points, sizes, targets, mask_maps=mask_maps)
        if targets is None or self.criterion is None:
            raise ValueError("training needs targets and a criterion")
        aux_maps = self.aux_head(feats) if self.aux_head is not None else None
        # Assignment and losses run in fp32 whatever precision the network ran in (autocast
        # off; the maps cast up), so a bf16 / fp16 step assigns exactly as an fp32 one would.
        with torch.autocast(batch.device.type, enabled=False):
            flat = self._flat(cls, ltrb, ctr, points, strides, grids)
            if not self.with_masks:
                losses = self.criterion(*flat, targets)
            else:
                if self.mask_criterion is None:
                    raise ValueError("training a mask model needs a mask_criterion")
                targets = self.mask_criterion.prepare_targets(targets, batch.device)
                losses, gt_index = self.criterion(*flat, targets, return_gt_index=True)
                losses.update(self.mask_criterion(
                    self.mask_head, gt_index, _flatten_levels(params).float(),
                    mask_feats.float(), None if sem_logits is None else sem_logits.float(),
                    flat[3], self.point_soi(points), targets,
                ))
            if aux_maps is not None:
                aux = self.aux_criterion(*self._flat(*aux_maps, points, strides, grids), targets)
                losses.update({f"loss_aux_{k.removeprefix('loss_')}": self.aux_weight * v
                               for k, v in aux.items()})
        return losses

    @staticmethod
    def _flat(cls, ltrb, ctr, points, strides, grids) -> tuple:
        """The criterion's inputs from per-level maps: (B, N, C), (B, N, 4), (B, N) in fp32,
        points (N, 2), strides (N,), grids."""
        return (_flatten_levels(cls).float(), _flatten_levels(ltrb).float(),
                _flatten_levels(ctr).squeeze(-1).float(), torch.cat(points), strides, grids)

    @torch.no_grad()
    def postprocess(
        self, cls, ltrb, ctr, points, sizes, targets=None, mask_maps=None,
    ) -> list[dict[str, Tensor]]:
        """Per-image detections from the maps (see :func:`o2f.postprocess.select_topk`); with
        ``mask_maps`` (the per-level controller outputs and the mask features of
        :meth:`forward_mask_maps`) also the detections' masks, in the same order."""
        keep = 10**9 if self.nms else self.max_per_img  # NMS needs every candidate
        boxes, scores, labels, point_idx = select_topk(
            cls, ltrb, ctr, points, sizes, score_thr=self.score_thr, nms_pre=self.nms_pre,
            max_per_img=keep, selection=self.selection,
        )
        if mask_maps is not None:
            params, mask_feats = _flatten_levels(mask_maps[0]), mask_maps[1]
            flat_points, soi = torch.cat(points), self.point_soi(points)
        results = []
        for b in range(boxes.shape[0]):
            # box: every detection scores > score_thr; authors: any candidate (score > 0) is one
            idx = (scores[b] > (self.score_thr if self.selection == "box" else 0.0)).nonzero()
            idx = idx.squeeze(1)
            if self.nms:
                idx = idx[nms_keep(boxes[b][idx], scores[b][idx], labels[b][idx],
                                   self.nms_iou, self.max_per_img)]
            bx = boxes[b][idx]
            target = targets[b] if targets is not None else None
            if target is not None and "scale_factor" in target:
                bx = rescale_boxes(bx, target["scale_factor"])
            result = {"boxes": bx, "scores": scores[b][idx], "labels": labels[b][idx]}
            if mask_maps is not None:
                pidx = point_idx[b][idx]
                height, width = (int(v) for v in sizes[b].tolist())
                result["masks"] = self.predict_masks(
                    mask_feats[b : b + 1], params[b, pidx], flat_points[pidx], soi[pidx],
                    (height, width), _output_size(height, width, target),
                )
            results.append(result)
        return results

    @torch.no_grad()
    def predict_masks(
        self, mask_feats: Tensor, params: Tensor, centers: Tensor, soi: Tensor,
        image_size: tuple[int, int], out_size: tuple[int, int], chunk: int = 32,
    ) -> Tensor:
        """Binary masks of K detections of one image, as CondInst's inference: dynamic head ->
        sigmoid at the out stride -> :func:`aligned_upsample` to the input resolution -> crop
        to the unpadded image -> bilinear resize (align_corners=False) to ``out_size`` ->
        probability > ``mask_thr``. Computed ``chunk`` detections at a time to bound memory.

        Args:
            mask_feats: (1, num_bases, H_3, W_3) the image's mask features.
            params: (K, P) controller outputs of the detections' points.
            centers: (K, 2) the points; soi: (K,) their levels' sizes of interest.
            image_size: (h, w) of the resized, unpadded input image.
            out_size: (H0, W0) of the output masks (the original image).

        Returns:
            (K, H0, W0) bool.
        """
        height, width = image_size
        out = torch.zeros((params.shape[0], *out_size), dtype=torch.bool, device=params.device)
        zeros = torch.zeros(params.shape[0], dtype=torch.long, device=params.device)
        for s in range(0, params.shape[0], chunk):
            sl = slice(s, s + chunk)
            logits = self.mask_head(mask_feats, params[sl], zeros[sl], centers[sl], soi[sl])
            probs = aligned_upsample(torch.sigmoid(logits)[:, None], self.mask_head.out_stride)
            probs = probs[:, :, :height, :width]
            if tuple(out_size) != (height, width):
                probs = F.interpolate(probs, size=tuple(out_size), mode="bilinear",
                                      align_corners=False)
            out[sl] = probs[:, 0] > self.mask_thr
        return out


def _output_size(height: int, width: int, target: dict | None) -> tuple[int, int]:
    """Size of the output masks: the target's ``orig_size`` (h, w), else the input size divided
    by its ``scale_factor`` (sx, sy), else the input size."""
    if target is not None and "orig_size" in target:
        h0, w0 = (int(v) for v in target["orig_size"])
        return h0, w0
    if target is not None and "scale_factor" in target:
        sx, sy = (float(v) for v in target["scale_factor"])
        return round(height / sy), round(width / sx)
    return height, width
