"""Hand-computed pins of evaluation rules that the broader tests left open (each closes a
planted bug of ``tests/evaluation/mutants_eval.py``): COCO image-id pairing, metric names and
``maxDets``, PR-curve values, inclusive thresholds of the F1 and duplicate curves, crowd
regions, CrowdHuman clipping on non-square images, the FPPI points, JI's region rules and the
odgt records of ``o2f test``."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from o2f.evaluation.coco import EVALUATORS, detections_to_coco_results, evaluate_coco
from o2f.evaluation.crowdhuman import EPS, evaluate_odgt
from o2f.evaluation.duplicates import duplicate_rate
from o2f.evaluation.plots import (
    THRESHOLDS,
    best_f1_of,
    best_f1_threshold,
    duplicate_curve,
    f1_table,
    match_detections,
    plot_pr_curves,
)


def det(boxes: list, scores: list, labels: list) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32),
            "labels": torch.tensor(labels, dtype=torch.int64)}


def coco_gt(anns: list[dict], num_images: int = 1) -> dict:
    """A COCO dict: images 1..num_images of 100 x 100, one category 'cat' (id 5)."""
    for i, ann in enumerate(anns):
        ann.setdefault("id", i + 1)
        ann.setdefault("image_id", 1)
        ann.setdefault("category_id", 5)
        ann.setdefault("iscrowd", 0)
        ann["area"] = ann["bbox"][2] * ann["bbox"][3]
    return {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100}
                       for i in range(1, num_images + 1)],
            "annotations": anns, "categories": [{"id": 5, "name": "cat"}]}


def at(thr: float) -> int:
    return int(np.argmin(np.abs(THRESHOLDS - thr)))


# -- COCO --------------------------------------------------------------------------------------
def test_results_take_the_image_ids_in_the_given_order():
    dets = [det([[0, 0, 10, 10]], [0.9], [0]), det([[5, 5, 10, 10]], [0.8], [1])]
    results = detections_to_coco_results(dets, [7, 2], [5, 9])
    assert [(r["image_id"], r["category_id"]) for r in results] == [(7, 5), (2, 9)]


@pytest.mark.parametrize("evaluator", EVALUATORS)
def test_ap_50_and_ap_75_keys_hold_their_own_thresholds(evaluator):
    # gt 50 x 50, the detection 50 x 31.25 inside it: IoU 1562.5 / 2500 = 0.625. A TP at IoU
    # 0.50, 0.55, 0.60 (AP 1), a FP from 0.65 on (AP 0): mAP 3/10, AP50 1, AP75 0
    gt = coco_gt([{"bbox": [10, 10, 50, 50]}])
    results = [{"image_id": 1, "category_id": 5, "bbox": [10, 10, 50, 31.25], "score": 0.9}]
    out = evaluate_coco(gt, results, evaluator=evaluator)
    assert out["bbox_mAP_50"] == pytest.approx(1.0)
    assert out["bbox_mAP_75"] == pytest.approx(0.0)
    assert out["bbox_mAP"] == pytest.approx(0.3)


def two_cats_found() -> tuple[dict, list[dict]]:
    """Two cats in one image, both found exactly: AP 1 with 100 detections per image (with
    one: recall 1/2, precision 1 on 51 of the 101 recall points)."""
    gt = coco_gt([{"bbox": [0, 0, 40, 40]}, {"bbox": [50, 50, 40, 40]}])
    results = [{"image_id": 1, "category_id": 5, "bbox": [0, 0, 40, 40], "score": 0.9},
               {"image_id": 1, "category_id": 5, "bbox": [50, 50, 40, 40], "score": 0.8}]
    return gt, results


def test_per_class_ap_uses_100_detections_per_image():
    gt, results = two_cats_found()
    out = evaluate_coco(gt, results)
    assert out["per_class"][0]["AP"] == pytest.approx(1.0)
    assert out["bbox_mAP"] == pytest.approx(1.0)


def test_pr_curves_read_100_detections_and_iou_050(tmp_path: Path):
    gt, results = two_cats_found()
    details: dict = {}
    evaluate_coco(gt, results, details=details)
    assert plot_pr_curves(details, ["cat"], tmp_path / "a.png") == {
        "cat": pytest.approx((1.0, 1.0))}
    # the IoU 0.625 detection: (AP50, AP) = (1, 3/10), see the test above
    gt = coco_gt([{"bbox": [10, 10, 50, 50]}])
    results = [{"image_id": 1, "category_id": 5, "bbox": [10, 10, 50, 31.25], "score": 0.9}]
    details = {}
    evaluate_coco(gt, results, details=details)
    assert plot_pr_curves(details, ["cat"], tmp_path / "b.png") == {
        "cat": pytest.approx((1.0, 0.3))}


@pytest.mark.parametrize("evaluator", EVALUATORS)
def test_mask_ap_size_ranges_use_mask_areas(evaluator):
    # a medium cat (mask = box 50 x 50); a false positive at 0.9 whose mask is 20 x 20 (400 px:
    # small) in a 60 x 60 box (3600: medium), then the exact mask at 0.8. By mask area the FP
    # is outside "medium": segm AP_m 1; by box area it would count: 1/2. Over "all" 1/2.
    gt = coco_gt([{"bbox": [10, 10, 50, 50],
                   "segmentation": [[10, 10, 60, 10, 60, 60, 10, 60]]}])
    masks = torch.zeros(2, 100, 100, dtype=torch.bool)
    masks[0, 40:60, 40:60] = True
    masks[1, 10:60, 10:60] = True
    results = detections_to_coco_results(
        [{**det([[40, 0, 100, 60], [10, 10, 60, 60]], [0.9, 0.8], [0, 0]), "masks": masks}],
        [1], [5])
    out = evaluate_coco(gt, results, iou_type="segm", evaluator=evaluator)
    assert out["segm_mAP_m"] == pytest.approx(1.0)
    assert out["segm_mAP"] == pytest.approx(0.5)


# -- duplicates and the plots' numbers ---------------------------------------------------------
def test_a_lone_confident_detection_counts_in_the_duplicate_rate():
    # image 1: one detection (no duplicate); image 2: the same box twice, one duplicate: 1 / 3
    dets = [det([[0, 0, 10, 10]], [0.9], [0]),
            det([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8], [0, 0])]
    assert duplicate_rate(dets) == pytest.approx(1 / 3)


def test_duplicate_curve_counts_a_score_equal_to_the_threshold():
    # the same box at 0.5 and 0.25 (exact in float32 and on the grid): at 0.25 both count,
    # the lower is a duplicate: 1/2; above 0.25 only the 0.5 one: 0
    dets = {1: det([[0, 0, 10, 10], [0, 0, 10, 10]], [0.5, 0.25], [0, 0])}
    assert THRESHOLDS[25] == 0.25
    curve = duplicate_curve(dets)
    assert curve[25] == 0.5 and curve[26] == 0.0 and curve[0] == 0.5
    assert duplicate_rate(dets, score_thr=0.25) == 0.5


def test_matching_accepts_an_iou_equal_to_the_threshold():
    # IoU 50 / 100 = 0.5 exactly: a match at iou_thr 0.5
    match, ignored = match_detections(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([0.9]),
                                      torch.tensor([0]), torch.tensor([[0.0, 0, 10, 5]]),
                                      torch.tensor([0]))
    assert match.tolist() == [0] and ignored.tolist() == [False]


def test_f1_counts_a_score_equal_to_the_threshold_and_crowds_are_no_targets():
    # one target found at score 0.5 (exact), one crowd region left alone
    gts = {1: {"boxes": torch.tensor([[0.0, 0, 10, 10], [50, 50, 90, 90]]),
               "labels": torch.tensor([0, 0]), "ignore": torch.tensor([False, True])}}
    table = f1_table({1: det([[0, 0, 10, 10]], [0.5], [0])}, gts, num_classes=1)
    assert table["num_gt"].tolist() == [1]
    assert THRESHOLDS[50] == 0.5
    assert (table["precision"][50], table["recall"][50], table["f1"][50]) == (1.0, 1.0, 1.0)
    assert table["f1"][51] == 0.0
    assert best_f1_of(table) == (1.0, 0.5)


def test_best_f1_threshold_leaves_crowd_annotations_out():
    # a cat (found at 0.6) and an iscrowd cat region (no detection): F1 1 at 0.6, not 2/3
    coco = COCO()
    coco.dataset = coco_gt([{"bbox": [0, 0, 20, 20]}, {"bbox": [50, 50, 40, 40], "iscrowd": 1}])
    coco.createIndex()
    dataset = SimpleNamespace(coco=coco, ids=[1], cat_ids=[5], class_names=["cat"])
    best = best_f1_threshold(dataset, {1: det([[0, 0, 20, 20]], [0.6], [0])})
    assert best == pytest.approx((1.0, 0.6))


# -- CrowdHuman ----------------------------------------------------------------------------------
def person(x: float, y: float, w: float, h: float, tag: str = "person") -> dict:
    return {"tag": tag, "fbox": [x, y, w, h]}


def dt(x: float, y: float, w: float, h: float, score: float) -> dict:
    return {"box": [x, y, w, h], "score": score}


def test_crowdhuman_clips_height_and_width_of_a_wide_image():
    # 200 wide, 50 high. The person is x 100..150, y 10..40. The detection reaches y 90: clipped
    # to y 10..50 its IoU is 1500 / 2000 = 0.75 (TP); unclipped 1500 / 4000 (FP)
    gt = [{"ID": "a", "height": 50, "width": 200, "gtboxes": [person(100, 10, 50, 30)]}]
    out = evaluate_odgt(gt, [{"ID": "a", "dtboxes": [dt(100, 10, 50, 80, 0.9)]}])
    assert out["Recall"] == 1.0 and out["mMR"] == 0.0


def test_a_background_tagged_box_counts_in_the_number_of_gt():
    # reference quirk (module docstring): 'background' is matched like an ignore region but
    # counts as gt. One of the two gt found: Recall 1/2
    gt = [{"ID": "a", "height": 100, "width": 100,
           "gtboxes": [person(0, 0, 10, 10), person(50, 50, 10, 10, tag="background")]}]
    out = evaluate_odgt(gt, [{"ID": "a", "dtboxes": [dt(0, 0, 10, 10, 0.9)]}])
    assert out["Recall"] == 0.5


def test_an_fppi_point_is_reached_at_equality():
    # one image, P1 and P2. TP (P1) .9, FP .8, TP (P2) .7, FP .6:
    #   recall 1/2, 1/2, 1, 1; precision 1, 1/2, 2/3, 1/2; fppi 0, 1, 1, 2
    # every point up to 1.0 is first reached (fppi >= point) at the first FP: miss 1/2 (with a
    # strict > the point 1.0 would fall on the second FP, miss 0, and mMR would be 0)
    gt = [{"ID": "a", "height": 100, "width": 100,
           "gtboxes": [person(0, 0, 10, 10), person(50, 0, 10, 10)]}]
    dets = [dt(0, 0, 10, 10, 0.9), dt(80, 80, 10, 10, 0.8), dt(50, 0, 10, 10, 0.7),
            dt(80, 50, 10, 10, 0.6)]
    out = evaluate_odgt(gt, [{"ID": "a", "dtboxes": dets}])
    assert out["mMR"] == pytest.approx(0.5, abs=1e-12)
    assert out["AP"] == pytest.approx(0.5 * (0.5 + 2 / 3) / 2, abs=1e-12)
    assert out["Recall"] == 1.0


def test_ji_keeps_matched_pairs_inside_an_ignore_region():
    # a person inside a mask region, found: k = 1, and neither the matched detection nor the
    # matched person is dropped: n = m = 1, ratio 1 / (1 + 1 - 1)
    gt = [{"ID": "a", "height": 100, "width": 100,
           "gtboxes": [person(0, 0, 10, 10),
                       {"tag": "mask", "fbox": [0, 0, 20, 20], "extra": {"ignore": 1}}]}]
    out = evaluate_odgt(gt, [{"ID": "a", "dtboxes": [dt(0, 0, 10, 10, 0.95)]}])
    assert out["JI"] == pytest.approx(1 / (1 + EPS), abs=1e-12)
    assert out["Recall"] == 1.0


def test_ji_counts_an_image_with_detections_and_no_gt():
    # a: found (ratio 1); b: no gt, one detection (k = 0, n = 1, m = 0: ratio 0, but it counts)
    gt = [{"ID": "a", "height": 100, "width": 100, "gtboxes": [person(0, 0, 10, 10)]},
          {"ID": "b", "height": 100, "width": 100, "gtboxes": []}]
    dets = [{"ID": "a", "dtboxes": [dt(0, 0, 10, 10, 0.95)]},
            {"ID": "b", "dtboxes": [dt(0, 0, 10, 10, 0.95)]}]
    assert evaluate_odgt(gt, dets)["JI"] == pytest.approx(1 / (1 + EPS) / 2, abs=1e-12)


def test_odgt_records_of_o2f_test_carry_height_and_width(tmp_path: Path):
    from o2f.engine.evaluate import _crowdhuman_metrics

    # the gt file has no size: the detection record's (height 50, width 200) clips the box
    # to y 10..50 (IoU 0.75 with the person, as above)
    gt = {"ID": "a", "gtboxes": [person(100, 10, 50, 30)]}
    (tmp_path / "gt.odgt").write_text(json.dumps(gt) + "\n")
    images = {3: {"odgt_id": "a", "height": 50, "width": 200}}
    dataset = SimpleNamespace(ann_file=str(tmp_path / "gt.odgt"), coco=SimpleNamespace(imgs=images))
    metrics, records = _crowdhuman_metrics(
        dataset, [{"boxes": torch.tensor([[100.0, 10, 150, 90]]), "scores": torch.tensor([0.9])}],
        [3])
    assert (records[0]["height"], records[0]["width"]) == (50, 200)
    assert metrics["Recall"] == 1.0
