"""COCO evaluation through pycocotools on a tiny synthetic ground truth."""

import contextlib
import io
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from o2f.evaluation.coco import detections_to_coco_results, evaluate_coco, format_per_class_table


def make_gt(with_masks=False):
    """3 images 100x100: image 1 has a 'cat' (id 5), image 2 a 'dog' (id 7), image 3 nothing.

    Both boxes are medium (area 2500 and 2400 between 32^2 and 96^2): no small or large gt.
    Category 'bird' (id 9) has no instance.
    """
    anns = [
        {"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 10, 50, 50], "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 7, "bbox": [0, 0, 40, 60], "iscrowd": 0},
    ]
    for ann in anns:
        x, y, w, h = ann["bbox"]
        ann["area"] = w * h
        if with_masks:
            ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    gt = COCO()
    gt.dataset = {
        "images": [
            {"id": i, "height": 100, "width": 100, "file_name": f"{i}.jpg"} for i in (1, 2, 3)
        ],
        "annotations": anns,
        "categories": [
            {"id": 5, "name": "cat"},
            {"id": 7, "name": "dog"},
            {"id": 9, "name": "bird"},
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


CAT_IDS = [5, 7, 9]  # contiguous label -> dataset category id


def perfect_detections():
    return [
        {
            "boxes": torch.tensor([[10.0, 10, 60, 60]]),
            "scores": torch.tensor([0.9]),
            "labels": torch.tensor([0]),
        },
        {
            "boxes": torch.tensor([[0.0, 0, 40, 60]]),
            "scores": torch.tensor([0.8]),
            "labels": torch.tensor([1]),
        },
        {
            "boxes": torch.zeros(0, 4),
            "scores": torch.zeros(0),
            "labels": torch.zeros(0, dtype=torch.long),
        },
    ]


def test_detections_to_coco_results():
    dets = perfect_detections()
    dets[0]["boxes"] = torch.tensor([[10.25, 10.5, 60.0, 61.0]])
    results = detections_to_coco_results(dets, [1, 2, 3], CAT_IDS)
    assert results == [
        {
            "image_id": 1,
            "category_id": 5,
            "bbox": [10.25, 10.5, 49.75, 50.5],
            "score": pytest.approx(0.9),
        },
        {
            "image_id": 2,
            "category_id": 7,
            "bbox": [0.0, 0.0, 40.0, 60.0],
            "score": pytest.approx(0.8),
        },
    ]
    assert all(type(v) is float for r in results for v in [*r["bbox"], r["score"]])


def test_perfect_detections_give_ap_one():
    gt = make_gt()
    out = evaluate_coco(gt, detections_to_coco_results(perfect_detections(), [1, 2, 3], CAT_IDS))
    for key in ("bbox_mAP", "bbox_mAP_50", "bbox_mAP_75", "bbox_mAP_m"):
        assert out[key] == pytest.approx(1.0)
    # pycocotools says -1 (no small / large gt): reported as NaN, not as a 0 or a -1
    assert math.isnan(out["bbox_mAP_s"]) and math.isnan(out["bbox_mAP_l"])
    assert [(r["name"], r["category_id"]) for r in out["per_class"]] == [
        ("cat", 5),
        ("dog", 7),
        ("bird", 9),
    ]
    assert out["per_class"][0]["AP"] == pytest.approx(1.0)
    assert math.isnan(out["per_class"][2]["AP"])  # no bird in the gt


def test_no_detections_give_zero_without_crashing():
    out = evaluate_coco(make_gt(), [])
    assert out["bbox_mAP"] == 0.0 and out["bbox_mAP_50"] == 0.0 and out["bbox_mAP_m"] == 0.0
    assert [r["AP"] for r in out["per_class"][:2]] == [0.0, 0.0]


def test_image_without_annotations_is_counted():
    results = detections_to_coco_results(perfect_detections(), [1, 2, 3], CAT_IDS)
    # a confident 'cat' false positive on image 3, which has no annotation
    results.append(
        {"image_id": 3, "category_id": 5, "bbox": [10.0, 10.0, 50.0, 50.0], "score": 0.95}
    )
    out = evaluate_coco(make_gt(), results)
    # cat: FP (0.95) then TP (0.9): precision at recall 1 is 1/2 -> AP 0.5; dog 1.0; mean 0.75
    assert out["per_class"][0]["AP"] == pytest.approx(0.5)
    assert out["bbox_mAP"] == pytest.approx(0.75)
    # restricting the evaluation to images 1 and 2 leaves the FP out
    assert evaluate_coco(make_gt(), results, image_ids=[1, 2])["bbox_mAP"] == pytest.approx(1.0)


def test_results_are_not_modified():
    results = detections_to_coco_results(perfect_detections(), [1, 2, 3], CAT_IDS)
    before = [dict(r) for r in results]
    evaluate_coco(make_gt(), results)
    assert results == before


def test_verbose_flag(capsys):
    evaluate_coco(make_gt(), [])
    assert capsys.readouterr().out == ""
    evaluate_coco(make_gt(), [], verbose=True)
    assert "Average Precision" in capsys.readouterr().out


def test_segm_from_masks():
    masks = torch.zeros(1, 100, 100, dtype=torch.bool)
    masks[0, 10:60, 10:60] = True
    dets = perfect_detections()
    dets[0]["masks"] = masks
    dets[1]["masks"] = torch.zeros(1, 100, 100, dtype=torch.bool)
    dets[1]["masks"][0, 0:60, 0:40] = True
    dets[2]["masks"] = torch.zeros(0, 100, 100, dtype=torch.bool)
    results = detections_to_coco_results(dets, [1, 2, 3], CAT_IDS)
    assert isinstance(results[0]["segmentation"]["counts"], str)
    out = evaluate_coco(make_gt(with_masks=True), results, iou_type="segm")
    assert out["segm_mAP"] == pytest.approx(1.0)
    assert "bbox_mAP" not in out
    with pytest.raises(ValueError):
        evaluate_coco(make_gt(), [], iou_type="keypoints")


def test_format_per_class_table():
    table = format_per_class_table(
        [
            {"name": "cat", "category_id": 5, "AP": 0.5},
            {"name": "bird", "category_id": 9, "AP": float("nan")},
        ]
    )
    assert table.splitlines() == [
        "| category | id | AP |",
        "| --- | ---: | ---: |",
        "| cat | 5 | 50.0 |",
        "| bird | 9 | n/a |",
    ]


def test_numpy_inputs_work_too():
    dets = [
        {
            "boxes": np.array([[10.0, 10, 60, 60]]),
            "scores": np.array([0.9]),
            "labels": np.array([0]),
        }
    ]
    assert detections_to_coco_results(dets, [1], CAT_IDS)[0]["category_id"] == 5
