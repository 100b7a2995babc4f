"""A NaN loss stops training with a message naming the iteration and term, or is skipped."""

import pytest
import torch

from o2f.config import load_config
from o2f.engine.checkpoint import load_checkpoint
from o2f.engine.train import NonFiniteLossError, Trainer
from tests.engine.conftest import tiny_overrides


def make_trainer(paths, work, *extra):
    cfg = load_config("demo", tiny_overrides(
        paths, "train.max_iters_per_epoch=2", "train.val_interval=0", *extra))
    return Trainer(cfg, work)


def poison(trainer, at_call: int):
    """Make the criterion's loss_bbox NaN on its ``at_call``-th call (0-based)."""
    criterion = trainer.model.criterion
    original = criterion.__call__
    calls = {"n": 0}

    class Poisoned(type(criterion)):
        def __call__(self, *args, **kwargs):
            out = original(*args, **kwargs)
            if calls["n"] == at_call:
                out["loss_bbox"] = out["loss_bbox"] * float("nan")
            calls["n"] += 1
            return out

    criterion.__class__ = Poisoned


def test_nan_stops_with_the_iteration_and_term_and_keeps_the_last_checkpoint(tiny_coco, tmp_path):
    trainer = make_trainer(tiny_coco, tmp_path, "train.epochs=2")
    poison(trainer, at_call=3)  # second iteration of the second epoch
    with pytest.raises(NonFiniteLossError, match=r"iteration 3 \(epoch 2\): .*loss_bbox=nan"):
        trainer.run()
    state = load_checkpoint(tmp_path / "last.pth")
    assert state["epoch"] == 1 and state["iteration"] == 2  # the good epoch-1 checkpoint


def test_skip_mode_counts_skipped_steps(tiny_coco, tmp_path):
    trainer = make_trainer(tiny_coco, tmp_path, "train.epochs=1", "train.nonfinite=skip")
    poison(trainer, at_call=0)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.run()
    state = load_checkpoint(tmp_path / "last.pth")
    assert state["skipped_steps"] == 1 and state["iteration"] == 2
    changed = [k for k, v in state["model"].items() if not torch.equal(v, before[k])]
    assert changed  # the good step still trained
    # the epoch's mean loss terms are over the steps taken (the one good step), not over
    # both iterations; with log_interval 1 that step is the one logged record
    assert len(trainer.curve) == 1 and len(trainer.history) == 1
    for term in ("loss_cls", "loss_bbox"):
        assert trainer.history[0][term] == pytest.approx(trainer.curve[0][term], rel=1e-9)
        assert trainer.history[0][term] > 0
