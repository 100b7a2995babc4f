"""``train.loggers``: one short run logged to TensorBoard, MLflow (its local file store) and
W&B (offline), each read back; the evaluation plots written at the end of training; the errors
for an unknown logger and a missing package."""

from __future__ import annotations

import json
import struct

import pytest

from o2f.config import ConfigError, load_config
from o2f.engine.train import Trainer
from tests.engine.conftest import tiny_overrides

mlflow = pytest.importorskip("mlflow")
wandb = pytest.importorskip("wandb")


@pytest.fixture(scope="module")
def logged_run(tiny_coco, tmp_path_factory):
    """2 iterations and a validation, logged by all three loggers."""
    root = tmp_path_factory.mktemp("loggers")
    work = root / "run_a"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"file:{root / 'mlruns'}")
        mp.setenv("MLFLOW_EXPERIMENT_NAME", "o2f-test")
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_DIR", str(root))
        mp.setenv("WANDB_SILENT", "true")
        cfg = load_config("demo", tiny_overrides(
            tiny_coco, "train.epochs=1", "train.max_iters_per_epoch=2", "train.val_interval=1",
            "train.loggers=[tensorboard,mlflow,wandb]"))
        trainer = Trainer(cfg, work)
        metrics = trainer.run()
    return {"root": root, "work": work, "trainer": trainer, "metrics": metrics}


def test_tensorboard_has_the_losses_lr_and_validation(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logged_run["work"] / "tensorboard"))
    events.Reload()
    curve = logged_run["trainer"].curve
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in curve])
    assert [e.value for e in events.Scalars("train/lr")] == pytest.approx([r["lr"] for r in curve])
    val = events.Scalars("val/bbox_mAP")
    assert [e.step for e in val] == [1]
    assert val[0].value == pytest.approx(logged_run["metrics"]["bbox_mAP"], nan_ok=True)


def test_mlflow_file_store_has_params_metrics_artifacts_and_checkpoint(logged_run, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(f"file:{logged_run['root'] / 'mlruns'}")
    experiment = client.get_experiment_by_name("o2f-test")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run_a"
    params = run.data.params
    assert params["train.epochs"] == "1" and params["model.backbone.depth"] == "10"
    assert params["train.loggers"] == "['tensorboard', 'mlflow', 'wandb']"
    curve = logged_run["trainer"].curve
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(r["iteration"], r["loss"]) for r in curve]
    lrs = client.get_metric_history(run.info.run_id, "train/lr")
    assert [m.value for m in lrs] == pytest.approx([r["lr"] for r in curve])
    assert {"val/bbox_mAP", "val/dup_rate", "train/loss_cls"} <= set(run.data.metrics)
    assert run.data.metrics["val/dup_rate"] == pytest.approx(logged_run["metrics"]["dup_rate"])
    assert run.data.tags["checkpoint"] == str((logged_run["work"] / "last.pth").resolve())
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"loss_curve.png", "metrics.json", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/pr_curves.png" in plots


def read_wandb_records(path):
    """The protobuf records of an offline ``run-*.wandb`` file (a LevelDB-style log: 7-byte
    file header, 32 KiB blocks of chunks with a 7-byte header crc32 / length / type)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    pos, buf, records = 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (length == 0 and kind == 0):
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(buf)
            records.append(record)
            buf = b""
    return records


def test_wandb_offline_run_has_config_history_and_checkpoint(logged_run):
    (path,) = (logged_run["root"] / "wandb").glob("offline-run-*/run-*.wandb")
    records = read_wandb_records(path)
    history = [{"/".join(i.nested_key) or i.key: json.loads(i.value_json)
                for i in r.history.item} for r in records if r.HasField("history")]
    curve = logged_run["trainer"].curve
    assert [h["_step"] for h in history] == [1, 2]
    assert [h["train/loss"] for h in history] == pytest.approx([r["loss"] for r in curve])
    assert [h["train/lr"] for h in history] == pytest.approx([r["lr"] for r in curve])
    assert "val/bbox_mAP" in history[1] and history[1]["epoch"] == 1
    image = {k: v for k, v in history[1].items() if k.startswith("loss_curve")}
    assert "image-file" in json.dumps(image)  # the loss curve as a W&B image
    (run,) = [r.run for r in records if r.HasField("run")]
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert config["train.epochs"] == "1" and config["train.loggers"]
    summary = {i.key: json.loads(i.value_json) for r in records if r.HasField("summary")
               for i in r.summary.update if i.key}
    assert summary["checkpoint"] == str((logged_run["work"] / "last.pth").resolve())


def test_plots_are_written_at_the_end_of_training(logged_run):
    plots = logged_run["work"] / "plots"
    for name in ("pr_curves.png", "f1_curve.png", "confusion_matrix.png", "duplicates.png"):
        assert (plots / name).stat().st_size > 5000, name
    summary = json.loads((plots / "summary.json").read_text())
    assert summary["dup_rate"] == pytest.approx(logged_run["metrics"]["dup_rate"])
    assert 0 <= summary["best_f1"] <= 1


def test_unknown_logger_names_the_key():
    with pytest.raises(ConfigError, match=r"train\.loggers"):
        load_config("demo", ["train.loggers=[tensorboard,comet]"])


def test_missing_package_names_the_extra(monkeypatch):
    import importlib.util

    from o2f.engine import loggers

    real = importlib.util.find_spec
    monkeypatch.setattr(loggers.importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'o2f\[mlflow\]'") as err:
        loggers.build_loggers(["tensorboard", "mlflow"])
    assert "\n" not in str(err.value)
    assert [type(h).__name__ for h in loggers.build_loggers(["wandb", "tensorboard"])] == [
        "WandbLogger", "TensorBoardLogger"]
