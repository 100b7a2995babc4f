"""Process-group set-up for runs launched by torchrun (NCCL on GPUs, Gloo on CPU), and the
choice of device (``train.device``: auto | cuda | cpu) with a clear account of why CUDA cannot
be used when it cannot."""

from __future__ import annotations

import os
import re
import warnings
from datetime import timedelta

import torch
import torch.distributed as dist

from o2f.engine.logs import get_logger

DEVICE_CHOICES = ("auto", "cuda", "cpu")


class DeviceError(RuntimeError):
    """``train.device=cuda`` but CUDA cannot be used in this process."""


def arch_supported(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a GPU of compute ``capability`` (major, minor) runs kernels of a build compiled
    for ``arch_list`` (``torch.cuda.get_arch_list()``, e.g. ``['sm_75', ..., 'sm_120']``).

    A cubin ``sm_XY`` runs on devices of the same major version and minor >= Y (``sm_80`` runs
    on an 8.6 GPU); an arch-specific cubin (``sm_90a``) only on exactly X.Y; PTX
    (``compute_XY``) is JIT-compiled by the driver for any device of capability >= X.Y.
    An empty list (a build that does not report it) counts as supported.
    """
    if not arch_list:
        return True
    major, minor = capability
    for arch in arch_list:
        m = re.fullmatch(r"(sm|compute)_(\d+?)(\d)([a-z]?)", arch)
        if m is None:
            continue
        kind, a_major, a_minor, suffix = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
        if kind == "compute" and (major, minor) >= (a_major, a_minor):
            return True
        if kind == "sm" and a_major == major and (a_minor == minor if suffix else a_minor <= minor):
            return True
    return False


def cuda_build() -> str:
    """One line on PyTorch's CUDA build: version and the architectures it has kernels for."""
    if torch.version.cuda is None:
        return f"PyTorch {torch.__version__} is a CPU-only build (torch.version.cuda is None)"
    archs = " ".join(torch.cuda.get_arch_list()) or "not reported"
    return f"PyTorch {torch.__version__} is built for CUDA {torch.version.cuda} (kernels: {archs})"


def cuda_problem(local_rank: int = 0) -> str | None:
    """Why this process cannot run on ``cuda:local_rank``, or None when it can.

    Covers a CPU-only build, ``torch.cuda.is_available()`` False (no GPU visible, or a driver
    too old for the build: PyTorch's own initialisation warning is quoted), fewer visible
    devices than ``local_rank + 1``, and a device whose compute capability the build has no
    kernels for (``torch.cuda.get_device_capability`` against ``torch.cuda.get_arch_list``).
    """
    build = cuda_build()
    if torch.version.cuda is None:
        return build
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if not available:
        said = "; ".join(str(w.message).strip() for w in caught)
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        return (f"{build}, but torch.cuda.is_available() is False"
                + (f" (PyTorch says: {said})" if said else "")
                + (f"; CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "")
                + ". Check nvidia-smi: the driver must support CUDA "
                f"{torch.version.cuda} (see docs/training.md, 'Devices')")
    count = torch.cuda.device_count()
    if local_rank >= count:
        return (f"{build}; LOCAL_RANK={local_rank} but torch.cuda.device_count() is {count}: "
                "start at most one process per visible GPU")
    cap = torch.cuda.get_device_capability(local_rank)
    if not arch_supported(cap, torch.cuda.get_arch_list()):
        name = torch.cuda.get_device_name(local_rank)
        return (f"{build}, but cuda:{local_rank} is a {name} of compute capability "
                f"{cap[0]}.{cap[1]} (sm_{cap[0]}{cap[1]}), for which this build has no kernels: "
                "install a PyTorch build that lists it in torch.cuda.get_arch_list()")
    return None


def resolve_device(choice: str, local_rank: int, world: int) -> torch.device:
    """The device of ``train.device`` for this process.

    ``cpu``: the CPU. ``cuda``: ``cuda:local_rank``, or :class:`DeviceError` naming the
    build and what ``torch.cuda`` reports (:func:`cuda_problem`). ``auto``: CUDA when usable,
    else the CPU, with a loud warning when ``world > 1`` (a multi-process run on Gloo is
    almost never what a GPU machine meant) or when a GPU is visible but unusable.
    """
    if choice not in DEVICE_CHOICES:
        raise DeviceError(f"train.device must be one of {', '.join(DEVICE_CHOICES)}, "
                          f"got {choice!r}")
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "cuda":
        problem = cuda_problem(local_rank)
        if problem is not None:
            raise DeviceError(f"train.device=cuda but CUDA cannot be used: {problem}")
        return torch.device("cuda", local_rank)
    if torch.cuda.is_available() and cuda_problem(local_rank) is None:
        return torch.device("cuda", local_rank)
    unusable_gpu = torch.cuda.is_available()  # a GPU is there, but cuda_problem found a fault
    if (world > 1 or unusable_gpu) and local_rank == 0:
        problem = cuda_problem(local_rank) or "CUDA is not available"
        get_logger().warning(
            "\n%s\nWARNING: %d processes will train on the CPU with Gloo: %s.\nSet "
            "train.device=cuda to make this an error, or train.device=cpu to silence this "
            "warning.\n%s", "!" * 80, world, problem, "!" * 80)
    return torch.device("cpu")


def init_distributed(timeout_minutes: int = 30,
                     device: str = "auto") -> tuple[int, int, torch.device]:
    """Join the process group when torchrun started this process.

    Args:
        timeout_minutes: collective timeout of the process group.
        device: ``train.device`` (:func:`resolve_device`).

    Returns:
        rank, world size, and this process's device (cuda:LOCAL_RANK or the CPU).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank, world)
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if cuda else "gloo", timeout=timedelta(minutes=timeout_minutes),
            device_id=dev if cuda else None,
        )
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank, world, dev


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
