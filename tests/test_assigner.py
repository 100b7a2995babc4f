import math

import pytest
import torch

from o2f.assigners import level_grids, o2f_assign, soft_label_ceiling
from o2f.boxes import decode_ltrb, level_points
from tests.literal_o2f import literal_o2f_assign

STRIDES = (8, 16, 32, 64, 128)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def random_case(seed: int, num_gt: int, height: int = 320, width: int = 480, num_classes: int = 5,
                small: bool = False, crowded: bool = False):
    gen = torch.Generator().manual_seed(seed)
    sizes = [(math.ceil(height / s), math.ceil(width / s)) for s in STRIDES]
    points, strides = level_points(sizes, STRIDES)
    n = points.shape[0]
    cls = torch.randn(n, num_classes, generator=gen) * 2 - 2
    ctr = torch.randn(n, generator=gen)
    ltrb = torch.rand(n, 4, generator=gen) * strides[:, None] * 4
    pred = decode_ltrb(points, ltrb)
    if crowded:  # clusters of heavily overlapping boxes
        centers = torch.rand(max(1, num_gt // 6), 2, generator=gen) * torch.tensor([width, height])
        pick = torch.randint(0, centers.shape[0], (num_gt,), generator=gen)
        c = centers[pick] + torch.randn(num_gt, 2, generator=gen) * 10
    else:
        c = torch.rand(num_gt, 2, generator=gen) * torch.tensor([width, height])
    max_wh = 12.0 if small else 250.0
    wh = torch.rand(num_gt, 2, generator=gen) * max_wh + 2
    gt = torch.cat([c - wh / 2, c + wh / 2], dim=1)
    labels = torch.randint(0, num_classes, (num_gt,), generator=gen)
    return points, strides, cls, ctr, pred, gt, labels


def assert_same(ours, ref):
    labels, targets, soft, weights = ours
    r_labels, r_targets, r_soft, r_weights = ref
    assert torch.equal(labels, r_labels)
    assert torch.equal(targets, r_targets)
    assert torch.equal(weights, r_weights)
    torch.testing.assert_close(soft, r_soft, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "seed,num_gt,kwargs",
    [(0, 0, {}), (1, 1, {}), (2, 5, {}), (3, 20, {"small": True}), (4, 40, {"crowded": True}),
     (5, 300, {"crowded": True}), (6, 300, {}), (7, 60, {"small": True, "crowded": True})],
)
def test_matches_literal_reading(seed, num_gt, kwargs):
    case = random_case(seed, num_gt, **kwargs)
    ours = o2f_assign(*case)
    assert_same(ours, literal_o2f_assign(*case))
    if num_gt:
        assert (ours[0] < 5).any(), "the case should assign something"


@pytest.mark.parametrize("topk,alpha,radius,t,w", [(4, 0.8, 1.5, 0.3, 0.4), (1, 0.5, 2.5, 0.6, 0.2),
                                                   (10, 1.0, 1.0, 0.2, 0.4)])
def test_matches_literal_with_other_hyper_parameters(topk, alpha, radius, t, w):
    case = random_case(11, 80, crowded=True)
    kw = dict(topk=topk, alpha=alpha, center_radius=radius, soft_t=t, soft_weight=w)
    assert_same(o2f_assign(*case, **kw), literal_o2f_assign(*case, **kw))


def test_irregular_points_use_the_dense_path_and_still_match():
    points, strides, cls, ctr, pred, gt, labels = random_case(12, 30, crowded=True)
    perm = torch.randperm(points.shape[0], generator=torch.Generator().manual_seed(0))
    case = (points[perm], strides[perm], cls[perm], ctr[perm], pred[perm], gt, labels)
    assert level_grids(case[0], case[1]) is None
    assert_same(o2f_assign(*case), literal_o2f_assign(*case))


def one_level_case():
    """A 4x4 grid of stride 8 (points at 4, 12, 20, 28) and one gt covering the whole image.

    Centre (16, 16), radius 1.5 * 8 = 12: the region is the open square (4, 28), so exactly the
    four points with x, y in {12, 20} are candidates; the edge points at 4 and 28 sit on its sides.
    """
    points, strides = level_points([(4, 4)], [8])
    gt = torch.tensor([[0.0, 0.0, 32.0, 32.0]])
    pred = gt.expand(16, 4).clone()  # IoU 1 everywhere
    cls = torch.zeros(16, 1)  # sigmoid 0.5
    ctr = torch.full((16,), 10.0)
    return points, strides, cls, ctr, pred, gt, torch.tensor([0])


def test_hand_computed_positive_and_soft_anchors():
    points, strides, cls, ctr, pred, gt, labels = one_level_case()
    # index = 4 * i + j for the point at (8j + 4, 8i + 4); candidates are 5, 6, 9, 10
    for idx, p in zip([5, 6, 9, 10], [0.8, 0.6, 0.4, 0.2]):
        ctr[idx] = logit(p)  # joint prob = 0.5 * p = 0.4, 0.3, 0.2, 0.1
    lab, tgt, soft, w = o2f_assign(points, strides, cls, ctr, pred, gt, labels, soft_t=0.6)
    assert lab.tolist() == [1] * 5 + [0, 0] + [1] * 2 + [0, 0] + [1] * 5
    # quality = prob^0.2 * 1^0.8 orders them by prob: point 5 is the positive; the soft anchors
    # 6, 9, 10 get 0.6 * prob / 0.3 = 0.6, 0.4, 0.2 with weight 0.4.
    torch.testing.assert_close(soft[[5, 6, 9, 10]], torch.tensor([1.0, 0.6, 0.4, 0.2]))
    torch.testing.assert_close(w[[5, 6, 9, 10]], torch.tensor([1.0, 0.4, 0.4, 0.4]))
    assert soft.sum() == pytest.approx(2.2) and w.sum() == pytest.approx(2.2)
    assert torch.equal(tgt[5], gt[0]) and torch.equal(tgt[0], torch.zeros(4))


def test_topk_limits_picks_and_dynamic_k_counts_positive_iou():
    points, strides, cls, ctr, pred, gt, labels = one_level_case()
    for idx, p in zip([5, 6, 9, 10], [0.8, 0.6, 0.4, 0.2]):
        ctr[idx] = logit(p)
    lab, _, soft, _ = o2f_assign(points, strides, cls, ctr, pred, gt, labels, topk=2)
    assert (lab == 0).nonzero().squeeze(1).tolist() == [5, 6]
    # A predicted box that misses the gt entirely has IoU 0: it is never picked.
    pred[5] = torch.tensor([100.0, 100.0, 110.0, 110.0])
    lab, _, soft, _ = o2f_assign(points, strides, cls, ctr, pred, gt, labels, topk=7)
    assert (lab == 0).nonzero().squeeze(1).tolist() == [6, 9, 10]
    assert soft[6] == 1.0 and soft[9] == pytest.approx(0.6)


def test_point_goes_to_the_gt_of_higher_quality():
    points, strides, cls, ctr, pred, _, _ = one_level_case()
    # Two gts with the same centre region; point 5 predicts gt B exactly, A only partly.
    gt = torch.tensor([[0.0, 0.0, 32.0, 32.0], [0.0, 0.0, 32.0, 30.0]])
    labels = torch.tensor([0, 0])
    pred[:] = torch.tensor([0.0, 0.0, 32.0, 30.0])  # IoU 30/32 with A, 1 with B
    lab, tgt, soft, w = o2f_assign(points, strides, cls, ctr, pred, gt, labels, topk=7)
    # B's region is the square (4, 28) x (3, 27) intersected with B: the same 4 points. Every
    # candidate has higher quality for B, so B takes all four and A gets nothing.
    assert torch.equal(tgt[[5, 6, 9, 10]], gt[1].expand(4, 4))
    assert (soft == 1.0).sum() == 1
    # With equal quality the lower gt index wins.
    gt = torch.tensor([[0.0, 0.0, 32.0, 32.0], [0.0, 0.0, 32.0, 32.0]])
    pred[:] = gt[0]
    lab, tgt, soft, w = o2f_assign(points, strides, cls, ctr, pred, gt, labels)
    assert (lab == 0).sum() == 4 and (soft == 1.0).sum() == 1


def test_boundary_points_are_not_candidates():
    points, strides, cls, ctr, pred, gt, labels = one_level_case()
    lab, *_ = o2f_assign(points, strides, cls, ctr, pred, gt, labels)
    # Points at x = 4 or 28 lie exactly on the region's side: distance 0 is not inside.
    assert set((lab == 0).nonzero().squeeze(1).tolist()) == {5, 6, 9, 10}


def test_no_gt_means_all_background():
    points, strides, cls, ctr, pred, _, _ = one_level_case()
    lab, tgt, soft, w = o2f_assign(points, strides, cls, ctr, pred, torch.zeros(0, 4),
                                   torch.zeros(0, dtype=torch.long))
    assert (lab == 1).all() and tgt.abs().sum() == 0 and soft.sum() == 0 and w.sum() == 0


def test_soft_label_ceiling_schedule():
    assert soft_label_ceiling(0, 12) == pytest.approx(0.6)
    assert soft_label_ceiling(11, 12) == pytest.approx(0.2)
    assert soft_label_ceiling(6, 12) == pytest.approx(0.6 - 0.4 * 6 / 11)
    assert soft_label_ceiling(49, 50) == pytest.approx(0.2)
    assert soft_label_ceiling(0, 1) == pytest.approx(0.6)
    assert [soft_label_ceiling(e, 2) for e in (0, 1)] == pytest.approx([0.6, 0.2])
    assert soft_label_ceiling(3, 4, 0.4, 0.1) == pytest.approx(0.1)


def test_the_criterion_follows_its_own_ceiling_ends():
    from o2f.criterion import O2FCriterion

    crit = O2FCriterion(2, soft_t_start=0.4, soft_t_end=0.1)  # the small recipe's ends
    assert crit.soft_t == pytest.approx(0.4)
    crit.set_epoch(11, 12)
    assert crit.soft_t == pytest.approx(0.1)
    crit.set_epoch(0, 12)
    assert crit.soft_t == pytest.approx(0.4)


def test_level_grids_recovers_layout():
    points, strides = level_points([(5, 7), (3, 4)], [8, 16])
    grids = level_grids(points, strides)
    assert [(g.start, g.height, g.width, g.stride) for g in grids] == [(0, 5, 7, 8.0),
                                                                          (35, 3, 4, 16.0)]
    assert [(g.x0, g.y0) for g in grids] == [(4.0, 4.0), (8.0, 8.0)]
    assert level_grids(points[:0], strides[:0]) == []


@pytest.mark.parametrize("where, shift, regular", [
    ("x", 0.004, True),  # float rounding (below tol * stride = 0.008): still the grid
    ("x", 0.5, False), ("y", 0.5, False),  # a point off the grid in x or in y alone
])
def test_level_grids_tolerance_is_relative_to_the_stride(where, shift, regular):
    points, strides = level_points([(4, 5)], [8])
    points = points.clone()
    points[7, 0 if where == "x" else 1] += shift
    assert (level_grids(points, strides) is not None) == regular
