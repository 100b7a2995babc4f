"""The trainer's step reads nothing to the host (issue 15, item 5): the loss terms are summed on
the device and read at the log points, and with ``train.nonfinite=error`` a NaN/inf loss is
noted on the device and raised at the next log point (``tests/engine/test_nonfinite.py``);
``train.nonfinite=skip`` reads one flag per step, as it must decide before the optimizer step.
"""

from __future__ import annotations

import itertools

from o2f.config import load_config
from o2f.engine.train import Trainer
from o2f.profiling import count_host_syncs
from tests.engine.conftest import tiny_overrides


def epoch_syncs(paths, work, iterations: int, *extra: str) -> int:
    """Host syncs of one training epoch of ``iterations`` steps, one log line at its end; the
    batches are read beforehand, so only the trainer's own work is counted."""
    cfg = load_config("demo", tiny_overrides(
        paths, "optim.name=sgd", "train.val_interval=0", "train.log_interval=100",
        f"train.max_iters_per_epoch={iterations}", *extra))
    trainer = Trainer(cfg, work)
    trainer.loader = list(itertools.islice(trainer.loader, iterations))
    with count_host_syncs() as syncs:
        summary = trainer.train_epoch()
    assert trainer.iteration == iterations and summary["loss_cls"] > 0
    return syncs.total


def test_error_mode_steps_do_not_sync(tiny_coco, tmp_path):
    one = epoch_syncs(tiny_coco, tmp_path / "one", 1)
    three = epoch_syncs(tiny_coco, tmp_path / "three", 3)
    assert three == one  # every sync is at the log point or the epoch's end
    assert one <= 6


def test_skip_mode_reads_one_flag_per_step(tiny_coco, tmp_path):
    one = epoch_syncs(tiny_coco, tmp_path / "one", 1, "train.nonfinite=skip")
    three = epoch_syncs(tiny_coco, tmp_path / "three", 3, "train.nonfinite=skip")
    assert three - one == 2
