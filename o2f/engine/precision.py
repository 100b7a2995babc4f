"""``train.precision``: which dtype the network runs in under autocast.

The assignment and the losses always run in fp32 (the detector turns autocast off around
them); this only chooses the dtype of the backbone, FPN and head convolutions.
"""

from __future__ import annotations

import torch

from o2f.config import ConfigError


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: a CUDA GPU with bf16 (Ampere and later) or
    a CPU whose oneDNN has bf16 kernels (AVX512-BF16 or AMX). Elsewhere bf16 is emulated and
    slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def autocast_dtype(precision: str, device: torch.device,
                   key: str = "train.precision") -> torch.dtype | None:
    """The autocast dtype of ``train.precision`` (or the config ``key`` it came from, e.g.
    ``test.precision``; errors name it) on ``device`` (None: fp32, no autocast).

    ``auto`` is bf16 where :func:`native_bf16`, else fp32. ``fp16`` needs CUDA (it trains
    with a GradScaler; CPUs have no fast fp16 convolutions)."""
    if precision == "auto":
        precision = "bf16" if native_bf16(device) else "fp32"
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise ConfigError(f"{key}=fp16 needs CUDA (this process runs on "
                              f"{device.type}); use bf16 or fp32")
        return torch.float16
    raise ConfigError(f"config key '{key}' must be fp32, bf16, fp16 or auto, "
                      f"got {precision!r}")


def describe(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
