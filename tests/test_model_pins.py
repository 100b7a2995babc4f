"""Pins of the network's rules and its wiring that the broader model tests leave open (SPEC §1
and §4; the holes found by ``tests/mutants_models.py``). Every expected value is worked out by
hand from the rule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from o2f.assigners import LevelGrid
from o2f.builders import build_backbone, build_detector
from o2f.config import BackboneConfig, load_config
from o2f.models import O2FDetector, O2FHead, ResNetBackbone
from o2f.models.detector import _flatten_levels, _output_size
from o2f.models.head import AuxO2MHead


def _tiny_head(strides=(8, 16, 32, 64, 128)) -> O2FHead:
    return O2FHead(1, in_channels=4, feat_channels=4, num_convs=1, ctr_channels=4,
                   num_ctr_convs=1, strides=strides, gn_groups=1)


def _detector(strides=(8, 16, 32, 64, 128), **kwargs) -> O2FDetector:
    """A detector whose backbone and neck are never run (pre- and post-processing only)."""
    return O2FDetector(nn.Identity(), nn.Identity(), _tiny_head(strides), **kwargs)


def _conv(x, conv):
    return F.conv2d(x, conv.weight, conv.bias, padding=conv.padding)


def _tower(x, seq):
    """conv -> GroupNorm -> ReLU blocks written out with functional ops."""
    mods = list(seq)
    for conv, gn in zip(mods[0::3], mods[1::3], strict=True):
        x = F.relu(F.group_norm(_conv(x, conv), gn.num_groups, gn.weight, gn.bias, gn.eps))
    return x


def _randomise(head: nn.Module, scales: list[float]) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape))
        head.scales.copy_(torch.tensor(scales))


# --- head ---

def test_every_tower_groupnorm_has_the_configured_number_of_groups():
    """GroupNorm(gn_groups) after each tower conv, whatever the channel count (8 and 4 here)."""
    head = O2FHead(2, in_channels=8, feat_channels=8, num_convs=2, ctr_channels=4,
                   num_ctr_convs=2, gn_groups=2)
    aux = AuxO2MHead(2, 8, 8, 2, (8, 16, 32, 64, 128), gn_groups=2)
    norms = [m for h in (head, aux) for m in h.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 2 + 2 + 2 + 2 + 2
    assert [m.num_groups for m in norms] == [2] * 10


def test_controller_features_are_the_regression_tower_output():
    """forward_with_reg_feats returns each level's regression-tower output (the CondInst
    controller's input), not the classification tower's."""
    head = O2FHead(2, in_channels=8, feat_channels=8, num_convs=2, ctr_channels=4,
                   num_ctr_convs=1, gn_groups=2)
    _randomise(head, [1.0] * 5)
    feats = [torch.randn(1, 8, s, s) for s in (4, 2, 1, 1, 1)]
    with torch.no_grad():
        reg_feats = head.forward_with_reg_feats(feats)[3]
        for x, got in zip(feats, reg_feats, strict=True):
            torch.testing.assert_close(got, _tower(x, head.reg_convs))
            assert not torch.allclose(got, _tower(x, head.cls_convs))


def test_aux_head_outputs_by_definition_with_a_scale_per_level():
    """Aux head: cls = conv_cls(cls tower); ltrb = relu(scale_l * conv_reg(reg tower)) *
    stride_l; centerness = conv_centerness(reg tower); one scale negative."""
    head = AuxO2MHead(2, 8, 8, 2, (8, 16, 32, 64, 128), gn_groups=2)
    scales = [1.0, 2.0, -0.5, 3.0, 0.25]
    _randomise(head, scales)
    feats = [torch.randn(1, 8, h, w) for h, w in ((5, 4), (3, 2), (2, 2), (1, 1), (1, 1))]
    with torch.no_grad():
        cls, reg, ctr = head(feats)
    for level, (x, stride) in enumerate(zip(feats, (8, 16, 32, 64, 128), strict=True)):
        reg_feat = _tower(x, head.reg_convs)
        torch.testing.assert_close(cls[level], _conv(_tower(x, head.cls_convs), head.conv_cls))
        torch.testing.assert_close(
            reg[level], F.relu(scales[level] * _conv(reg_feat, head.conv_reg)) * stride)
        torch.testing.assert_close(ctr[level], _conv(reg_feat, head.conv_centerness))
    assert reg[2].abs().sum() > 0  # the negative scale: relu comes after it


# --- detector: preprocessing, points, flattening, selection ---

def test_detector_defaults_are_the_spec_normalisation_and_divisor():
    model = _detector()
    torch.testing.assert_close(model.pixel_mean.flatten(), torch.tensor([123.675, 116.28, 103.53]))
    torch.testing.assert_close(model.pixel_std.flatten(), torch.tensor([58.395, 57.12, 57.375]))
    assert model.size_divisor == 32


def test_padding_reaches_the_next_multiple_of_32_and_no_further():
    """64 x 96 is already a multiple of 32: no padding; 33 x 64 and 64 x 30 pad to 64 x 64."""
    model = _detector()
    img = torch.zeros(3, 64, 96, dtype=torch.uint8)
    assert model.preprocess([img])[0].shape == (1, 3, 64, 96)
    assert model.preprocess(img[None])[0].shape == (1, 3, 64, 96)
    pair = [torch.zeros(3, 33, 64, dtype=torch.uint8), torch.zeros(3, 64, 30, dtype=torch.uint8)]
    batch, sizes = model.preprocess(pair)
    assert batch.shape == (2, 3, 64, 64) and sizes.tolist() == [[33, 64], [64, 30]]


def test_flatten_levels_is_row_major_per_level_in_level_order():
    """Row n of a level is cell (i, j) with n = i * W + j, channels last; P3 rows come first."""
    k, i, j = torch.meshgrid(torch.arange(2), torch.arange(2), torch.arange(3), indexing="ij")
    level0 = (100 * k + 10 * i + j).float()[None]  # (1, 2, 2, 3): value 100 k + 10 i + j
    level1 = torch.tensor([[[[7.0, 8.0]], [[9.0, 6.0]]]])  # (1, 2, 1, 2)
    flat = _flatten_levels([level0, level1])
    want = [[0, 100], [1, 101], [2, 102], [10, 110], [11, 111], [12, 112], [7, 9], [8, 6]]
    assert flat.shape == (1, 8, 2) and flat[0].tolist() == want


def test_level_points_are_cell_centres_and_grids_describe_them():
    """Cell (i, j) of stride s is at ((j + 0.5) s, (i + 0.5) s); levels are concatenated, so the
    second level's grid starts after the first level's H W points."""
    model = _detector(strides=(8, 16))
    maps = [torch.zeros(1, 1, 2, 3), torch.zeros(1, 1, 1, 2)]
    points, strides, grids = model.level_points(maps)
    assert points[0].tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]
    assert points[1].tolist() == [[8, 8], [24, 8]]
    assert strides.tolist() == [8] * 6 + [16] * 2
    assert grids == [LevelGrid(0, 2, 3, 8.0, 4.0, 4.0), LevelGrid(6, 1, 2, 16.0, 8.0, 8.0)]


def _three_boxes(cls_probs, ctr_prob):
    """One level of stride 8, 1 x 3 points at x = 4, 12, 20 (y = 4), each with ltrb (4, 4, 36,
    36): boxes (0, 0, 40, 40), (8, 0, 48, 40), (16, 0, 56, 40); IoU of neighbours 32 / 48 =
    0.67, of the outer two 24 / 56 = 0.43."""
    logit = torch.logit(torch.tensor(cls_probs)).view(1, 1, 1, 3)
    ctr = torch.full((1, 1, 1, 3), math.log(ctr_prob / (1 - ctr_prob)))
    ltrb = torch.tensor([4.0, 4.0, 36.0, 36.0]).view(1, 4, 1, 1).expand(1, 4, 1, 3)
    return [logit], [ltrb], [ctr]


def test_nms_sees_every_candidate_before_the_cap():
    """NMS at 0.6 then max_per_img 2: scores 0.9 / 0.8 / 0.7 keep boxes 0 and 2 (box 1 overlaps
    box 0 by 0.67; box 2 overlaps box 0 by 0.43 only). Capping at 2 before NMS would lose box 2."""
    model = _detector(strides=(8,), nms=True, nms_iou=0.6, max_per_img=2)
    cls, ltrb, ctr = _three_boxes([0.9, 0.8, 0.7], 1 - 1e-6)
    points = model.level_points(cls)[0]
    (det,) = model.postprocess(cls, ltrb, ctr, points, torch.tensor([[64, 64]]))
    assert det["boxes"].tolist() == [[0, 0, 40, 40], [16, 0, 56, 40]]
    torch.testing.assert_close(det["scores"], torch.tensor([0.9, 0.7]), atol=1e-5, rtol=0)


def test_authors_selection_keeps_detections_scoring_below_the_threshold():
    """Authors' selection: the threshold (0.3) applies to sigmoid(cls) alone; a pair with
    sigmoid(cls) 0.9 and sigmoid(ctr) 0.2 is kept with score 0.18."""
    model = _detector(strides=(8,), score_thr=0.3, selection="authors")
    cls, ltrb, ctr = _three_boxes([0.9, 0.1, 0.1], 0.2)
    points = model.level_points(cls)[0]
    (det,) = model.postprocess(cls, ltrb, ctr, points, torch.tensor([[64, 64]]))
    assert det["boxes"].tolist() == [[0, 0, 40, 40]]
    torch.testing.assert_close(det["scores"], torch.tensor([0.18]))


def test_mask_output_size_divides_height_by_sy_and_width_by_sx():
    """scale_factor is (sx, sy): a 40 x 60 input at (0.5, 0.25) came from 160 x 120; an
    orig_size (h, w) wins."""
    assert _output_size(40, 60, {"scale_factor": (0.5, 0.25)}) == (160, 120)
    assert _output_size(40, 60, {"scale_factor": (0.5, 0.25), "orig_size": (7, 9)}) == (7, 9)
    assert _output_size(40, 60, None) == (40, 60)


# --- backbone: frozen stages and norm_eval ---

def _bn_training(stage: nn.Module) -> list[bool]:
    return [m.training for m in stage.modules() if isinstance(m, nn.BatchNorm2d)]


def test_frozen_stages_zero_freezes_the_stem_only():
    bb = ResNetBackbone(depth=10, frozen_stages=0, norm_eval=False).train()
    assert not any(p.requires_grad for p in bb.stem.parameters())
    assert all(p.requires_grad for p in bb.layer1.parameters())
    assert _bn_training(bb.stem) == [False] and all(_bn_training(bb.layer1))


def test_frozen_stages_stay_in_eval_mode_without_norm_eval():
    """frozen_stages=1, norm_eval=False: the stem's and layer1's BatchNorms keep their
    statistics in training, layer2's update them."""
    torch.manual_seed(0)
    bb = ResNetBackbone(depth=10, frozen_stages=1, norm_eval=False).train()
    assert _bn_training(bb.stem) == [False] and not any(_bn_training(bb.layer1))
    assert all(_bn_training(bb.layer2)) and all(_bn_training(bb.layer4))
    stem_mean = bb.stem[1].running_mean.clone()
    layer2_mean = bb.layer2[0].bn1.running_mean.clone()
    bb(torch.randn(2, 3, 64, 64))
    assert torch.equal(bb.stem[1].running_mean, stem_mean)
    assert not torch.equal(bb.layer2[0].bn1.running_mean, layer2_mean)


# --- builders: every model.* / test.* key reaches its module ---

OVERRIDES = [
    "model.strides=[4, 8, 16, 32, 64]", "model.pixel_mean=[100.0, 110.0, 120.0]",
    "model.pixel_std=[50.0, 60.0, 70.0]", "model.size_divisor=64", "model.head.prior_prob=0.05",
    "model.assign.center_radius=2.5", "model.aux.enabled=true", "model.mask.rel_coords=false",
    "model.mask.center_from_mask=false", "model.mask.mask_thr=0.4", "test.nms_iou=0.5",
    "model.num_classes=5",
]


@pytest.fixture(scope="module")
def built():
    """demo_mask (ResNet-10, norm_eval false) with the aux head and non-default values, built
    for 3 classes (the argument wins over model.num_classes)."""
    return build_detector(load_config("demo_mask", OVERRIDES), num_classes=3)


def test_builder_passes_normalisation_divisor_and_nms_iou(built):
    torch.testing.assert_close(built.pixel_mean.flatten(), torch.tensor([100.0, 110.0, 120.0]))
    torch.testing.assert_close(built.pixel_std.flatten(), torch.tensor([50.0, 60.0, 70.0]))
    assert built.size_divisor == 64 and built.nms_iou == 0.5


def test_builder_passes_strides_prior_prob_and_classes_to_the_heads(built):
    """3 classes; prior 0.05: every cls bias (o2f head, aux head, semantic head) is
    -log(0.95 / 0.05)."""
    assert built.head.strides == (4, 8, 16, 32, 64) and built.aux_head.strides == built.strides
    want = -math.log(19.0)
    for bias in (built.head.conv_cls.bias, built.aux_head.conv_cls.bias,
                 built.mask_branch.sem_out.bias):
        torch.testing.assert_close(bias, torch.full((3,), want))


def test_builder_passes_backbone_and_aux_criterion_keys(built):
    assert built.backbone.norm_eval is False and built.backbone.frozen_stages == -1
    assert built.aux_criterion.center_radius == 2.5


def test_builder_passes_the_mask_keys(built):
    assert built.mask_head.rel_coords is False
    assert built.mask_criterion.center_from_mask is False
    assert built.mask_thr == 0.4


def test_builder_passes_the_swin_drop_path():
    """drop_path 0.1: the last of the 12 blocks drops with probability 0.1."""
    swin = build_backbone(BackboneConfig(name="swin_t", pretrained=False, drop_path=0.1))
    assert swin.features[7][-1].stochastic_depth.p == pytest.approx(0.1)


# --- config defaults not set by any shipped YAML ---

def test_defaults_of_the_fcos_aux_and_mask_recipes():
    """FCOS: its ranges, focal 0.25 / 2, centerness weight 1; aux weight 1; mask: CondInst's
    8 bases, 3 dynamic layers of 8 channels, soi 64..512 plus 1024 for P7, stride 4, the
    authors' dice 2 and semantic 1, every point, threshold 0.5."""
    m = load_config(None).model
    assert m.fcos.regress_ranges == [[-1, 64], [64, 128], [128, 256], [256, 512],
                                     [512, math.inf]]
    assert (m.fcos.focal_alpha, m.fcos.focal_gamma, m.loss.ctr_weight) == (0.25, 2.0, 1.0)
    assert m.aux.weight == 1.0
    k = m.mask
    assert (k.num_bases, k.dynamic_layers, k.dynamic_channels, k.out_stride) == (8, 3, 8, 4)
    assert k.sizes_of_interest == [64, 128, 256, 512, 1024]
    assert (k.dice_weight, k.sem_weight, k.max_proposals, k.mask_thr) == (2.0, 1.0, -1, 0.5)
    assert k.rel_coords is True and k.center_from_mask is True
