"""``train.precision``: the dtype choice, the refused ``train.amp``, and fp32 assignment and
losses under a bf16 network."""

import pytest
import torch

from o2f.builders import build_detector
from o2f.config import ConfigError, load_config
from o2f.engine import precision
from o2f.engine.precision import autocast_dtype
from o2f.engine.train import Trainer
from tests.engine.conftest import tiny_overrides

CPU = torch.device("cpu")


def test_train_amp_is_refused_with_a_message_naming_train_precision():
    with pytest.raises(ConfigError, match=r"train\.amp.*train\.precision"):
        load_config("demo", ["train.amp=true"])


def test_an_unknown_precision_names_the_key():
    with pytest.raises(ConfigError, match=r"train\.precision"):
        load_config("demo", ["train.precision=fp8"])


def test_the_published_recipes_train_in_fp32_and_small_in_auto():
    for name in ("r50_1x", "r50_3x_ms", "r101_1x", "crowdhuman", "demo"):
        assert load_config(name).train.precision == "fp32", name
    assert load_config("small").train.precision == "auto"


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, None)])
def test_auto_is_bf16_only_where_the_device_computes_it_natively(monkeypatch, native, expected):
    monkeypatch.setattr(precision, "native_bf16", lambda device: native)
    assert autocast_dtype("auto", CPU) is expected
    assert autocast_dtype("bf16", CPU) is torch.bfloat16  # an explicit choice is kept
    assert autocast_dtype("fp32", CPU) is None


def test_fp16_needs_cuda():
    with pytest.raises(ConfigError, match=r"train\.precision=fp16 needs CUDA"):
        autocast_dtype("fp16", CPU)
    assert autocast_dtype("fp16", torch.device("cuda", 0)) is torch.float16


def _batch():
    torch.manual_seed(0)
    images = [torch.rand(3, 96, 128) * 255 for _ in range(2)]
    targets = [{"boxes": torch.tensor([[8.0, 10.0, 60.0, 70.0], [70.0, 20.0, 120.0, 90.0]]),
                "labels": torch.tensor([0, 1])} for _ in range(2)]
    return images, targets


def test_under_bf16_autocast_the_criterion_sees_fp32_maps_and_returns_fp32_losses():
    cfg = load_config("small", ["model.backbone.depth=10"])
    model = build_detector(cfg, 2).train()
    model.set_epoch(0, 12)
    seen = {}
    for name in ("criterion", "aux_criterion"):
        original = getattr(model, name)

        def spy(cls, ltrb, ctr, *rest, _name=name, _original=original, **kw):
            seen[_name] = (cls.dtype, ltrb.dtype, ctr.dtype, torch.is_autocast_enabled("cpu"))
            return _original(cls, ltrb, ctr, *rest, **kw)

        setattr(model, name, spy)
    images, targets = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        head_out = model.head(model.neck(model.backbone(model.preprocess(images)[0])))
        losses = model(images, targets)
    assert head_out[0][0].dtype == torch.bfloat16  # the network itself did run in bf16
    fp32_off = (torch.float32, torch.float32, torch.float32, False)
    assert seen == {"criterion": fp32_off, "aux_criterion": fp32_off}
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


def test_a_bf16_trainer_steps_without_a_scaler_and_logs_its_precision(tiny_coco, tmp_path):
    cfg = load_config("demo", tiny_overrides(
        tiny_coco, "train.precision=bf16", "train.epochs=1", "train.max_iters_per_epoch=2",
        "train.val_interval=0"))
    trainer = Trainer(cfg, tmp_path)
    assert trainer.autocast_dtype is torch.bfloat16 and not trainer.scaler.is_enabled()
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.run()
    assert trainer.iteration == 2
    changed = sum(not torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))
    assert changed > 0
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # master weights
    assert "precision bf16 (train.precision=bf16)" in (tmp_path / "train.log").read_text()
