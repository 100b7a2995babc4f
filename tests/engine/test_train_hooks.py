"""best.pth, early stopping and the pruning of epoch_N.pth, with scripted validation APs."""

import json

import pytest
import torch

from o2f.config import ConfigError, load_config
from o2f.engine import train as train_module
from o2f.engine.checkpoint import load_checkpoint, prune_epoch_checkpoints
from o2f.engine.evaluate import METRIC_KEYS, primary_metric
from o2f.engine.train import Trainer
from tests.engine.conftest import tiny_overrides


def scripted_validation(monkeypatch, aps: list[float]) -> None:
    """Trainer.validate returns bbox_mAP aps[epoch - 1] (the other keys 0)."""
    def validate(self):
        return {**dict.fromkeys(METRIC_KEYS, 0.0), "bbox_mAP": aps[self.epoch - 1]}

    monkeypatch.setattr(Trainer, "validate", validate)


def make_trainer(paths, work, epochs: int, *extra) -> Trainer:
    cfg = load_config("demo", tiny_overrides(
        paths, f"train.epochs={epochs}", "train.max_iters_per_epoch=1", "train.val_interval=1",
        *extra))
    return Trainer(cfg, work)


def read_json(path):
    return json.loads(path.read_text())


def test_best_pth_holds_the_epoch_with_the_best_ap(tiny_coco, tmp_path, monkeypatch):
    scripted_validation(monkeypatch, [0.1, 0.3, 0.2])
    make_trainer(tiny_coco, tmp_path, 3, "train.keep_checkpoints=-1").run()
    best = load_checkpoint(tmp_path / "best.pth")
    assert best["epoch"] == 2 and best["best"]["value"] == 0.3
    epoch_2 = load_checkpoint(tmp_path / "epoch_2.pth")["model"]
    last = load_checkpoint(tmp_path / "last.pth")["model"]
    assert all(torch.equal(v, epoch_2[k]) for k, v in best["model"].items())
    assert any(not torch.equal(v, last[k]) for k, v in best["model"].items())
    metrics = read_json(tmp_path / "metrics.json")
    assert metrics["best_epoch"] == 2 and metrics["best_bbox_mAP"] == 0.3
    assert metrics["bbox_mAP"] == 0.2  # the last validation stays the headline
    log = (tmp_path / "train.log").read_text()
    assert "epoch 2: new best bbox_mAP 0.3000 (previous best 0.1000 at epoch 1)" in log
    assert "stopped_early" not in metrics  # no patience: no early stop recorded
    assert read_json(tmp_path / "dataset_summary.json")["images"] == 6


def test_patience_stops_after_that_many_validations_without_improvement(
        tiny_coco, tmp_path, monkeypatch):
    scripted_validation(monkeypatch, [0.1, 0.3, 0.2, 0.25, 0.5, 0.6])
    make_trainer(tiny_coco, tmp_path, 6, "train.patience=2").run()
    last = load_checkpoint(tmp_path / "last.pth")
    assert last["epoch"] == 4  # epochs 3 and 4 did not beat epoch 2
    history = read_json(tmp_path / "history.json")
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["stopped_early"] is True and "stopped_early" not in history[-2]
    metrics = read_json(tmp_path / "metrics.json")
    assert metrics["stopped_early"] is True and metrics["stopped_epoch"] == 4
    assert metrics["best_epoch"] == 2 and metrics["epochs"] == 4
    log = (tmp_path / "train.log").read_text()
    assert ("early stop after epoch 4: bbox_mAP has not improved for 2 validation(s) "
            "(train.patience=2; best 0.3000 at epoch 2)") in log
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["best.pth", "epoch_4.pth",
                                                               "last.pth"]


def test_an_improvement_restarts_the_patience_count(tiny_coco, tmp_path, monkeypatch):
    # never two validations in a row without improvement: patience 2 never stops the run
    scripted_validation(monkeypatch, [0.1, 0.05, 0.2, 0.15, 0.3])
    make_trainer(tiny_coco, tmp_path, 5, "train.patience=2").run()
    metrics = read_json(tmp_path / "metrics.json")
    assert metrics["epochs"] == 5 and metrics["stopped_early"] is False
    assert metrics["best_epoch"] == 5


def test_an_equal_ap_is_no_improvement(tiny_coco, tmp_path, monkeypatch):
    """A plateau (here AP 0.0 every epoch, as often early on with little data) does not
    move best.pth nor reset the patience count: training stops after `patience` epochs, and
    the stopped epoch is saved as last.pth even off the checkpoint interval."""
    scripted_validation(monkeypatch, [0.0, 0.0, 0.0, 0.0, 0.0])
    make_trainer(tiny_coco, tmp_path, 5, "train.patience=2",
                 "train.checkpoint_interval=10").run()
    metrics = read_json(tmp_path / "metrics.json")
    assert metrics["best_epoch"] == 1 and metrics["stopped_epoch"] == 3
    assert load_checkpoint(tmp_path / "best.pth")["epoch"] == 1
    assert load_checkpoint(tmp_path / "last.pth")["epoch"] == 3


def test_resume_continues_the_best_and_the_patience_count(tiny_coco, tmp_path, monkeypatch):
    scripted_validation(monkeypatch, [0.3, 0.1, 0.2, 0.4])
    make_trainer(tiny_coco, tmp_path, 1, "train.patience=2").run()
    cfg = load_config("demo", tiny_overrides(
        tiny_coco, "train.epochs=4", "train.max_iters_per_epoch=1", "train.val_interval=1",
        "train.patience=2"))
    Trainer(cfg, tmp_path, resume=True).run()
    metrics = read_json(tmp_path / "metrics.json")
    assert metrics["best_epoch"] == 1 and metrics["stopped_epoch"] == 3
    assert load_checkpoint(tmp_path / "best.pth")["epoch"] == 1


def test_patience_needs_validation():
    with pytest.raises(ConfigError, match="train.patience"):
        load_config("demo", ["train.patience=2", "train.val_interval=0"])


def test_the_ranking_metric_follows_the_task():
    assert primary_metric({"bbox_mAP": 0.1}) == "bbox_mAP"
    assert primary_metric({"bbox_mAP": 0.1, "segm_mAP": 0.2}) == "segm_mAP"
    assert primary_metric({"AP": 0.5, "mMR": 0.4, "Recall": 0.9, "JI": 0.7}) == "AP"


@pytest.mark.parametrize("keep, expected", [(1, [3]), (2, [2, 3]), (0, []), (-1, [1, 2, 3])])
def test_keep_checkpoints_leaves_the_newest_epoch_files(tiny_coco, tmp_path, keep, expected):
    make_trainer(tiny_coco, tmp_path, 3, "train.val_interval=0",
                 f"train.keep_checkpoints={keep}").run()
    names = sorted(p.name for p in tmp_path.glob("*.pth"))
    assert names == sorted(["last.pth", *(f"epoch_{n}.pth" for n in expected)])


def test_old_epoch_files_survive_a_failed_save(tiny_coco, tmp_path, monkeypatch):
    trainer = make_trainer(tiny_coco, tmp_path, 2, "train.val_interval=0")
    trainer.train_epoch()
    trainer.save()
    assert (tmp_path / "epoch_1.pth").is_file()

    def failing_save(state, path):
        raise OSError(f"disk full writing {path}")

    monkeypatch.setattr(train_module, "save_checkpoint", failing_save)
    trainer.train_epoch()
    with pytest.raises(OSError, match="disk full"):
        trainer.save()
    assert (tmp_path / "epoch_1.pth").is_file()


def test_pruning_leaves_files_of_later_epochs_alone(tmp_path):
    for n in (1, 2, 3, 10):
        (tmp_path / f"epoch_{n}.pth").write_bytes(b"")
    (tmp_path / "epoch_x.pth").write_bytes(b"")
    deleted = prune_epoch_checkpoints(tmp_path, 1, epoch=3)
    assert sorted(p.name for p in deleted) == ["epoch_1.pth", "epoch_2.pth"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_10.pth", "epoch_3.pth",
                                                          "epoch_x.pth"]
