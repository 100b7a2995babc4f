"""The epoch -> soft-label ceiling wiring through the trainer (SPEC §2): t = 0.6 at the first
epoch, 0.2 at the last, linear in between, set before the epoch's first iteration and given to
the assigner that builds the targets (not only recorded)."""

from __future__ import annotations

import json

import pytest

import o2f.criterion
from o2f.config import load_config
from o2f.engine.train import Trainer
from tests.engine.conftest import tiny_overrides


def test_trainer_sets_the_ceiling_of_each_epoch_before_its_first_iteration(
        tiny_coco, tmp_path, monkeypatch):
    seen: list[tuple[int, float]] = []  # (iteration of the trainer, soft_t of the assigner)
    real = o2f.criterion.o2f_assign_batch
    trainer_box: list[Trainer] = []
    images: list[int] = []  # images in each call

    def spy(*args, **kwargs):
        seen.append((trainer_box[0].iteration, kwargs["soft_t"]))
        images.append(args[2].shape[0])  # cls_logits (B, N, C)
        return real(*args, **kwargs)

    monkeypatch.setattr(o2f.criterion, "o2f_assign_batch", spy)
    cfg = load_config("demo", tiny_overrides(
        tiny_coco, "train.epochs=3", "train.max_iters_per_epoch=1", "train.val_interval=0",
        "train.keep_checkpoints=0"))
    trainer = Trainer(cfg, tmp_path / "work")
    trainer_box.append(trainer)
    trainer.run()
    history = json.loads((tmp_path / "work" / "history.json").read_text())
    assert [h["soft_t"] for h in history] == pytest.approx([0.6, 0.4, 0.2])
    # one call for the whole batch (2 images) in the single iteration of each epoch
    assert [it for it, _ in seen] == [0, 1, 2] and images == [2, 2, 2]
    assert [t for _, t in seen] == pytest.approx([0.6, 0.4, 0.2])


def test_the_recipes_run_the_whole_schedule():
    """The 1x, 3x and CrowdHuman criteria reach 0.2 at their last epoch (12, 36, 50)."""
    from o2f.builders import build_criterion

    for name, epochs in (("r50_1x", 12), ("r50_3x_ms", 36), ("crowdhuman", 50)):
        cfg = load_config(name)
        assert cfg.train.epochs == epochs
        crit = build_criterion(cfg, 2)
        crit.set_epoch(0, cfg.train.epochs)
        assert crit.soft_t == pytest.approx(0.6)
        crit.set_epoch(epochs // 2, cfg.train.epochs)
        assert crit.soft_t == pytest.approx(0.6 - 0.4 * (epochs // 2) / (epochs - 1))
        crit.set_epoch(epochs - 1, cfg.train.epochs)
        assert crit.soft_t == pytest.approx(0.2)
