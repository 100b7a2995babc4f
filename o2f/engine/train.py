"""The training loop: data-parallel with torch.distributed, a precision choice, exact resume."""

from __future__ import annotations

import math
import random
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler
from tqdm import tqdm

from o2f import distributed as du
from o2f.builders import build_detector
from o2f.config import Config, ConfigError, dump_config
from o2f.data import CocoDetection, Repeated, build_transforms, collate
from o2f.data.errors import DataError
from o2f.data.formats import check_paths, detect_format
from o2f.data.sampler import AspectGroupedBatchSampler
from o2f.data.seeded import SeededBatches, SeededItems
from o2f.data.summary import log_dataset_summary, summarize_dataset
from o2f.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_weights,
    prune_epoch_checkpoints,
    save_checkpoint,
)
from o2f.engine.distributed_setup import init_distributed
from o2f.engine.ema import ModelEMA
from o2f.engine.evaluate import coco_evaluate, headline_keys, metrics_for_file
from o2f.engine.hooks import Hook, build_hooks
from o2f.engine.logs import get_logger, plot_loss_curve, setup_logging, write_json
from o2f.engine.optim import LRSchedule, build_optimizer, scaled_lr, set_base_lr
from o2f.engine.precision import autocast_dtype, describe


class NonFiniteLossError(RuntimeError):
    """A training loss became NaN or infinite."""


def _format_terms(names: list[str], terms: torch.Tensor) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in zip(names, terms.tolist(), strict=True))


def _epoch_seed(seed: int, rank: int, epoch: int) -> int:
    # A pure function of (seed, rank, epoch): augmentations of epoch e are the same whether the
    # run got there in one go or was resumed from a checkpoint.
    return (seed * 1_000_003 + rank * 10_007 + epoch) % (2**31)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _check_split_paths(cfg: Config, split: str) -> None:
    """The annotation (and, where the format needs one, image) paths of ``data.<split>``
    exist; a ConfigError naming the key otherwise."""
    s = getattr(cfg.data, split)
    try:
        fmt = detect_format(s.ann_file, cfg.data.format)
    except DataError as err:
        raise ConfigError(f"data.{split}.ann_file: {err}") from err
    problem = check_paths(s.ann_file, s.img_dir, fmt)
    if problem:
        raise ConfigError(f"data.{split}.{problem}")


def build_datasets(cfg: Config, with_val: bool) -> tuple[CocoDetection, CocoDetection | None]:
    """The training set and (``with_val``) the validation set of ``cfg.data``; the
    validation set is read with the training set's categories (see
    :func:`build_val_dataset`)."""
    d = cfg.data
    for split in ("train", "val") if with_val else ("train",):  # before any slow loading
        _check_split_paths(cfg, split)
    train_tf = build_transforms(True, d.max_size, tuple(d.train_short), d.flip_prob,
                                d.crop_prob, d.crop_min_scale, d.color_jitter)
    train_set = CocoDetection(d.train.ann_file, d.train.img_dir, train_tf, train=True,
                              strict=d.strict, with_masks=cfg.model.mask.enabled,
                              fmt=d.format)
    val_set = build_val_dataset(cfg, train_set.categories) if with_val else None
    return train_set, val_set


def build_val_dataset(cfg: Config, categories: list[dict] | None = None) -> CocoDetection:
    """The validation set of ``cfg.data`` (a YOLO data.yaml's ``val`` split). ``categories``
    (``[{"id", "name"}]``: the training set's, or a checkpoint's) name the classes of formats
    that do not list them (Pascal VOC), so that labels mean the same as in training."""
    d = cfg.data
    _check_split_paths(cfg, "val")
    tf = build_transforms(False, d.max_size, (d.test_short, d.test_short), 0.0)
    val_set = CocoDetection(d.val.ann_file, d.val.img_dir, tf, train=False, strict=d.strict,
                            fmt=d.format, categories=categories)
    if cfg.model.mask.enabled and val_set.format != "odgt":  # mask AP needs gt masks
        from o2f.evaluation.coco import annotations_without_masks

        missing = annotations_without_masks(val_set.coco)
        if missing:
            raise ConfigError(
                f"model.mask.enabled=true but {len(missing)} annotation(s) of data.val.ann_file "
                f"{d.val.ann_file} have no 'segmentation' (e.g. id {missing[0]}); mask AP "
                "needs ground-truth masks")
    return val_set


def batchnorm_frozen(model: torch.nn.Module) -> bool:
    """Whether no BatchNorm of ``model`` updates running statistics in training mode (all are
    kept in eval mode by ``norm_eval``, or track none): then DDP need not broadcast buffers."""
    was_training = model.training
    model.train()
    frozen = all(not m.training or not m.track_running_stats for m in model.modules()
                 if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    model.train(was_training)
    return frozen


def _move_targets(targets: list[dict], device: torch.device) -> list[dict]:
    keys = ("boxes", "labels", "masks")
    return [{**t, **{k: t[k].to(device, non_blocking=True) for k in keys if k in t}}
            for t in targets]


class Trainer:
    """Owns one training run in ``work_dir`` (see :func:`train`)."""

    def __init__(self, cfg: Config, work_dir: str | Path, resume: bool = False) -> None:
        self.rank, self.world, self.device = init_distributed(device=cfg.train.device)
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
        # grads as views of the all-reduce buckets (no copy, less memory); with every BatchNorm
        # frozen (norm_eval) no buffer changes in training, so none is broadcast each forward
        # (forward_sync_buffers: torch 2.14's name for broadcast_buffers; buffers are still
        # synchronised once, at construction)
        self.ddp = (DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            gradient_as_bucket_view=True, forward_sync_buffers=not batchnorm_frozen(self.model))
            if self.world > 1 else self.model)
        self.total_batch = total_batch = cfg.data.batch_size * self.world
        self.optimizer = build_optimizer(self.model, cfg.optim, total_batch)
        self.autocast_dtype = autocast_dtype(t.precision, self.device)
        # only fp16 needs loss scaling; a disabled scaler passes steps straight through
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.autocast_dtype == torch.float16)
        if self.device.type == "cuda" and self.autocast_dtype is None:
            torch.backends.cuda.matmul.allow_tf32 = True  # fp32 recipes: TF32 on Ampere+
            torch.backends.cudnn.allow_tf32 = True
        epoch_set = Repeated(self.train_set, cfg.data.repeat)
        self.sampler = DistributedSampler(epoch_set, self.world, self.rank, shuffle=True,
                                          seed=t.seed)
        self.loader_rng = torch.Generator()
        # workers live for the whole run; each item's augmentation is seeded from (seed,
        # epoch, index) (o2f.data.seeded), so that stays deterministic and resumable
        self.batches = SeededBatches(self._batch_sampler(epoch_set), t.seed)
        self.loader = DataLoader(
            SeededItems(epoch_set), batch_sampler=self.batches,
            num_workers=cfg.data.workers, collate_fn=collate, worker_init_fn=_seed_worker,
            generator=self.loader_rng, pin_memory=self.device.type == "cuda",
            persistent_workers=cfg.data.workers > 0,
        )
        self.schedule = LRSchedule(cfg.optim, self.iters_per_epoch() * t.epochs)
        self.epoch = 0  # epochs completed
        self.iteration = 0
        self.history: list[dict[str, Any]] = []  # per-epoch summaries
        self.curve: list[dict[str, float]] = []  # logged iterations
        self.skipped_steps = 0
        self.replaced_images = 0  # unreadable training images replaced by the next one
        self.ema = ModelEMA(self.model, t.ema_decay, t.ema_warmup) if t.ema else None
        self.hooks: list[Hook] = build_hooks(cfg, self.ema, self.val_set is not None)
        if resume:
            self._resume()
        if self.main:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            (self.work_dir / "config.yaml").write_text(dump_config(cfg))
            self.log.info("%d training images (%d skipped without usable boxes, %d with a "
                          "missing file), %d classes, world size %d, total batch %d, lr %.5g, "
                          "device %s, precision %s (train.precision=%s)", len(self.train_set),
                          self.train_set.num_skipped, len(self.train_set.missing_ids),
                          num_classes, self.world, total_batch,
                          self.optimizer.param_groups[0]["lr"], self.device,
                          describe(self.autocast_dtype), t.precision)
            self._summarize_dataset()
        self.last_eval: dict[str, Any] = {}  # the last validation's detections and PR data

    # -- checkpoints -------------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        return {"class_names": list(self.train_set.class_names),
                "cat_ids": [int(c) for c in self.train_set.cat_ids],
                "num_classes": int(self.cfg.model.num_classes)}

    def eval_model(self) -> torch.nn.Module:
        """The model that validation uses and checkpoints deploy: the EMA of the weights when
        ``train.ema`` is on, else the trained model (unwrapped from DDP)."""
        return self.ema.module if self.ema is not None else self.model

    def _deploy_state(self) -> dict[str, Any]:
        return {"model": self.eval_model().state_dict(), "epoch": self.epoch,
                "iteration": self.iteration, "config": self.cfg.to_dict(), "meta": self._meta()}

    def _state(self) -> dict[str, Any]:
        state = {
            **self._deploy_state(), "optimizer": self.optimizer.state_dict(),
            # what --resume needs to follow another world size (see _follow_total_batch)
            "world_size": self.world, "total_batch": self.total_batch,
            "base_lr": scaled_lr(self.cfg.optim, self.total_batch),
            "iters_per_epoch": self.iters_per_epoch(),
            "scaler": self.scaler.state_dict(), "history": self.history, "curve": self.curve,
            "skipped_steps": self.skipped_steps, "replaced_images": self.replaced_images,
            "hooks": {h.name: h.state_dict() for h in self.hooks if h.name},
        }
        if self.ema is not None:  # "model" holds the EMA weights (see o2f.engine.checkpoint)
            state["model_raw"] = self.model.state_dict()
            state["ema"] = self.ema.state_dict()
        return state

    def save(self) -> None:
        """Write ``last.pth`` and, every ``train.checkpoint_interval`` epochs, ``epoch_N.pth``
        (then only the newest ``train.keep_checkpoints`` of those are kept)."""
        if not self.main:
            return
        t, state = self.cfg.train, self._state()
        if t.keep_checkpoints != 0 and self.epoch % t.checkpoint_interval == 0:
            save_checkpoint(state, self.work_dir / f"epoch_{self.epoch}.pth")
        save_checkpoint(state, self.work_dir / "last.pth")
        prune_epoch_checkpoints(self.work_dir, t.keep_checkpoints, self.epoch)
        self.log.info("saved checkpoint after epoch %d (iteration %d)", self.epoch,
                      self.iteration)

    def save_deploy_checkpoint(self, name: str, extra: dict[str, Any]) -> None:
        """Write ``work_dir/name`` with the deploy weights, config, meta and ``extra``
        (rank 0; a no-op elsewhere)."""
        if self.main:
            save_checkpoint({**self._deploy_state(), **extra}, self.work_dir / name)

    def _read_resume_checkpoint(self, path: Path) -> dict[str, Any] | None:
        """``path`` as read by this rank, after every rank has reported whether it could read
        it (one all-gather): None when no rank has it (a fresh start); a
        :class:`CheckpointError` on every rank, naming the ranks, when some cannot read it or
        the ranks read different checkpoints (a multi-node run without a shared work dir)."""
        state, problem = None, None
        try:
            state = load_checkpoint(path, map_location=self.device)
            problem = None
        except CheckpointError as err:
            problem = "missing" if not path.exists() else str(err)
        found = (state["epoch"], state["iteration"]) if state is not None else None
        reports = du.all_gather_objects((problem, found, socket.gethostname(), str(path)))
        if all(p == "missing" for p, _, _, _ in reports):
            self.log.warning("--resume: no %s yet, starting from scratch", path)
            return None
        bad = [f"rank {r} (host {host}): " + (f"{where} does not exist" if p == "missing" else p)
               for r, (p, _, host, where) in enumerate(reports) if p is not None]
        versions = {f for p, f, _, _ in reports if p is None}
        if len(versions) > 1:
            bad += [f"rank {r} (host {host}) read epoch {f[0]}, iteration {f[1]} from {where}"
                    for r, (p, f, host, where) in enumerate(reports) if p is None]
        if bad:
            raise CheckpointError(
                "--resume: every rank must resume from the same checkpoint, but "
                + "; ".join(bad) + ". Put the work dir on a filesystem all nodes share, or "
                f"copy {path.name} into it on every node.")
        return state

    def _follow_total_batch(self, state: dict[str, Any]) -> None:
        """After the optimizer state (which restores the old ``lr`` / ``initial_lr``) is
        loaded: when the total batch (world size x data.batch_size) or the configured base lr
        differ from the checkpoint's, give every group the base lr of this run (x its
        ``lr_mult``: :func:`set_base_lr`) and put the iteration counter where a run at this
        total batch would be after the epochs done, so that the warm-up and a cosine schedule
        (over this run's ``iters_per_epoch x train.epochs``) follow the new batch. Each
        change is logged."""
        old_world, old_total = state.get("world_size"), state.get("total_batch")
        groups = self.optimizer.param_groups
        old_lr = state.get("base_lr", groups[0].get("initial_lr", groups[0]["lr"])
                           / groups[0].get("lr_mult", 1.0))
        new_lr = scaled_lr(self.cfg.optim, self.total_batch)
        changes = []
        if old_total is not None and old_total != self.total_batch:
            changes.append(f"world size {old_world} -> {self.world}, total batch {old_total} "
                           f"-> {self.total_batch}")
            iteration = self.epoch * self.iters_per_epoch()
            if self.iteration and iteration != self.iteration:
                ratio = iteration / self.iteration
                for record in self.curve:  # one x axis: iterations at the current batch
                    record["iteration"] = round(record["iteration"] * ratio)
            changes.append(f"iteration {self.iteration} -> {iteration} (the schedule of a run "
                           f"at total batch {self.total_batch}: {self.iters_per_epoch()} "
                           f"iterations per epoch, warm-up {self.schedule.warmup_iters}, "
                           f"{self.cfg.optim.schedule} schedule)")
            self.iteration = iteration
        elif old_total is None:
            self.log.warning("--resume: the checkpoint records no world size / total batch "
                             "(written by an older o2f): the iteration counter is kept")
        if not math.isclose(old_lr, new_lr, rel_tol=1e-9):
            why = (f"optim.lr {self.cfg.optim.lr:g} x total batch {self.total_batch} / "
                   f"optim.base_batch_size {self.cfg.optim.base_batch_size}"
                   if self.cfg.optim.scale_lr else f"optim.lr {self.cfg.optim.lr:g}")
            changes.append(f"base lr {old_lr:.6g} -> {new_lr:.6g} ({why})")
            set_base_lr(self.optimizer, new_lr)
        if changes:
            self.log.info("resume: %s", "; ".join(changes))

    def _resume(self) -> None:
        path = self.work_dir / "last.pth"
        state = self._read_resume_checkpoint(path)
        if state is None:
            return
        load_model_weights(self.model, state.get("model_raw", state["model"]), str(path))
        self._resume_ema(state, path)
        for hook in self.hooks:
            hook.load_state_dict(state.get("hooks", {}).get(hook.name, {}))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.iteration = int(state["epoch"]), int(state["iteration"])
        self.history, self.curve = list(state["history"]), list(state["curve"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.replaced_images = int(state.get("replaced_images", 0))
        self.log.info("resumed from %s: %d epochs done, iteration %d", path, self.epoch,
                      self.iteration)
        self._follow_total_batch(state)

    def _resume_ema(self, state: dict[str, Any], path: Path) -> None:
        if self.ema is None:
            return
        if "ema" in state:
            self.ema.load(state["model"], state["ema"])
        else:  # the run had no EMA so far: it starts from the resumed weights
            self.ema.load(self.model.state_dict(), {"updates": 0})
            self.log.warning("%s has no EMA of the weights: the EMA starts now", path)

    def _summarize_dataset(self) -> None:
        d = self.cfg.data
        summary = summarize_dataset(self.train_set, d.max_size, d.train_short,
                                    self.cfg.model.strides[0])
        write_json(self.work_dir / "dataset_summary.json", summary)
        log_dataset_summary(summary, self.log)

    def _call_hooks(self, event: str, *args: Any) -> None:
        for hook in self.hooks:
            getattr(hook, event)(self, *args)

    # -- training ----------------------------------------------------------------------------
    # The loss terms stay on the device: a step reads nothing to the host (no sync), the sums
    # are read at the log points. With train.nonfinite=error a NaN/inf term is noted on the
    # device (first iteration and its terms) and raised at the next log point or epoch end,
    # before anything is saved; train.nonfinite=skip must decide before each optimizer step,
    # so it reads one flag per step.
    _NO_BAD = 2**62  # no non-finite iteration yet

    def _reset_nonfinite(self) -> None:
        self._bad_iter = torch.full((), self._NO_BAD, device=self.device)
        self._bad_terms: torch.Tensor | None = None

    def _step_is_finite(self, names: list[str], terms: torch.Tensor) -> bool:
        """Whether to take the optimizer step of the loss terms (K,) float64 on the device.

        ``error``: always True; a non-finite term is noted on the device (no host sync) for
        :meth:`_raise_if_nonfinite`. ``skip``: one read of a flag (every rank the same); False
        and a warning when a term is NaN/inf on any rank."""
        finite = torch.isfinite(terms).all()
        if self.cfg.train.nonfinite == "error":
            first = ~finite & (self._bad_iter == self._NO_BAD)
            self._bad_iter = torch.where(first, self.iteration, self._bad_iter)
            self._bad_terms = torch.where(first, terms, terms.new_zeros(()) if
                                          self._bad_terms is None else self._bad_terms)
            return True
        bad = (~finite).float()
        if du.is_distributed():  # every rank must take the same decision
            torch.distributed.all_reduce(bad)
        if bad.item() == 0:
            return True
        self.skipped_steps += 1
        self.log.warning("skipping step %d with a non-finite loss (%s); %d skipped so far",
                         self.iteration, _format_terms(names, terms), self.skipped_steps)
        return False

    def _raise_if_nonfinite(self, names: list[str]) -> None:
        """With ``train.nonfinite=error``: raise :class:`NonFiniteLossError` naming the first
        iteration (on any rank) with a NaN/inf loss term and this rank's terms there (one host
        read, every rank the same decision)."""
        if self.cfg.train.nonfinite != "error" or self._bad_terms is None:
            return
        bad_iter = self._bad_iter.clone()
        if du.is_distributed():
            torch.distributed.all_reduce(bad_iter, op=torch.distributed.ReduceOp.MIN)
        iteration = int(bad_iter.item())
        if iteration == self._NO_BAD:
            return
        mine = int(self._bad_iter.item()) == iteration
        terms = _format_terms(names, self._bad_terms) if mine else "on another rank"
        raise NonFiniteLossError(
            f"non-finite loss at iteration {iteration} (epoch {self.epoch + 1}): {terms}. The "
            f"last good checkpoint is {self.work_dir / 'last.pth'}; lower optim.lr or set "
            "train.nonfinite=skip to skip such steps.")

    def _step(self, loss: torch.Tensor) -> None:
        """Backward pass and optimizer step (through the AMP scaler), then the hooks'
        ``after_step`` unless the scaler skipped the step for inf/NaN gradients."""
        scale = self.scaler.get_scale()
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scaler.get_scale() >= scale:  # a skipped step lowers the scale
            self._call_hooks("after_step")

    def _batch_sampler(self, epoch_set: Repeated) -> BatchSampler:
        """Batches of the distributed sampler's indices, grouped by orientation when
        data.group_by_aspect is on."""
        batch = self.cfg.data.batch_size
        if not self.cfg.data.group_by_aspect:
            return BatchSampler(self.sampler, batch, drop_last=False)
        infos = (epoch_set.image_info(i) for i in range(len(epoch_set)))
        landscape = [info["width"] >= info["height"] for info in infos]
        return AspectGroupedBatchSampler(self.sampler, landscape, batch)

    def iters_per_epoch(self) -> int:
        """Iterations of one epoch: the loader's length, capped by train.max_iters_per_epoch."""
        cap = self.cfg.train.max_iters_per_epoch
        return min(len(self.loader), cap) if cap else len(self.loader)

    def train_epoch(self) -> dict[str, float]:
        cfg, epoch = self.cfg, self.epoch
        self.model.set_epoch(epoch, cfg.train.epochs)
        self.sampler.set_epoch(epoch)
        self.batches.set_epoch(epoch)
        seed = _epoch_seed(cfg.train.seed, self.rank, epoch)
        self.loader_rng.manual_seed(seed)
        torch.manual_seed(seed)
        self.ddp.train()
        num_iters = self.iters_per_epoch()
        # loss-term sums (K,) float64 on the device, read at the log points and the epoch end
        sums: torch.Tensor | None = None
        window: torch.Tensor | None = None
        names: list[str] = []
        window_n = steps_ok = 0
        self._reset_nonfinite()
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
            with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                                enabled=self.autocast_dtype is not None):
                losses = self.ddp(images, targets)
            self.optimizer.zero_grad(set_to_none=True)
            names = list(losses)
            terms = torch.stack([v.detach().double() for v in losses.values()])  # on the device
            if self._step_is_finite(names, terms):
                self._step(sum(losses.values()))
                sums = terms if sums is None else sums + terms
                window = terms if window is None else window + terms
                window_n += 1
                steps_ok += 1
            self.iteration += 1
            bar.update(1)
            if window_n and ((i + 1) % cfg.train.log_interval == 0 or i + 1 == num_iters):
                self._raise_if_nonfinite(names)
                # the mean over ranks (one all-reduce per log line): the loss of the whole batch
                record = {"iteration": self.iteration, "lr": lr,
                          **du.mean_over_ranks(dict(zip(names, window / window_n, strict=True)),
                                               self.device)}
                record["loss"] = sum(v for k, v in record.items() if k.startswith("loss_"))
                self.curve.append(record)
                bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.2e}")
                self._call_hooks("after_log", record)
                self.log.info("epoch %d iter %d/%d lr %.3e %s", epoch + 1, i + 1, num_iters, lr,
                              " ".join(f"{k} {v:.4f}" for k, v in record.items()
                                       if k.startswith("loss")))
                window, window_n = None, 0
        bar.close()
        self._raise_if_nonfinite(names)
        done = max(1, steps_ok)
        soft_t = getattr(self.model.criterion, "soft_t", None)
        summary = {"epoch": epoch + 1, "iterations": num_iters,
                   "seconds": time.perf_counter() - start, "soft_t": soft_t,
                   **du.mean_over_ranks({} if sums is None else
                                        dict(zip(names, sums / done, strict=True)), self.device)}
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
        self.last_eval = {}
        metrics, _ = coco_evaluate(self.eval_model(), self.val_set, self.device,
                                   self.cfg.test.batch_size, self.cfg.data.workers,
                                   details=self.last_eval, precision=self.cfg.test.precision,
                                   evaluator=self.cfg.test.evaluator)
        if self.main:
            keys = headline_keys(metrics)
            self.log.info("epoch %d validation: %s", self.epoch,
                          " ".join(f"{k} {metrics[k]:.4f}" for k in keys))
        return metrics

    def run(self) -> dict[str, Any]:
        """Train the remaining epochs; returns the last validation metrics (may be empty)."""
        cfg = self.cfg.train
        metrics: dict[str, Any] = {}
        self._call_hooks("before_train")
        while self.epoch < cfg.epochs and not self._should_stop():
            summary = self.train_epoch()
            if self.val_set is not None and (self.epoch == cfg.epochs
                                             or self.epoch % cfg.val_interval == 0):
                metrics = self.validate()
                summary.update(metrics_for_file(metrics) if metrics else {})
                self._call_hooks("after_validation", metrics, summary)
            last = self.epoch == cfg.epochs or self._should_stop()
            self.history.append(summary)
            if last or self.epoch % cfg.checkpoint_interval == 0:
                self.save()
            if self.main:
                plot_loss_curve(self.curve, self.work_dir / "loss_curve.png")
                write_json(self.work_dir / "history.json", self.history)
            du.barrier()
        if self.main:
            final = metrics_for_file(metrics) if metrics else {}
            results = {k: v for hook in self.hooks for k, v in hook.results().items()}
            write_json(self.work_dir / "metrics.json", {**final, **results, "epochs": self.epoch,
                                                        "iterations": self.iteration,
                                                        "skipped_steps": self.skipped_steps,
                                                        "replaced_images": self.replaced_images})
        self._call_hooks("after_train", metrics)
        return metrics

    def _should_stop(self) -> bool:
        return any(hook.should_stop() for hook in self.hooks)


def train(cfg: Config, work_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train ``cfg`` into ``work_dir`` (checkpoints ``last.pth``, ``epoch_N.pth`` and
    ``best.pth``, logs, the ``train.loggers`` runs, ``plots/``, ``loss_curve.png``,
    ``history.json``, ``metrics.json``, ``dataset_summary.json``). Returns the last validation
    metrics."""
    return Trainer(cfg, work_dir, resume).run()


__all__ = ["NonFiniteLossError", "Trainer", "build_datasets", "build_val_dataset", "get_logger",
           "train"]
