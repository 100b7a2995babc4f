"""Evaluation plots: greedy matching, F1 table and confusion matrix on hand-made cases, the
duplicate curve against the duplicate rate, and the files of ``write_evaluation_plots`` /
``o2f test --plots``."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from o2f.evaluation.duplicates import duplicate_rate
from o2f.evaluation.plots import (
    THRESHOLDS,
    confusion_matrix,
    duplicate_curve,
    f1_table,
    match_detections,
    write_evaluation_plots,
)


def det(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32),
            "labels": torch.tensor(labels, dtype=torch.int64)}


def gt(boxes, labels, ignore=None):
    out = det(boxes, [0.0] * len(labels), labels)
    del out["scores"]
    out["ignore"] = torch.tensor(ignore or [False] * len(labels))
    return out


def at(thr: float) -> int:
    return int(np.argmin(np.abs(THRESHOLDS - thr)))


def test_greedy_matching_goes_by_score_then_iou():
    g = gt([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], [0, 0, 1], ignore=[0, 0, 1])
    # d0 (0.5) overlaps g0 perfectly, d1 (0.9) overlaps g0 at IoU 0.82: d1 takes g0 first
    d = det([[0, 0, 10, 10], [0, 0, 10, 11.2], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]],
            [0.5, 0.9, 0.8, 0.7, 0.6], [0, 0, 1, 1, 0])
    match, ignored = match_detections(d["boxes"], d["scores"], d["labels"], g["boxes"],
                                      g["labels"], g["ignore"])
    # d2 is class 1 on a class-0 target: no match; d3 lies on the crowd region: ignored
    assert match.tolist() == [-1, 0, -1, -1, -1]
    assert ignored.tolist() == [False, False, False, True, False]
    agnostic, _ = match_detections(d["boxes"], d["scores"], d["labels"], g["boxes"],
                                   g["labels"], g["ignore"], class_aware=False)
    assert agnostic.tolist() == [-1, 0, 1, -1, -1]


def test_f1_table_by_hand():
    gts = {1: gt([[0, 0, 10, 10], [20, 0, 30, 10]], [0, 0])}
    dets = {1: det([[0, 0, 10, 10], [50, 50, 60, 60], [20, 0, 30, 10]], [0.9, 0.6, 0.3],
                   [0, 0, 0])}
    t = f1_table(dets, gts, num_classes=2)
    assert t["num_gt"].tolist() == [2, 0]
    # score >= 0.7: 1 of 1 right, 1 of 2 found; >= 0.5: 1 of 2, 1 of 2; >= 0.2: 2 of 3, 2 of 2
    assert (t["precision"][at(0.7)], t["recall"][at(0.7)]) == (1.0, 0.5)
    assert t["f1"][at(0.7)] == pytest.approx(2 / 3)
    assert t["f1"][at(0.5)] == pytest.approx(0.5)
    assert t["f1"][at(0.2)] == pytest.approx(0.8)
    assert t["f1"][at(0.95)] == 0.0
    assert np.array_equal(t["class_f1"][0], t["f1"]) and not t["class_f1"][1].any()


def test_confusion_matrix_by_hand():
    gts = {1: gt([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], [0, 1, 1]),
           2: gt([[0, 0, 10, 10]], [0])}
    dets = {1: det([[0, 0, 10, 10], [20, 0, 30, 10], [80, 80, 90, 90], [40, 0, 50, 10]],
                   [0.9, 0.8, 0.7, 0.1], [1, 1, 0, 1]),  # the last one is under the threshold
            2: det([[0, 0, 10, 10]], [0.95], [0])}
    cm = confusion_matrix(dets, gts, 2, score_thr=0.5)
    assert cm.tolist() == [[1, 1, 0],   # true 0: once right, once taken for a 1
                           [0, 1, 1],   # true 1: once right, once missed
                           [1, 0, 0]]   # a detection of class 0 on background


def test_duplicate_curve_is_the_duplicate_rate_at_each_threshold():
    gen = torch.Generator().manual_seed(0)
    dets = {}
    for i in range(6):
        xy = torch.rand(12, 2, generator=gen) * 60
        boxes = torch.cat([xy, xy + 20], 1)
        boxes[6:] = boxes[:6] + torch.rand(6, 4, generator=gen) * 3  # near copies
        labels = torch.randint(0, 2, (12,), generator=gen)
        labels[6:] = labels[:6]
        dets[i] = {"boxes": boxes, "scores": torch.rand(12, generator=gen), "labels": labels}
    curve = duplicate_curve(dets)
    for thr in (0.0, 0.2, 0.3, 0.55, 0.8):
        rate = duplicate_rate(dets, score_thr=float(THRESHOLDS[at(thr)]))
        assert curve[at(thr)] == pytest.approx(rate)
    assert curve[at(0.0)] > 0.3


# -- the files ------------------------------------------------------------------------------------
@pytest.fixture
def small_dataset(tmp_path):
    """A stand-in CocoDetection: 3 images on disk, 2 classes, and its COCO index."""
    from pycocotools.coco import COCO

    images, anns = [], []
    for i in range(3):
        Image.fromarray(np.full((60, 80, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 80, "height": 60})
        anns += [{"id": 10 * i + 1, "image_id": i + 1, "category_id": 5, "bbox": [5, 5, 20, 20],
                  "area": 400, "iscrowd": 0},
                 {"id": 10 * i + 2, "image_id": i + 1, "category_id": 9,
                  "bbox": [40, 20, 30, 30], "area": 900, "iscrowd": 0}]
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns,
                    "categories": [{"id": 5, "name": "cat"}, {"id": 9, "name": "dog"}]}
    coco.createIndex()
    return SimpleNamespace(coco=coco, ids=[1, 2, 3], cat_ids=[5, 9], class_names=["cat", "dog"],
                           img_dir=tmp_path, image_info=lambda k: images[k])


def test_write_evaluation_plots(small_dataset, tmp_path):
    from o2f.evaluation.coco import detections_to_coco_results, evaluate_coco

    # image 1 perfect, image 2 a dog called a cat, image 3 a false positive and a miss
    dets = {1: det([[5, 5, 25, 25], [40, 20, 70, 50]], [0.9, 0.8], [0, 1]),
            2: det([[5, 5, 25, 25], [40, 20, 70, 50]], [0.9, 0.7], [0, 0]),
            3: det([[5, 5, 25, 25], [60, 0, 79, 10]], [0.85, 0.6], [0, 1])}
    results = detections_to_coco_results([dets[i] for i in (1, 2, 3)], [1, 2, 3], [5, 9])
    details: dict = {}
    evaluate_coco(small_dataset.coco, results, details=details)
    assert details["precision"].shape[:3] == (10, 101, 2)
    out = tmp_path / "plots"
    summary = write_evaluation_plots(out, small_dataset, dets, details)
    for name in ("pr_curves.png", "f1_curve.png", "confusion_matrix.png", "duplicates.png",
                 "worst_images.png"):
        with Image.open(out / name) as im:
            assert im.size[0] > 300 and im.size[1] > 200, name
    assert json.loads((out / "summary.json").read_text()) == summary
    # cats: all 3 found, above the false cat (AP 1); dogs: 1 of 3 found (AP50 34 / 101)
    assert summary["ap_per_class"]["cat"]["AP50"] == pytest.approx(1.0)
    assert summary["ap_per_class"]["dog"]["AP50"] < 0.5
    # 6 targets; score >= 0.8 keeps 4 detections, all right: F1 2 * 1 * (4/6) / (1 + 4/6)
    assert summary["best_f1"] == pytest.approx(0.8)
    assert summary["best_f1_score_thr"] == pytest.approx(0.8)
    assert summary["precision"] == 1.0 and summary["recall"] == pytest.approx(4 / 6)
    assert summary["dup_rate"] == 0.0
    # at 0.8 images 2 and 3 each miss their dog (the false ones score under 0.8)
    assert [w["image_id"] for w in summary["worst_images"]] == [2, 3]
    assert summary["worst_images"][0] == {"image_id": 2, "false_positives": 0, "missed": 1}


def test_the_score_threshold_can_be_chosen(small_dataset, tmp_path):
    dets = {i: det([[5, 5, 25, 25]], [0.4], [0]) for i in (1, 2, 3)}
    summary = write_evaluation_plots(tmp_path / "p", small_dataset, dets, None, score_thr=0.5)
    assert summary["score_thr"] == 0.5 and summary["recall"] == 0.0
    assert "pr_curves.png" not in summary["files"]  # no precision array given
    assert not (tmp_path / "p" / "pr_curves.png").exists()
    assert summary["best_f1_score_thr"] == pytest.approx(0.4)
    assert summary["best_f1"] == pytest.approx(2 * 1 * 0.5 / 1.5)
