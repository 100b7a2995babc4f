import pytest
import torch

from o2f.boxes import level_points
from o2f.postprocess import nms_keep, rescale_boxes, select_topk


def logit(p):
    return torch.log(torch.as_tensor(p) / (1 - torch.as_tensor(p)))


def make_maps(scores_per_level):
    """scores (B, C, H, W) per level -> cls logits with ctr logit +inf (sigmoid 1)."""
    cls = [logit(s) for s in scores_per_level]
    ctr = [torch.full((s.shape[0], 1, *s.shape[2:]), 30.0) for s in scores_per_level]
    reg = [torch.full((s.shape[0], 4, *s.shape[2:]), 2.0) for s in scores_per_level]
    return cls, reg, ctr


def test_selection_threshold_top_per_level_and_final_topk():
    s0 = torch.full((1, 2, 2, 2), 0.01)
    s0[0, 1, 0, 1] = 0.9  # level 0, point (row 0, col 1), class 1
    s0[0, 0, 1, 0] = 0.3
    s0[0, 0, 1, 1] = 0.05  # not above the threshold: dropped
    s1 = torch.full((1, 2, 1, 1), 0.01)
    s1[0, 0, 0, 0] = 0.6
    cls, reg, ctr = make_maps([s0, s1])
    points = list(level_points([(2, 2), (1, 1)], [8, 16])[0].split([4, 1]))
    boxes, scores, labels, idx = select_topk(cls, reg, ctr, points, torch.tensor([[100, 100]]),
                                             score_thr=0.05, nms_pre=2, max_per_img=3)
    torch.testing.assert_close(scores[0], torch.tensor([0.9, 0.6, 0.3]))
    assert labels[0].tolist() == [1, 0, 0]
    assert idx[0].tolist() == [1, 4, 2]  # level 0 points 0..3 row-major, then level 1 point 0
    torch.testing.assert_close(boxes[0, 0], torch.tensor([10.0, 2.0, 14.0, 6.0]))
    torch.testing.assert_close(boxes[0, 1], torch.tensor([6.0, 6.0, 10.0, 10.0]))


def test_nms_pre_limits_each_level():
    s0 = torch.tensor([0.9, 0.8, 0.7, 0.6]).view(1, 1, 2, 2)
    cls, reg, ctr = make_maps([s0])
    points = [level_points([(2, 2)], [8])[0]]
    _, scores, _, _ = select_topk(cls, reg, ctr, points, torch.tensor([[100, 100]]), nms_pre=2,
                                  max_per_img=10)
    torch.testing.assert_close(scores[0], torch.tensor([0.9, 0.8]))


def test_boxes_are_clipped_to_the_image():
    s0 = torch.full((1, 1, 1, 1), 0.9)
    cls, reg, ctr = make_maps([s0])
    reg[0][:] = 100.0
    boxes, _, _, _ = select_topk(cls, reg, ctr, [torch.tensor([[4.0, 4.0]])],
                                 torch.tensor([[30, 50]]))
    torch.testing.assert_close(boxes[0, 0], torch.tensor([0.0, 0.0, 50.0, 30.0]))


def test_nms_removes_duplicates_of_the_same_class_only():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1.0, 0, 10, 10], [1.0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    labels = torch.tensor([0, 0, 1])
    keep = nms_keep(boxes, scores, labels, 0.6, 100)
    s, lab = scores[keep], labels[keep]
    assert s.tolist() == [0.8999999761581421, 0.699999988079071] and lab.tolist() == [0, 1]


def test_rescale():
    out = rescale_boxes(torch.tensor([[10.0, 20.0, 30.0, 40.0]]), (2.0, 4.0))
    torch.testing.assert_close(out, torch.tensor([[5.0, 5.0, 15.0, 10.0]]))


def reference_select_topk(cls_logits, ltrb, ctr_logits, points, image_sizes, *, score_thr=0.05,
                          nms_pre=1000, max_per_img=100):
    """The first (dense) select_topk, kept as the oracle: every (point, class) score, top
    nms_pre per level, then the overall top max_per_img; entries <= score_thr get score 0."""
    def flatten(x):
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])

    all_boxes, all_scores, all_labels, all_points = [], [], [], []
    offset = 0
    for cls, reg, ctr, pts in zip(cls_logits, ltrb, ctr_logits, points, strict=True):
        num_classes = cls.shape[1]
        scores = (torch.sigmoid(flatten(cls).float()) * torch.sigmoid(flatten(ctr).float()))
        scores = scores.flatten(1)
        top_scores, top_idx = scores.topk(min(nms_pre, scores.shape[1]), dim=1)
        point_idx = torch.div(top_idx, num_classes, rounding_mode="floor")
        reg = torch.gather(flatten(reg).float(), 1, point_idx[..., None].expand(-1, -1, 4))
        x, y = pts[point_idx][..., 0], pts[point_idx][..., 1]
        all_boxes.append(torch.stack((x - reg[..., 0], y - reg[..., 1], x + reg[..., 2],
                                      y + reg[..., 3]), -1))
        all_scores.append(torch.where(top_scores > score_thr, top_scores, 0.0))
        all_labels.append(top_idx % num_classes)
        all_points.append(point_idx + offset)
        offset += pts.shape[0]
    boxes, scores = torch.cat(all_boxes, 1), torch.cat(all_scores, 1)
    scores, order = scores.topk(min(max_per_img, scores.shape[1]), dim=1)
    boxes = torch.gather(boxes, 1, order[..., None].expand(-1, -1, 4))
    labels = torch.gather(torch.cat(all_labels, 1), 1, order)
    point_idx = torch.gather(torch.cat(all_points, 1), 1, order)
    size = image_sizes.to(boxes.dtype)[:, None, :]
    limits = torch.stack((size[..., 1], size[..., 0], size[..., 1], size[..., 0]), dim=-1)
    return torch.minimum(boxes.clamp(min=0), limits), scores, labels, point_idx


def random_maps(gen, batch, num_classes, sizes, strides, fg_logit):
    """Random head outputs: a low background with bright spots (some images almost empty)."""
    cls, reg, ctr = [], [], []
    for h, w in sizes:
        logits = torch.randn(batch, num_classes, h, w, generator=gen) - 5.0
        spots = torch.rand(batch, num_classes, h, w, generator=gen) < 0.04
        spots[0] &= torch.rand(num_classes, h, w, generator=gen) < 0.1  # image 0: sparse
        logits[spots] = fg_logit + 2 * torch.randn(int(spots.sum()), generator=gen)
        cls.append(logits)
        ctr.append(torch.randn(batch, 1, h, w, generator=gen))
        reg.append(torch.rand(batch, 4, h, w, generator=gen) * 60)
    points = list(level_points(sizes, strides)[0].split([h * w for h, w in sizes]))
    return cls, reg, ctr, points


def assert_same_selection(got, want, score_thr, tol=1e-6):
    """Same detections (score > score_thr) per image: the same (point, label) pairs with equal
    boxes and scores equal to ``tol`` (relative; a sigmoid may differ in the last bit between
    a vectorised and a scalar loop), highest first. A pair may be missing on one side only if
    its score is within ``tol`` of the threshold or of the last kept score (a tie at the cut).
    Padding is score 0 and, in ours, box, label and point index 0."""
    boxes, scores, labels, idx = got
    w_boxes, w_scores, w_labels, w_idx = want
    assert scores.shape == w_scores.shape and boxes.shape == w_boxes.shape
    for b in range(scores.shape[0]):
        ours = {(int(i), int(c)): (s, bx) for i, c, s, bx in
                zip(idx[b], labels[b], scores[b], boxes[b], strict=True) if s > score_thr}
        ref = {(int(i), int(c)): (s, bx) for i, c, s, bx in
               zip(w_idx[b], w_labels[b], w_scores[b], w_boxes[b], strict=True)
               if s > score_thr}
        assert (scores[b][:-1] >= scores[b][1:]).all()
        cut = float(w_scores[b][w_scores[b] > score_thr].min()) if ref else score_thr
        for key in ours.keys() ^ ref.keys():
            s = float((ours.get(key) or ref[key])[0])
            assert min(abs(s - cut), abs(s - score_thr)) <= tol * s, (b, key, s)
        for key in ours.keys() & ref.keys():
            torch.testing.assert_close(ours[key][0], ref[key][0], rtol=tol, atol=0)
            torch.testing.assert_close(ours[key][1], ref[key][1], rtol=0, atol=1e-5)
        pad = scores[b] <= score_thr
        assert int((~pad).sum()) == len(ours) and (scores[b][pad] == 0).all()
        assert (labels[b][pad] == 0).all() and (idx[b][pad] == 0).all()
        assert (boxes[b][pad] == 0).all()


@pytest.mark.parametrize("static_shapes", [False, True])
def test_selection_equals_the_dense_reference_on_random_maps(static_shapes):
    gen = torch.Generator().manual_seed(0)
    sizes, strides = [(12, 15), (6, 8), (3, 4), (2, 2), (1, 1)], [8, 16, 32, 64, 128]
    image_sizes = torch.tensor([[90, 110], [96, 120], [50, 70]])
    cases = [  # (batch, classes, fg logit, score_thr, nms_pre, max_per_img)
        (3, 5, 2.0, 0.05, 1000, 100),  # every candidate of a level survives its top-k
        (3, 5, 2.0, 0.05, 20, 100),  # nms_pre cuts the dense levels
        (2, 7, 0.0, 0.3, 15, 40),  # higher threshold, fewer than K detections in image 0
        (1, 3, -2.0, 0.05, 1000, 100),  # few candidates: mostly padding
        (2, 4, 3.0, 0.0, 50, 300),  # no threshold: every pair is a candidate
        (2, 4, -9.0, 0.5, 10, 20),  # nothing passes
    ]
    for batch, num_classes, fg, thr, nms_pre, max_per_img in cases:
        cls, reg, ctr, points = random_maps(gen, batch, num_classes, sizes, strides, fg)
        kwargs = {"score_thr": thr, "nms_pre": nms_pre, "max_per_img": max_per_img}
        want = reference_select_topk(cls, reg, ctr, points, image_sizes[:batch], **kwargs)
        got = select_topk(cls, reg, ctr, points, image_sizes[:batch],
                          static_shapes=static_shapes, **kwargs)
        assert_same_selection(got, want, thr)
    assert (want[1] == 0).all() and (got[1] == 0).all()  # the last case selects nothing


def test_point_prefilter_keeps_scores_just_above_the_threshold():
    """Pairs whose score is within rounding of score_thr (centerness ~1, class logits near
    logit(score_thr)) are kept or dropped as the dense reference does, in float32 and float16;
    the point's second and third class pass only if their own score does."""
    thr = 0.05
    for dtype in (torch.float32, torch.float16):
        base = float(logit(thr))
        cls = torch.tensor([base - 1e-2, base + 2e-3, base + 0.5], dtype=dtype).view(1, 3, 1, 1)
        ctr = torch.full((1, 1, 1, 1), 30.0, dtype=dtype)
        reg = torch.ones(1, 4, 1, 1, dtype=dtype)
        args = ([cls], [reg], [ctr], [torch.tensor([[4.0, 4.0]])], torch.tensor([[8, 8]]))
        want = reference_select_topk(*args, score_thr=thr)
        got = select_topk(*args, score_thr=thr, static_shapes=False)
        assert_same_selection(got, want, thr)
        assert got[2][0].tolist() == [2, 1, 0] and (got[1][0, :2] > thr).all()
        assert got[1][0, 2] == 0


@pytest.mark.parametrize("static_shapes", [False, True])
def test_a_score_equal_to_the_threshold_is_not_a_detection(static_shapes):
    # SPEC §4 keeps scores strictly above the threshold: set the threshold to the float32 score
    # of one pair exactly; that pair is dropped, the one just above it kept.
    s0 = torch.tensor([0.3, 0.2]).view(1, 1, 1, 2)
    cls, reg, ctr = make_maps([s0])
    at = (torch.sigmoid(cls[0]) * torch.sigmoid(ctr[0]))[0, 0, 0, 1].item()
    points = [level_points([(1, 2)], [8])[0]]
    _, scores, _, _ = select_topk(cls, reg, ctr, points, torch.tensor([[100, 100]]),
                                  score_thr=at, static_shapes=static_shapes)
    assert (scores[0] > 0).sum() == 1
    torch.testing.assert_close(scores[0, 0], torch.tensor(0.3))


def test_a_score_a_few_ulps_above_the_threshold_is_kept_by_the_sparse_path():
    # the point prefilter's margin must not drop a pair whose score is above score_thr by less
    # than 1e-5 relative (the dense path keeps it)
    s0 = torch.tensor([0.3, 0.2]).view(1, 1, 1, 2)
    cls, reg, ctr = make_maps([s0])
    score = (torch.sigmoid(cls[0]) * torch.sigmoid(ctr[0]))[0, 0, 0, 1].item()
    thr = score * (1 - 3e-6)
    points = [level_points([(1, 2)], [8])[0]]
    for static_shapes in (False, True):
        _, scores, _, _ = select_topk(cls, reg, ctr, points, torch.tensor([[100, 100]]),
                                      score_thr=thr, static_shapes=static_shapes)
        assert (scores[0] > 0).sum() == 2


def test_selection_defaults_are_the_recipe():
    import inspect

    params = inspect.signature(select_topk).parameters
    assert (params["score_thr"].default, params["nms_pre"].default,
            params["max_per_img"].default) == (0.05, 1000, 100)
