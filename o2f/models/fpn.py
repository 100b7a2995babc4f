"""Feature pyramid P3..P7 on C3..C5, with P6/P7 computed from the P5 output."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


class FPN(nn.Module):
    """1x1 laterals, nearest top-down path, 3x3 outputs; P6 = conv/s2(P5), P7 = conv/s2(relu(P6)).

    Args:
        in_channels: channels of C3, C4, C5.
        out_channels: channels of every output level.
        num_extra: extra stride-2 levels above P5 (2 gives P6 and P7).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, num_extra: int = 2):
        super().__init__()
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels
        )
        self.extra_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1) for _ in range(num_extra)
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """[C3, C4, C5] -> [P3, ..., P7], each (B, out_channels, H_l, W_l)."""
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest"
            )
        outs = [conv(x) for conv, x in zip(self.output_convs, laterals, strict=True)]
        for i, conv in enumerate(self.extra_convs):
            outs.append(conv(outs[-1] if i == 0 else F.relu(outs[-1])))
        return outs
