"""``O2FCriterion`` as a whole (SPEC §2-3) on a hand-made case whose every number is worked out
here with plain arithmetic: which points the one-to-few assignment keeps, the soft focal loss
normalised by the number of assigned points (soft anchors included), and the GIoU loss weighted
by the centerness targets, divided by their sum and multiplied by the loss weight 2.0.

``hand_case`` and ``hand_losses`` are shared with the two-process test in
``tests/test_distributed.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

from o2f.assigners import level_grids
from o2f.boxes import level_points
from o2f.builders import build_criterion
from o2f.config import load_config
from o2f.criterion import O2FCriterion

ROWS, COLS, STRIDE = 4, 5, 8  # points (8 j + 4, 8 i + 4), index 5 i + j
GT = (0.0, 0.0, 36.0, 32.0)  # class 1 of C = 2
A, B, C = 6, 7, 13  # (12, 12), (20, 12), (28, 20)
# The candidate region of GT: centre (18, 16), half side 1.5 * 8 = 12, so x in (6, 30) and y in
# (4, 28), intersected with the box: x in {12, 20, 28} and y in {12, 20}, i.e. points 6, 7, 8,
# 11, 12, 13. A, B and C predict boxes that overlap GT; 8, 11 and 12 predict an empty box at
# their own position (ltrb 0, IoU 0), so they are never picked (SPEC §2 step 5).
PRED = {A: (0.0, 0.0, 36.0, 16.0),  # inside GT: IoU = GIoU = 576 / 1152 = 1/2
        B: (2.0, 0.0, 36.0, 32.0),  # inside GT: IoU = GIoU = 1088 / 1152 = 17/18
        C: (8.0, 8.0, 44.0, 32.0)}  # inter 28 x 24 = 672, union 1152 + 864 - 672 = 1344,
#                                     IoU 1/2; enclosure 44 x 32 = 1408: GIoU 1/2 - 64/1408
IOU = {A: 0.5, B: 17 / 18, C: 0.5}
GIOU = {A: 0.5, B: 17 / 18, C: 0.5 - 64 / 1408}
# Centerness targets sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) in GT (36 x 32):
# A: l 12, r 24, t 12, b 20; B: l 20, r 16, t 12, b 20; C: l 28, r 8, t 20, b 12.
CENTERNESS = {A: math.sqrt(12 / 24 * 12 / 20), B: math.sqrt(16 / 20 * 12 / 20),
              C: math.sqrt(8 / 28 * 12 / 20)}
# sigmoid(centerness logit) of A, B, C (every other point: 1/2). Class logits: -1 for class 0,
# 0 for class 1 (sigmoid 1/2), so the joint probabilities of GT's class are 0.3, 0.4, 0.2.
CTR_PROB = {A: 0.6, B: 0.8, C: 0.4}
# quality = prob^0.2 * IoU^0.8: B 0.4^0.2 (17/18)^0.8 = 0.795 > A 0.3^0.2 0.5^0.8 = 0.451 >
# C 0.2^0.2 0.5^0.8 = 0.416. B is the positive (soft label 1, weight 1); A and C are soft anchors
# (weight 0.4) with soft labels t * 0.3 / 0.3 = t and t * 0.2 / 0.3 = 2 t / 3.


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def bce(p: float, y: float) -> float:
    return -(y * max(math.log(p), -100) + (1 - y) * max(math.log(1 - p), -100))


def hand_case(assigned=(A, B, C), with_empty_image=True):
    """Criterion inputs: a batch of the GT image (only the points in ``assigned`` predict
    their PRED box) and, with ``with_empty_image``, an image without gt whose class-1 logits
    are 1 (more background cost)."""
    points, strides = level_points([(ROWS, COLS)], [STRIDE])
    n = ROWS * COLS
    batch = 2 if with_empty_image else 1
    cls = torch.zeros(batch, n, 2)
    cls[:, :, 0] = -1.0
    if with_empty_image:
        cls[1, :, 1] = 1.0
    ctr = torch.zeros(batch, n)
    ltrb = torch.zeros(batch, n, 4)
    for idx in assigned:
        x, y = points[idx].tolist()
        x1, y1, x2, y2 = PRED[idx]
        ltrb[0, idx] = torch.tensor([x - x1, y - y1, x2 - x, y2 - y])
        ctr[0, idx] = logit(CTR_PROB[idx])
    targets = [{"boxes": torch.tensor([GT]), "labels": torch.tensor([1])}]
    if with_empty_image:
        targets.append({"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)})
    return (cls.requires_grad_(), ltrb.requires_grad_(), ctr.requires_grad_(), points, strides,
            level_grids(points, strides), targets)


def hand_losses(t: float, assigned=(A, B, C), with_empty_image=True):
    """(classification sum, number of assigned points, sum of centerness x (1 - GIoU), sum of
    centerness) of ``hand_case``, before any normalisation, by plain arithmetic."""
    cls, _, ctr, *_ = hand_case(assigned, with_empty_image)
    cls, ctr = cls.detach().tolist(), ctr.detach().tolist()
    probs = {idx: 0.5 * CTR_PROB[idx] for idx in assigned}
    positive = max(assigned, key=lambda i: probs[i] ** 0.2 * IOU[i] ** 0.8)
    assert positive == B
    anchors = [i for i in assigned if i != positive]
    top = max(probs[i] for i in anchors) if anchors else 1.0
    soft = {i: (1.0, 1.0) if i == positive else (t * probs[i] / top, 0.4) for i in assigned}
    total = 0.0
    for b, image in enumerate(cls):
        for n, logits in enumerate(image):
            for c, z in enumerate(logits):
                p = sigmoid(z) * sigmoid(ctr[b][n])
                if b == 0 and c == 1 and n in soft:
                    label, weight = soft[n]
                    total += bce(p, label) * weight
                else:
                    total += bce(p, 0.0) * p**2 * 0.75
    weighted = sum(CENTERNESS[i] * (1 - GIOU[i]) for i in assigned)
    return total, len(assigned), weighted, sum(CENTERNESS[i] for i in assigned)


def test_the_hand_case_assignment():
    crit = O2FCriterion(2)
    cls, ltrb, ctr, points, strides, grids, targets = hand_case()
    pred = torch.cat((points - ltrb[..., :2], points + ltrb[..., 2:]), -1)
    labels, boxes, soft, weights = crit.assign(cls.detach(), ctr.detach(), pred.detach(), points,
                                               strides, grids, targets)
    assert (labels[0] < 2).nonzero().squeeze(1).tolist() == [A, B, C]
    assert set(labels[0, [A, B, C]].tolist()) == {1} and (labels[1] == 2).all()
    torch.testing.assert_close(soft[0, [A, B, C]], torch.tensor([0.6, 1.0, 0.4]))
    torch.testing.assert_close(weights[0, [A, B, C]], torch.tensor([0.4, 1.0, 0.4]))
    torch.testing.assert_close(boxes[0, [A, B, C]], torch.tensor([GT] * 3))


@pytest.mark.parametrize(("epoch", "t"), [(0, 0.6), (1, 0.4), (2, 0.2)])
def test_o2f_criterion_hand_computed(epoch, t):
    crit = build_criterion(load_config("r50_1x"), 2)  # the recipe's criterion
    crit.set_epoch(epoch, 3)
    assert crit.soft_t == pytest.approx(t)
    losses = crit(*hand_case())
    total, num_assigned, weighted, weight_sum = hand_losses(t)
    assert num_assigned == 3  # 1 positive + 2 soft anchors: all count in the normaliser
    assert set(losses) == {"loss_cls", "loss_bbox"}  # no separate centerness loss
    assert losses["loss_cls"].item() == pytest.approx(total / 3, rel=1e-5)
    # centerness-weighted GIoU divided by the sum of the weights, times the loss weight 2.0
    assert losses["loss_bbox"].item() == pytest.approx(2.0 * weighted / weight_sum, rel=1e-5)


def test_the_hand_numbers_tell_the_rules_apart():
    """The case is built so that each nearby misreading of SPEC §3 gives another number."""
    total, _, weighted, weight_sum = hand_losses(0.6)
    right_cls, right_bbox = total / 3, 2.0 * weighted / weight_sum
    assert abs(total / 1 - right_cls) > 0.1 * right_cls  # positives only in the normaliser
    unweighted = sum(1 - GIOU[i] for i in (A, B, C)) / 3
    assert abs(2.0 * unweighted - right_bbox) > 0.02 * right_bbox  # GIoU not weighted
    assert abs(2.0 * weighted / 3 - right_bbox) > 0.1 * right_bbox  # divided by the count
    other_t, *_ = hand_losses(0.2)
    assert abs(other_t - total) > 1e-3 * total  # the ceiling changes the class loss


def test_o2f_criterion_gradients_and_the_centerness_learns_through_the_joint_score():
    crit = O2FCriterion(2)
    cls, ltrb, ctr, points, strides, grids, targets = hand_case()
    losses = crit(cls, ltrb, ctr, points, strides, grids, targets)
    losses["loss_cls"].backward(retain_graph=True)
    assert ltrb.grad is None or ltrb.grad.abs().sum() == 0  # the class loss sees scores only
    assert (ctr.grad != 0).all()  # every point's centerness logit, through p = cls x ctr
    cls.grad = ctr.grad = None
    losses["loss_bbox"].backward()
    assert cls.grad is None or cls.grad.abs().sum() == 0
    assert ctr.grad is None or ctr.grad.abs().sum() == 0
    moved = (ltrb.grad.abs().sum(-1) > 0).nonzero()[:, 1].tolist()
    assert sorted(moved) == [A, B, C]  # only assigned points regress


def test_batch_without_any_gt_normalises_by_one_and_keeps_the_box_loss_in_the_graph():
    crit = O2FCriterion(2)
    cls, ltrb, ctr, points, strides, grids, targets = hand_case()
    empty = [targets[1], targets[1]]
    losses = crit(cls, ltrb, ctr, points, strides, grids, empty)
    expected = sum(bce(p, 0.0) * p**2 * 0.75
                   for p in (torch.sigmoid(cls) * torch.sigmoid(ctr)[..., None]).flatten()
                   .tolist())
    assert losses["loss_cls"].item() == pytest.approx(expected, rel=1e-5)  # / max(1, 0)
    assert losses["loss_bbox"].item() == 0 and losses["loss_bbox"].requires_grad


def test_loss_weights_multiply_the_terms():
    base = O2FCriterion(2)(*hand_case())
    scaled = O2FCriterion(2, cls_weight=3.0, bbox_weight=0.5)(*hand_case())
    assert scaled["loss_cls"].item() == pytest.approx(3.0 * base["loss_cls"].item(), rel=1e-6)
    assert scaled["loss_bbox"].item() == pytest.approx(0.25 * base["loss_bbox"].item(),
                                                       rel=1e-6)
