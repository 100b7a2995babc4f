"""Per-sample seeds: an item's augmentation depends on (seed, epoch, index) only, not on the
number of loader workers, on persistent workers, or on the global random state."""

from __future__ import annotations

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler

from o2f.data.seeded import SeededBatches, SeededItems, sample_seed


class RandomItems(Dataset):
    """Item i: (i, a draw of torch's global generator), as a random augmentation is."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int):
        return index, torch.rand(()).item()

    def image_info(self, index: int) -> dict:
        return {"id": index}


def _epochs(workers: int, persistent: bool, epochs: int = 2) -> list[list[tuple[int, float]]]:
    batches = SeededBatches(BatchSampler(SequentialSampler(range(8)), 3, False), seed=5)
    loader = DataLoader(SeededItems(RandomItems()), batch_sampler=batches, num_workers=workers,
                        persistent_workers=persistent, collate_fn=lambda b: b)
    out = []
    for epoch in range(epochs):
        batches.set_epoch(epoch)
        out.append([item for batch in loader for item in batch])
    return out


def test_items_are_seeded_per_sample_and_epoch():
    torch.manual_seed(0)
    plain = _epochs(0, False)
    torch.manual_seed(123)  # the global state does not matter
    again = _epochs(0, False)
    assert plain == again
    assert [i for i, _ in plain[0]] == list(range(8))
    assert len({v for _, v in plain[0]}) == 8  # different indices draw differently
    assert all(a != b for (_, a), (_, b) in zip(plain[0], plain[1], strict=True))  # epochs too


def test_persistent_workers_draw_as_a_fresh_start_would():
    plain = _epochs(0, False)
    assert _epochs(2, True) == plain
    # "resumed" at epoch 1 with fresh workers: epoch 1 as in the uninterrupted run
    batches = SeededBatches(BatchSampler(SequentialSampler(range(8)), 3, False), seed=5)
    batches.set_epoch(1)
    loader = DataLoader(SeededItems(RandomItems()), batch_sampler=batches, num_workers=1,
                        persistent_workers=True, collate_fn=lambda b: b)
    assert [item for batch in loader for item in batch] == plain[1]


def test_main_process_random_state_is_left_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    SeededItems(RandomItems())[(2, 99)]
    assert torch.equal(torch.rand(3), expected)


def test_sample_seed_is_spread_and_in_range():
    seeds = {sample_seed(s, e, i) for s in range(3) for e in range(3) for i in range(100)}
    assert len(seeds) == 900 and all(0 <= x < 2**63 for x in seeds)
    assert SeededItems(RandomItems()).image_info(3) == {"id": 3}  # attributes pass through
