"""Training batches grouped by aspect ratio (landscape / portrait)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler


class AspectGroupedBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size`` indices from ``sampler`` in which every image has the same
    orientation, so a batch is padded to the size of like-shaped images only (a portrait image
    padded into a landscape batch makes it nearly square: up to twice the pixels, all of them
    seen by the head's GroupNorm and by the loss as background).

    Indices are taken in the sampler's order (its shuffle and ``set_epoch`` keep the run
    deterministic) into one bucket per orientation; a full bucket is a batch. What is left in
    the buckets at the end forms the last batches (landscape first), so there are exactly
    ceil(len(sampler) / batch_size) batches, as without grouping, and every index is used once.

    Args:
        sampler: yields dataset indices (e.g. a ``DistributedSampler``).
        landscape: per dataset index, whether the image is at least as wide as tall.
        batch_size: images per batch.
    """

    def __init__(self, sampler: Sampler[int], landscape: Sequence[bool], batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler, self.landscape, self.batch_size = sampler, landscape, batch_size

    def __iter__(self) -> Iterator[list[int]]:
        buckets: tuple[list[int], list[int]] = ([], [])
        for index in self.sampler:
            bucket = buckets[0 if self.landscape[index] else 1]
            bucket.append(index)
            if len(bucket) == self.batch_size:
                yield list(bucket)
                bucket.clear()
        rest = buckets[0] + buckets[1]
        for start in range(0, len(rest), self.batch_size):
            yield rest[start:start + self.batch_size]

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)
