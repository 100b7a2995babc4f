"""Parameter groups against the rules of MMCV's ``DefaultOptimizerConstructor`` with the
authors' ``paramwise_cfg`` of each recipe: ``norm_decay_mult=0`` (box configs), ``bias_lr_mult=2,
bias_decay_mult=0`` (CondInst), none (CrowdHuman's AdamW)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from o2f.builders import build_detector
from o2f.config import ConfigError, load_config
from o2f.engine.optim import LRSchedule, build_optimizer, param_groups, set_base_lr

NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
TINY_MASK = ["model.backbone.depth=10", "model.backbone.pretrained=false",
             "model.backbone.frozen_stages=-1", "model.backbone.norm_eval=false",
             "model.fpn.channels=16", "model.head.feat_channels=16", "model.head.num_convs=1",
             "model.head.ctr_channels=8", "model.head.num_ctr_convs=1", "model.head.gn_groups=4",
             "model.mask.enabled=true", "model.mask.branch_channels=8",
             "model.mask.branch_convs=1"]


def mmcv_rules(model: nn.Module, lr: float, wd: float, paramwise: dict) -> dict[str, tuple]:
    """(lr, weight decay) of every trainable parameter as MMCV's constructor sets them: per
    module, for its own parameters, a bias of a non-norm layer gets lr x bias_lr_mult; decay is
    wd x norm_decay_mult in norm layers, else wd x bias_decay_mult for a bias, else wd. No
    paramwise_cfg: every parameter gets (lr, wd)."""
    out = {}
    for prefix, module in model.named_modules():
        is_norm = isinstance(module, NORMS)
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            p_lr, p_wd = lr, wd
            if paramwise:
                if name == "bias" and not is_norm:
                    p_lr = lr * paramwise.get("bias_lr_mult", 1.0)
                if is_norm:
                    p_wd = wd * paramwise.get("norm_decay_mult", 1.0)
                elif name == "bias":
                    p_wd = wd * paramwise.get("bias_decay_mult", 1.0)
            out[f"{prefix}.{name}" if prefix else name] = (p_lr, p_wd)
    return out


def ours(optimizer: torch.optim.Optimizer) -> dict[str, tuple]:
    return {n: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for n in g["names"]}


# the authors' configs (configs/*.py of strongwolf/o2f): optimizer lr, weight_decay, paramwise_cfg
AUTHORS = {
    "r50_1x": ("sgd", 0.01, 1e-4, {"norm_decay_mult": 0.0}),
    "r50_3x_ms": ("sgd", 0.01, 1e-4, {"norm_decay_mult": 0.0}),
    "r101_1x": ("sgd", 0.01, 1e-4, {"norm_decay_mult": 0.0}),
    "condinst_r50_1x": ("sgd", 0.01, 1e-4, {"bias_lr_mult": 2.0, "bias_decay_mult": 0.0}),
    "condinst_r50_3x_ms": ("sgd", 0.01, 1e-4, {"bias_lr_mult": 2.0, "bias_decay_mult": 0.0}),
    "crowdhuman": ("adamw", 4e-5, 1e-4, {}),
}


@pytest.mark.parametrize("config", sorted(AUTHORS))
def test_every_parameter_gets_the_lr_and_decay_of_the_authors_recipe(config):
    name, lr, wd, paramwise = AUTHORS[config]
    cfg = load_config(config)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == (name, lr, wd)
    torch.manual_seed(0)
    masks = "true" if config.startswith("condinst") else "false"
    model = build_detector(load_config(None, [*TINY_MASK, f"model.mask.enabled={masks}"]), 3)
    opt = build_optimizer(model, cfg.optim, 16)  # the base batch: lr unscaled
    got, want = ours(opt), mmcv_rules(model, lr, wd, paramwise)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key]), key


def test_condinst_groups_by_name():
    cfg = load_config("condinst_r50_1x")
    o = cfg.optim
    assert (o.bias_lr_mult, o.bias_decay_mult, o.norm_decay, o.warmup_iters) == (
        2.0, 0.0, 1e-4, 500)
    model = build_detector(load_config("condinst_r50_1x", ["model.backbone.pretrained=false"]),
                           80)
    decay, norm, bias = build_optimizer(model, o, 16).param_groups
    assert (decay["lr"], decay["weight_decay"]) == (pytest.approx(0.01), 1e-4)
    assert (norm["lr"], norm["weight_decay"]) == (pytest.approx(0.01), 1e-4)
    assert (bias["lr"], bias["weight_decay"], bias["lr_mult"]) == (pytest.approx(0.02), 0.0, 2.0)
    for n in ("neck.lateral_convs.0.bias", "head.cls_convs.0.bias", "head.conv_cls.bias",
              "head.conv_centerness.bias", "controller.bias", "mask_branch.tower.4.bias",
              "mask_branch.sem_out.bias"):
        assert n in bias["names"], n
    for n in ("backbone.layer2.0.bn1.bias", "head.cls_convs.1.bias", "mask_branch.refine.0.1.bias",
              "backbone.layer2.0.bn1.weight"):
        assert n in norm["names"], n
    for n in ("head.conv_cls.weight", "head.scales", "mask_branch.tower.4.weight"):
        assert n in decay["names"], n
    assert all(n.endswith(".bias") for n in bias["names"])


@pytest.mark.parametrize("config", ["r50_1x", "r50_3x_ms", "r101_1x", "r101_3x_ms", "swin_1x",
                                    "swin_3x_ms", "demo", "demo_mask", "small"])
def test_recipes_without_bias_multipliers_keep_two_groups(config):
    o = load_config(config).optim
    assert (o.bias_lr_mult, o.bias_decay_mult) == (1.0, 1.0)
    torch.manual_seed(0)
    model = build_detector(load_config(None, TINY_MASK), 3)
    groups = param_groups(model, o.weight_decay, o.norm_decay, o.bias_lr_mult, o.bias_decay_mult)
    before = param_groups(model, o.weight_decay, o.norm_decay)  # the two-group split
    assert len(groups) == 2 and [g["names"] for g in groups] == [g["names"] for g in before]
    assert not any("lr_mult" in g for g in groups)
    assert "head.conv_cls.bias" in groups[0]["names"]


def test_the_schedule_and_a_new_base_lr_keep_the_bias_multiplier():
    cfg = load_config("condinst_r50_1x")
    torch.manual_seed(0)
    model = build_detector(load_config(None, TINY_MASK), 3)
    opt = build_optimizer(model, cfg.optim, 8)  # 8 images: lr 0.005, biases 0.01
    schedule = LRSchedule(cfg.optim)
    for iteration, epoch in ((0, 0), (250, 0), (500, 0), (10**5, 8), (10**5, 11)):
        schedule.apply(opt, iteration, epoch)
        decay, norm, bias = (g["lr"] for g in opt.param_groups)
        assert norm == decay and bias == pytest.approx(2 * decay)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.005 * 0.01)  # x0.1 twice
    set_base_lr(opt, 0.01)
    assert [g["initial_lr"] for g in opt.param_groups] == [0.01, 0.01, 0.02]
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.01, 0.02]
    schedule.apply(opt, 10**5, 8)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.001, 0.001, 0.002])


def test_one_sgd_step_decays_weights_and_norms_but_not_biases():
    """Zero gradients: only weight decay moves a parameter, by lr x decay x value (lr 1.0:
    the recipe's 0.01 at 100 x its base batch)."""
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.GroupNorm(1, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    cfg = load_config("condinst_r50_1x").optim
    opt = build_optimizer(model, cfg, 1600)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    # conv weight: 1.0 x 1e-4; GroupNorm weight and bias: 1.0 x 1e-4; conv bias: no decay
    for p in (model[0].weight, model[1].weight, model[1].bias):
        torch.testing.assert_close(p, torch.full_like(p, 1 - 1e-4), rtol=0, atol=1e-7)
    assert (model[0].bias == 1.0).all()


def test_bias_multipliers_are_validated():
    with pytest.raises(ConfigError, match="optim.bias_lr_mult"):
        load_config(None, ["optim.bias_lr_mult=0"])
    with pytest.raises(ConfigError, match="optim.bias_decay_mult"):
        load_config(None, ["optim.bias_decay_mult=-1"])


@pytest.mark.parametrize("lr_mult, decay_mult", [(2.0, 1.0), (1.0, 0.0)])
def test_either_bias_multiplier_alone_makes_the_bias_group(lr_mult, decay_mult):
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.GroupNorm(1, 2))
    groups = param_groups(model, 0.1, 0.0, lr_mult, decay_mult)
    assert [g["names"] for g in groups] == [["0.weight"], ["1.weight", "1.bias"], ["0.bias"]]
    assert groups[2]["lr_mult"] == lr_mult and groups[2]["weight_decay"] == 0.1 * decay_mult
