"""The few torch.distributed helpers the library needs; each is a no-op on one process."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return rank() == 0


def reduce_mean(value: Tensor) -> Tensor:
    """Mean of a tensor over all ranks (the tensor itself on one process). Not differentiable."""
    if not is_distributed():
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / dist.get_world_size()


def all_gather_objects(obj: object) -> list[object]:
    """Every rank's ``obj``, in rank order ([obj] on one process)."""
    if not is_distributed():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def device_for_rank(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def mean_over_ranks(values: dict[str, float | Tensor],
                    device: torch.device | str = "cpu") -> dict[str, float]:
    """Each value's mean over all ranks, as floats (one all-reduce of the stacked values, on
    ``device``: the process's CUDA device under NCCL). Every rank must call it with the same
    keys; on one process the values themselves. E.g. the logged training losses, so that the
    log shows the whole batch's loss, not rank 0's share."""
    keys = sorted(values)
    if not keys:
        return {}
    stacked = torch.stack([torch.as_tensor(values[k], dtype=torch.float64, device=device)
                           .detach().reshape(()) for k in keys])
    if is_distributed():
        dist.all_reduce(stacked)
        stacked = stacked / dist.get_world_size()
    means = dict(zip(keys, stacked.tolist(), strict=True))
    return {k: means[k] for k in values}  # in the caller's order
