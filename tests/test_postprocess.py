import torch

from o2f.boxes import level_points
from o2f.postprocess import nms_selection, rescale_boxes, select_topk


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
    b, s, lab = nms_selection(boxes, scores, labels, 0.6, 100)
    assert s.tolist() == [0.8999999761581421, 0.699999988079071] and lab.tolist() == [0, 1]


def test_rescale():
    out = rescale_boxes(torch.tensor([[10.0, 20.0, 30.0, 40.0]]), (2.0, 4.0))
    torch.testing.assert_close(out, torch.tensor([[5.0, 5.0, 15.0, 10.0]]))
