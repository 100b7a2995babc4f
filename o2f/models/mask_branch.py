"""CondInst's mask branch: P3-P5 fused at the P3 stride into a few mask bases, plus the
auxiliary semantic head used in training, and the "aligned" bilinear upsampling of the mask path.

The layout mirrors the CondInst head of the o2f authors' code (``refine``, ``tower``,
``sem_head``, ``sem_out``), itself AdelaiDet's ``MaskBranch``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def _upsample_axis(x: Tensor, factor: int, dim: int) -> Tensor:
    n = x.shape[dim]
    q = torch.arange(n * factor, device=x.device, dtype=torch.float32)
    pos = ((q - factor // 2) / factor).clamp(0, n - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    shape = [1] * x.dim()
    shape[dim] = -1
    w = (pos - lo).to(x.dtype).view(shape)
    return x.index_select(dim, lo) * (1 - w) + x.index_select(dim, hi) * w


def aligned_upsample(x: Tensor, factor: int) -> Tensor:
    """CondInst's "aligned bilinear" upsampling by an integer factor f: (..., H, W) -> (..., f H,
    f W).

    Input sample i lands exactly on output index ``f i + f // 2``; outputs in between are linear
    interpolations of their two neighbours and outputs beyond the first / last sample repeat it
    (separably along H and W). This is what AdelaiDet's ``aligned_bilinear`` computes (replicate
    padding, ``align_corners=True`` resize to f H + 1, shift by f // 2, crop), written here as
    two gathers.
    """
    if factor < 1 or int(factor) != factor:
        raise ValueError(f"upsampling factor must be a positive integer, got {factor}")
    if factor == 1:
        return x
    return _upsample_axis(_upsample_axis(x, int(factor), x.dim() - 2), int(factor), x.dim() - 1)


INITS = ("adelaidet", "authors")
AUTHORS_INIT_STD = 0.01  # the head's init_cfg in the authors' code


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class MaskBranch(nn.Module):
    """Mask features shared by every instance of an image.

    Each of the first ``len(level_strides)`` FPN levels goes through conv3x3-BN-ReLU to
    ``channels``; coarser levels are upsampled to the first level with :func:`aligned_upsample`
    (and cropped to its size) and summed; a tower of ``num_convs`` conv3x3-BN-ReLU and a 1x1 conv
    gives ``num_bases`` channels at the first level's stride.

    With ``num_classes`` > 0, training also returns the logits of CondInst's auxiliary semantic
    head (two conv3x3-BN-ReLU on P3 and a 1x1 conv to the classes, bias at ``prior_prob``).

    Init (``init``): ``adelaidet``, every conv Kaiming-uniform with a = 1 (AdelaiDet's
    ``conv_with_kaiming_uniform``: bound sqrt(3 / fan_in)) and bias 0; ``authors``, every conv
    Normal(0, 0.01) and bias 0, which is what the o2f authors' ``E2ECondInstHead`` ends up with
    (its ``init_cfg`` Normal(0, 0.01) reaches every ``Conv2d`` of the head; the
    ``kaiming_init`` calls that follow get the ``refine`` / ``mask_tower`` containers, which
    have no ``weight``, and change nothing). Either way the semantic output conv is Normal(0,
    0.01) with the prior bias, and the BatchNorms keep PyTorch's (1, 0).

    Args:
        in_channels: FPN channels.
        channels: channels of the branch (128 in CondInst).
        num_convs: tower convs (4).
        num_bases: output channels (8).
        level_strides: strides of the levels used (P3, P4, P5: 8, 16, 32).
        num_classes: classes of the semantic head, 0 for none.
        prior_prob: initial foreground probability of the semantic head.
        init: ``adelaidet`` or ``authors`` (above).
    """

    def __init__(
        self, in_channels: int, channels: int = 128, num_convs: int = 4, num_bases: int = 8,
        level_strides: Sequence[int] = (8, 16, 32), num_classes: int = 0,
        prior_prob: float = 0.01, init: str = "adelaidet",
    ) -> None:
        super().__init__()
        if init not in INITS:
            raise ValueError(f"mask branch init must be one of {INITS}, got {init!r}")
        self.level_strides = tuple(int(s) for s in level_strides)
        if any(s % self.level_strides[0] for s in self.level_strides):
            raise ValueError(f"mask branch level strides {self.level_strides} must be multiples "
                             "of the first")
        self.stride = self.level_strides[0]
        self.num_bases = num_bases
        self.refine = nn.ModuleList(_conv_bn_relu(in_channels, channels)
                                    for _ in self.level_strides)
        self.tower = nn.Sequential(*(_conv_bn_relu(channels, channels) for _ in range(num_convs)),
                                   nn.Conv2d(channels, num_bases, 1))
        self.sem_head = self.sem_out = None
        if num_classes > 0:
            self.sem_head = nn.Sequential(_conv_bn_relu(in_channels, channels),
                                          _conv_bn_relu(channels, channels))
            self.sem_out = nn.Conv2d(channels, num_classes, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if init == "authors":
                    nn.init.normal_(m.weight, std=AUTHORS_INIT_STD)
                else:
                    nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.sem_out is not None:
            nn.init.normal_(self.sem_out.weight, std=0.01)
            nn.init.constant_(self.sem_out.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, feats: Sequence[Tensor]) -> tuple[Tensor, Tensor | None]:
        """feats [P3, P4, ...] (B, in_channels, H_l, W_l) -> mask features (B, num_bases, H_3,
        W_3) and, in training with a semantic head, semantic logits (B, C, H_3, W_3) (else
        None)."""
        if len(feats) < len(self.level_strides):
            raise ValueError(f"mask branch needs {len(self.level_strides)} levels, got "
                             f"{len(feats)}")
        x = self.refine[0](feats[0])
        height, width = x.shape[-2:]
        for level in range(1, len(self.level_strides)):
            factor = self.level_strides[level] // self.stride
            up = aligned_upsample(self.refine[level](feats[level]), factor)
            x = x + up[..., :height, :width]
        mask_feats = self.tower(x)
        sem = None
        if self.training and self.sem_head is not None:
            sem = self.sem_out(self.sem_head(feats[0]))
        return mask_feats, sem
