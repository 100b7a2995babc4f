"""The cross-rank normalisers of SPEC §3 with two real Gloo processes on the CPU.

Each rank holds different data; every normaliser must be the mean over the ranks (of the
number of assigned points, of the sum of the centerness weights), not the local value.
"""

from __future__ import annotations

import math
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.conftest import free_port

WORLD = 2


def _check_reduce_mean() -> None:
    from o2f.distributed import reduce_mean

    r = dist.get_rank()
    value = torch.tensor([r + 1.0, 10.0 * (r + 1)])
    mean = reduce_mean(value)
    torch.testing.assert_close(mean, torch.tensor([1.5, 15.0]))
    torch.testing.assert_close(value, torch.tensor([r + 1.0, 10.0 * (r + 1)]))  # not in place


def _check_o2f_criterion() -> None:
    """Rank 0: the hand case of tests/test_criterion.py (3 assigned points, two images).
    Rank 1: the same image with only B assigned and no empty image (1 assigned point)."""
    from o2f.criterion import O2FCriterion
    from tests.test_criterion import B, hand_case, hand_losses

    r = dist.get_rank()
    kwargs = {} if r == 0 else {"assigned": (B,), "with_empty_image": False}
    crit = O2FCriterion(2)
    crit.set_epoch(1, 3)  # t = 0.4
    losses = crit(*hand_case(**kwargs))
    parts = [hand_losses(0.4), hand_losses(0.4, assigned=(B,), with_empty_image=False)]
    total, _, weighted, _ = parts[r]
    mean_assigned = (parts[0][1] + parts[1][1]) / 2  # (3 + 1) / 2 = 2
    mean_weights = (parts[0][3] + parts[1][3]) / 2
    assert mean_assigned == 2
    assert losses["loss_cls"].item() == pytest.approx(total / mean_assigned, rel=1e-5)
    assert losses["loss_bbox"].item() == pytest.approx(2.0 * weighted / mean_weights, rel=1e-5)


def _check_fcos_criterion() -> None:
    """Rank 0: tests/test_fcos_o2o.py's case (4 positives of centerness 1/3, GIoU 1/4, one
    empty image); rank 1: two images without gt (no positive). Means: 2 positives, weights
    (4/3 + 0) / 2 = 2/3."""
    from o2f.criterion import FCOSCriterion
    from tests.test_fcos_o2o import fcos_case

    r = dist.get_rank()
    crit = FCOSCriterion(2, regress_ranges=((-1, 64),))
    cls, ltrb, ctr, points, strides, grids, targets = fcos_case()
    if r == 1:
        targets = [targets[1], targets[1]]
    losses = crit(cls, ltrb, ctr, points, strides, grids, targets)
    ln2 = math.log(2.0)
    if r == 0:
        # 4 positive entries (0.25 (1/2)^2 ln 2) and 12 negative ones (0.75 (1/2)^2 ln 2)
        assert losses["loss_cls"].item() == pytest.approx((4 * 0.0625 + 12 * 0.1875) * ln2 / 2)
        assert losses["loss_bbox"].item() == pytest.approx(4 * (1 / 3) * 0.75 / (2 / 3))
        assert losses["loss_ctr"].item() == pytest.approx(4 * ln2 / 2)
    else:
        assert losses["loss_cls"].item() == pytest.approx(16 * 0.1875 * ln2 / 2)
        assert losses["loss_bbox"].item() == 0 and losses["loss_ctr"].item() == 0


def _check_mask_loss() -> None:
    """tests/test_condinst.py's block case: rank 0 has 2 mask points (dice 1 and 0), rank 1 one
    (dice 1); mean 1.5 points, so each rank's loss is 2.0 x its dice sum / 1.5 = 4/3."""
    from o2f.criterion import CondInstMaskLoss
    from tests.test_condinst import block_case

    r = dist.get_rank()
    head, feats, target = block_case()
    params = torch.tensor([[[1.0, 0.0]] * 3])
    gt_index = torch.tensor([[0, 1, -1] if r == 0 else [0, -1, -1]])
    loss = CondInstMaskLoss(2, dice_weight=2.0, sem_weight=0.0)(
        head, gt_index, params, feats, None, torch.zeros(3, 2), torch.full((3,), 64.0),
        [target])["loss_mask"]
    assert loss.item() == pytest.approx(4 / 3, abs=1e-3)


def _worker(rank: int, port: int, errors) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    try:
        for check in (_check_reduce_mean, _check_o2f_criterion, _check_fcos_criterion,
                      _check_mask_loss):
            try:
                check()
            except Exception:  # report every failing check of every rank
                errors.put(f"rank {rank} {check.__name__}:\n{traceback.format_exc()}")
            dist.barrier()
    finally:
        dist.destroy_process_group()


def test_normalisers_are_means_over_two_gloo_ranks():
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    mp.start_processes(_worker, args=(free_port(), errors), nprocs=WORLD, join=True,
                       start_method="spawn")
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert not found, "\n".join(found)
