"""Mask-branch initialisation: ``model.mask.init: authors`` (Normal(0, 0.01) on every conv, what
the authors' ``E2ECondInstHead`` ends up with) and ``adelaidet`` (Kaiming-uniform, a = 1)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from o2f.builders import build_detector
from o2f.config import ConfigError, load_config
from o2f.models.mask_branch import MaskBranch

PRIOR_BIAS = -math.log(0.99 / 0.01)


def branch(init: str) -> MaskBranch:
    """CondInst's sizes: 256 FPN channels, 128 branch channels, 4 tower convs, 8 bases."""
    torch.manual_seed(0)
    return MaskBranch(256, 128, 4, 8, (8, 16, 32), num_classes=80, init=init)


def convs(model: MaskBranch) -> dict[str, nn.Conv2d]:
    """Every conv of the branch but the semantic output conv (same init either way)."""
    return {n: m for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and not n.startswith("sem_out")}


def test_authors_init_is_normal_0_01_on_every_conv_incl_the_bases():
    model = branch("authors")
    found = convs(model)
    # 3 refine + 4 tower 3x3 convs, the 1x1 that outputs the 8 bases, 2 semantic convs
    assert len(found) == 10 and "tower.4" in found and found["tower.4"].kernel_size == (1, 1)
    for name, conv in found.items():
        w = conv.weight
        assert w.mean().abs() < 0.0015, name
        assert w.std().item() == pytest.approx(0.01, rel=0.06), name
        if conv.bias is not None:
            assert torch.equal(conv.bias, torch.zeros_like(conv.bias)), name
    assert found["tower.4"].bias is not None  # the bases conv is the only one with a bias
    assert model.sem_out.weight.std().item() == pytest.approx(0.01, rel=0.06)
    torch.testing.assert_close(model.sem_out.bias, torch.full((80,), PRIOR_BIAS))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert (m.weight == 1).all() and (m.bias == 0).all()


def test_adelaidet_init_is_kaiming_uniform_with_a_1():
    model = branch("adelaidet")
    for name, conv in convs(model).items():
        fan_in = conv.weight[0].numel()
        bound = math.sqrt(3.0 / fan_in)  # gain sqrt(2 / (1 + a^2)) = 1
        w = conv.weight
        assert w.abs().max() <= bound, name
        assert w.std().item() == pytest.approx(1 / math.sqrt(fan_in), rel=0.06), name
    # the initial bases are about 9x larger than with the authors' init (1 / sqrt(128) / 0.01)
    ratio = model.tower[4].weight.std() / branch("authors").tower[4].weight.std()
    assert ratio.item() == pytest.approx(1 / math.sqrt(128) / 0.01, rel=0.1)
    torch.testing.assert_close(model.sem_out.bias, torch.full((80,), PRIOR_BIAS))


def test_unknown_init_is_refused():
    with pytest.raises(ValueError, match="init"):
        MaskBranch(16, 8, 1, 8, init="kaiming")
    with pytest.raises(ConfigError, match="model.mask.init"):
        load_config("demo_mask", ["model.mask.init=kaiming"])


def test_configs_choose_the_init_and_the_builder_passes_it():
    assert load_config(None).model.mask.init == "adelaidet"
    assert load_config("demo_mask").model.mask.init == "adelaidet"
    for name in ("condinst_r50_1x", "condinst_r50_3x_ms"):
        assert load_config(name).model.mask.init == "authors", name
    stds = {}
    for init in ("authors", "adelaidet"):
        torch.manual_seed(0)
        model = build_detector(load_config("demo_mask", [f"model.mask.init={init}"]), 3)
        stds[init] = model.mask_branch.tower[-1].weight.std().item()  # 32 -> 8 bases, 1x1
    assert stds["authors"] == pytest.approx(0.01, rel=0.15)
    assert stds["adelaidet"] == pytest.approx(1 / math.sqrt(32), rel=0.15)
