import math

import pytest
import torch

from o2f.builders import build_detector
from o2f.config import load_config
from o2f.engine.optim import LRSchedule, build_optimizer, param_groups, scaled_lr


def small_cfg(*extra):
    return load_config("demo", ["model.backbone.depth=10", *extra])


def test_no_weight_decay_on_normalisation_layers():
    model = build_detector(small_cfg(), num_classes=3)
    decay, no_decay = param_groups(model, 1e-4, 0.0)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert "backbone.stem.1.weight" in no_decay["names"]  # bn1
    assert "head.cls_convs.1.bias" in no_decay["names"]  # GroupNorm
    assert "head.cls_convs.0.weight" in decay["names"] and "head.scales" in decay["names"]
    assert "head.conv_cls.bias" in decay["names"]
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert len(decay["names"]) + len(no_decay["names"]) == n_trainable


def test_frozen_parameters_are_not_optimised():
    cfg = load_config("r50_1x", ["model.backbone.pretrained=false"])
    model = build_detector(cfg, num_classes=80)
    names = {n for g in param_groups(model, 1e-4, 0.0) for n in g["names"]}
    assert not any(n.startswith(("backbone.stem.", "backbone.layer1.")) for n in names)
    assert "backbone.layer2.0.conv1.weight" in names and "backbone.layer2.0.bn1.weight" in names


def test_lr_scales_linearly_with_the_total_batch():
    cfg = load_config("r50_1x")
    assert scaled_lr(cfg.optim, 16) == pytest.approx(0.01)
    assert scaled_lr(cfg.optim, 4) == pytest.approx(0.0025)
    opt = build_optimizer(build_detector(small_cfg(), 3), small_cfg().optim, 8)
    assert isinstance(opt, torch.optim.AdamW)


def test_warmup_and_step_schedule_1x():
    s = LRSchedule(load_config("r50_1x").optim)  # warm-up 1000 from 0.001, x0.1 at 9 and 12
    assert s.factor(0, 0) == pytest.approx(0.001)
    assert s.factor(500, 0) == pytest.approx(1 - 0.5 * 0.999)
    assert s.factor(1000, 0) == 1.0
    assert s.factor(50_000, 7) == 1.0  # epoch 8 (1-based)
    assert s.factor(60_000, 8) == pytest.approx(0.1)  # start of epoch 9
    assert s.factor(80_000, 11) == pytest.approx(0.01)  # epoch 12
    s3 = LRSchedule(load_config("r50_3x_ms").optim)
    assert s3.factor(10**6, 23) == 1.0 and s3.factor(10**6, 24) == pytest.approx(0.1)
    assert s3.factor(10**6, 33) == pytest.approx(0.01)


def test_apply_sets_every_group():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias]}], lr=0.02)
    s = LRSchedule(load_config("r50_1x").optim)
    assert s.apply(opt, 0, 0) == pytest.approx(0.02 * 0.001)
    assert s.apply(opt, 5000, 8) == pytest.approx(0.002)
    assert all(g["lr"] == pytest.approx(0.002) for g in opt.param_groups)


def test_cosine_schedule_hand_computed_and_follows_the_run_length():
    cfg = load_config("small").optim  # cosine, warm-up 200 from 0.001, min ratio 0.05
    assert cfg.schedule == "cosine"
    s = LRSchedule(cfg, total_iters=1000)
    assert s.factor(0, 0) == pytest.approx(0.001 * (0.05 + 0.95))  # warm-up start, cos = 1
    assert s.factor(500, 5) == pytest.approx(0.05 + 0.95 * 0.5)  # half way: cos(pi / 2) = 0
    assert s.factor(1000, 11) == pytest.approx(0.05)
    assert s.factor(1500, 11) == pytest.approx(0.05)  # past the end: stays at the floor
    assert s.factor(750, 0) == pytest.approx(0.05 + 0.95 * 0.5 * (1 + math.cos(0.75 * math.pi)))
    # The epoch does not matter, only the fraction of the run: twice the iterations, same curve.
    assert LRSchedule(cfg, total_iters=2000).factor(1000, 0) == pytest.approx(s.factor(500, 9))
    with pytest.raises(ValueError, match="optim.schedule=cosine needs the total number of iter"):
        LRSchedule(cfg)


def test_trainer_gives_the_schedule_the_whole_run(tmp_path, tiny_coco):
    from o2f.engine.train import Trainer
    from tests.engine.conftest import tiny_overrides

    cfg = load_config("small", tiny_overrides(tiny_coco, "train.epochs=3", "data.repeat=2",
                                              "data.batch_size=4", "train.val_interval=0"))
    trainer = Trainer(cfg, tmp_path / "work")
    assert len(trainer.train_set) == 6 and trainer.iters_per_epoch() == 3  # ceil(2 * 6 / 4)
    assert trainer.schedule.total_iters == 9
    batches = [b for b in trainer.loader.batch_sampler]
    assert sorted(i for b in batches for i, _seed in b) == list(range(12))  # (index, seed)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_build_optimizer_makes_the_named_optimiser_with_its_settings(name):
    cfg = small_cfg(f"optim.name={name}", "optim.momentum=0.8", "optim.betas=[0.85,0.99]",
                    "optim.lr=0.01", "optim.base_batch_size=16")
    model = build_detector(cfg, 2)
    opt = build_optimizer(model, cfg.optim, 32)  # twice the base batch: lr 0.02
    if name == "sgd":
        assert type(opt) is torch.optim.SGD and opt.defaults["momentum"] == 0.8
    else:
        assert type(opt) is torch.optim.AdamW and opt.defaults["betas"] == (0.85, 0.99)
    assert opt.defaults["lr"] == pytest.approx(0.02)
    assert all(g["lr"] == pytest.approx(0.02) for g in opt.param_groups)
