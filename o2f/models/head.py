"""The O2F head: FCOS-style shared head whose centerness branch has its own small tower."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _conv_gn_relu(cin: int, cout: int, gn_groups: int) -> list[nn.Module]:
    if cout % gn_groups:
        raise ValueError(f"model.head.gn_groups={gn_groups} must divide {cout} channels")
    conv = nn.Conv2d(cin, cout, 3, padding=1)
    return [conv, nn.GroupNorm(gn_groups, cout), nn.ReLU(inplace=True)]


def _tower(channels: Sequence[int], gn_groups: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for cin, cout in zip(channels[:-1], channels[1:], strict=True):
        layers += _conv_gn_relu(cin, cout, gn_groups)
    return nn.Sequential(*layers)


def _init_head(head: nn.Module, prior_prob: float) -> None:
    """Every conv of ``head`` Normal(0, 0.01) with bias 0, then ``head.conv_cls``'s bias
    -log((1 - prior_prob) / prior_prob) (SPEC §1)."""
    for m in head.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
    nn.init.constant_(head.conv_cls.bias, -math.log((1 - prior_prob) / prior_prob))


class O2FHead(nn.Module):
    """Shared head over all levels.

    Args:
        num_classes: C.
        in_channels: channels of the FPN levels.
        feat_channels: channels of both towers.
        num_convs: conv-GN-ReLU blocks in each tower (4 in the recipe).
        ctr_channels: channels of the centerness branch (64).
        num_ctr_convs: conv-GN-ReLU blocks of the centerness branch (3).
        strides: stride of each level; one learnable scale per level.
        gn_groups: GroupNorm groups.
        prior_prob: initial foreground probability of conv_cls.
    """

    def __init__(
        self, num_classes: int, in_channels: int = 256, feat_channels: int = 256,
        num_convs: int = 4, ctr_channels: int = 64, num_ctr_convs: int = 3,
        strides: Sequence[int] = (8, 16, 32, 64, 128), gn_groups: int = 32,
        prior_prob: float = 0.01,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.strides = tuple(strides)
        tower_channels = [in_channels] + [feat_channels] * num_convs
        self.cls_convs = _tower(tower_channels, gn_groups)
        self.reg_convs = _tower(tower_channels, gn_groups)
        self.ctr_convs = _tower([feat_channels] + [ctr_channels] * num_ctr_convs, gn_groups)
        self.conv_cls = nn.Conv2d(feat_channels, num_classes, 3, padding=1)
        self.conv_reg = nn.Conv2d(feat_channels, 4, 3, padding=1)
        self.conv_centerness = nn.Conv2d(ctr_channels if num_ctr_convs else feat_channels, 1, 3,
                                         padding=1)
        self.scales = nn.Parameter(torch.ones(len(self.strides)))
        _init_head(self, prior_prob)

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """feats [(B, in_channels, H_l, W_l)] -> per level lists of
        cls logits (B, C, H_l, W_l), ltrb distances in pixels (B, 4, H_l, W_l),
        centerness logits (B, 1, H_l, W_l)."""
        cls_out, reg_out, ctr_out, _ = self.forward_with_reg_feats(feats)
        return cls_out, reg_out, ctr_out

    def forward_with_reg_feats(
        self, feats: Sequence[Tensor]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """As :meth:`forward`, plus each level's regression-tower output (B, feat_channels, H_l,
        W_l), the input of the CondInst controller."""
        if len(feats) != len(self.strides):
            raise ValueError(f"head got {len(feats)} levels for strides {self.strides}")
        cls_out, reg_out, ctr_out, reg_feats = [], [], [], []
        for level, (x, stride) in enumerate(zip(feats, self.strides, strict=True)):
            cls_feat = self.cls_convs(x)
            reg_feat = self.reg_convs(x)
            cls_out.append(self.conv_cls(cls_feat))
            reg_out.append(F.relu(self.scales[level] * self.conv_reg(reg_feat)) * stride)
            ctr_out.append(self.conv_centerness(self.ctr_convs(reg_feat)))
            reg_feats.append(reg_feat)
        return cls_out, reg_out, ctr_out, reg_feats


class AuxO2MHead(nn.Module):
    """Training-only one-to-many head on the FPN levels (dual assignment, as in YOLOv10's
    consistent dual assignments and H-DETR's hybrid matching): its own classification and
    regression towers (conv-GN-ReLU blocks) and ``conv_cls`` / ``conv_reg`` /
    ``conv_centerness`` outputs (centerness on the regression tower, FCOS style), trained with
    FCOS's dense assignment. Every point near an object then teaches the backbone and the FPN,
    while the one-to-few head keeps towers of its own for learning to keep one point per
    object (with towers shared between the two, the one-to-few scores inherited the
    one-to-many duplicates: benchmarks/README.md). Only the one-to-few head runs at test time,
    so inference, export and NMS-free decoding do not change.

    Args:
        num_classes: C; in_channels: channels of the FPN levels; feat_channels, num_convs,
        gn_groups: its towers; strides: one per level (one learnable scale each);
        prior_prob: initial foreground probability of ``conv_cls``.
    """

    def __init__(self, num_classes: int, in_channels: int, feat_channels: int, num_convs: int,
                 strides: Sequence[int], gn_groups: int, prior_prob: float = 0.01) -> None:
        super().__init__()
        self.strides = tuple(strides)
        tower_channels = [in_channels] + [feat_channels] * num_convs
        self.cls_convs = _tower(tower_channels, gn_groups)
        self.reg_convs = _tower(tower_channels, gn_groups)
        self.conv_cls = nn.Conv2d(feat_channels, num_classes, 3, padding=1)
        self.conv_reg = nn.Conv2d(feat_channels, 4, 3, padding=1)
        self.conv_centerness = nn.Conv2d(feat_channels, 1, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(len(self.strides)))
        _init_head(self, prior_prob)

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """FPN levels [(B, in_channels, H_l, W_l)] -> per level cls logits (B, C, H_l, W_l),
        ltrb in pixels (B, 4, H_l, W_l), centerness logits (B, 1, H_l, W_l)."""
        cls_out, reg_out, ctr_out = [], [], []
        for level, (x, stride) in enumerate(zip(feats, self.strides, strict=True)):
            reg_feat = self.reg_convs(x)
            cls_out.append(self.conv_cls(self.cls_convs(x)))
            reg_out.append(F.relu(self.scales[level] * self.conv_reg(reg_feat)) * stride)
            ctr_out.append(self.conv_centerness(reg_feat))
        return cls_out, reg_out, ctr_out
