"""Experiment trackers as training hooks (``train.loggers``): TensorBoard (the default), MLflow
and Weights & Biases.

Each logger records, on rank 0 only:

- the run's parameters: every config key, flattened (``model.backbone.depth`` ...);
- per logged iteration (``train.log_interval``): the loss terms, their sum ``loss`` and the
  learning rate, as ``train/<name>`` at step = iteration;
- each validation's headline metrics as ``val/<name>`` (step = epoch for TensorBoard, the
  iteration for MLflow and W&B, with ``epoch`` alongside);
- at the end: the loss curve picture (``loss_curve.png``) and the final checkpoint's path
  (``WORK_DIR/last.pth``; the file itself is not uploaded).

Where the runs go: TensorBoard to ``WORK_DIR/tensorboard``; MLflow to ``MLFLOW_TRACKING_URI``
(MLflow's own default when unset; a ``file:`` URI, MLflow's local file store, is allowed
without ``MLFLOW_ALLOW_FILE_STORE``), experiment ``MLFLOW_EXPERIMENT_NAME`` (default ``o2f``);
W&B to project ``WANDB_PROJECT`` (default ``o2f``), its files under ``WANDB_DIR`` (default the
work dir), ``WANDB_MODE=offline`` for no network. A run is named after the work dir.
"""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING, Any

from o2f.config import LOGGERS, Config, ConfigError
from o2f.engine.evaluate import headline_keys
from o2f.engine.hooks import Hook

if TYPE_CHECKING:
    from o2f.engine.train import Trainer

_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def flat_params(cfg: Config) -> dict[str, str]:
    """Every config key as ``section.key`` -> its value as text (lists as YAML-like text)."""
    out: dict[str, str] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = str(v)

    walk(cfg.to_dict(), "")
    return out


def _scalars(record: dict[str, float]) -> dict[str, float]:
    """A training-log record's values but the iteration, as ``train/<name>``."""
    return {f"train/{k}": float(v) for k, v in record.items() if k != "iteration"}


def _val_scalars(metrics: dict) -> dict[str, float]:
    return {f"val/{k}": float(metrics[k]) for k in headline_keys(metrics)}


class TensorBoardLogger(Hook):
    """Scalars to ``WORK_DIR/tensorboard`` (``torch.utils.tensorboard``)."""

    def __init__(self) -> None:
        self.writer = None

    def before_train(self, trainer: Trainer) -> None:
        if trainer.main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(trainer.work_dir / "tensorboard"))
            self.writer.add_text("config", "\n".join(
                f"    {k}: {v}" for k, v in flat_params(trainer.cfg).items()))

    def after_log(self, trainer: Trainer, record: dict[str, float]) -> None:
        if self.writer is not None:
            for k, v in _scalars(record).items():
                self.writer.add_scalar(k, v, record["iteration"])

    def after_validation(self, trainer: Trainer, metrics: dict, summary: dict) -> None:
        if self.writer is not None and metrics:
            for k, v in _val_scalars(metrics).items():
                self.writer.add_scalar(k, v, trainer.epoch)

    def after_train(self, trainer: Trainer, metrics: dict) -> None:
        if self.writer is not None:
            self.writer.add_text("checkpoint", str(trainer.work_dir / "last.pth"))
            self.writer.close()
            self.writer = None


class MLflowLogger(Hook):
    """An MLflow run: parameters, ``train/*`` and ``val/*`` metrics, ``loss_curve.png`` and
    ``metrics.json`` as artifacts, the final checkpoint's path as the ``checkpoint`` tag."""

    def __init__(self) -> None:
        self.client = None
        self.run_id: str | None = None

    def before_train(self, trainer: Trainer) -> None:
        if not trainer.main:
            return
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if uri and uri.startswith("file:"):  # asked for by name: MLflow 3 refuses it otherwise
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "o2f")
        experiment = self.client.get_experiment_by_name(name)
        exp_id = (experiment.experiment_id if experiment is not None
                  else self.client.create_experiment(name))
        run = self.client.create_run(exp_id, run_name=trainer.work_dir.resolve().name,
                                     tags={"work_dir": str(trainer.work_dir.resolve())})
        self.run_id = run.info.run_id
        self.client.log_batch(self.run_id, params=[
            Param(k, v[:6000]) for k, v in flat_params(trainer.cfg).items()])
        trainer.log.info("mlflow: run %s in experiment '%s' (%s)", self.run_id, name,
                         self.client.tracking_uri)

    def _log(self, values: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[
            Metric(k, v, now, step) for k, v in values.items()])

    def after_log(self, trainer: Trainer, record: dict[str, float]) -> None:
        if self.run_id is not None:
            self._log(_scalars(record), int(record["iteration"]))

    def after_validation(self, trainer: Trainer, metrics: dict, summary: dict) -> None:
        if self.run_id is not None and metrics:
            self._log({**_val_scalars(metrics), "epoch": float(trainer.epoch)},
                      trainer.iteration)

    def after_train(self, trainer: Trainer, metrics: dict) -> None:
        if self.run_id is None:
            return
        self.client.set_tag(self.run_id, "checkpoint", str((trainer.work_dir / "last.pth")
                                                           .resolve()))
        for name in ("loss_curve.png", "metrics.json"):
            if (trainer.work_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(trainer.work_dir / name))
        if (trainer.work_dir / "plots").is_dir():  # EvaluationPlots runs before the loggers
            self.client.log_artifacts(self.run_id, str(trainer.work_dir / "plots"), "plots")
        self.client.set_terminated(self.run_id)
        self.run_id = None


class WandbLogger(Hook):
    """A W&B run: config, ``train/*`` and ``val/*`` at step = iteration, the loss curve as an
    image, the final checkpoint's path in the run summary (``checkpoint``)."""

    def __init__(self) -> None:
        self.run = None

    def before_train(self, trainer: Trainer) -> None:
        if not trainer.main:
            return
        import wandb

        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "o2f"),
            name=trainer.work_dir.resolve().name,
            dir=os.environ.get("WANDB_DIR", str(trainer.work_dir)),
            config=flat_params(trainer.cfg), settings=wandb.Settings(console="off"),
            reinit="finish_previous")

    def after_log(self, trainer: Trainer, record: dict[str, float]) -> None:
        if self.run is not None:
            self.run.log(_scalars(record), step=int(record["iteration"]))

    def after_validation(self, trainer: Trainer, metrics: dict, summary: dict) -> None:
        if self.run is not None and metrics:
            self.run.log({**_val_scalars(metrics), "epoch": trainer.epoch},
                         step=trainer.iteration)

    def after_train(self, trainer: Trainer, metrics: dict) -> None:
        if self.run is None:
            return
        import wandb

        curve = trainer.work_dir / "loss_curve.png"
        if curve.is_file():
            self.run.log({"loss_curve": wandb.Image(str(curve))}, step=trainer.iteration)
        self.run.summary["checkpoint"] = str((trainer.work_dir / "last.pth").resolve())
        self.run.finish()
        self.run = None


_CLASSES = {"tensorboard": TensorBoardLogger, "mlflow": MLflowLogger, "wandb": WandbLogger}


def build_loggers(names: list[str]) -> list[Hook]:
    """The logger hooks of ``train.loggers``, in order, each name once.

    Raises:
        ConfigError: an unknown name, or a logger whose package is not installed (naming the
            extra that installs it).
    """
    hooks: list[Hook] = []
    for name in dict.fromkeys(names):
        if name not in _CLASSES:
            raise ConfigError(f"config key 'train.loggers': unknown logger {name!r} "
                              f"(choose from {', '.join(LOGGERS)})")
        if importlib.util.find_spec(_PACKAGES[name]) is None:
            raise ConfigError(f"train.loggers: {name} needs the '{_PACKAGES[name]}' package; "
                              f"install it with: pip install 'o2f[{name}]'")
        hooks.append(_CLASSES[name]())
    return hooks


__all__ = ["LOGGERS", "MLflowLogger", "TensorBoardLogger", "WandbLogger", "build_loggers",
           "flat_params"]

