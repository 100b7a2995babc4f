"""CondInst's dynamic mask head: per-instance 1x1 convs whose weights a controller predicts.

Every point of the detection head predicts, with the ``controller`` conv on the regression
tower, the ``num_params`` weights and biases of a small per-instance network (3 layers of 8
channels in CondInst). That network runs on the mask branch's bases concatenated with the
relative coordinates of each mask-feature location to the instance's point, and outputs one
mask logit per location.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from o2f.models.mask_branch import aligned_upsample


def controller_conv(in_channels: int, num_params: int) -> nn.Conv2d:
    """The controller: conv3x3 ``in_channels`` -> ``num_params`` on the head's regression tower
    (as in AdelaiDet's CondInst and the o2f authors' head), Normal(0, 0.01) weights, bias 0."""
    conv = nn.Conv2d(in_channels, num_params, 3, padding=1)
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)
    return conv


class DynamicMaskHead(nn.Module):
    """Mask logits of instances from their controller outputs (no learnable parameters).

    Parameter layout (CondInst's): all layers' weights, then all layers' biases; layer l's
    weight is row-major (out, in). Layer 0 reads ``2 + num_bases`` inputs (the two relative
    coordinates x, y first, then the bases; only the bases without ``rel_coords``), the last
    layer has one output, every other one ``channels``; ReLU between layers. CondInst's 8 bases,
    8 channels and 3 layers give (10 * 8 + 8) + (8 * 8 + 8) + (8 * 1 + 1) = 169 parameters.

    Relative coordinates: (instance point - location) / soi, where the location of mask-feature
    cell (i, j) is ((j + 0.5) s, (i + 0.5) s) for the mask-feature stride s and soi is the
    "size of interest" of the FPN level of the instance's point (CondInst: 64, 128, 256, 512 and
    1024 for P3..P7, i.e. 8 x stride, which is also what the o2f authors' code divides by).

    Args:
        num_bases: channels of the mask features.
        channels: channels of the hidden dynamic layers.
        num_layers: dynamic layers (>= 1).
        sizes_of_interest: soi of each FPN level.
        feat_stride: stride of the mask features (the first FPN level, 8).
        out_stride: stride of the logits (4): the logits are upsampled by
            feat_stride / out_stride with :func:`aligned_upsample`.
        rel_coords: feed the relative coordinates.
    """

    def __init__(
        self, num_bases: int = 8, channels: int = 8, num_layers: int = 3,
        sizes_of_interest: Sequence[float] = (64, 128, 256, 512, 1024), feat_stride: int = 8,
        out_stride: int = 4, rel_coords: bool = True,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"dynamic mask head needs >= 1 layer, got {num_layers}")
        if feat_stride % out_stride:
            raise ValueError(f"mask out stride {out_stride} must divide the mask feature stride "
                             f"{feat_stride}")
        self.num_bases, self.channels, self.num_layers = num_bases, channels, num_layers
        self.feat_stride, self.out_stride = int(feat_stride), int(out_stride)
        self.rel_coords = rel_coords
        self.register_buffer("sizes_of_interest",
                             torch.tensor([float(s) for s in sizes_of_interest]), False)
        dims = [num_bases + (2 if rel_coords else 0)] + [channels] * (num_layers - 1) + [1]
        self.layer_shapes = list(zip(dims[1:], dims[:-1], strict=True))  # (out, in) per layer

    @property
    def num_params(self) -> int:
        """Dynamic parameters per instance (169 for CondInst's head)."""
        return sum(o * i + o for o, i in self.layer_shapes)

    def split_params(self, params: Tensor) -> list[tuple[Tensor, Tensor]]:
        """params (n, num_params) -> per layer (weight (n, out, in), bias (n, out))."""
        if params.dim() != 2 or params.shape[1] != self.num_params:
            raise ValueError(f"expected params (n, {self.num_params}), got {tuple(params.shape)}")
        sizes = [o * i for o, i in self.layer_shapes] + [o for o, _ in self.layer_shapes]
        parts = params.split(sizes, dim=1)
        n, layers = params.shape[0], len(self.layer_shapes)
        return [(parts[k].reshape(n, o, i), parts[layers + k])
                for k, (o, i) in enumerate(self.layer_shapes)]

    def relative_coords(self, centers: Tensor, soi: Tensor, height: int, width: int) -> Tensor:
        """centers (n, 2) x, y of the instances' points, soi (n,) -> (n, 2, height * width), the
        normalised (center - location) of every mask-feature location, row-major."""
        s = self.feat_stride
        ys = (torch.arange(height, device=centers.device, dtype=torch.float32) + 0.5) * s
        xs = (torch.arange(width, device=centers.device, dtype=torch.float32) + 0.5) * s
        loc = torch.stack((xs.repeat(height), ys.repeat_interleave(width)))  # (2, HW)
        return (centers.float()[:, :, None] - loc) / soi.float()[:, None, None]

    def forward(
        self, mask_feats: Tensor, params: Tensor, image_idx: Tensor, centers: Tensor,
        soi: Tensor,
    ) -> Tensor:
        """Mask logits at ``out_stride``, computed in float32 whatever the autocast state.

        Args:
            mask_feats: (B, num_bases, H, W) at ``feat_stride``.
            params: (n, num_params) controller outputs of the instances.
            image_idx: (n,) int64 image of each instance.
            centers: (n, 2) x, y of each instance's point in input pixels.
            soi: (n,) size of interest of each instance's level.

        Returns:
            (n, H * r, W * r) logits with r = feat_stride / out_stride.
        """
        height, width = mask_feats.shape[-2:]
        n = params.shape[0]
        with torch.autocast(mask_feats.device.type, enabled=False):
            x = mask_feats.float()[image_idx].flatten(2)  # (n, C, HW)
            if self.rel_coords:
                x = torch.cat((self.relative_coords(centers, soi, height, width), x), 1)
            layers = self.split_params(params.float())
            for k, (w, b) in enumerate(layers):
                x = torch.baddbmm(b[:, :, None], w, x)
                if k < len(layers) - 1:
                    x = F.relu(x)
            logits = x.view(n, 1, height, width)
            logits = aligned_upsample(logits, self.feat_stride // self.out_stride)
        return logits[:, 0]
