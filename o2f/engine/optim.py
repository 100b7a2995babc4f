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


def param_groups(model: nn.Module, weight_decay: float, norm_decay: float,
                 bias_lr_mult: float = 1.0, bias_decay_mult: float = 1.0) -> list[dict]:
    """Trainable parameters in the groups of MMCV's ``DefaultOptimizerConstructor``.

    - normalisation layers (BatchNorm, GroupNorm, LayerNorm: weights and biases) and the
      parameters named in ``NO_DECAY_NAMES``: weight decay ``norm_decay`` (an absolute value:
      MMCV's ``norm_decay_mult`` x ``weight_decay``), the base lr;
    - with ``bias_lr_mult`` or ``bias_decay_mult`` != 1, the parameters named ``bias`` of every
      other layer: lr x ``bias_lr_mult`` (recorded as the group's ``lr_mult``), weight decay
      ``weight_decay`` x ``bias_decay_mult`` (the authors' CondInst recipe: 2 and 0);
    - the rest (and those biases when both multipliers are 1): ``weight_decay``, the base lr.

    Groups are [decay, norm] plus [bias] when it applies and is not empty, so a recipe with
    multipliers 1 has exactly two groups. Each group records the parameter names under
    ``names``. (MMCV also special-cases depthwise convolutions, which o2f models do not have.)
    """
    norm_ids = {
        id(p) for m in model.modules() if isinstance(m, _NORM_TYPES) for p in m.parameters(False)
    }
    split_bias = bias_lr_mult != 1.0 or bias_decay_mult != 1.0
    decay, no_decay, bias = ([], []), ([], []), ([], [])
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        last = name.rsplit(".", 1)[-1]
        if id(p) in norm_ids or last in NO_DECAY_NAMES:
            group = no_decay
        elif split_bias and last == "bias":
            group = bias
        else:
            group = decay
        group[0].append(p)
        group[1].append(name)
    groups = [
        {"params": decay[0], "names": decay[1], "weight_decay": weight_decay},
        {"params": no_decay[0], "names": no_decay[1], "weight_decay": norm_decay},
    ]
    if split_bias and bias[0]:
        groups.append({"params": bias[0], "names": bias[1],
                       "weight_decay": weight_decay * bias_decay_mult, "lr_mult": bias_lr_mult})
    return groups


def scaled_lr(cfg: OptimConfig, total_batch_size: int) -> float:
    """The configured lr scaled linearly from ``base_batch_size`` to the actual total batch."""
    if not cfg.scale_lr:
        return cfg.lr
    return cfg.lr * total_batch_size / cfg.base_batch_size


def set_base_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Give every group the base lr ``lr`` x its ``lr_mult`` (1 when absent), both as ``lr``
    and as the ``initial_lr`` that :meth:`LRSchedule.apply` multiplies (e.g. after resuming
    with another total batch), so that the bias groups keep their multiplier."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = lr * group.get("lr_mult", 1.0)


def build_optimizer(model: nn.Module, cfg: OptimConfig, total_batch_size: int):
    """SGD (momentum) or AdamW over :func:`param_groups` with the linearly scaled lr (times
    ``optim.bias_lr_mult`` in the bias group)."""
    lr = scaled_lr(cfg, total_batch_size)
    groups = param_groups(model, cfg.weight_decay, cfg.norm_decay, cfg.bias_lr_mult,
                          cfg.bias_decay_mult)
    for group in groups:
        if "lr_mult" in group:
            group["lr"] = lr * group["lr_mult"]
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
