"""Counting host synchronisations: the operations that make the CPU wait for a CUDA device.

A training step that never waits lets the host queue the next kernels while the device runs the
current ones; each of these operations stops that until the device has caught up:

- ``nonzero`` (and ``argwhere``, one-argument ``where``): the output size is data-dependent;
- ``.item()`` / ``int(t)`` / ``float(t)`` / ``bool(t)`` (``aten._local_scalar_dense``) and
  the ops that return a Python bool (``equal``, ``is_nonzero``, ``allclose``);
- ``masked_select``, and ``index`` / ``index_put`` with a boolean index (``x[mask]``,
  ``x[mask] = v``; their backward too);
- ``unique`` (every variant), tensor-valued ``repeat_interleave`` without ``output_size``,
  ``bincount``;
- copies to the host (``_to_copy`` / ``copy_`` from a device tensor to the CPU), and
  ``Tensor.tolist()`` / ``Tensor.numpy()``;
- blocking copies from the host to a device (``non_blocking=False``, e.g.
  ``torch.tensor(values, device="cuda")``): PyTorch waits for the stream after them.

:func:`count_host_syncs` counts them with a ``TorchDispatchMode`` (every aten op, the backward
pass included) plus a ``TorchFunctionMode`` for ``tolist`` / ``numpy``, which on a CPU tensor
reach no aten op. On a CPU-only machine nothing actually waits, but the same operations are
counted: they are the ones that would synchronise once the tensors live on a GPU (a CPU tensor
read with ``.item()`` counts; a CPU-to-CPU copy does not, so the copies between host and
device are seen only with a device).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

#: Ops that synchronise whatever their arguments (by overload packet).
_ALWAYS = {
    aten.nonzero: "nonzero",
    aten.argwhere: "nonzero",
    aten._local_scalar_dense: "item",
    aten.is_nonzero: "item",
    aten.equal: "item",
    aten.allclose: "item",
    aten.masked_select: "masked_select",
    aten.unique_consecutive: "unique",
    aten.unique_dim: "unique",
    aten.unique_dim_consecutive: "unique",
    aten._unique: "unique",
    aten._unique2: "unique",
    aten.bincount: "bincount",
}
_INDEX = {aten.index, aten._unsafe_index}
_INDEX_PUT = {aten.index_put, aten.index_put_, aten._index_put_impl_, aten._unsafe_index_put}


class HostSyncCounts(Counter):
    """Counts by kind (``nonzero``, ``item``, ``bool_index``, ``bool_index_put``,
    ``masked_select``, ``unique``, ``repeat_interleave``, ``bincount``, ``to_host``,
    ``to_device``, ``tolist``); ``total`` is their sum."""

    @property
    def total(self) -> int:
        return sum(self.values())


def _has_bool_index(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
               for i in indices)


def sync_kind(func, args: tuple, kwargs: dict) -> str | None:
    """The kind of host sync the aten op ``func`` (an OpOverload) with these arguments is, or
    None when it does not synchronise."""
    packet = func.overloadpacket
    if packet in _ALWAYS:
        return _ALWAYS[packet]
    if packet in _INDEX:
        return "bool_index" if _has_bool_index(args[1]) else None
    if packet in _INDEX_PUT:
        return "bool_index_put" if _has_bool_index(args[1]) else None
    if packet is aten.repeat_interleave:  # tensor repeats: the output size is data-dependent
        tensor_repeats = func in (aten.repeat_interleave.Tensor, aten.repeat_interleave.self_Tensor)
        return "repeat_interleave" if tensor_repeats and kwargs.get("output_size") is None \
            else None
    if packet is aten._to_copy:
        device = kwargs.get("device")
        if device is None:
            return None
        return _copy_kind(args[0], device, kwargs.get("non_blocking", False))
    if packet is aten.copy_:
        non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
        return _copy_kind(args[1], args[0].device, non_blocking)
    return None


def _copy_kind(src: object, dst_device: object, non_blocking: bool) -> str | None:
    if not isinstance(src, torch.Tensor):
        return None
    src_type, dst_type = src.device.type, torch.device(dst_device).type
    if src_type not in ("cpu", "meta") and dst_type == "cpu":
        return "to_host"
    if src_type == "cpu" and dst_type not in ("cpu", "meta") and not non_blocking:
        return "to_device"  # a blocking copy waits for the device's queue (memcpy_and_sync)
    return None


class _DispatchCounter(TorchDispatchMode):
    def __init__(self, counts: HostSyncCounts) -> None:
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = sync_kind(func, args, kwargs)
        if kind is not None:
            self.counts[kind] += 1
        return func(*args, **kwargs)


class _FunctionCounter(TorchFunctionMode):
    """``Tensor.tolist`` / ``Tensor.numpy`` read the data without an aten op on a CPU tensor."""

    def __init__(self, counts: HostSyncCounts) -> None:
        super().__init__()
        self.counts = counts

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.Tensor.tolist, torch.Tensor.numpy) and args \
                and args[0].device.type == "cpu":  # on a device the copy to the host counts
            self.counts["tolist"] += 1
        return func(*args, **kwargs)


@contextmanager
def count_host_syncs() -> Iterator[HostSyncCounts]:
    """Count the host synchronisations of the code run inside (module docstring)::

        with count_host_syncs() as syncs:
            loss = sum(model(images, targets).values())
            loss.backward()
        assert syncs.total <= 8, syncs

    Yields a :class:`HostSyncCounts` filled in as the ops run (the backward pass included:
    autograd runs its nodes under the same mode).
    """
    counts = HostSyncCounts()
    with _FunctionCounter(counts), _DispatchCounter(counts):
        yield counts


__all__ = ["HostSyncCounts", "count_host_syncs", "sync_kind"]
