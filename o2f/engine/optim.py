"""Optimiser and learning-rate schedule of SPEC §6."""

from __future__ import annotations

import bisect
import math

import torch
from torch import nn

from o2f.config import OptimConfig

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
# Parameters that are not normalisation layers but take ``norm_decay`` all the same, by the last
# part of their name: Swin's relative-position bias tables (as in the published Swin recipes;
# torchvision's Swin has no absolute position embedding).
NO_DECAY_NAMES = ("relative_position_bias_table",)


def param_groups(model: nn.Module, weight_decay: float, norm_decay: float) -> list[dict]:
    """Trainable parameters split into those of normalisation layers (BatchNorm, GroupNorm,
    LayerNorm weights and biases) and those named in ``NO_DECAY_NAMES`` (``norm_decay``), and
    the rest (``weight_decay``). Each group records the parameter names under ``names``."""
    norm_ids = {
        id(p) for m in model.modules() if isinstance(m, _NORM_TYPES) for p in m.parameters(False)
    }
    decay, no_decay = ([], []), ([], [])
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = id(p) in norm_ids or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES
        group = no_decay if exempt else decay
        group[0].append(p)
        group[1].append(name)
    return [
        {"params": decay[0], "names": decay[1], "weight_decay": weight_decay},
        {"params": no_decay[0], "names": no_decay[1], "weight_decay": norm_decay},
    ]


def scaled_lr(cfg: OptimConfig, total_batch_size: int) -> float:
    """The configured lr scaled linearly from ``base_batch_size`` to the actual total batch."""
    if not cfg.scale_lr:
        return cfg.lr
    return cfg.lr * total_batch_size / cfg.base_batch_size


def build_optimizer(model: nn.Module, cfg: OptimConfig, total_batch_size: int):
    """SGD (momentum) or AdamW over :func:`param_groups` with the linearly scaled lr."""
    lr = scaled_lr(cfg, total_batch_size)
    groups = param_groups(model, cfg.weight_decay, cfg.norm_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas))


class LRSchedule:
    """Linear warm-up by iteration from ``warmup_ratio`` x lr, then either x ``gamma`` at the
    start of each 1-based epoch in ``steps`` (``schedule: step``, SPEC §6) or a cosine from 1 to
    ``min_lr_ratio`` over the whole run (``schedule: cosine``; needs ``total_iters``), which
    follows any ``train.epochs`` without editing the steps. Stateless: the factor is a function
    of (iteration, epoch), so a resumed run recomputes it from the counters in the checkpoint."""

    def __init__(self, cfg: OptimConfig, total_iters: int | None = None) -> None:
        self.warmup_iters, self.warmup_ratio = cfg.warmup_iters, cfg.warmup_ratio
        self.steps, self.gamma = list(cfg.steps), cfg.gamma
        self.schedule, self.min_lr_ratio = cfg.schedule, cfg.min_lr_ratio
        if self.schedule == "cosine" and not total_iters:
            raise ValueError("optim.schedule=cosine needs the total number of iterations")
        self.total_iters = total_iters

    def factor(self, iteration: int, epoch: int) -> float:
        """lr multiplier at global ``iteration`` (0-based) in 0-based ``epoch``."""
        if self.schedule == "cosine":
            progress = min(1.0, iteration / self.total_iters)
            decay = self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (
                1 + math.cos(math.pi * progress))
        else:
            decay = self.gamma ** bisect.bisect_right(self.steps, epoch + 1)
        if iteration < self.warmup_iters:
            k = (1 - iteration / self.warmup_iters) * (1 - self.warmup_ratio)
            return decay * (1 - k)
        return decay

    def apply(self, optimizer: torch.optim.Optimizer, iteration: int, epoch: int) -> float:
        """Set every group's lr for this iteration; returns the lr of the first group."""
        f = self.factor(iteration, epoch)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * f
        return optimizer.param_groups[0]["lr"]
