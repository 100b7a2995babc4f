"""The O2F detector: backbone -> FPN -> head; losses in training, NMS-free detections in eval."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from o2f.assigners import LevelGrid
from o2f.boxes import level_points
from o2f.postprocess import nms_selection, rescale_boxes, select_topk


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
        nms: apply class-wise NMS at ``nms_iou`` (for comparison only).
    """

    def __init__(
        self, backbone: nn.Module, neck: nn.Module, head: nn.Module, criterion=None, *,
        pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
        pixel_std: Sequence[float] = (58.395, 57.12, 57.375), size_divisor: int = 32,
        score_thr: float = 0.05, nms_pre: int = 1000, max_per_img: int = 100,
        nms: bool = False, nms_iou: float = 0.6,
    ) -> None:
        super().__init__()
        self.backbone, self.neck, self.head = backbone, neck, head
        self.criterion = criterion
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(3, 1, 1), False)
        self.size_divisor = size_divisor
        self.score_thr, self.nms_pre, self.max_per_img = score_thr, nms_pre, max_per_img
        self.nms, self.nms_iou = nms, nms_iou

    @property
    def strides(self) -> tuple[int, ...]:
        return self.head.strides

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
            sizes = torch.tensor([[h, w]], device=x.device).expand(x.shape[0], 2)
            return F.pad(x, (0, pad_w, 0, pad_h)), sizes
        if len(images) == 0:
            raise ValueError("empty batch of images")
        sizes = torch.tensor([img.shape[-2:] for img in images], device=self.pixel_mean.device)
        d = self.size_divisor
        height = int(-(-int(sizes[:, 0].max()) // d) * d)
        width = int(-(-int(sizes[:, 1].max()) // d) * d)
        batch = self.pixel_mean.new_zeros((len(images), 3, height, width))
        for i, img in enumerate(images):
            img = img.to(batch.device, non_blocking=True).float()
            batch[i, :, : img.shape[-2], : img.shape[-1]] = (img - self.pixel_mean) / self.pixel_std
        return batch, sizes

    def forward_maps(self, batch: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Normalised batch (B, 3, H, W) -> per-level cls, ltrb and centerness maps."""
        return self.head(self.neck(self.backbone(batch)))

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
        image's pixels). Eval: returns per image dicts ``boxes`` (K, 4), ``scores`` (K,),
        ``labels`` (K,), rescaled by ``targets[i]["scale_factor"]`` when given."""
        batch, sizes = self.preprocess(images)
        cls, ltrb, ctr = self.forward_maps(batch)
        points, strides, grids = self.level_points(cls)
        if self.training:
            if targets is None or self.criterion is None:
                raise ValueError("training needs targets and a criterion")
            return self.criterion(
                _flatten_levels(cls), _flatten_levels(ltrb), _flatten_levels(ctr).squeeze(-1),
                torch.cat(points), strides, grids, targets,
            )
        return self.postprocess(cls, ltrb, ctr, points, sizes, targets)

    @torch.no_grad()
    def postprocess(self, cls, ltrb, ctr, points, sizes, targets=None) -> list[dict[str, Tensor]]:
        """Per-image detections from the maps (see :func:`o2f.postprocess.select_topk`)."""
        keep = 10**9 if self.nms else self.max_per_img  # NMS needs every candidate
        boxes, scores, labels, _ = select_topk(
            cls, ltrb, ctr, points, sizes, score_thr=self.score_thr, nms_pre=self.nms_pre,
            max_per_img=keep,
        )
        results = []
        for b in range(boxes.shape[0]):
            valid = scores[b] > self.score_thr
            det = (boxes[b][valid], scores[b][valid], labels[b][valid])
            if self.nms:
                det = nms_selection(*det, self.nms_iou, self.max_per_img)
            bx = det[0]
            if targets is not None and "scale_factor" in targets[b]:
                bx = rescale_boxes(bx, targets[b]["scale_factor"])
            results.append({"boxes": bx, "scores": det[1], "labels": det[2]})
        return results
