"""The baselines of the NMS-free comparison: FCOS (one-to-many) and o2o (one-to-one, k = 1) rules
on hand-computed cases, FCOS losses against hand values, the duplicate rate, and a training-mode
forward of a tiny detector with each assigner."""

from __future__ import annotations

import math

import pytest
import torch

from o2f.assigners import fcos_assign, level_grids
from o2f.boxes import level_points
from o2f.builders import build_criterion, build_detector
from o2f.config import load_config, nms_enabled
from o2f.criterion import FCOSCriterion, O2FCriterion, O2OCriterion
from o2f.evaluation.duplicates import count_duplicates, duplicate_rate

LN2 = math.log(2.0)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine, OpenMP's spin-waiting threads make the
    tiny detector's forward 20-50x slower whenever another process holds a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def grid(size: int, stride: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (size * size, 2) and strides of one size x size level; index = row * size + col."""
    return level_points([(size, size)], [stride])


def positives(labels: torch.Tensor, num_classes: int) -> dict[int, int]:
    """{point index: label} of the non-background points."""
    idx = (labels < num_classes).nonzero().squeeze(1)
    return dict(zip(idx.tolist(), labels[idx].tolist(), strict=True))


# ------------------------------------------------------------------------------------ fcos rules


def test_fcos_centre_sampling_region_is_clipped_to_the_box():
    # Points at 4, 12, 20, ... (stride 8). gt0 (0,0,64,64): centre 32, region (20, 44) -> x, y in
    # {28, 36} (20 and 44 lie on the border: excluded). gt1 (0,0,16,64): centre (8, 32), region x
    # (-4, 20) clipped to (0, 16) -> x in {4, 12}; y in {28, 36}.
    points, strides = grid(8)
    boxes = torch.tensor([[0.0, 0, 64, 64], [0, 0, 16, 64]])
    labels, targets = fcos_assign(points, strides, boxes, torch.tensor([1, 2]), 3,
                                  regress_ranges=((-1, 64),))
    expected = {27: 1, 28: 1, 35: 1, 36: 1, 24: 2, 25: 2, 32: 2, 33: 2}
    assert positives(labels, 3) == expected
    for i, lab in expected.items():
        torch.testing.assert_close(targets[i], boxes[lab - 1])
    assert targets[labels == 3].abs().sum() == 0


def test_fcos_scale_ranges_pick_the_level():
    # Levels stride 8 (16 x 16) and 16 (8 x 8), ranges (-1, 64) and (64, 128).
    # A (0,0,128,128): on level 0 its centre points (60|68, 60|68) reach 68 > 64: out of range;
    # on level 1 the region (40, 88) holds x, y in {56, 72}, reach 72 in [64, 128]: positive.
    # B (4,4,36,36): level 0 region (8, 32) holds x, y in {12, 20, 28} (reach <= 24); on level 1
    # its points (8|24, 8|24) reach at most 28 < 64: negative.
    points, strides = level_points([(16, 16), (8, 8)], [8, 16])
    boxes = torch.tensor([[0.0, 0, 128, 128], [4, 4, 36, 36]])
    labels, _ = fcos_assign(points, strides, boxes, torch.tensor([0, 1]), 2,
                            regress_ranges=((-1, 64), (64, 128)))
    expected = {256 + i * 8 + j: 0 for i in (3, 4) for j in (3, 4)}
    expected |= {i * 16 + j: 1 for i in (1, 2, 3) for j in (1, 2, 3)}
    assert positives(labels, 2) == expected


@pytest.mark.parametrize(("lo", "hi", "positive"),
                         [(-1, 64, True), (64, 128, True), (-1, 63.5, False), (64.5, 128, False)])
def test_fcos_range_ends_are_inclusive(lo, hi, positive):
    # The point (32, 32) is the centre of (-32, -32, 96, 96): l = t = r = b = 64.
    points, strides = torch.tensor([[32.0, 32.0]]), torch.tensor([8.0])
    labels, _ = fcos_assign(points, strides, torch.tensor([[-32.0, -32, 96, 96]]),
                            torch.tensor([0]), 1, regress_ranges=((lo, hi),))
    assert bool(labels[0] == 0) == positive


def test_fcos_ambiguous_point_takes_the_smallest_gt_then_the_lowest_index():
    points, strides = grid(8)
    # Nested: both regions are x, y in {20, 28}; the smaller box (index 1) wins all four.
    boxes = torch.tensor([[0.0, 0, 48, 48], [8, 8, 40, 40]])
    labels, targets = fcos_assign(points, strides, boxes, torch.tensor([0, 1]), 2,
                                  regress_ranges=((-1, 64),))
    assert positives(labels, 2) == {18: 1, 19: 1, 26: 1, 27: 1}
    torch.testing.assert_close(targets[18], boxes[1])
    # Equal areas: gt0 region x in {20, 28}, gt1 (centre x 32) x in {28, 36}; the shared
    # column x = 28 goes to the lower index.
    boxes = torch.tensor([[8.0, 8, 40, 40], [16, 8, 48, 40]])
    labels, _ = fcos_assign(points, strides, boxes, torch.tensor([0, 1]), 2,
                            regress_ranges=((-1, 64),))
    assert positives(labels, 2) == {18: 0, 19: 0, 26: 0, 27: 0, 20: 1, 28: 1}


def test_fcos_window_pairs_equal_the_dense_definition():
    gen = torch.Generator().manual_seed(0)
    points, strides = level_points([(24, 32), (12, 16), (6, 8), (3, 4), (2, 2)],
                                   [8, 16, 32, 64, 128])
    xy = torch.rand(30, 2, generator=gen) * torch.tensor([256.0, 192.0])
    wh = torch.rand(30, 2, generator=gen) * 180 + 4
    boxes = torch.cat((xy - wh / 2, xy + wh / 2), 1)
    gt_labels = torch.randint(0, 5, (30,), generator=gen)
    assert level_grids(points, strides) is not None
    labels, targets = fcos_assign(points, strides, boxes, gt_labels, 5)
    # Shuffled points are no grid: the assigner falls back to dense pairs.
    perm = torch.randperm(points.shape[0], generator=gen)
    assert level_grids(points[perm], strides[perm]) is None
    dense_labels, dense_targets = fcos_assign(points[perm], strides[perm], boxes, gt_labels, 5)
    assert (labels < 5).sum() > 50
    torch.testing.assert_close(dense_labels, labels[perm])
    torch.testing.assert_close(dense_targets, targets[perm])


def test_fcos_without_gt_is_all_background():
    points, strides = grid(4)
    labels, targets = fcos_assign(points, strides, torch.zeros(0, 4), torch.zeros(0).long(), 3,
                                  regress_ranges=((-1, 64),))
    assert (labels == 3).all() and (targets == 0).all()


# ------------------------------------------------------------------------------------ fcos losses


def fcos_case(batch_dtype=torch.float32):
    """Two images on a 2 x 2 grid of stride 8, C = 2, every logit 0 and every ltrb (4, 4, 4, 4).

    Image 0 has gt (0,0,16,16) of class 1: all four points (4|12, 4|12) are positives with
    centerness sqrt(4/12 * 4/12) = 1/3; each predicted 8 x 8 box lies inside the gt: IoU 1/4,
    enclosure = gt, GIoU 1/4. Image 1 has no gt.
    """
    points, strides = grid(2)
    cls = torch.zeros(2, 4, 2, dtype=batch_dtype, requires_grad=True)
    ltrb = torch.full((2, 4, 4), 4.0, dtype=batch_dtype, requires_grad=True)
    ctr = torch.zeros(2, 4, dtype=batch_dtype, requires_grad=True)
    targets = [{"boxes": torch.tensor([[0.0, 0, 16, 16]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    return cls, ltrb, ctr, points, strides, level_grids(points, strides), targets


def test_fcos_losses_hand_computed():
    crit = FCOSCriterion(2, regress_ranges=((-1, 64),))
    cls, ltrb, ctr, points, strides, grids, targets = fcos_case()
    losses = crit(cls, ltrb, ctr, points, strides, grids, targets)
    # Focal at p = 1/2: a positive costs 0.25 * (1/2)^2 * ln 2, a negative 0.75 * (1/2)^2 * ln 2;
    # 4 positive entries and 12 negative ones over 4 positives.
    assert losses["loss_cls"].item() == pytest.approx((4 * 0.0625 + 12 * 0.1875) * LN2 / 4)
    # GIoU: sum(1/3 * 3/4) over 4 positives / sum(1/3) = 3/4.
    assert losses["loss_bbox"].item() == pytest.approx(0.75)
    # Centerness BCE(sigmoid(0) = 1/2, 1/3) = ln 2 for each positive, over 4 positives.
    assert losses["loss_ctr"].item() == pytest.approx(LN2)
    sum(losses.values()).backward()
    # The class loss sees class logits alone; centerness learns on positives only.
    assert (ctr.grad[1] == 0).all() and (ctr.grad[0] != 0).all()
    assert (ltrb.grad[1] == 0).all() and cls.grad.abs().sum() > 0


def test_fcos_focal_parameters_reach_the_loss():
    # alpha 0.5, gamma 1 at p = 1/2: every (point, class) entry costs 0.5 * (1/2) * ln 2, and
    # the 16 entries are divided by the 4 positives: ln 2 (the defaults give 0.625 ln 2).
    crit = FCOSCriterion(2, regress_ranges=((-1, 64),), focal_alpha=0.5, focal_gamma=1.0)
    cls, ltrb, ctr, points, strides, grids, targets = fcos_case()
    losses = crit(cls, ltrb, ctr, points, strides, grids, targets)
    assert losses["loss_cls"].item() == pytest.approx(LN2)


def test_fcos_box_loss_is_divided_by_a_centerness_sum_below_one():
    # gt (2,2,10,10): only point (4, 4) is inside, centerness sqrt(2/6 * 2/6) = 1/3. Its box
    # (0,0,8,8): IoU 36/92, enclosure 100, GIoU 36/92 - 8/100. Weighted by 1/3, divided by the
    # centerness sum 1/3 (not by 1): the GIoU loss itself.
    crit = FCOSCriterion(2, regress_ranges=((-1, 64),))
    cls, ltrb, ctr, points, strides, grids, _ = fcos_case()
    targets = [{"boxes": torch.tensor([[2.0, 2, 10, 10]]), "labels": torch.tensor([0])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    losses = crit(cls, ltrb, ctr, points, strides, grids, targets)
    assert losses["loss_bbox"].item() == pytest.approx(1 - (36 / 92 - 8 / 100))
    assert losses["loss_ctr"].item() == pytest.approx(LN2)


@pytest.mark.parametrize("with_grids", [True, False])
def test_fcos_ranges_must_match_the_levels(with_grids):
    crit = FCOSCriterion(2, regress_ranges=((-1, 64), (64, 128)))
    cls, ltrb, ctr, points, strides, grids, targets = fcos_case()
    with pytest.raises(ValueError, match=r"1 levels \(strides \[8.0\]\) but 2 regression ranges"):
        crit(cls, ltrb, ctr, points, strides, grids if with_grids else None, targets)


def test_fcos_loss_weights_and_autocast():
    crit = FCOSCriterion(2, regress_ranges=((-1, 64),), cls_weight=2.0, bbox_weight=3.0,
                         ctr_weight=0.5)
    cls, ltrb, ctr, points, strides, grids, targets = fcos_case(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = crit(cls, ltrb, ctr, points, strides, grids, targets)
    assert all(v.dtype == torch.float32 for v in losses.values())
    assert losses["loss_cls"].item() == pytest.approx(2.0 * 0.625 * LN2, rel=1e-3)
    assert losses["loss_bbox"].item() == pytest.approx(3.0 * 0.75, rel=1e-3)
    assert losses["loss_ctr"].item() == pytest.approx(0.5 * LN2, rel=1e-3)


def test_fcos_losses_without_positives_stay_in_the_graph():
    crit = FCOSCriterion(2, regress_ranges=((-1, 64),))
    cls, ltrb, ctr, points, strides, grids, targets = fcos_case()
    losses = crit(cls, ltrb, ctr, points, strides, grids, targets[1:] * 2)
    assert losses["loss_bbox"].item() == 0 and losses["loss_ctr"].item() == 0
    assert losses["loss_bbox"].requires_grad and losses["loss_ctr"].requires_grad
    # No positive: the focal loss of the 16 negatives is normalised by max(1, 0) = 1.
    assert losses["loss_cls"].item() == pytest.approx(16 * 0.1875 * LN2)


# ------------------------------------------------------------------------------------ o2o rules


def o2o_inputs(ltrb: torch.Tensor, num_classes: int = 2):
    """Batch of one image on an 8 x 8 grid of stride 8 with zero logits (prob 1/4 everywhere,
    so quality ranks candidates by IoU alone) and the given per-point ltrb (64, 4)."""
    points, strides = grid(8)
    cls = torch.zeros(1, 64, num_classes)
    ctr = torch.zeros(1, 64)
    pred = torch.cat((points - ltrb[:, :2], points + ltrb[:, 2:]), 1)[None]
    return cls, ctr, pred, points, strides, level_grids(points, strides)


def test_o2o_exactly_one_positive_per_gt_the_best_quality():
    # gt0 (0,0,32,32): candidates x, y in {12, 20}; gt1 (32,32,64,64): x, y in {44, 52}.
    # Every point predicts an 8 x 8 box (IoU 1/16 with its gt) except point 18 (20, 20), which
    # predicts gt0 exactly, and point 45 (44, 44), which predicts gt1 exactly.
    ltrb = torch.full((64, 4), 4.0)
    ltrb[18] = torch.tensor([20.0, 20, 12, 12])
    ltrb[45] = torch.tensor([12.0, 12, 20, 20])
    cls, ctr, pred, points, strides, grids = o2o_inputs(ltrb)
    targets = [{"boxes": torch.tensor([[0.0, 0, 32, 32], [32, 32, 64, 64]]),
                "labels": torch.tensor([0, 1])}]
    crit = O2OCriterion(2)
    labels, boxes, soft, weights = crit.assign(cls, ctr, pred, points, strides, grids, targets)
    assert positives(labels[0], 2) == {18: 0, 45: 1}
    assert soft[0, [18, 45]].tolist() == [1.0, 1.0] and weights[0, [18, 45]].tolist() == [1, 1]
    assert soft.sum() == 2 and weights.sum() == 2  # no soft anchor anywhere
    torch.testing.assert_close(boxes[0, 45], targets[0]["boxes"][1])
    # The one-to-few assigner on the same input keeps all 4 candidates of each gt.
    o2f_labels, _, o2f_soft, _ = O2FCriterion(2).assign(cls, ctr, pred, points, strides, grids,
                                                        targets)
    assert (o2f_labels < 2).sum() == 8 and ((o2f_soft > 0) & (o2f_soft < 1)).sum() == 6


def test_o2o_conflict_goes_to_the_higher_quality_gt():
    # gt0 (0,0,32,32) candidates x, y in {12, 20}; gt1 (8,8,40,40) candidates x, y in {20, 28}.
    # Point 18 (20, 20) predicts gt0 exactly (IoU 1) and has IoU 576 / 1472 with gt1; every
    # other point predicts a 2 x 2 box (IoU 4 / 1024). Both gts pick point 18; gt0's quality is
    # higher, so it keeps the point and gt1 has no positive (greedy, unlike Hungarian matching).
    ltrb = torch.full((64, 4), 1.0)
    ltrb[18] = torch.tensor([20.0, 20, 12, 12])
    cls, ctr, pred, points, strides, grids = o2o_inputs(ltrb)
    targets = [{"boxes": torch.tensor([[0.0, 0, 32, 32], [8, 8, 40, 40]]),
                "labels": torch.tensor([0, 1])}]
    labels, *_ = O2OCriterion(2).assign(cls, ctr, pred, points, strides, grids, targets)
    assert positives(labels[0], 2) == {18: 0}


def test_o2o_random_predictions_one_positive_per_separate_gt():
    gen = torch.Generator().manual_seed(1)
    points, strides = level_points([(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)],
                                   [8, 16, 32, 64, 128])
    n, c = points.shape[0], 3
    cls = torch.randn(1, n, c, generator=gen)
    ctr = torch.randn(1, n, generator=gen)
    ltrb = torch.rand(1, n, 4, generator=gen) * 40 + 2
    pred = torch.cat((points - ltrb[0, :, :2], points + ltrb[0, :, 2:]), 1)[None]
    # Four well separated gts: no point is a candidate of two of them.
    boxes = torch.tensor([[4.0, 4, 44, 36], [80, 8, 120, 60], [8, 80, 56, 124], [84, 84, 124, 120]])
    gt_labels = torch.tensor([0, 2, 1, 2])
    crit = build_criterion(load_config(None, ["model.assigner=o2o"]), c)
    assert isinstance(crit, O2OCriterion) and crit.topk == 1 and crit.soft_weight == 0
    crit.set_epoch(5, 12)
    assert crit.soft_t == 0
    labels, targets, soft, weights = crit.assign(
        cls, ctr, pred, points, strides, level_grids(points, strides),
        [{"boxes": boxes, "labels": gt_labels}])
    assigned = (labels[0] < c).nonzero().squeeze(1)
    assert len(assigned) == 4 and set(soft[0, assigned].tolist()) == {1.0}
    assert set(weights[0, assigned].tolist()) == {1.0}
    # Each positive is the gt's highest-quality candidate (SPEC §2 steps 1-4 with k = 1).
    prob = torch.sigmoid(cls[0]) * torch.sigmoid(ctr[0])[:, None]
    for g in range(4):
        box = boxes[g]
        centre, radius = (box[:2] + box[2:]) / 2, 1.5 * strides[:, None]
        lo, hi = torch.maximum(centre - radius, box[:2]), torch.minimum(centre + radius, box[2:])
        inside = ((points - lo) > 0).all(1) & ((hi - points) > 0).all(1)
        lt, rb = torch.maximum(pred[0, :, :2], box[:2]), torch.minimum(pred[0, :, 2:], box[2:])
        inter = (rb - lt).clamp(min=0).prod(1)
        union = (pred[0, :, 2:] - pred[0, :, :2]).prod(1) + (box[2:] - box[:2]).prod() - inter
        quality = prob[:, gt_labels[g]] ** 0.2 * (inter / union) ** 0.8 * inside
        best = int(quality.argmax())
        assert labels[0, best] == gt_labels[g]
        torch.testing.assert_close(targets[0, best], box)


# ------------------------------------------------------------------------------------ config


def test_build_criterion_per_assigner_and_nms_defaults():
    for name, cls in (("o2f", O2FCriterion), ("o2o", O2OCriterion), ("fcos", FCOSCriterion)):
        cfg = load_config(None, [f"model.assigner={name}"])
        crit = build_criterion(cfg, 4)
        assert type(crit) is cls
        assert nms_enabled(cfg) == (name == "fcos")
    crit = build_criterion(load_config(None, ["model.assigner=fcos",
                                              "model.loss.bbox_weight=1.0"]), 4)
    assert crit.bbox_weight == 1.0 and crit.center_radius == 1.5
    assert crit.focal_alpha == 0.25 and crit.focal_gamma == 2.0


@pytest.mark.parametrize("assigner", ["fcos", "o2o"])
def test_tiny_detector_trains_with_each_assigner(assigner):
    torch.manual_seed(0)
    cfg = load_config("demo", ["model.backbone.depth=10", f"model.assigner={assigner}"])
    model = build_detector(cfg, num_classes=3).train()
    images = [torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8),
              torch.randint(0, 256, (3, 80, 64), dtype=torch.uint8)]
    targets = [{"boxes": torch.tensor([[4.0, 6, 40, 50], [30, 10, 90, 60]]),
                "labels": torch.tensor([0, 2])},
               {"boxes": torch.tensor([[10.0, 10, 30, 34]]), "labels": torch.tensor([1])}]
    losses = model(images, targets)
    expected = {"loss_cls", "loss_bbox"} | ({"loss_ctr"} if assigner == "fcos" else set())
    assert set(losses) == expected
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert model.head.conv_cls.weight.grad.abs().sum() > 0
    model.set_epoch(0, 2)
    assert model.eval().nms == (assigner == "fcos")


# ------------------------------------------------------------------------------------ duplicates


def test_duplicate_rate_hand_computed():
    # Image A (class, score, box): d0 (0, .9, 0 0 10 10); d1 (0, .8, 0 0 10 9): IoU .9 with d0
    # -> duplicate; d2 (1, .7, 0 0 10 9): other class -> kept; d3 (0, .6, 0 0 10 6): IoU .6
    # with d0, 2/3 with d1 -> kept; d4 (0, .2, ...): below 0.3, not counted; d5 (0, .5,
    # 0 0 10 8): IoU .8 with d0 (8/9 with d1) -> duplicate. Counted 5, duplicates 2.
    image_a = {
        "boxes": torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 9], [0, 0, 10, 9], [0, 0, 10, 6],
                               [0, 0, 10, 10], [0, 0, 10, 8]]),
        "scores": torch.tensor([0.9, 0.8, 0.7, 0.6, 0.2, 0.5]),
        "labels": torch.tensor([0, 0, 1, 0, 0, 0]),
    }
    # Image B: one box equal to image A's d0 (images are separate) and one far away. Counted 2.
    image_b = {"boxes": torch.tensor([[20.0, 20, 30, 30], [0, 0, 10, 10]]),
               "scores": torch.tensor([0.9, 0.95]), "labels": torch.tensor([0, 0])}
    assert count_duplicates(**image_a) == (2, 5)
    assert count_duplicates(**image_b) == (0, 2)
    assert duplicate_rate([image_a, image_b]) == pytest.approx(2 / 7)
    assert duplicate_rate({7: image_a, 9: image_b}) == pytest.approx(2 / 7)
    # Thresholds: at IoU 0.89 only d1 is a duplicate of image A; at score 0.55 d5 is gone.
    assert duplicate_rate([image_a], iou_thr=0.89) == pytest.approx(1 / 5)
    assert duplicate_rate([image_a], score_thr=0.55) == pytest.approx(1 / 4)


def test_duplicate_rate_edge_cases():
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0).long()}
    assert duplicate_rate([]) == 0.0 and duplicate_rate([empty]) == 0.0
    # Two identical boxes with equal scores: exactly one of them is the duplicate.
    same = {"boxes": torch.tensor([[0.0, 0, 5, 5]] * 2), "scores": torch.tensor([0.5, 0.5]),
            "labels": torch.tensor([3, 3])}
    assert duplicate_rate([same]) == 0.5


def test_duplicate_thresholds_are_inclusive():
    # IoU exactly 0.5 at iou_thr 0.5 is a duplicate; a score exactly at score_thr counts
    boxes = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 5]])  # IoU 50 / 100
    labels = torch.tensor([1, 1])
    assert count_duplicates(boxes, torch.tensor([0.9, 0.3]), labels, 0.3, 0.5) == (1, 2)
    assert count_duplicates(boxes, torch.tensor([0.9, 0.3]), labels, 0.3, 0.51) == (0, 2)
    assert count_duplicates(boxes[:1], torch.tensor([0.3]), labels[:1], 0.3, 0.5) == (0, 1)
    # a lower-scored box listed first is still the duplicate of the higher one
    assert count_duplicates(boxes.flip(0), torch.tensor([0.4, 0.9]), labels, 0.3, 0.5) == (1, 2)


def test_nms_free_benchmark_table_and_checks():
    from benchmarks.nms_free import checks, table

    def row(name, no_nms, nms):
        return {"assigner": name, "bbox_mAP_no_nms": no_nms, "bbox_mAP_nms": nms,
                "bbox_mAP_50_no_nms": 0.5, "bbox_mAP_50_nms": 0.6, "dup_rate_no_nms": 0.25,
                "dup_rate_nms": 0.0, "dets_per_img_no_nms": 100.0, "iterations": 10,
                "train_s": 1.0}

    rows = [row("fcos", 0.20, 0.40), row("o2o", 0.35, 0.36), row("o2f", 0.395, 0.40)]
    assert "| fcos | 20.0 | 40.0 | 50.0 | 60.0 | 0.250 | 0.000 | 100.0 | 10 | 1 |" in table(rows)
    lines = checks(rows)
    assert lines[0].startswith("o2f without NMS vs FCOS with NMS: -0.5 AP (holds")
    assert "-19.5 AP (holds" in lines[1] and "+4.5 AP (holds" in lines[2]


def test_o2f_box_loss_is_divided_by_a_centerness_sum_below_one():
    # One gt (0,0,32,32); point 18 (20, 20) predicts (0,0,32,28): IoU = GIoU = 0.875, the best
    # quality, so with k = 1 it is the only assigned point. Its centerness target is
    # sqrt(12/20 * 12/20) = 0.6: the GIoU loss 0.125 weighted by 0.6 and divided by the
    # centerness sum 0.6 (not by 1), times the recipe's weight 2.
    ltrb = torch.full((64, 4), 4.0)
    ltrb[18] = torch.tensor([20.0, 20, 12, 8])
    cls, ctr, _, points, strides, grids = o2o_inputs(ltrb)
    targets = [{"boxes": torch.tensor([[0.0, 0, 32, 32]]), "labels": torch.tensor([0])}]
    losses = O2OCriterion(2)(cls, ltrb[None], ctr, points, strides, grids, targets)
    assert losses["loss_bbox"].item() == pytest.approx(2 * 0.125, rel=1e-5)
