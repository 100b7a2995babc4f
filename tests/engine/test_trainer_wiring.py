"""The trainer's loop wiring, seen from the model's side (a forward pre-hook on the model):
which images each epoch trains on and in what order, their augmentation, the learning rate
applied at every iteration, and when validation and ``epoch_N.pth`` happen. Each case is small
and hand-computed; found by planting one-line bugs in ``o2f/engine/train.py`` that the rest of
the suite let through (docs/testing.md)."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter

import pytest
import torch

from o2f.config import load_config
from o2f.engine.train import Trainer
from tests.engine.conftest import tiny_overrides

pytestmark = pytest.mark.usefixtures("one_thread")


def _record_batches(trainer: Trainer) -> list[dict]:
    """Per iteration: the epoch, the image ids and a digest of each augmented image tensor, and
    the lr of the first parameter group divided by its ``lr_mult`` (the schedule's lr)."""
    seen: list[dict] = []

    def pre_hook(_module, args):
        images, targets = args
        group = trainer.optimizer.param_groups[0]
        seen.append({
            "epoch": trainer.epoch,
            "ids": [int(t["image_id"]) for t in targets],
            "digests": [hashlib.sha1(img.contiguous().numpy().tobytes()).hexdigest()
                        for img in images],
            "lr": group["lr"] / group.get("lr_mult", 1.0),
        })

    trainer.model.register_forward_pre_hook(pre_hook)
    return seen


def test_every_epoch_shows_each_image_repeat_times_in_a_new_order_with_new_augmentation(
        tiny_coco, tmp_path):
    cfg = load_config("demo", tiny_overrides(
        tiny_coco, "data.repeat=2", "train.epochs=2", "train.val_interval=0",
        "train.keep_checkpoints=0", "data.flip_prob=0.5"))
    trainer = Trainer(cfg, tmp_path / "work")
    seen = _record_batches(trainer)
    trainer.run()
    ids = {img["id"] for img in json.loads(tiny_coco["train_ann"].read_text())["images"]}
    order = {e: [i for r in seen if r["epoch"] == e for i in r["ids"]] for e in (0, 1)}
    for e in (0, 1):  # 6 images x data.repeat 2 = 12 items = 6 batches of 2
        assert Counter(order[e]) == {i: 2 for i in ids}, order[e]
        assert sum(r["epoch"] == e for r in seen) == 6
    assert order[0] != order[1]  # the sampler reshuffles each epoch
    # each item's augmentation is seeded from (seed, epoch, index): an image's augmented
    # versions differ between the epochs (flips of 6 images x 2 passes)
    versions = {e: Counter((i, d) for r in seen if r["epoch"] == e
                           for i, d in zip(r["ids"], r["digests"], strict=True)) for e in (0, 1)}
    assert versions[0] != versions[1]


def test_the_lr_of_each_iteration_follows_the_warmup_and_the_steps(tiny_coco, tmp_path):
    # 6 images / batch 2 = 3 iterations per epoch; warm-up 4 iterations from 0.1 x lr;
    # x0.1 from the 3rd epoch on; no lr scaling by batch
    cfg = load_config("demo", tiny_overrides(
        tiny_coco, "train.epochs=3", "train.val_interval=0", "train.keep_checkpoints=0",
        "optim.lr=0.01", "optim.scale_lr=false", "optim.warmup_iters=4",
        "optim.warmup_ratio=0.1", "optim.steps=[3]", "optim.gamma=0.1"))
    trainer = Trainer(cfg, tmp_path / "work")
    seen = _record_batches(trainer)
    trainer.run()
    # warm-up: 1 - (1 - it / 4) x 0.9 at it = 0..3; then 1; epoch 3 (it 6..8): 0.1
    expected = [0.001, 0.00325, 0.0055, 0.00775, 0.01, 0.01, 0.001, 0.001, 0.001]
    assert [r["lr"] for r in seen] == pytest.approx(expected, rel=1e-9)
    assert [r["lr"] for r in trainer.curve] == pytest.approx(expected, rel=1e-9)


def test_a_cosine_schedule_spans_the_whole_run(tiny_coco, tmp_path):
    cfg = load_config("demo", tiny_overrides(
        tiny_coco, "train.epochs=3", "train.val_interval=0", "train.keep_checkpoints=0",
        "optim.lr=0.01", "optim.scale_lr=false", "optim.warmup_iters=0",
        "optim.schedule=cosine", "optim.min_lr_ratio=0.05"))
    trainer = Trainer(cfg, tmp_path / "work")
    seen = _record_batches(trainer)
    trainer.run()
    total = 9  # 3 epochs x 3 iterations
    expected = [0.01 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * it / total)))
                for it in range(total)]
    assert [r["lr"] for r in seen] == pytest.approx(expected, rel=1e-9)


def test_validation_and_epoch_checkpoints_follow_their_intervals(tiny_coco, tmp_path):
    cfg = load_config("demo", tiny_overrides(
        tiny_coco, "train.epochs=3", "train.max_iters_per_epoch=1", "train.val_interval=2",
        "train.checkpoint_interval=2", "train.keep_checkpoints=-1", "test.score_thr=0.0"))
    work = tmp_path / "work"
    Trainer(cfg, work).run()
    history = json.loads((work / "history.json").read_text())
    # validation after epoch 2 (the interval) and epoch 3 (the last), not after epoch 1
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert ["bbox_mAP" in h for h in history] == [False, True, True]
    assert sorted(p.name for p in work.glob("epoch_*.pth")) == ["epoch_2.pth"]
    assert (work / "last.pth").is_file()


def test_logged_records_and_epoch_summaries_are_means_over_their_iterations(tiny_coco, tmp_path):
    """A log record (every train.log_interval iterations) holds the mean loss terms of the
    iterations since the last record; an epoch's history record the mean over its steps."""
    cfg = load_config("demo", tiny_overrides(
        tiny_coco, "train.epochs=2", "train.val_interval=0", "train.keep_checkpoints=0",
        "train.log_interval=3", "data.repeat=2"))  # 6 iterations per epoch: 2 log records
    trainer = Trainer(cfg, tmp_path / "work")
    steps: list[dict[str, float]] = []
    trainer.model.register_forward_hook(
        lambda _m, _args, out: steps.append({k: float(v) for k, v in out.items()}))
    trainer.run()
    terms = [k for k in steps[0] if k.startswith("loss_")]
    assert len(steps) == 12 and len(trainer.curve) == 4 and len(terms) >= 2

    def mean(rows, key):
        return sum(r[key] for r in rows) / len(rows)

    for n, record in enumerate(trainer.curve):
        window = steps[3 * n: 3 * n + 3]
        assert record["iteration"] == 3 * n + 3
        for key in terms:
            assert record[key] == pytest.approx(mean(window, key), rel=1e-6), (n, key)
        assert record["loss"] == pytest.approx(sum(mean(window, k) for k in terms), rel=1e-6)
    for e, summary in enumerate(trainer.history):
        for key in terms:
            assert summary[key] == pytest.approx(mean(steps[6 * e: 6 * e + 6], key), rel=1e-6)


def test_each_epoch_trains_in_training_mode_whatever_mode_the_model_was_left_in(tiny_coco,
                                                                              tmp_path):
    """A caller (a picture drawn between runs, a hook) may leave the model in eval mode; every
    epoch puts it back in training mode: BatchNorm statistics update, the head returns losses."""
    cfg = load_config("demo", tiny_overrides(
        tiny_coco, "train.epochs=1", "train.max_iters_per_epoch=2", "train.val_interval=0",
        "train.keep_checkpoints=0"))
    trainer = Trainer(cfg, tmp_path / "work")
    trainer.model.eval()
    modes: list[bool] = []
    trainer.model.register_forward_pre_hook(lambda m, _args: modes.append(m.training))
    bn = next(m for m in trainer.model.backbone.modules()
              if isinstance(m, torch.nn.BatchNorm2d))
    stats = bn.running_mean.clone()
    trainer.run()
    assert modes == [True, True]
    assert not torch.equal(stats, bn.running_mean)


def test_keep_checkpoints_zero_never_writes_an_epoch_checkpoint(tiny_coco, tmp_path,
                                                                monkeypatch):
    import o2f.engine.train as train_module

    written: list[str] = []
    real = train_module.save_checkpoint

    def spy(state, path):
        written.append(path.name)
        return real(state, path)

    monkeypatch.setattr(train_module, "save_checkpoint", spy)
    cfg = load_config("demo", tiny_overrides(
        tiny_coco, "train.epochs=2", "train.max_iters_per_epoch=1", "train.val_interval=0",
        "train.keep_checkpoints=0"))
    Trainer(cfg, tmp_path / "work").run()
    assert written == ["last.pth", "last.pth"]  # not epoch_N.pth written and then deleted
