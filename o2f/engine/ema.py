"""Exponential moving average (EMA) of a model's weights, with the detectors' decay warm-up.

After the k-th optimizer step (k = 1, 2, ...) every parameter and floating-point buffer (e.g.
BatchNorm running statistics) of the average moves towards the model's:

    ema_k = d_k * ema_{k-1} + (1 - d_k) * model_k,    d_k = decay * (1 - exp(-k / warmup))

starting from ``ema_0`` = the model's weights when the EMA is created. The warm-up (YOLOv5 /
YOLOX) keeps the early average close to the fast-moving weights: d_k is ~0 at first and reaches
``decay`` after a few multiples of ``warmup`` updates; ``warmup=0`` uses ``decay`` from the
first update. Integer buffers (BatchNorm's ``num_batches_tracked``) are counters and are copied.
The averaging itself is ``torch.optim.swa_utils.AveragedModel`` with ``use_buffers=True`` and
``get_ema_multi_avg_fn(d_k)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def ema_decay(decay: float, warmup: int, updates: int) -> float:
    """d_k of the ``updates``-th update (k >= 1): ``decay * (1 - exp(-k / warmup))``, or
    ``decay`` when ``warmup`` is 0."""
    return decay * (1.0 - math.exp(-updates / warmup)) if warmup > 0 else decay


class ModelEMA:
    """The EMA of ``model``'s weights (module doc). ``module`` is the averaged copy, in eval mode
    and without gradients; pass the unwrapped model (not a DistributedDataParallel) to
    :meth:`update`.

    Args:
        model: the model being trained; the average starts at its current weights.
        decay: the decay once warmed up, in (0, 1).
        warmup: the warm-up length in updates (0: none).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, warmup: int = 2000) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        if warmup < 0:
            raise ValueError(f"EMA warm-up must be >= 0 updates, got {warmup}")
        self.decay, self.warmup = decay, warmup
        self.updates = 0
        self._averaged = AveragedModel(model, multi_avg_fn=self._average, use_buffers=True)
        self._averaged.update_parameters(model)  # the first call copies: ema_0 = model
        self.module.eval().requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        """The averaged model (same class and state-dict keys as the trained one)."""
        return self._averaged.module

    def current_decay(self) -> float:
        """d_k of the latest update: :func:`ema_decay` at ``updates``."""
        return ema_decay(self.decay, self.warmup, self.updates)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step after an optimizer step of ``model``."""
        self.updates += 1
        self._averaged.update_parameters(model)

    def _average(self, ema: list[Tensor], current: list[Tensor], _: Tensor) -> None:
        # AveragedModel calls this once per (device, dtype) group of parameters and buffers
        if ema[0].is_floating_point():
            get_ema_multi_avg_fn(self.current_decay())(ema, current, _)
        else:
            torch._foreach_copy_(ema, current)

    def state_dict(self) -> dict[str, Any]:
        """The EMA's counters (its weights are ``module.state_dict()``)."""
        return {"updates": self.updates, "decay": self.decay, "warmup": self.warmup}

    def load(self, weights: dict[str, Tensor], state: dict[str, Any]) -> None:
        """Restore the averaged weights and the update count saved by :meth:`state_dict`; the
        decay and warm-up stay those of the current config."""
        self.module.load_state_dict(weights)
        self.updates = int(state["updates"])
