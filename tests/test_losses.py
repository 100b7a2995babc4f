import math

import pytest
import torch
import torch.nn.functional as F

from o2f.boxes import centerness_target, pair_giou
from o2f.losses import giou_loss, soft_focal_loss


def bce(p, y):
    return -(y * max(math.log(p), -100) + (1 - y) * max(math.log(1 - p), -100))


def test_soft_focal_loss_hand_computed():
    # Two points, two classes. Point 0 is a soft anchor of class 1 (soft 0.5, weight 0.4);
    # point 1 is background.
    scores = torch.tensor([[0.2, 0.6], [0.1, 0.9]])
    labels = torch.tensor([1, 2])
    soft = torch.tensor([0.5, 0.0])
    weight = torch.tensor([0.4, 0.0])
    neg = lambda p: bce(p, 0) * p**2 * 0.75  # noqa: E731
    expected = neg(0.2) + bce(0.6, 0.5) * 0.4 + neg(0.1) + neg(0.9)
    got = soft_focal_loss(scores, labels, soft, weight, avg_factor=2.0)
    assert got.item() == pytest.approx(expected / 2.0, rel=1e-5)


def test_soft_focal_loss_matches_torch_bce_literal_reading():
    gen = torch.Generator().manual_seed(0)
    n, c = 200, 7
    scores = torch.rand(n, c, generator=gen).clamp(1e-4, 1 - 1e-4)
    labels = torch.randint(0, c + 1, (n,), generator=gen)
    soft = torch.rand(n, generator=gen)
    weight = torch.rand(n, generator=gen)
    loss = F.binary_cross_entropy(scores, torch.zeros_like(scores), reduction="none") \
        * scores**2 * 0.75
    for i in range(n):
        if labels[i] < c:
            loss[i, labels[i]] = F.binary_cross_entropy(scores[i, labels[i]], soft[i]) * weight[i]
    got = soft_focal_loss(scores, labels, soft, weight, avg_factor=13.0)
    torch.testing.assert_close(got, loss.sum() / 13.0, rtol=1e-4, atol=0)


def test_soft_focal_loss_clamps_logs_and_has_gradient():
    scores = torch.tensor([[0.0, 1.0]], requires_grad=True)
    loss = soft_focal_loss(scores, torch.tensor([0]), torch.tensor([1.0]), torch.tensor([1.0]), 1.0)
    # entry (0, 0): BCE(0, 1) = 100 (clamped); entry (0, 1): BCE(1, 0) * 1 * 0.75 = 75
    assert loss.item() == pytest.approx(175.0)


def test_giou_loss_hand_computed():
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    target = torch.tensor([[1.0, 0.0, 3.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    # box 0: inter 2, union 6, enclosing 6 -> giou 1/3; box 1 identical -> giou 1
    torch.testing.assert_close(pair_giou(pred, target), torch.tensor([1 / 3, 1.0]))
    weights = torch.tensor([0.5, 2.0])
    got = giou_loss(pred, target, weights, avg_factor=2.5)
    assert got.item() == pytest.approx((0.5 * (2 / 3) + 2.0 * 0.0) / 2.5)
    disjoint = giou_loss(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([[2.0, 0, 3, 1]]),
                         torch.ones(1), 1.0)
    # inter 0, union 2, enclosing 3 -> giou = 0 - 1/3 -> loss 4/3
    assert disjoint.item() == pytest.approx(4 / 3)


def test_area_and_iou_below_one_pixel():
    from o2f.boxes import box_area, pair_iou

    boxes = torch.tensor([[0.0, 0, 0.5, 2], [0.0, 0, 2, 0.25], [3.0, 0, 1, 2]])  # last: x2 < x1
    torch.testing.assert_close(box_area(boxes), torch.tensor([1.0, 0.5, 0.0]))
    tiny = torch.tensor([[0.0, 0, 0.5, 0.5]])
    torch.testing.assert_close(pair_iou(tiny, tiny), torch.tensor([1.0]))


def test_giou_away_from_the_origin_and_below_one_pixel():
    # disjoint boxes at (10, 20): inter 0, union 8, enclosure (10,20)-(16,22) = 12: -1/3
    a, b = torch.tensor([[10.0, 20, 12, 22]]), torch.tensor([[14.0, 20, 16, 22]])
    torch.testing.assert_close(pair_giou(a, b), torch.tensor([-1 / 3]))
    # sub-pixel boxes: identical -> 1; two touching halves -> inter 0, union = enclosure: 0
    tiny = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.25]])
    other = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.25, 0.5, 0.5]])
    torch.testing.assert_close(pair_giou(tiny, other), torch.tensor([1.0, 0.0]))


def test_centerness_target_hand_computed():
    points = torch.tensor([[2.0, 3.0]])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 4.0]])
    # l=2, r=8, t=3, b=1 -> sqrt(2/8 * 1/3)
    assert centerness_target(points, boxes).item() == pytest.approx(math.sqrt(0.25 / 3))


def test_giou_gradient_flows_to_predictions():
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]], requires_grad=True)
    giou_loss(pred, torch.tensor([[1.0, 0.0, 3.0, 2.0]]), torch.ones(1), 1.0).backward()
    assert pred.grad.abs().sum() > 0
