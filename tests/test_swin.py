"""Swin-T backbone: strides and channels, padding, freezing, weights, parameter groups."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from o2f.builders import build_detector
from o2f.config import ConfigError, load_config
from o2f.engine.optim import LRSchedule, build_optimizer, param_groups, scaled_lr
from o2f.models import PretrainedWeightsUnavailable, SwinBackbone


def swin_block(dim: int, heads: int, window: int = 7) -> int:
    """Parameters of one Swin block from its definition: 2 LayerNorms, qkv and proj linears,
    the relative-position table ((2w - 1)^2 x heads) and the 4x MLP."""
    return (2 * 2 * dim + (dim * 3 * dim + 3 * dim) + (dim * dim + dim)
            + (2 * window - 1) ** 2 * heads + (dim * 4 * dim + 4 * dim) + (4 * dim * dim + dim))


def patch_merging(dim: int) -> int:
    return 2 * 4 * dim + 4 * dim * 2 * dim  # LayerNorm(4C), Linear(4C -> 2C) without bias


PATCH_EMBED = 3 * 96 * 4 * 4 + 96 + 2 * 96  # conv 4x4/4 with bias, LayerNorm


@pytest.fixture(scope="module")
def swin():
    torch.manual_seed(0)
    return SwinBackbone(pretrained=False, frozen_stages=1, drop_path=0.2)


@pytest.mark.parametrize("size", [(97, 131), (64, 64), (33, 7), (224, 224)])
def test_strides_and_channels_on_any_input_size(swin, size):
    h, w = size
    outs = swin.eval()(torch.randn(2, 3, h, w))
    assert swin.out_channels == [192, 384, 768]
    assert [tuple(o.shape) for o in outs] == [
        (2, c, math.ceil(h / s), math.ceil(w / s)) for c, s in zip((192, 384, 768), (8, 16, 32))]
    assert all(torch.isfinite(o).all() for o in outs)


def test_97x131_gives_the_hand_computed_sizes(swin):
    outs = swin.eval()(torch.randn(1, 3, 97, 131))
    assert [o.shape[-2:] for o in outs] == [(13, 17), (7, 9), (4, 5)]


def test_input_is_padded_with_zeros_right_and_bottom_to_the_patch_size(swin):
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        a = swin.eval()(x)
        b = swin(F.pad(x, (0, 1, 0, 3)))  # 100 x 132, a multiple of 4
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


def test_each_output_goes_through_a_fresh_layernorm_and_is_channels_first(swin):
    """weight 1 / bias 0: every (b, :, i, j) vector has mean 0 and variance 1 over channels."""
    assert all(torch.equal(n.weight, torch.ones_like(n.weight)) and not n.bias.any()
               for n in swin.out_norms)
    with torch.no_grad():
        outs = swin.eval()(torch.randn(2, 3, 64, 96))
    for o in outs:
        assert o.is_contiguous()
        torch.testing.assert_close(o.mean(1), torch.zeros_like(o[:, 0]), atol=1e-5, rtol=0)
        torch.testing.assert_close(o.var(1, unbiased=False), torch.ones_like(o[:, 0]),
                                   atol=1e-3, rtol=0)


def test_architecture_is_torchvision_swin_t_and_the_count_matches_its_definition(swin):
    ref = torchvision.models.swin_t()
    ours = {k: v.shape for k, v in swin.state_dict().items() if k.startswith("features.")}
    assert ours == {k: v.shape for k, v in ref.state_dict().items() if k.startswith("features.")}
    blocks = sum(n * swin_block(96 * 2**i, h) for i, (n, h) in
                 enumerate(zip([2, 2, 6, 2], [3, 6, 12, 24])))
    merges = sum(patch_merging(96 * 2**i) for i in range(3))
    out_norms = 2 * (192 + 384 + 768)
    total = PATCH_EMBED + blocks + merges + out_norms
    # torchvision's count less the classifier (final LayerNorm(768) and Linear(768, 1000))
    assert total == 28_288_354 - 2 * 768 - (768 * 1000 + 1000) + out_norms
    assert sum(p.numel() for p in swin.parameters()) == total
    frozen = PATCH_EMBED + 2 * swin_block(96, 3) + patch_merging(96)
    assert sum(p.numel() for p in swin.parameters() if p.requires_grad) == total - frozen


def test_drop_path_rises_linearly_over_the_12_blocks(swin):
    probs = [blk.stochastic_depth.p for i in (1, 3, 5, 7) for blk in swin.features[i]]
    assert probs == pytest.approx([0.2 * k / 11 for k in range(12)])


def test_stage_1_is_really_frozen():
    torch.manual_seed(0)
    bb = SwinBackbone(frozen_stages=1).train()
    frozen, free = bb.features[:3], [*bb.features[3:], bb.out_norms]
    assert not any(p.requires_grad for p in frozen.parameters())
    assert all(p.requires_grad for m in free for p in m.parameters())
    # frozen parts stay in eval mode (no stochastic depth), the others train
    assert not any(m.training for part in frozen for m in part.modules())
    assert all(m.training for m in bb.features[3].modules())
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    opt = torch.optim.AdamW(bb.parameters(), lr=0.1, weight_decay=0.05)
    sum(o.square().mean() for o in bb(torch.randn(2, 3, 64, 64))).backward()
    assert all(p.grad is None for p in frozen.parameters())
    opt.step()
    after = bb.state_dict()
    for k in before:
        if k.startswith(("features.0.", "features.1.", "features.2.")):
            assert torch.equal(before[k], after[k]), k
    for k in ("features.3.0.attn.qkv.weight", "features.4.reduction.weight",
              "features.7.1.mlp.3.bias", "out_norms.0.weight"):
        assert not torch.equal(before[k], after[k]), k


@pytest.mark.parametrize("k, n_frozen_features, n_frozen_norms", [
    (-1, 0, 0), (0, 1, 0), (1, 3, 0), (2, 5, 1), (4, 8, 3)])
def test_frozen_stages_mapping(k, n_frozen_features, n_frozen_norms):
    bb = SwinBackbone(frozen_stages=k)
    frozen = [not any(p.requires_grad for p in m.parameters()) for m in bb.features]
    assert frozen == [i < n_frozen_features for i in range(8)]
    norms = [not n.weight.requires_grad for n in bb.out_norms]
    assert norms == [i < n_frozen_norms for i in range(3)]


def test_pretrained_weights_load_and_a_failed_download_is_a_clear_error(monkeypatch):
    ref = torchvision.models.swin_t()
    weights = torchvision.models.Swin_T_Weights.IMAGENET1K_V1
    monkeypatch.setattr(type(weights), "get_state_dict", lambda self, **kw: ref.state_dict())
    bb = SwinBackbone(pretrained=True)
    assert torch.equal(bb.features[5][3].attn.qkv.weight, ref.features[5][3].attn.qkv.weight)
    assert torch.equal(bb.features[0][0].weight, ref.features[0][0].weight)

    def offline(self, **kw):
        raise OSError("no network")

    monkeypatch.setattr(type(weights), "get_state_dict", offline)
    with pytest.raises(PretrainedWeightsUnavailable,
                       match=r"swin_t-704ceda3\.pth.*model\.backbone\.pretrained=false"):
        SwinBackbone(pretrained=True)


def swin_groups(config="swin_1x"):
    cfg = load_config(config, ["model.backbone.pretrained=false"])
    model = build_detector(cfg, num_classes=80)
    return model, param_groups(model, cfg.optim.weight_decay, cfg.optim.norm_decay)


def test_swin_parameter_groups_by_name():
    model, (decay, no_decay) = swin_groups()
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    # no decay: every trainable LayerNorm (blocks, patch mergings, output norms), the head's
    # GroupNorms and the relative-position bias tables
    for name in ("backbone.features.3.0.norm1.weight", "backbone.features.3.1.norm2.bias",
                 "backbone.features.4.norm.weight", "backbone.out_norms.2.bias",
                 "backbone.features.3.0.attn.relative_position_bias_table",
                 "backbone.features.7.1.attn.relative_position_bias_table",
                 "head.cls_convs.1.weight"):
        assert name in no_decay["names"], name
    # decay: linear weights and biases, the patch merging reductions, FPN, head convs, scales
    for name in ("backbone.features.3.0.attn.qkv.weight", "backbone.features.3.0.attn.qkv.bias",
                 "backbone.features.5.5.attn.proj.bias", "backbone.features.5.0.mlp.0.weight",
                 "backbone.features.7.1.mlp.3.bias", "backbone.features.6.reduction.weight",
                 "neck.lateral_convs.0.weight", "head.conv_cls.bias", "head.scales"):
        assert name in decay["names"], name
    tables = [n for n in no_decay["names"] if n.endswith("relative_position_bias_table")]
    assert len(tables) == 2 + 6 + 2  # one per trainable block (stages 2..4)
    # by hand: LayerNorms 2 x (2 + 6 + 2 blocks) + 2 mergings + 3 outputs = 25, each weight and
    # bias; 10 tables; GroupNorms 4 + 4 + 3 in the head, each weight and bias
    assert len(no_decay["names"]) == 2 * 25 + 10 + 2 * 11
    # 8 per block (qkv, proj, 2 MLP linears: weight and bias), 2 reductions, FPN 8 convs with
    # bias, head 11 tower convs + 3 output convs with bias and the scales
    assert len(decay["names"]) == 8 * 10 + 2 + 2 * 8 + 2 * 14 + 1
    assert not any(n.startswith(("backbone.features.0.", "backbone.features.1.",
                                 "backbone.features.2.")) for g in (decay, no_decay)
                   for n in g["names"])
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert len(decay["names"]) + len(no_decay["names"]) == n_trainable


def test_swin_optimiser_and_schedules_as_published():
    cfg = load_config("swin_1x")
    assert cfg.model.backbone.name == "swin_t" and cfg.model.backbone.drop_path == 0.2
    assert cfg.model.backbone.pretrained and cfg.model.backbone.frozen_stages == 1
    assert scaled_lr(cfg.optim, 16) == pytest.approx(1e-4)
    small = load_config("swin_1x", ["model.backbone.pretrained=false"])
    opt = build_optimizer(build_detector(small, 80), small.optim, 16)
    assert isinstance(opt, torch.optim.AdamW)
    assert [(g["lr"], g["betas"], g["weight_decay"]) for g in opt.param_groups] == [
        (pytest.approx(1e-4), (0.9, 0.999), 0.05), (pytest.approx(1e-4), (0.9, 0.999), 0.0)]
    s = LRSchedule(cfg.optim)
    assert s.factor(0, 0) == pytest.approx(0.001) and s.factor(1000, 0) == 1.0
    assert s.factor(10**5, 7) == 1.0 and s.factor(10**5, 8) == pytest.approx(0.1)
    assert s.factor(10**5, 11) == pytest.approx(0.01) and cfg.train.epochs == 12
    cfg3 = load_config("swin_3x_ms")
    assert cfg3.data.train_short == [640, 800] and cfg3.train.epochs == 36
    assert cfg3.optim.name == "adamw" and cfg3.optim.weight_decay == 0.05
    s3 = LRSchedule(cfg3.optim)
    assert s3.factor(10**6, 23) == 1.0 and s3.factor(10**6, 24) == pytest.approx(0.1)
    assert s3.factor(10**6, 32) == pytest.approx(0.1)
    assert s3.factor(10**6, 33) == pytest.approx(0.01)


def test_backbone_config_keys_are_validated():
    with pytest.raises(ConfigError, match="model.backbone.name"):
        load_config("swin_1x", ["model.backbone.name=swin_b"])
    with pytest.raises(ConfigError, match="model.backbone.drop_path"):
        load_config("swin_1x", ["model.backbone.drop_path=1.0"])
    assert load_config("r50_1x").model.backbone.name == "resnet"


def test_swin_detector_trains_one_step_on_an_odd_size():
    cfg = load_config("swin_1x", ["model.backbone.pretrained=false"])
    torch.manual_seed(0)
    model = build_detector(cfg, num_classes=3).train()
    images = [torch.rand(3, 70, 90) * 255, torch.rand(3, 50, 61) * 255]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[5.0, 5.0, 40.0, 30.0]]), "labels": torch.tensor([2])}]
    losses = model(images, targets)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert model.backbone.features[3][0].attn.relative_position_bias_table.grad is not None
    assert model.backbone.features[1][0].attn.qkv.weight.grad is None
