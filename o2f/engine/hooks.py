"""Training features as hooks: small objects the trainer calls at fixed points of a run.

A hook implements any of (the base class does nothing):

- ``before_train(trainer)``: once, when :meth:`Trainer.run` starts (also after a resume);
- ``after_log(trainer, record)``: after each logged iteration (``train.log_interval``), on
  every rank; ``record`` holds ``iteration``, ``lr``, the loss terms and their sum ``loss``;
- ``after_step(trainer)``: after each optimizer step taken (not after a step skipped for a
  non-finite loss or by the AMP scaler);
- ``after_validation(trainer, metrics, summary)``: after each validation during training, on
  every rank (``metrics`` is rank 0's, ``{}`` elsewhere); ``summary`` is the epoch's
  ``history.json`` record, which the hook may extend;
- ``should_stop()``: True ends training after the current epoch (the same on every rank);
- ``after_train(trainer, metrics)``: once, at the end of the run (after ``metrics.json``), on
  every rank, with the last validation's metrics (``{}`` without validation);
- ``results()``: entries for ``metrics.json``;
- ``state_dict()`` / ``load_state_dict(state)``: its part of a checkpoint (``hooks[name]``), so
  ``--resume`` continues it exactly.

The features: :class:`EMAHook` (``train.ema``), :class:`BestCheckpoint` (``best.pth``),
:class:`EarlyStopping` (``train.patience``), :class:`EvaluationPlots` (``train.plots``) and the
experiment trackers of :mod:`o2f.engine.loggers` (``train.loggers``); :func:`build_hooks` picks
them from the config.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from o2f import distributed as du
from o2f.config import Config
from o2f.engine.ema import ModelEMA
from o2f.engine.evaluate import primary_metric

if TYPE_CHECKING:
    from o2f.engine.train import Trainer


class Hook:
    """A training feature; every method is a no-op here (module doc)."""

    name = ""  # key of its state in a checkpoint's "hooks"; "" for a stateless hook

    def before_train(self, trainer: Trainer) -> None:
        """Called once when the run starts."""

    def after_step(self, trainer: Trainer) -> None:
        """Called after each optimizer step taken."""

    def after_log(self, trainer: Trainer, record: dict[str, float]) -> None:
        """Called after each logged iteration."""

    def after_validation(self, trainer: Trainer, metrics: dict, summary: dict) -> None:
        """Called after each validation during training."""

    def should_stop(self) -> bool:
        """Whether training should end after the current epoch."""
        return False

    def after_train(self, trainer: Trainer, metrics: dict) -> None:
        """Called once at the end of the run."""

    def results(self) -> dict[str, Any]:
        """Entries for ``metrics.json``."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """The hook's state for a checkpoint (plain data)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (``{}`` for a checkpoint written without this hook)."""


class EMAHook(Hook):
    """Updates the EMA of the weights after each optimizer step. Its state (weights and update
    count) is saved with the model by the trainer: the checkpoint's ``model`` holds the EMA
    weights, ``model_raw`` the trained ones, ``ema`` the counters."""

    def __init__(self, ema: ModelEMA) -> None:
        self.ema = ema

    def after_step(self, trainer: Trainer) -> None:
        self.ema.update(trainer.model)


class BestCheckpoint(Hook):
    """Writes ``best.pth`` (deploy weights, config, meta) whenever the validation AP improves
    on the best so far: ``bbox_mAP``, ``segm_mAP`` for a mask model, ``AP`` on CrowdHuman
    (:func:`o2f.engine.evaluate.primary_metric`). A NaN AP never counts as an improvement.

    ``stale`` counts the validations since the best (read by :class:`EarlyStopping`);
    ``results()`` gives ``best_epoch`` and ``best_<key>``.
    """

    name = "best"

    def __init__(self) -> None:
        self.key: str | None = None
        self.value = -math.inf
        self.epoch = 0
        self.stale = 0

    def after_validation(self, trainer: Trainer, metrics: dict, summary: dict) -> None:
        key = primary_metric(metrics) if metrics else None
        value = float(metrics[key]) if key else math.nan
        key, value = du.all_gather_objects((key, value))[0]  # rank 0 has the metrics
        if not value > self.value:  # also False for NaN
            self.stale += 1
            return
        previous = (f" (previous best {self.value:.4f} at epoch {self.epoch})"
                    if self.epoch else "")
        self.key, self.value, self.epoch, self.stale = key, value, trainer.epoch, 0
        trainer.save_deploy_checkpoint("best.pth", {"best": self.state_dict()})
        trainer.log.info("epoch %d: new best %s %.4f%s; wrote best.pth", trainer.epoch, key,
                         value, previous)

    def results(self) -> dict[str, Any]:
        if self.key is None:
            return {}
        return {"best_epoch": self.epoch, f"best_{self.key}": self.value}

    def state_dict(self) -> dict[str, Any]:
        return {"key": self.key, "value": self.value, "epoch": self.epoch, "stale": self.stale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.key, self.value = state["key"], float(state["value"])
            self.epoch, self.stale = int(state["epoch"]), int(state["stale"])


class EarlyStopping(Hook):
    """Ends training once ``patience`` validations in a row have not improved on the best AP
    of ``best``; the epoch's history record and ``metrics.json`` then have
    ``stopped_early: true`` (and ``metrics.json`` ``stopped_epoch``). A resumed run with a
    larger ``train.patience`` trains on."""

    name = "early_stop"

    def __init__(self, best: BestCheckpoint, patience: int) -> None:
        self.best, self.patience = best, patience
        self.stopped_epoch: int | None = None

    def should_stop(self) -> bool:
        return self.best.stale >= self.patience

    def after_validation(self, trainer: Trainer, metrics: dict, summary: dict) -> None:
        if not self.should_stop() or self.stopped_epoch is not None:
            return
        self.stopped_epoch = trainer.epoch
        summary["stopped_early"] = True
        trainer.log.info(
            "early stop after epoch %d: %s has not improved for %d validation(s) "
            "(train.patience=%d; best %.4f at epoch %d)", trainer.epoch, self.best.key,
            self.best.stale, self.patience, self.best.value, self.best.epoch)

    def results(self) -> dict[str, Any]:
        return {"stopped_early": self.stopped_epoch is not None,
                "stopped_epoch": self.stopped_epoch}

    def state_dict(self) -> dict[str, Any]:
        return {"stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # after ``best`` is restored (build_hooks puts it first)
        self.stopped_epoch = state.get("stopped_epoch") if self.should_stop() else None


class EvaluationPlots(Hook):
    """At the end of training, the evaluation plots of the last validation into
    ``WORK_DIR/plots`` (:func:`o2f.evaluation.plots.write_evaluation_plots`: PR curves,
    confusion matrix, F1 against score, duplicate rate, worst images), rank 0; COCO-format
    validation data only."""

    def after_train(self, trainer: Trainer, metrics: dict) -> None:
        details = getattr(trainer, "last_eval", None)
        if not trainer.main or not details or "precision" not in details:
            return
        from o2f.evaluation.plots import write_evaluation_plots

        summary = write_evaluation_plots(trainer.work_dir / "plots", trainer.val_set,
                                         details["detections"], details)
        trainer.log.info("evaluation plots in %s: best F1 %.3f at score %.3f, duplicate rate "
                         "%.4f", trainer.work_dir / "plots", summary["best_f1"],
                         summary["best_f1_score_thr"], summary["dup_rate"])


def build_hooks(cfg: Config, ema: ModelEMA | None, with_validation: bool) -> list[Hook]:
    """The hooks of ``cfg.train``, in the order they run: the EMA update, ``best.pth``, early
    stopping and the evaluation plots (those three only with validation during training),
    then the loggers of ``train.loggers``."""
    from o2f.engine.loggers import build_loggers

    hooks: list[Hook] = [EMAHook(ema)] if ema is not None else []
    if with_validation:
        best = BestCheckpoint()
        hooks.append(best)
        if cfg.train.patience > 0:
            hooks.append(EarlyStopping(best, cfg.train.patience))
        if cfg.train.plots:
            hooks.append(EvaluationPlots())
    return hooks + build_loggers(cfg.train.loggers)
