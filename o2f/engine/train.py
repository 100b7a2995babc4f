"""The training loop: data-parallel with torch.distributed, AMP on CUDA, exact resume."""

from __future__ import annotations

import math
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from o2f import distributed as du
from o2f.builders import build_detector
from o2f.config import Config, ConfigError, dump_config
from o2f.data import CocoDetection, build_transforms, collate
from o2f.engine.checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from o2f.engine.distributed_setup import init_distributed
from o2f.engine.evaluate import coco_evaluate, headline_keys, metrics_for_file
from o2f.engine.logs import get_logger, plot_loss_curve, setup_logging, write_json
from o2f.engine.optim import LRSchedule, build_optimizer


class NonFiniteLossError(RuntimeError):
    """A training loss became NaN or infinite."""


def _epoch_seed(seed: int, rank: int, epoch: int) -> int:
    # A pure function of (seed, rank, epoch): augmentations of epoch e are the same whether the
    # run got there in one go or was resumed from a checkpoint.
    return (seed * 1_000_003 + rank * 10_007 + epoch) % (2**31)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _check_split_paths(cfg: Config, split: str) -> None:
    s = getattr(cfg.data, split)
    if not Path(s.ann_file).is_file():
        raise ConfigError(f"data.{split}.ann_file: {s.ann_file} does not exist")
    if not Path(s.img_dir).is_dir():
        raise ConfigError(f"data.{split}.img_dir: {s.img_dir} is not a folder")


def build_datasets(cfg: Config, with_val: bool) -> tuple[CocoDetection, CocoDetection | None]:
    d = cfg.data
    for split in ("train", "val") if with_val else ("train",):  # before any slow loading
        _check_split_paths(cfg, split)
    train_tf = build_transforms(True, d.max_size, tuple(d.train_short), d.flip_prob)
    train_set = CocoDetection(d.train.ann_file, d.train.img_dir, train_tf, train=True,
                              strict=d.strict, with_masks=cfg.model.mask.enabled)
    val_set = build_val_dataset(cfg) if with_val else None
    return train_set, val_set


def build_val_dataset(cfg: Config) -> CocoDetection:
    d = cfg.data
    _check_split_paths(cfg, "val")
    tf = build_transforms(False, d.max_size, (d.test_short, d.test_short), 0.0)
    val_set = CocoDetection(d.val.ann_file, d.val.img_dir, tf, train=False, strict=d.strict)
    if cfg.model.mask.enabled and val_set.ann_file.suffix != ".odgt":  # mask AP needs gt masks
        from o2f.evaluation.coco import annotations_without_masks

        missing = annotations_without_masks(val_set.coco)
        if missing:
            raise ConfigError(
                f"model.mask.enabled=true but {len(missing)} annotation(s) of data.val.ann_file "
                f"{d.val.ann_file} have no 'segmentation' (e.g. id {missing[0]}); mask AP "
                "needs ground-truth masks")
    return val_set


def _move_targets(targets: list[dict], device: torch.device) -> list[dict]:
    keys = ("boxes", "labels", "masks")
    return [{**t, **{k: t[k].to(device, non_blocking=True) for k in keys if k in t}}
            for t in targets]


class Trainer:
    """Owns one training run in ``work_dir`` (see :func:`train`)."""

    def __init__(self, cfg: Config, work_dir: str | Path, resume: bool = False) -> None:
        self.rank, self.world, self.device = init_distributed()
        self.main = self.rank == 0
        self.work_dir = Path(work_dir)
        self.log = setup_logging(self.work_dir, self.main)
        t = cfg.train
        if t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        torch.manual_seed(t.seed + self.rank)
        np.random.seed(t.seed + self.rank)
        random.seed(t.seed + self.rank)

        self.train_set, self.val_set = build_datasets(cfg, with_val=t.val_interval > 0)
        num_classes = cfg.model.num_classes or self.train_set.num_classes
        if num_classes != self.train_set.num_classes:
            raise ConfigError(
                f"model.num_classes={num_classes} but {cfg.data.train.ann_file} has "
                f"{self.train_set.num_classes} categories")
        cfg.model.num_classes = num_classes
        self.cfg = cfg
        self.model = build_detector(cfg, num_classes).to(self.device)
        self.ddp = (DistributedDataParallel(self.model, device_ids=[self.device.index]
                                            if self.device.type == "cuda" else None)
                    if self.world > 1 else self.model)
        total_batch = cfg.data.batch_size * self.world
        self.optimizer = build_optimizer(self.model, cfg.optim, total_batch)
        self.schedule = LRSchedule(cfg.optim)
        self.amp = t.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.sampler = DistributedSampler(self.train_set, self.world, self.rank, shuffle=True,
                                          seed=t.seed)
        self.loader_rng = torch.Generator()
        self.loader = DataLoader(
            self.train_set, cfg.data.batch_size, sampler=self.sampler,
            num_workers=cfg.data.workers, collate_fn=collate, worker_init_fn=_seed_worker,
            generator=self.loader_rng, pin_memory=self.device.type == "cuda",
        )
        self.epoch = 0  # epochs completed
        self.iteration = 0
        self.history: list[dict[str, Any]] = []  # per-epoch summaries
        self.curve: list[dict[str, float]] = []  # logged iterations
        self.skipped_steps = 0
        self.replaced_images = 0  # unreadable training images replaced by the next one
        if resume:
            self._resume()
        if self.main:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            (self.work_dir / "config.yaml").write_text(dump_config(cfg))
            self.log.info("%d training images (%d skipped without usable boxes, %d with a "
                          "missing file), %d classes, world size %d, total batch %d, lr %.5g, "
                          "device %s", len(self.train_set), self.train_set.num_skipped,
                          len(self.train_set.missing_ids), num_classes,
                          self.world, total_batch, self.optimizer.param_groups[0]["lr"],
                          self.device)
        self.tb = None
        if self.main:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.work_dir / "tensorboard"))

    # -- checkpoints -------------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        return {"class_names": list(self.train_set.class_names),
                "cat_ids": [int(c) for c in self.train_set.cat_ids],
                "num_classes": int(self.cfg.model.num_classes)}

    def _state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "epoch": self.epoch,
            "iteration": self.iteration, "config": self.cfg.to_dict(), "meta": self._meta(),
            "history": self.history, "curve": self.curve, "skipped_steps": self.skipped_steps,
            "replaced_images": self.replaced_images,
        }

    def save(self) -> None:
        if not self.main:
            return
        state = self._state()
        if self.epoch % self.cfg.train.checkpoint_interval == 0:
            save_checkpoint(state, self.work_dir / f"epoch_{self.epoch}.pth")
        save_checkpoint(state, self.work_dir / "last.pth")
        self.log.info("saved checkpoint after epoch %d (iteration %d)", self.epoch,
                      self.iteration)

    def _resume(self) -> None:
        path = self.work_dir / "last.pth"
        if not path.is_file():
            self.log.warning("--resume: no %s yet, starting from scratch", path)
            return
        state = load_checkpoint(path, map_location=self.device)
        load_model_weights(self.model, state["model"], str(path))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.iteration = int(state["epoch"]), int(state["iteration"])
        self.history, self.curve = list(state["history"]), list(state["curve"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.replaced_images = int(state.get("replaced_images", 0))
        self.log.info("resumed from %s: %d epochs done, iteration %d", path, self.epoch,
                      self.iteration)

    # -- training ----------------------------------------------------------------------------
    def _finite_values(self, losses: dict[str, torch.Tensor]) -> dict[str, float] | None:
        """The loss terms as floats (one host sync), or None when a term is NaN/inf on any
        rank (then the step is skipped or, by default, training stops)."""
        values = dict(zip(losses, torch.stack([v.detach().float() for v in losses.values()])
                          .tolist(), strict=True))
        bad = torch.tensor(float(not all(math.isfinite(v) for v in values.values())),
                           device=self.device)
        if du.is_distributed():  # every rank must take the same decision
            torch.distributed.all_reduce(bad)
        if bad.item() == 0:
            return values
        terms = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        if self.cfg.train.nonfinite == "error":
            raise NonFiniteLossError(
                f"non-finite loss at iteration {self.iteration} (epoch {self.epoch + 1}): "
                f"{terms}. The last good checkpoint is {self.work_dir / 'last.pth'}; lower "
                "optim.lr or set train.nonfinite=skip to skip such steps.")
        self.skipped_steps += 1
        self.log.warning("skipping step %d with a non-finite loss (%s); %d skipped so far",
                         self.iteration, terms, self.skipped_steps)
        return None

    def train_epoch(self) -> dict[str, float]:
        cfg, epoch = self.cfg, self.epoch
        self.model.set_epoch(epoch, cfg.train.epochs)
        self.sampler.set_epoch(epoch)
        seed = _epoch_seed(cfg.train.seed, self.rank, epoch)
        self.loader_rng.manual_seed(seed)
        torch.manual_seed(seed)
        self.ddp.train()
        num_iters = len(self.loader)
        if cfg.train.max_iters_per_epoch:
            num_iters = min(num_iters, cfg.train.max_iters_per_epoch)
        sums: dict[str, float] = defaultdict(float)
        window: dict[str, float] = defaultdict(float)
        window_n = steps_ok = 0
        replaced: set[int] = set()
        bar = tqdm(total=num_iters, desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                   disable=not self.main, dynamic_ncols=True)
        start = time.perf_counter()
        for i, (images, targets) in enumerate(self.loader):
            if i >= num_iters:
                break
            lr = self.schedule.apply(self.optimizer, self.iteration, epoch)
            replaced.update(t["replaced_image_id"] for t in targets if "replaced_image_id" in t)
            images = [img.to(self.device, non_blocking=True) for img in images]
            targets = _move_targets(targets, self.device)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                losses = self.ddp(images, targets)
            self.optimizer.zero_grad(set_to_none=True)
            values = self._finite_values(losses)
            if values is not None:
                loss = sum(losses.values())
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                for k, val in values.items():
                    sums[k] += val
                    window[k] += val
                window_n += 1
                steps_ok += 1
            self.iteration += 1
            bar.update(1)
            if window_n and ((i + 1) % cfg.train.log_interval == 0 or i + 1 == num_iters):
                record = {"iteration": self.iteration, "lr": lr,
                          **{k: v / window_n for k, v in window.items()}}
                record["loss"] = sum(v for k, v in record.items() if k.startswith("loss_"))
                self.curve.append(record)
                bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.2e}")
                if self.tb is not None:
                    for k, v in record.items():
                        if k != "iteration":
                            self.tb.add_scalar(f"train/{k}", v, self.iteration)
                self.log.info("epoch %d iter %d/%d lr %.3e %s", epoch + 1, i + 1, num_iters, lr,
                              " ".join(f"{k} {v:.4f}" for k, v in record.items()
                                       if k.startswith("loss")))
                window.clear()
                window_n = 0
        bar.close()
        done = max(1, steps_ok)
        soft_t = getattr(self.model.criterion, "soft_t", None)
        summary = {"epoch": epoch + 1, "iterations": num_iters,
                   "seconds": time.perf_counter() - start, "soft_t": soft_t,
                   **{k: v / done for k, v in sums.items()}}
        num_replaced = sum(len(r) for r in du.all_gather_objects(replaced))
        if num_replaced:
            summary["replaced_images"] = num_replaced
            self.replaced_images += num_replaced
            self.log.warning("epoch %d: %d unreadable training image(s) were replaced by the "
                             "next image (see the warnings above; data.strict=true makes this "
                             "an error)", epoch + 1, num_replaced)
        self.epoch += 1
        return summary

    def validate(self) -> dict[str, Any]:
        metrics, _ = coco_evaluate(self.model, self.val_set, self.device,
                                   self.cfg.test.batch_size, self.cfg.data.workers)
        if self.main:
            keys = headline_keys(metrics)
            self.log.info("epoch %d validation: %s", self.epoch,
                          " ".join(f"{k} {metrics[k]:.4f}" for k in keys))
            if self.tb is not None:
                for k in keys:
                    self.tb.add_scalar(f"val/{k}", metrics[k], self.epoch)
        return metrics

    def run(self) -> dict[str, Any]:
        """Train the remaining epochs; returns the last validation metrics (may be empty)."""
        cfg = self.cfg.train
        metrics: dict[str, Any] = {}
        while self.epoch < cfg.epochs:
            summary = self.train_epoch()
            last = self.epoch == cfg.epochs
            if self.val_set is not None and (last or self.epoch % cfg.val_interval == 0):
                metrics = self.validate()
                summary.update(metrics_for_file(metrics) if metrics else {})
            self.history.append(summary)
            if last or self.epoch % cfg.checkpoint_interval == 0:
                self.save()
            if self.main:
                plot_loss_curve(self.curve, self.work_dir / "loss_curve.png")
                write_json(self.work_dir / "history.json", self.history)
            du.barrier()
        if self.main:
            final = metrics_for_file(metrics) if metrics else {}
            write_json(self.work_dir / "metrics.json", {**final, "epochs": self.epoch,
                                                        "iterations": self.iteration,
                                                        "skipped_steps": self.skipped_steps,
                                                        "replaced_images": self.replaced_images})
            if self.tb is not None:
                self.tb.close()
        return metrics


def train(cfg: Config, work_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train ``cfg`` into ``work_dir`` (checkpoints ``last.pth`` and ``epoch_N.pth``, logs,
    TensorBoard, ``loss_curve.png``, ``metrics.json``). Returns the last validation metrics."""
    return Trainer(cfg, work_dir, resume).run()


__all__ = ["NonFiniteLossError", "Trainer", "build_datasets", "build_val_dataset", "get_logger",
           "train"]
