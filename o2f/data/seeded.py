"""Per-sample random seeds, so that augmentations follow from (seed, epoch, index) alone.

A loader's workers draw their augmentations from torch's global generator. Seeded per epoch in
the main process, that is deterministic only while workers are restarted every epoch; with
``persistent_workers`` a worker's generator runs on from one epoch to the next, so a run resumed
at epoch e (fresh workers) would augment differently from one that got there in one go. Here the
batch sampler sends each index with its own seed and the dataset seeds the generator from it
before loading the item: the augmentation of item i in epoch e is the same whatever the number
of workers or processes, and whether or not the run was resumed.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Sampler

_MASK = (1 << 64) - 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for item ``index`` of 0-based ``epoch`` (splitmix64 of the three)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB)
    x &= _MASK
    for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        x = ((x ^ (x >> shift)) * mult) & _MASK
    return (x ^ (x >> 31)) >> 1


class SeededBatches(Sampler[list[tuple[int, int]]]):
    """The batches of ``batch_sampler`` with each index paired with its seed,
    ``sample_seed(seed, epoch, index)``; :meth:`set_epoch` before each epoch."""

    def __init__(self, batch_sampler: Sampler[list[int]], seed: int) -> None:
        self.batch_sampler, self.seed, self.epoch = batch_sampler, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.batch_sampler:
            yield [(i, sample_seed(self.seed, self.epoch, i)) for i in batch]

    def __len__(self) -> int:
        return len(self.batch_sampler)


class SeededItems(Dataset):
    """``dataset[index]`` loaded with torch's CPU generator seeded from the key's seed; the
    generator's state is restored afterwards (in the main process, with ``workers=0``, the
    training loop's own random state is left as it was). Keys are ``(index, seed)`` pairs, as
    :class:`SeededBatches` yields them. Other attributes are the wrapped dataset's."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.dataset[index]

    def __getattr__(self, name: str):
        if name == "dataset":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)
