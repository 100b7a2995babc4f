"""EMA of the weights: the averaging rule by hand, and the EMA as the deployed weights."""

import math

import pytest
import torch
from torch import nn

from o2f.builders import detector_from_checkpoint
from o2f.config import load_config
from o2f.deploy.predict import Detector
from o2f.engine.checkpoint import load_checkpoint
from o2f.engine.ema import ModelEMA, ema_decay
from o2f.engine.train import Trainer
from tests.engine.conftest import tiny_overrides
from tests.engine.test_nonfinite import poison


def _set(module: nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(value)


def test_two_updates_give_the_hand_computed_weights():
    model = nn.Linear(1, 1, bias=False)
    _set(model, 2.0)
    ema = ModelEMA(model, decay=0.5, warmup=0)
    _set(model, 4.0)
    ema.update(model)  # 0.5 * 2 + 0.5 * 4
    assert ema.module.weight.item() == 3.0
    _set(model, 8.0)
    ema.update(model)  # 0.5 * 3 + 0.5 * 8
    assert ema.module.weight.item() == 5.5
    assert ema.updates == 2 and model.weight.item() == 8.0  # the model itself is untouched


def test_the_decay_warms_up_and_buffers_are_averaged_or_copied():
    model = nn.BatchNorm1d(1)
    with torch.no_grad():
        model.running_mean.fill_(0.0)
    ema = ModelEMA(model, decay=0.9, warmup=1)
    d1, d2 = 0.9 * (1 - math.exp(-1)), 0.9 * (1 - math.exp(-2))
    assert ema_decay(0.9, 1, 1) == pytest.approx(d1) and ema_decay(0.9, 0, 1) == 0.9
    for value, batches in ((10.0, 3), (20.0, 7)):
        with torch.no_grad():
            model.running_mean.fill_(value)
            model.num_batches_tracked.fill_(batches)
        ema.update(model)
    expected = (d2 * (d1 * 0.0 + (1 - d1) * 10.0) + (1 - d2) * 20.0)
    assert ema.module.running_mean.item() == pytest.approx(expected, rel=1e-6)
    assert ema.module.num_batches_tracked.item() == 7  # an integer counter is copied
    assert ema.current_decay() == pytest.approx(d2)


def _train(paths, work, *extra):
    cfg = load_config("demo", tiny_overrides(
        paths, "train.epochs=1", "train.max_iters_per_epoch=2", "train.val_interval=0",
        "train.ema=true", "train.ema_decay=0.5", "train.ema_warmup=0", *extra))
    return Trainer(cfg, work)


def test_checkpoints_deploy_the_ema_weights(tiny_coco, tmp_path):
    trainer = _train(tiny_coco, tmp_path)
    trainer.run()
    state = load_checkpoint(tmp_path / "last.pth")
    assert state["ema"]["updates"] == 2
    ema = trainer.ema.module.state_dict()
    raw = trainer.model.state_dict()
    differ = [k for k, v in raw.items() if v.is_floating_point() and not torch.equal(v, ema[k])]
    assert differ  # decay 0.5: the EMA lags the trained weights
    assert all(torch.equal(state["model"][k], v) for k, v in ema.items())
    assert all(torch.equal(state["model_raw"][k], v) for k, v in raw.items())
    model, _, _ = detector_from_checkpoint(tmp_path / "last.pth")  # o2f test, export
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in ema.items())
    detector = Detector.from_checkpoint(tmp_path / "last.pth", device="cpu")  # o2f predict
    conv = "head.conv_cls.weight"
    assert torch.equal(detector.model.state_dict()[conv], ema[conv])
    assert not torch.equal(ema[conv], raw[conv])


def test_a_skipped_nonfinite_step_does_not_update_the_ema(tiny_coco, tmp_path):
    trainer = _train(tiny_coco, tmp_path, "train.nonfinite=skip")
    poison(trainer, at_call=0)
    trainer.run()
    assert trainer.skipped_steps == 1 and trainer.ema.updates == 1


def test_a_step_the_amp_scaler_skips_does_not_update_the_ema(tiny_coco, tmp_path):
    trainer = _train(tiny_coco, tmp_path)
    trainer.scaler = torch.amp.GradScaler("cpu")  # as on CUDA with train.precision=fp16
    param = next(p for p in trainer.model.parameters() if p.requires_grad)
    trainer._step((param * float("inf")).sum())  # inf gradients: the scaler skips the step
    assert trainer.ema.updates == 0
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer._step(param.sum())
    assert trainer.ema.updates == 1
