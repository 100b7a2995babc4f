"""The authors' CondInst test-time selection (``model.mask.selection: authors``) against the box
selection of SPEC §4 on hand-made maps where the two differ, and against a literal per-image
reading of their ``E2ECondInstHead._get_bboxes_single`` + ``multiclass_nms`` on random maps."""

from __future__ import annotations

import pytest
import torch

from o2f.boxes import level_points
from o2f.builders import build_detector
from o2f.config import ConfigError, load_config
from o2f.postprocess import select_topk

SIZE = torch.tensor([[100, 100]])


def logit(p) -> torch.Tensor:
    p = torch.as_tensor(p, dtype=torch.float32)
    return torch.log(p / (1 - p))


def level(probs, quality, ltrb: float = 2.0):
    """probs (C, H, W) class probabilities, quality (H, W) -> one level's (1, ...) maps."""
    probs, quality = torch.as_tensor(probs), torch.as_tensor(quality)
    cls = logit(probs)[None]
    ctr = logit(quality)[None, None]
    reg = torch.full((1, 4, *probs.shape[1:]), ltrb)
    return cls, reg, ctr


def select(levels, selection, strides=(8, 16), **kw):
    cls, reg, ctr = (list(x) for x in zip(*levels, strict=True))
    shapes = [tuple(c.shape[-2:]) for c in cls]
    points = list(level_points(shapes, list(strides[: len(cls)]))[0].split(
        [h * w for h, w in shapes]))
    return select_topk(cls, reg, ctr, points, SIZE.expand(cls[0].shape[0], 2),
                       selection=selection, **kw)


def kept(scores: torch.Tensor) -> list[float]:
    return [round(v, 5) for v in scores[scores > 0].tolist()]


def test_threshold_on_the_class_score_alone_before_the_quality():
    # 1 class, 3 points in a row: p x q = 0.3 x 0.1 = 0.03 passes the authors' threshold (0.3 >
    # 0.05) but not the box one (0.03 < 0.05); 0.04 x 1 fails both; 0.5 x 0.5 passes both
    lv = level([[[0.3, 0.04, 0.5]]], [[0.1, 0.999999, 0.5]])
    _, box, _, _ = select([lv], "box", score_thr=0.05)
    _, authors, labels, idx = select([lv], "authors", score_thr=0.05)
    assert kept(box) == [0.25]
    assert kept(authors) == [0.25, 0.03]  # scored with the quality, below score_thr
    assert idx[0, :2].tolist() == [2, 0] and labels[0, :2].tolist() == [0, 0]


def test_nms_pre_keeps_points_with_all_their_classes():
    # 2 classes, 3 points, quality 1, nms_pre 2. Box: the 2 best (point, class) pairs of the
    # level. Authors: the 2 best points by their best class (points 0 and 1) with every class
    # above the threshold; point 2's 0.6 is left out although it beats 0.01 and ties nothing.
    probs = [[[0.9, 0.7, 0.6]], [[0.8, 0.01, 0.5]]]
    lv = level(probs, [[0.999999] * 3])
    _, box, box_labels, _ = select([lv], "box", nms_pre=2, max_per_img=10)
    _, authors, labels, idx = select([lv], "authors", nms_pre=2, max_per_img=10)
    assert kept(box) == [0.9, 0.8] and box_labels[0, :2].tolist() == [0, 1]
    assert kept(authors) == [0.9, 0.8, 0.7]
    assert labels[0, :3].tolist() == [0, 1, 0] and idx[0, :3].tolist() == [0, 0, 1]
    # padding: score, label and point index 0
    assert (authors[0, 3:] == 0).all() and (labels[0, 3:] == 0).all() and (idx[0, 3:] == 0).all()


def test_points_are_ranked_by_best_class_score_times_quality():
    # nms_pre 1: point 0 has the best class score (0.9) but 0.9 x 0.1 = 0.09 < 0.5 x 0.5
    lv = level([[[0.9, 0.5]]], [[0.1, 0.5]])
    _, authors, _, idx = select([lv], "authors", nms_pre=1)
    assert kept(authors) == [0.25] and idx[0, 0].item() == 1


def test_levels_with_fewer_points_than_nms_pre_keep_them_all_and_boxes_decode():
    # level 0: 2 x 2 points, nms_pre 2 cuts it; level 1: 1 point, kept whole
    p0 = torch.full((1, 2, 2), 0.01)
    p0[0, 0, 1], p0[0, 1, 0], p0[0, 1, 1] = 0.9, 0.3, 0.2
    lv0 = level(p0, torch.full((2, 2), 0.5))
    lv1 = level([[[0.6]]], [[0.5]], ltrb=4.0)
    boxes, scores, labels, idx = select([lv0, lv1], "authors", nms_pre=2, max_per_img=5)
    assert kept(scores) == [0.45, 0.3, 0.15]
    assert idx[0, :3].tolist() == [1, 4, 2]  # level 1's point follows level 0's four
    torch.testing.assert_close(boxes[0, 0], torch.tensor([10.0, 2.0, 14.0, 6.0]))  # (12, 4)
    torch.testing.assert_close(boxes[0, 1], torch.tensor([4.0, 4.0, 12.0, 12.0]))  # (8, 8)
    assert boxes.shape == (1, 3, 4)  # K = min(max_per_img, sum of min(nms_pre, H W) x C)


def test_unknown_selection_is_refused():
    lv = level([[[0.5]]], [[0.5]])
    with pytest.raises(ValueError, match="selection"):
        select([lv], "nms")


def literal_authors(cls_logits, ltrb, ctr_logits, points, score_thr, nms_pre, max_per_img):
    """Per image, as their code reads: per level sigmoid scores (HW, C) and quality (HW,); if
    HW > nms_pre keep the top nms_pre points of max_c(score * quality); concatenate the levels;
    (point, class) pairs with score > score_thr; multiply by the quality; sort; top
    max_per_img. Returns per image (scores, labels, point indices, boxes before clipping)."""
    out = []
    for b in range(cls_logits[0].shape[0]):
        all_s, all_q, all_i = [], [], []
        offset = 0
        for cls, ctr in zip(cls_logits, ctr_logits, strict=True):
            s = cls[b].permute(1, 2, 0).reshape(-1, cls.shape[1]).sigmoid()
            q = ctr[b].permute(1, 2, 0).reshape(-1).sigmoid()
            ids = torch.arange(s.shape[0])
            if s.shape[0] > nms_pre:
                _, top = (s * q[:, None]).max(dim=1)[0].topk(nms_pre)
                s, q, ids = s[top], q[top], ids[top]
            all_s.append(s)
            all_q.append(q)
            all_i.append(ids + offset)
            offset += cls.shape[2] * cls.shape[3]
        s, q, ids = torch.cat(all_s), torch.cat(all_q), torch.cat(all_i)
        c = s.shape[1]
        flat_s = s.reshape(-1)
        labels = torch.arange(c).repeat(s.shape[0])
        pts = ids.repeat_interleave(c)
        valid = flat_s > score_thr
        flat = (flat_s * q.repeat_interleave(c))[valid]
        order = flat.argsort(descending=True)[:max_per_img]
        out.append((flat[order], labels[valid][order], pts[valid][order]))
    return out


@pytest.mark.parametrize(("seed", "max_per_img"), [(0, 12), (1, 12), (2, 60), (3, 60)])
def test_equals_a_literal_reading_of_the_authors_code(seed, max_per_img):
    gen = torch.Generator().manual_seed(seed)
    shapes, strides, c = [(6, 5), (3, 3), (2, 2)], [8, 16, 32], 3
    cls = [torch.randn(2, c, h, w, generator=gen) * 2 - 2 for h, w in shapes]
    ctr = [torch.randn(2, 1, h, w, generator=gen) for h, w in shapes]
    reg = [torch.rand(2, 4, h, w, generator=gen) * 20 for h, w in shapes]
    points = list(level_points(shapes, strides)[0].split([h * w for h, w in shapes]))
    sizes = torch.tensor([[48, 40], [40, 36]])
    boxes, scores, labels, idx = select_topk(cls, reg, ctr, points, sizes, score_thr=0.05,
                                             nms_pre=7, max_per_img=max_per_img,
                                             selection="authors")
    want = literal_authors(cls, reg, ctr, points, 0.05, 7, max_per_img)
    if max_per_img == 60:  # all candidates: some score below the threshold
        assert all((s < 0.05).any() for s, _, _ in want)
    for b, (s, lab, pts) in enumerate(want):
        n = s.numel()
        assert 0 < n <= max_per_img and (scores[b, n:] == 0).all()
        torch.testing.assert_close(scores[b, :n], s)
        assert labels[b, :n].tolist() == lab.tolist() and idx[b, :n].tolist() == pts.tolist()
        all_pts, all_reg = torch.cat(points), torch.cat([r[b].flatten(1) for r in reg], 1).T
        x, y = all_pts[pts, 0], all_pts[pts, 1]
        r = all_reg[pts]
        want_boxes = torch.stack((x - r[:, 0], y - r[:, 1], x + r[:, 2], y + r[:, 3]), 1)
        h, w = sizes[b].tolist()
        want_boxes = torch.minimum(want_boxes.clamp(min=0), torch.tensor([w, h, w, h]))
        torch.testing.assert_close(boxes[b, :n], want_boxes)


# ----------------------------------------------------------------------------- the detector

TINY = ["model.num_classes=1", "model.backbone.depth=10", "model.backbone.pretrained=false",
        "model.backbone.frozen_stages=-1", "model.backbone.norm_eval=false",
        "model.fpn.channels=16", "model.head.feat_channels=16", "model.head.num_convs=1",
        "model.head.ctr_channels=8", "model.head.num_ctr_convs=1", "model.head.gn_groups=4",
        "model.mask.enabled=true", "model.mask.branch_channels=8", "model.mask.branch_convs=1"]


def test_the_detector_keeps_the_authors_sub_threshold_detections():
    lv = level([[[0.3, 0.04, 0.5]]], [[0.1, 0.999999, 0.5]])
    points = [level_points([(1, 3)], [8])[0]]
    got = {}
    for selection in ("box", "authors"):
        torch.manual_seed(0)
        model = build_detector(load_config(None, [*TINY, f"model.mask.selection={selection}"]))
        assert model.selection == selection
        det = model.eval().postprocess([lv[0]], [lv[1]], [lv[2]], points, SIZE)[0]
        got[selection] = [round(v, 5) for v in det["scores"].tolist()]
    assert got == {"box": [0.25], "authors": [0.25, 0.03]}


def test_mask_model_with_the_authors_selection_gives_one_mask_per_detection():
    torch.manual_seed(0)
    model = build_detector(load_config(None, [*TINY, "model.mask.selection=authors",
                                              "test.score_thr=0.005"])).eval()
    gen = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8, generator=gen)
    with torch.no_grad():
        det = model([image])[0]
    assert det["boxes"].shape[0] > 0 and det["masks"].shape == (det["boxes"].shape[0], 64, 80)
    assert (det["scores"] > 0).all() and (det["scores"].diff() <= 0).all()


def test_selection_key_defaults_and_validation():
    assert load_config(None).model.mask.selection == "box"
    assert load_config("demo_mask").model.mask.selection == "box"
    for name in ("condinst_r50_1x", "condinst_r50_3x_ms"):
        assert load_config(name).model.mask.selection == "authors", name
    with pytest.raises(ConfigError, match="model.mask.selection"):
        load_config(None, ["model.mask.selection=nms"])


def test_authors_threshold_is_strict():
    # the threshold set to one point's class probability in float32: that pair is dropped
    lv = level([[[0.3, 0.2]]], [[0.5, 0.5]])
    thr = torch.sigmoid(lv[0])[0, 0, 0, 1].item()
    _, scores, _, _ = select([lv], "authors", score_thr=thr)
    assert kept(scores) == [0.15]
