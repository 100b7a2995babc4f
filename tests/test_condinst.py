"""CondInst-style instance masks: dice loss, aligned upsampling, dynamic mask head, mask targets,
the mask criterion, and a tiny mask model end to end (train step, eval, checkpoint, export)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from o2f.assigners import level_grids, o2f_assign
from o2f.boxes import level_points
from o2f.builders import build_detector, detector_from_checkpoint
from o2f.config import ConfigError, load_config
from o2f.criterion import (
    CondInstMaskLoss,
    mask_centers,
    sample_masks,
    semantic_targets,
)
from o2f.losses import dice_loss
from o2f.models.dynamic_mask_head import DynamicMaskHead
from o2f.models.mask_branch import MaskBranch, aligned_upsample

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- dice loss


def test_dice_loss_hand_values():
    pred = torch.tensor([[1.0, 1.0, 0.0, 0.0],   # perfect: 1 - 4 / (4 + eps)
                         [0.5, 0.5, 0.5, 0.5],   # inter 0.5, denom 1 + 1 + eps
                         [0.0, 0.0, 1.0, 1.0],   # disjoint
                         [0.0, 0.0, 0.0, 0.0]])  # empty prediction of an empty mask: 1 - 0 / eps
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0],
                           [0.0, 0.0, 0.0, 0.0]])
    eps = 1e-5
    want = torch.tensor([1 - 4 / (4 + eps), 1 - 1 / (2 + eps), 1.0, 1.0])
    torch.testing.assert_close(dice_loss(pred, target), want, atol=1e-7, rtol=0)
    # the denominator squares the prediction: p = 0.5 on the target pixel only gives
    # 1 - 2 * 0.5 / (0.25 + 1 + eps) = 0.2
    got = dice_loss(torch.tensor([[0.5, 0.0]]), torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(got, torch.tensor([1 - 1 / (1.25 + eps)]))
    # any trailing shape: (M, H, W)
    assert dice_loss(torch.ones(3, 2, 2), torch.ones(3, 2, 2)).shape == (3,)


# ----------------------------------------------------------------------------- upsampling


def reference_aligned_bilinear(x: torch.Tensor, f: int) -> torch.Tensor:
    """AdelaiDet's definition, written with torch ops: replicate pad, align_corners resize to
    f H + 1, shift by f // 2 (replicate), crop to f H."""
    h, w = x.shape[-2:]
    x = F.pad(x, (0, 1, 0, 1), mode="replicate")
    x = F.interpolate(x, size=(f * h + 1, f * w + 1), mode="bilinear", align_corners=True)
    x = F.pad(x, (f // 2, 0, f // 2, 0), mode="replicate")
    return x[..., : f * h, : f * w]


def test_aligned_upsample_hand_values():
    x = torch.tensor([[[[0.0, 4.0], [8.0, 12.0]]]])
    # input sample i lands on output 2 i + 1; output 0 repeats sample 0
    want = torch.tensor([[0.0, 0.0, 2.0, 4.0], [0.0, 0.0, 2.0, 4.0], [4.0, 4.0, 6.0, 8.0],
                         [8.0, 8.0, 10.0, 12.0]])
    torch.testing.assert_close(aligned_upsample(x, 2)[0, 0], want)
    # factor 4: sample i on output 4 i + 2, linear in between, last sample repeated after it
    row = aligned_upsample(torch.tensor([[[[0.0, 4.0]]]]), 4)[0, 0, 0]
    torch.testing.assert_close(row, torch.tensor([0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 4.0]))
    assert aligned_upsample(x, 1) is x


@pytest.mark.parametrize("factor", [2, 3, 4, 8])
def test_aligned_upsample_equals_the_condinst_definition(factor):
    x = torch.randn(2, 3, 5, 7, generator=torch.Generator().manual_seed(factor))
    torch.testing.assert_close(aligned_upsample(x, factor),
                               reference_aligned_bilinear(x, factor), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- dynamic head


def test_condinst_head_has_169_parameters_in_weights_then_biases_order():
    head = DynamicMaskHead()  # 8 bases + 2 coordinates, 3 layers of 8 channels
    assert head.num_params == (10 * 8 + 8) + (8 * 8 + 8) + (8 * 1 + 1) == 169
    params = torch.arange(169.0)[None]
    (w0, b0), (w1, b1), (w2, b2) = head.split_params(params)
    assert w0.shape == (1, 8, 10) and w1.shape == (1, 8, 8) and w2.shape == (1, 1, 8)
    assert w0[0, 0, 0] == 0 and w0[0, 1, 0] == 10  # row-major (out, in)
    assert w1[0, 0, 0] == 80 and w2[0, 0, 0] == 144
    assert b0[0].tolist() == list(range(152, 160)) and b2[0].tolist() == [168.0]


def test_relative_coordinates_by_hand():
    head = DynamicMaskHead(feat_stride=8)
    # a 2 x 3 mask-feature grid: locations x = 4, 12, 20 and y = 4, 12
    coords = head.relative_coords(torch.tensor([[12.0, 4.0]]), torch.tensor([64.0]), 2, 3)
    assert coords.shape == (1, 2, 6)
    want_x = torch.tensor([8.0, 0.0, -8.0, 8.0, 0.0, -8.0]) / 64  # (centre - location) / soi
    want_y = torch.tensor([0.0, 0.0, 0.0, -8.0, -8.0, -8.0]) / 64
    torch.testing.assert_close(coords[0, 0], want_x)
    torch.testing.assert_close(coords[0, 1], want_y)


def test_one_layer_head_is_an_affine_map_then_aligned_upsampling():
    head = DynamicMaskHead(num_bases=1, channels=1, num_layers=1, rel_coords=False,
                           feat_stride=8, out_stride=4)
    assert head.num_params == 2
    feats = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    logits = head(feats, torch.tensor([[2.0, -1.0]]), torch.tensor([0]),
                  torch.zeros(1, 2), torch.ones(1))
    # 2 x feats - 1 = [[1, 3], [5, 7]], upsampled x 2 (stride 8 -> 4)
    want = torch.tensor([[1.0, 1.0, 2.0, 3.0], [1.0, 1.0, 2.0, 3.0], [3.0, 3.0, 4.0, 5.0],
                         [5.0, 5.0, 6.0, 7.0]])
    torch.testing.assert_close(logits[0], want)


def test_two_layer_head_with_coordinates_by_hand():
    head = DynamicMaskHead(num_bases=1, channels=2, num_layers=2, sizes_of_interest=[8.0],
                           feat_stride=8, out_stride=8)
    assert head.num_params == (3 * 2 + 2) + (2 * 1 + 1) == 11
    # layer 0: hidden0 = x coordinate, hidden1 = base - 1; layer 1: relu(h0) + relu(h1) + 0.5
    w0 = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    w1, b0, b1 = [1.0, 1.0], [0.0, -1.0], [0.5]
    params = torch.tensor([w0 + w1 + b0 + b1])
    feats = torch.tensor([[[[3.0, 0.0, 2.0]]]])  # one row, locations x = 4, 12, 20
    centre = torch.tensor([[12.0, 4.0]])  # x coordinate (12 - x) / 8 = 1, 0, -1
    logits = head(feats, params, torch.tensor([0]), centre, torch.tensor([8.0]))
    # relu(1) + relu(2) + .5, relu(0) + relu(-1) + .5, relu(-1) + relu(1) + .5
    torch.testing.assert_close(logits[0, 0], torch.tensor([3.5, 0.5, 1.5]))
    # the instance picks its image's features
    two = torch.cat([torch.zeros_like(feats), feats])
    again = head(two, params.repeat(2, 1), torch.tensor([1, 0]), centre.repeat(2, 1),
                 torch.tensor([8.0, 8.0]))
    torch.testing.assert_close(again[0, 0], torch.tensor([3.5, 0.5, 1.5]))
    torch.testing.assert_close(again[1, 0], torch.tensor([1.5, 0.5, 0.5]))


def test_mask_branch_shapes_and_semantic_head_in_training_only():
    branch = MaskBranch(16, channels=8, num_convs=1, num_bases=4, num_classes=3)
    feats = [torch.randn(2, 16, 13, 10), torch.randn(2, 16, 7, 5), torch.randn(2, 16, 4, 3)]
    mask_feats, sem = branch.train()(feats)
    assert mask_feats.shape == (2, 4, 13, 10) and sem.shape == (2, 3, 13, 10)
    mask_feats, sem = branch.eval()(feats)
    assert mask_feats.shape == (2, 4, 13, 10) and sem is None
    torch.testing.assert_close(branch.sem_out.bias, torch.full((3,), -math.log(99)))


# ----------------------------------------------------------------------------- mask targets


def test_mask_centres_by_hand():
    masks = torch.zeros(3, 8, 10, dtype=torch.uint8)
    masks[0, 2:4, 4:8] = 1  # a rectangle: its centre of mass is its box centre (6, 3)
    masks[1, 0, 0] = 1  # an L: pixels (0, 0), (1, 0), (0, 1), centres 0.5 / 1.5
    masks[1, 1, 0] = 1
    masks[1, 0, 1] = 1
    boxes = torch.tensor([[4.0, 2.0, 8.0, 4.0], [0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 5.0, 3.0]])
    got = mask_centers(masks.bool(), boxes)
    want = torch.tensor([[6.0, 3.0], [(0.5 + 0.5 + 1.5) / 3, (0.5 + 1.5 + 0.5) / 3],
                         [3.0, 2.0]])  # empty mask: the box centre
    torch.testing.assert_close(got, want)


def test_a_one_pixel_mask_has_its_pixel_centre():
    masks = torch.zeros(1, 6, 6, dtype=torch.bool)
    masks[0, 2, 3] = True  # row 2, column 3: centre (3.5, 2.5), not the box centre (1, 1)
    got = mask_centers(masks, torch.tensor([[0.0, 0.0, 2.0, 2.0]]))
    torch.testing.assert_close(got, torch.tensor([[3.5, 2.5]]))


@pytest.mark.parametrize("center_from_mask", [True, False])
def test_prepare_targets_moves_the_masks_and_gives_the_centres(center_from_mask):
    masks = torch.zeros(1, 6, 6, dtype=torch.bool)
    masks[0, 2, 3] = True
    target = {"boxes": torch.tensor([[0.0, 0.0, 2.0, 2.0]]), "labels": torch.tensor([1]),
              "masks": masks}
    loss = CondInstMaskLoss(2, center_from_mask=center_from_mask)
    (cpu,) = loss.prepare_targets([target], torch.device("cpu"))
    assert cpu["masks"] is masks and "masks" in target and "centers" not in target
    if center_from_mask:
        torch.testing.assert_close(cpu["centers"], torch.tensor([[3.5, 2.5]]))
    else:
        assert "centers" not in cpu
    # on another device (meta: no GPU needed) the masks and centres are made there
    (meta,) = loss.prepare_targets([target], torch.device("meta"))
    assert meta["masks"].device.type == "meta"
    assert not center_from_mask or meta["centers"].device.type == "meta"


def test_sample_masks_takes_the_stride_centres_and_pads_with_zeros():
    masks = torch.arange(6 * 10).view(1, 6, 10)
    out = sample_masks(masks, 4, (2, 3))  # rows 2 (6 is outside), columns 2, 6 (10 outside)
    assert torch.equal(out, torch.tensor([[[22, 26, 0], [0, 0, 0]]]))
    tall = torch.arange(12 * 4).view(1, 12, 4)  # rows 2, 6, 10 and column 2 are sampled
    assert torch.equal(sample_masks(tall, 4, (2, 1)), torch.tensor([[[10], [26]]]))


def test_semantic_targets_smallest_mask_wins():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, :, :] = True  # big, class 1
    masks[1, 4:, 4:] = True  # small, class 2, on top of the big one
    labels = torch.tensor([1, 2])
    got = semantic_targets(masks, labels, 5, 4, (2, 3))  # samples at rows/cols 2, 6
    assert torch.equal(got, torch.tensor([[1, 1, 5], [1, 2, 5]]))
    assert torch.equal(semantic_targets(masks[:0], labels[:0], 5, 4, (1, 1)),
                       torch.tensor([[5]]))


def test_candidate_regions_follow_the_given_centres():
    sizes, strides_l = [(8, 8)], (8,)
    points, strides = level_points(sizes, strides_l)
    n = points.shape[0]
    gt = torch.tensor([[0.0, 0.0, 64.0, 64.0]])
    cls, ctr = torch.zeros(n, 1), torch.zeros(n)
    pred = gt.expand(n, 4)  # every prediction is the gt box: IoU 1 everywhere
    args = (points, strides, cls, ctr, pred, gt, torch.tensor([0]))

    def assigned(**kw):
        *_, gt_index = o2f_assign(*args, topk=20, return_gt_index=True, **kw)
        return {tuple(p) for p in points[gt_index >= 0].tolist()}

    # box centre (32, 32), radius 12: x, y in {28, 36}
    assert assigned() == {(x, y) for x in (28.0, 36.0) for y in (28.0, 36.0)}
    # centre (12, 12): the region (0, 24) holds x, y in {4, 12, 20}
    got = assigned(gt_centers=torch.tensor([[12.0, 12.0]]))
    assert got == {(x, y) for x in (4.0, 12.0, 20.0) for y in (4.0, 12.0, 20.0)}


def test_gt_index_and_custom_centres_equal_the_dense_path():
    gen = torch.Generator().manual_seed(3)
    sizes = [(math.ceil(160 / s), math.ceil(192 / s)) for s in (8, 16, 32, 64, 128)]
    points, strides = level_points(sizes, (8, 16, 32, 64, 128))
    n = points.shape[0]
    cls, ctr = torch.randn(n, 4, generator=gen), torch.randn(n, generator=gen)
    ltrb = torch.rand(n, 4, generator=gen) * strides[:, None] * 4
    pred = torch.cat([points - ltrb[:, :2], points + ltrb[:, 2:]], 1)
    xy = torch.rand(12, 2, generator=gen) * torch.tensor([150.0, 120.0])
    wh = torch.rand(12, 2, generator=gen) * 80 + 8
    gt = torch.cat([xy, xy + wh], 1)
    gt[5] = gt[4]  # same box, other label: the index, not the box, tells them apart
    labels = torch.randint(0, 4, (12,), generator=gen)
    centres = gt[:, :2] + torch.rand(12, 2, generator=gen) * (gt[:, 2:] - gt[:, :2])
    window = o2f_assign(points, strides, cls, ctr, pred, gt, labels, gt_centers=centres,
                        return_gt_index=True)
    perm = torch.randperm(n, generator=gen)  # shuffled points: no grid, the dense pairs
    assert level_grids(points[perm], strides[perm]) is None
    dense = o2f_assign(points[perm], strides[perm], cls[perm], ctr[perm], pred[perm], gt,
                       labels, gt_centers=centres, return_gt_index=True)
    inv = torch.argsort(perm)
    for a, b in zip(window, dense, strict=True):
        assert torch.equal(a, b[inv])
    lab, boxes, *_, gt_index = window
    fg = gt_index >= 0
    assert fg.sum() > 10
    assert torch.equal(fg, lab < 4)
    assert torch.equal(lab[fg], labels[gt_index[fg]])
    assert torch.equal(boxes[fg], gt[gt_index[fg]])
    # without centres, the gt index comes with the unchanged four outputs
    plain = o2f_assign(points, strides, cls, ctr, pred, gt, labels)
    assert len(plain) == 4


# ----------------------------------------------------------------------------- mask criterion


def block_case():
    """One 16 x 16 image, two gts; mask features (stride 4) are +10 on gt 1's mask, -10
    elsewhere, so a 1-layer head with w = 1, b = 0 predicts gt 1's mask exactly."""
    head = DynamicMaskHead(num_bases=1, channels=1, num_layers=1, rel_coords=False,
                           sizes_of_interest=[64.0], feat_stride=4, out_stride=4)
    masks = torch.zeros(2, 16, 16, dtype=torch.uint8)
    masks[0, 0:8, 0:8] = 1
    masks[1, 8:16, 4:12] = 1
    feats = torch.full((1, 1, 4, 4), -10.0)
    feats[0, 0, 2:4, 1:3] = 10.0  # samples at rows/cols 2, 6, 10, 14: gt 1 covers 10, 14 x 6, 10
    target = {"boxes": torch.tensor([[0.0, 0.0, 8.0, 8.0], [4.0, 8.0, 12.0, 16.0]]),
              "labels": torch.tensor([0, 1]), "masks": masks}
    return head, feats.requires_grad_(), target


def test_mask_loss_uses_the_matched_gt_and_averages_over_assigned_points():
    head, feats, target = block_case()
    loss = CondInstMaskLoss(2, dice_weight=2.0, sem_weight=0.0)
    params = torch.tensor([[[1.0, 0.0]] * 3]).requires_grad_()  # (B=1, N=3, P=2)
    points, soi = torch.zeros(3, 2), torch.full((3,), 64.0)

    def run(gt_index):
        return loss(head, torch.tensor([gt_index]), params, feats, None, points, soi,
                    [target])["loss_mask"]

    assert run([1, -1, -1]).item() == pytest.approx(0.0, abs=1e-3)  # exact mask
    # gt 0's samples (rows/cols 2, 6) are disjoint from the prediction: dice 1, weight 2
    assert run([0, -1, -1]).item() == pytest.approx(2.0, abs=1e-3)
    assert run([0, 1, -1]).item() == pytest.approx(1.0, abs=1e-3)  # 2 x (1 + 0) / 2
    empty = run([-1, -1, -1])
    assert empty.item() == 0.0 and empty.requires_grad
    capped = CondInstMaskLoss(2, sem_weight=0.0, max_proposals=1)
    one = capped(head, torch.tensor([[0, 0, -1]]), params, feats, None, points, soi, [target])
    assert one["loss_mask"].item() == pytest.approx(2.0, abs=1e-3)  # mean over the 1 kept


def test_mask_loss_needs_masks_with_one_row_per_box():
    loss = CondInstMaskLoss(2)
    with pytest.raises(ValueError, match=r"targets\[0\] has no 'masks'"):
        loss.prepare_targets([{"boxes": torch.zeros(1, 4), "labels": torch.zeros(1)}],
                             torch.device("cpu"))
    bad = {"boxes": torch.zeros(2, 4), "labels": torch.zeros(2), "masks": torch.zeros(1, 4, 4)}
    with pytest.raises(ValueError, match=r"one mask per box \(G = 2\), got \(1, 4, 4\)"):
        loss.prepare_targets([bad], torch.device("cpu"))


def test_semantic_loss_by_hand():
    _, _, target = block_case()
    loss = CondInstMaskLoss(2, sem_weight=1.0)
    # logits 0 everywhere: p = 0.5; focal loss per entry alpha_t * 0.25 * log 2
    sem = torch.zeros(1, 2, 4, 4, requires_grad=True)
    got = loss._semantic_loss(sem, [target], 4)
    # locations (stride 4, offset 2): gt 0 covers rows/cols {2, 6}: 4 locations of class 0,
    # gt 1 covers rows {10, 14} x cols {6, 10}: 4 of class 1; 8 foreground, 32 entries
    positives, negatives = 8, 32 - 8
    want = (positives * 0.25 + negatives * 0.75) * 0.25 * math.log(2) / 8
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_semantic_loss_weight_and_focal_parameters_by_hand():
    # the call with sem_weight 2 and focal alpha 0.5, gamma 1: every one of the 32 entries
    # costs 0.5 * 0.5 * log 2 at p = 0.5, over the 8 foreground locations, times 2
    head, feats, target = block_case()
    loss = CondInstMaskLoss(2, sem_weight=2.0, focal_alpha=0.5, focal_gamma=1.0)
    params = torch.tensor([[[1.0, 0.0]] * 3])
    sem = torch.zeros(1, 2, 4, 4)
    out = loss(head, torch.tensor([[1, -1, -1]]), params, feats, sem, torch.zeros(3, 2),
               torch.full((3,), 64.0), [target])
    assert out["loss_sem"].item() == pytest.approx(2.0 * 32 * 0.25 * math.log(2) / 8, rel=1e-5)


def test_gt_masks_pick_each_points_gt_across_images():
    # image 0 has 2 gts, image 1 has 3; mask g of image i is filled with 10 i + g + 1, so the
    # picked target tells which (image, gt) it came from
    def target(i, n):
        masks = torch.stack([torch.full((8, 8), 10 * i + g + 1, dtype=torch.uint8)
                             for g in range(n)])
        return {"boxes": torch.zeros(n, 4), "labels": torch.zeros(n, dtype=torch.long),
                "masks": masks}

    loss = CondInstMaskLoss(2)
    picked = loss._gt_masks([target(0, 2), target(1, 3)], torch.tensor([1, 1, 0, 1]),
                            torch.tensor([1, 2, 1, 0]), 4, (2, 2))
    assert picked[:, 0, 0].tolist() == [12.0, 13.0, 2.0, 11.0]


def test_mask_targets_and_semantic_loss_run_on_the_meta_device():
    # no tensor of the mask targets or the semantic loss is made on the CPU by mistake (it
    # would meet a meta tensor, as it would meet a CUDA tensor on a GPU)
    _, _, target = block_case()
    meta = torch.device("meta")
    loss = CondInstMaskLoss(2, sem_weight=1.0)
    (t,) = loss.prepare_targets([target], meta)
    t = {k: v.to(meta) for k, v in t.items()}
    gt = loss._gt_masks([t], torch.zeros(2, dtype=torch.long, device=meta),
                        torch.tensor([1, 0], device=meta), 4, (4, 4))
    assert gt.device == meta and gt.shape == (2, 4, 4)
    sem = loss._semantic_loss(torch.zeros(1, 2, 4, 4, device=meta), [t], 4)
    assert sem.device == meta and sem.shape == ()


# ----------------------------------------------------------------------------- tiny model

TINY = ["model.num_classes=3", "model.backbone.depth=10", "model.backbone.pretrained=false",
        "model.backbone.frozen_stages=-1", "model.backbone.norm_eval=false",
        "model.fpn.channels=16", "model.head.feat_channels=16", "model.head.num_convs=1",
        "model.head.ctr_channels=8", "model.head.num_ctr_convs=1", "model.head.gn_groups=4",
        "model.mask.enabled=true", "model.mask.branch_channels=8", "model.mask.branch_convs=1"]


def tiny_model(*overrides: str):
    torch.manual_seed(0)
    return build_detector(load_config(None, [*TINY, *overrides]))


def tiny_batch():
    gen = torch.Generator().manual_seed(1)
    images = [torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8, generator=gen),
              torch.randint(0, 256, (3, 56, 64), dtype=torch.uint8, generator=gen)]
    targets = []
    for h, w in [(64, 80), (56, 64)]:
        masks = torch.zeros(2, h, w, dtype=torch.uint8)
        masks[0, 4:30, 6:40] = 1
        masks[1, 28:52, 30:60] = 1
        targets.append({"boxes": torch.tensor([[6.0, 4.0, 40.0, 30.0], [30.0, 28.0, 60.0, 52.0]]),
                        "labels": torch.tensor([0, 2]), "masks": masks, "img_size": (h, w),
                        "orig_size": (2 * h + 1, 2 * w), "scale_factor": (0.5, 0.5)})
    return images, targets


def test_tiny_mask_model_trains_and_every_mask_module_gets_a_gradient():
    model = tiny_model().train()
    images, targets = tiny_batch()
    losses = model(images, targets)
    assert set(losses) == {"loss_cls", "loss_bbox", "loss_mask", "loss_sem"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_mask"] > 0
    sum(losses.values()).backward()
    for name in ("controller", "mask_branch.refine", "mask_branch.tower", "mask_branch.sem_head",
                 "mask_branch.sem_out", "head.reg_convs"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(name)]
        assert grads and all(g is not None for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name
    # the targets given by the caller are not modified (centres go to copies)
    assert all("centers" not in t for t in targets)


def test_images_without_instances():
    model = tiny_model().train()
    images, targets = tiny_batch()
    h, w = targets[1]["img_size"]
    targets[1] = {**targets[1], "boxes": torch.zeros(0, 4),
                  "labels": torch.zeros(0, dtype=torch.long),
                  "masks": torch.zeros(0, h, w, dtype=torch.uint8)}
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_mask"] > 0
    none = model(images, [targets[1], targets[1]])
    assert none["loss_mask"].item() == 0.0 and none["loss_mask"].requires_grad
    assert torch.isfinite(none["loss_sem"]) and none["loss_sem"] > 0  # all background


def test_mask_model_under_autocast_gives_float32_mask_losses():
    model = tiny_model().train()
    images, targets = tiny_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(images, targets)
    assert losses["loss_mask"].dtype == torch.float32 and torch.isfinite(losses["loss_mask"])


def test_tiny_mask_model_eval_masks_match_the_detections_at_the_original_size():
    model = tiny_model("test.score_thr=0.0").eval()
    images, targets = tiny_batch()
    with torch.no_grad():
        results = model(images, targets)
    for res, t in zip(results, targets, strict=True):
        k = res["boxes"].shape[0]
        assert k > 0
        assert res["masks"].shape == (k, *t["orig_size"]) and res["masks"].dtype == torch.bool
    # without targets: the masks have the input image's size
    with torch.no_grad():
        plain = model(images)
    assert plain[1]["masks"].shape[1:] == (56, 64)
    # with NMS the masks follow the kept detections
    model.nms = True
    with torch.no_grad():
        nms = model(images, targets)
    assert nms[0]["masks"].shape[0] == nms[0]["boxes"].shape[0] <= results[0]["boxes"].shape[0]


def spread_head(model, seed: int = 0):
    """Random head weights with high, spread-out scores (a fresh head scores everything about
    0.005, below the 0.05 threshold: no detection to compare)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)
        model.head.conv_cls.bias.fill_(1.0)
    return model


def test_mask_modules_leave_the_box_path_unchanged():
    masked = spread_head(tiny_model()).eval()
    boxes_only = build_detector(load_config(None, [*TINY, "model.mask.enabled=false"])).eval()
    missing, unexpected = boxes_only.load_state_dict(masked.state_dict(), strict=False)
    assert not missing and unexpected and all(
        k.startswith(("mask_branch.", "controller.")) for k in unexpected)
    images, _ = tiny_batch()
    with torch.no_grad():
        a, b = masked(images), boxes_only(images)
    for x, y in zip(a, b, strict=True):
        assert len(x["scores"]) > 10  # detections to compare
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(x[key], y[key])
        assert "masks" in x and "masks" not in y


def test_predicted_masks_crop_and_resize_by_hand():
    """1 base, no coordinates, w = 1, b = 0: the mask is sigmoid(features) upsampled. Features
    +10 on the top-left 2 x 2 cells of a 4 x 4 stride-8 map (a 32 x 32 image)."""
    model = tiny_model("model.mask.num_bases=1", "model.mask.dynamic_layers=1",
                       "model.mask.rel_coords=false").eval()
    feats = torch.full((1, 1, 4, 4), -10.0)
    feats[..., :2, :2] = 10.0
    params, centres, soi = torch.tensor([[1.0, 0.0]]), torch.zeros(1, 2), torch.ones(1)
    same = model.predict_masks(feats, params, centres, soi, (32, 32), (32, 32))
    # stride 8 -> 4: logits +10 at 0..3, 0 at 4, -10 after; sigmoid, then x 4 (sample j at
    # 4 j + 2): > 0.5 up to pixel 17 (exactly 0.5 at 18)
    assert same.shape == (1, 32, 32)
    assert same[0, 0, :18].all() and not same[0, 0, 18:].any()
    assert same[0, :18, 0].all() and not same[0, 18:, 0].any()
    cropped = model.predict_masks(feats, params, centres, soi, (20, 24), (20, 24))
    assert torch.equal(cropped, same[:, :20, :24])
    # x 2 to the original size (bilinear, align_corners=False): true up to pixel 36
    big = model.predict_masks(feats, params, centres, soi, (32, 32), (64, 64))
    assert big[0, 0, :37].all() and not big[0, 0, 37:].any()


# ----------------------------------------------------------------------------- config, files


def test_mask_config_validation_names_the_key():
    with pytest.raises(ConfigError, match="model.assigner' must be o2f or o2o"):
        load_config("demo_mask", ["model.assigner=fcos"])
    with pytest.raises(ConfigError, match="model.mask.out_stride' must divide"):
        load_config("demo_mask", ["model.mask.out_stride=3"])
    with pytest.raises(ConfigError, match="model.mask.sizes_of_interest"):
        load_config("demo_mask", ["model.mask.sizes_of_interest=[64, 128]"])
    with pytest.raises(ConfigError, match="model.mask.mask_thr"):
        load_config("demo_mask", ["model.mask.mask_thr=1.0"])
    with pytest.raises(ConfigError, match="model.mask.max_proposals"):
        load_config("demo_mask", ["model.mask.max_proposals=0"])


def test_shipped_mask_configs():
    one = load_config("condinst_r50_1x")
    assert one.model.mask.enabled and one.model.backbone.depth == 50
    assert one.model.mask.num_bases == 8 and one.model.mask.branch_channels == 128
    assert one.model.mask.sizes_of_interest == [64, 128, 256, 512, 1024]
    three = load_config("condinst_r50_3x_ms")
    assert three.model.mask.enabled and three.data.train_short == [640, 800]
    assert three.train.epochs == 36 and three.optim.steps == [25, 34]
    demo = load_config("demo_mask")
    assert demo.model.mask.enabled and demo.model.backbone.depth == 10


def test_r50_condinst_parameter_count():
    model = build_detector(load_config("condinst_r50_1x", ["model.backbone.pretrained=false"]),
                           80)
    count = {name: sum(p.numel() for p in getattr(model, name).parameters())
             for name in ("mask_branch", "controller")}

    def conv_bn(cin, cout):
        return cin * cout * 9 + 2 * cout

    branch = 3 * conv_bn(256, 128) + 4 * conv_bn(128, 128) + (128 * 8 + 8)
    semantic = conv_bn(256, 128) + conv_bn(128, 128) + (128 * 80 + 80)
    assert count["mask_branch"] == branch + semantic
    assert count["controller"] == 256 * 169 * 9 + 169


def test_checkpoint_rebuilds_the_mask_model(tmp_path):
    from o2f.engine.checkpoint import save_checkpoint

    model = tiny_model("test.score_thr=0.0").eval()
    cfg = load_config(None, [*TINY, "test.score_thr=0.0"])
    path = tmp_path / "mask.pth"
    save_checkpoint({"model": model.state_dict(), "config": cfg.to_dict(),
                     "meta": {"num_classes": 3}}, path)
    loaded, loaded_cfg, _ = detector_from_checkpoint(path)
    assert loaded.with_masks and loaded_cfg.model.mask.enabled
    images, targets = tiny_batch()
    with torch.no_grad():
        a, b = model(images, targets), loaded(images, targets)
    assert torch.equal(a[0]["masks"], b[0]["masks"]) and torch.equal(a[1]["boxes"], b[1]["boxes"])


def test_export_of_a_mask_model_keeps_the_boxes_and_leaves_masks_out(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import onnx

    from o2f.deploy.export_onnx import export_onnx
    from tests.deploy.test_export import assert_same_detections

    model = spread_head(tiny_model("test.score_thr=0.0")).eval()
    path = tmp_path / "mask.onnx"
    assert export_onnx(model, path, dynamo=False, example_size=(64, 64)) == "torchscript"
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["o2f.masks"] == '"not exported"'
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["boxes", "scores", "labels"]
    images, _ = tiny_batch()
    boxes, scores, labels = session.run(None, {"images": images[0][None].numpy()})
    with torch.no_grad():
        want = model([images[0]])[0]
    k = want["scores"].shape[0]
    assert k == 100 and len(set(want["labels"].tolist())) > 1  # detections of several classes
    assert_same_detections((boxes[:, :k], scores[:, :k], labels[:, :k]),
                           tuple(want[key][None].numpy() for key in ("boxes", "scores", "labels")))
