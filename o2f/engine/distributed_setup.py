"""Process-group set-up for runs launched by torchrun (NCCL on GPUs, Gloo on CPU)."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def init_distributed(timeout_minutes: int = 30) -> tuple[int, int, torch.device]:
    """Join the process group when torchrun started this process.

    Returns:
        rank, world size, and this process's device (cuda:LOCAL_RANK when CUDA is available).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if cuda else "gloo", timeout=timedelta(minutes=timeout_minutes),
            device_id=device if cuda else None,
        )
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank, world, device


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
