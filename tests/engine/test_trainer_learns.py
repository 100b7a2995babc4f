"""The trainer's own loop learns: a few dozen iterations of the tiny model on six images make
the logged loss fall and move every trainable parameter. Fast (seconds), so the wiring between
the loader, autocast, the criterion, backward, the optimizer, the schedule and the EMA is
checked in the edit-test loop too; `tests/test_learning.py` (slow) checks the AP it reaches."""

from __future__ import annotations

import pytest
import torch

from o2f.config import load_config
from o2f.engine.train import Trainer
from tests.engine.conftest import tiny_overrides

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("assigner", ["o2f", "fcos"])
def test_the_trainer_makes_the_loss_fall_and_moves_every_parameter(assigner, tiny_coco,
                                                                  tmp_path):
    cfg = load_config("demo", tiny_overrides(
        tiny_coco, f"model.assigner={assigner}", "train.epochs=8", "train.val_interval=0",
        "train.keep_checkpoints=0", "optim.warmup_iters=4", "optim.lr=0.004", "optim.steps=[]",
        "data.flip_prob=0.0"))
    trainer = Trainer(cfg, tmp_path / "work")
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()
              if p.requires_grad}
    trainer.run()
    losses = [r["loss"] for r in trainer.curve]
    assert len(losses) == trainer.iteration == 24
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.8 * first, (first, last)
    params = dict(trainer.model.named_parameters())
    unmoved = [n for n, p in before.items() if torch.equal(params[n].detach(), p)]
    assert not unmoved, unmoved


def test_each_step_applies_the_gradient_of_its_own_batch(tiny_coco, tmp_path):
    """Gradients are cleared between iterations: at every optimizer step a parameter's .grad
    is the gradient of that iteration's backward alone (a tensor hook sees it), not a sum over
    iterations; and there is one step per iteration."""
    cfg = load_config("demo", tiny_overrides(
        tiny_coco, "train.epochs=2", "train.val_interval=0", "train.keep_checkpoints=0"))
    trainer = Trainer(cfg, tmp_path / "work")
    tracked = [p for p in trainer.model.parameters() if p.requires_grad][::7]
    last: dict[int, torch.Tensor] = {}
    for i, p in enumerate(tracked):
        p.register_hook(lambda g, i=i: last.__setitem__(i, g.detach().clone()))
    step, steps = trainer.optimizer.step, []

    def checked_step(*args, **kwargs):
        for i, p in enumerate(tracked):
            torch.testing.assert_close(p.grad, last[i], rtol=0, atol=0)
        steps.append(trainer.iteration)
        return step(*args, **kwargs)

    trainer.optimizer.step = checked_step
    trainer.run()
    assert steps == list(range(6)) and len(last) == len(tracked)
