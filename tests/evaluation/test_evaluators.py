"""faster_coco_eval against pycocotools: the same AP (box and mask), per-class AP and precision
array, on hand-made cases whose AP is known and on a seeded random case with crowd regions,
every size range, duplicates, misses and a class without ground truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from o2f.evaluation.coco import (
    EVALUATORS,
    evaluate_boxes_and_masks,
    evaluate_coco,
    ground_truth,
    run_coco_eval,
)

STATS = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")
W, H = 320, 240


def close(a: float, b: float, tol: float = 1e-4) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol


def rect_rle(x: float, y: float, w: float, h: float) -> dict:
    """A compressed RLE (counts a str) of the pixels of a box."""
    m = np.zeros((H, W), dtype=np.uint8, order="F")
    m[int(y):int(math.ceil(y + h)), int(x):int(math.ceil(x + w))] = 1
    rle = mask_utils.encode(m)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def known_case() -> tuple[dict, list[dict]]:
    """Class 1: one object (image 1), detections a false positive at 0.9 (image 2) then the
    exact box at 0.8: precision 1/2 at every recall, AP 0.5 at every IoU. Class 2: one object
    found exactly: AP 1. Mean 0.75."""
    images = [{"id": i, "file_name": f"{i}.jpg", "width": W, "height": H} for i in (1, 2)]
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    boxes = {1: [10, 10, 100, 80], 2: [150, 100, 120, 100]}
    anns = [{"id": c, "image_id": 1, "category_id": c, "bbox": b, "area": b[2] * b[3],
             "iscrowd": 0, "segmentation": [[b[0], b[1], b[0] + b[2], b[1], b[0] + b[2],
                                             b[1] + b[3], b[0], b[1] + b[3]]]}
            for c, b in boxes.items()]
    results = [{"image_id": 2, "category_id": 1, "bbox": [50, 50, 60, 60], "score": 0.9},
               {"image_id": 1, "category_id": 1, "bbox": boxes[1], "score": 0.8},
               {"image_id": 1, "category_id": 2, "bbox": boxes[2], "score": 0.7}]
    return {"images": images, "annotations": anns, "categories": cats}, results


@pytest.mark.parametrize("evaluator", EVALUATORS)
def test_known_ap(evaluator):
    gt, results = known_case()
    out = evaluate_coco(gt, results, evaluator=evaluator)
    assert out["bbox_mAP"] == pytest.approx(0.75, abs=1e-6)
    assert out["bbox_mAP_50"] == pytest.approx(0.75, abs=1e-6)
    assert [r["AP"] for r in out["per_class"]] == pytest.approx([0.5, 1.0], abs=1e-6)
    assert math.isnan(out["bbox_mAP_s"])  # no small object: undefined, not 0
    # class 1's object (8,000 px) and its false positive (3,600 px) are medium: AP_m is its 0.5;
    # class 2's (12,000 px) is large: AP_l is its 1.0
    assert out["bbox_mAP_m"] == pytest.approx(0.5, abs=1e-6)
    assert out["bbox_mAP_l"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("evaluator", EVALUATORS)
def test_known_ap_empty_results(evaluator):
    gt, _ = known_case()
    out = evaluate_coco(gt, [], evaluator=evaluator)
    assert out["bbox_mAP"] == 0.0 and [r["AP"] for r in out["per_class"]] == [0.0, 0.0]


def random_case(num_images: int = 60, seed: int = 0) -> tuple[dict, list[dict]]:
    """Ground truth (polygon and RLE masks, ~5% crowd, sizes from 5 to 200 px, 3 classes of
    which id 9 has no object) and results with RLE masks: most objects found with jitter,
    some twice, some missed, plus false positives."""
    rng = np.random.default_rng(seed)
    images = [{"id": i, "file_name": f"{i}.jpg", "width": W, "height": H}
              for i in range(1, num_images + 1)]
    cats = [{"id": 1, "name": "a"}, {"id": 4, "name": "b"}, {"id": 9, "name": "empty"}]
    anns, results = [], []
    for img in images:
        for _ in range(int(rng.integers(0, 7))):
            side = float(np.exp(rng.uniform(np.log(5), np.log(200))))
            w, h = side * rng.uniform(0.6, 1.4), side * rng.uniform(0.6, 1.4)
            w, h = min(w, W - 2), min(h, H - 2)
            x, y = rng.uniform(0, W - w - 1), rng.uniform(0, H - h - 1)
            cat = int(rng.choice([1, 4]))
            crowd = int(rng.random() < 0.05)
            rle = rect_rle(x, y, w, h)
            segm = (rle if crowd or rng.random() < 0.5
                    else [[x, y, x + w, y, x + w, y + h, x, y + h]])
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": cat,
                         "bbox": [x, y, w, h], "area": float(mask_utils.area(rle)),
                         "iscrowd": crowd, "segmentation": segm})
            for _copy in range(int(rng.choice([0, 1, 1, 1, 2]))):  # missed / found / twice
                j = rng.normal(0, 0.08 * side, 4)
                bx = [x + j[0], y + j[1], max(1.0, w + j[2]), max(1.0, h + j[3])]
                bx = [min(max(bx[0], 0), W - 2), min(max(bx[1], 0), H - 2), bx[2], bx[3]]
                results.append({"image_id": img["id"], "category_id": cat, "bbox": bx,
                                "score": float(rng.uniform(0.05, 1)),
                                "segmentation": rect_rle(*bx)})
        for _ in range(int(rng.integers(0, 3))):  # false positives, class 9 included
            w, h = rng.uniform(5, 100, 2)
            bx = [float(rng.uniform(0, W - w - 1)), float(rng.uniform(0, H - h - 1)), w, h]
            results.append({"image_id": img["id"], "category_id": int(rng.choice([1, 4, 9])),
                            "bbox": bx, "score": float(rng.uniform(0.05, 0.6)),
                            "segmentation": rect_rle(*bx)})
    return {"images": images, "annotations": anns, "categories": cats}, results


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_evaluators_agree(iou_type):
    gt, results = random_case()
    runs = {e: run_coco_eval(gt, results, iou_type=iou_type, evaluator=e) for e in EVALUATORS}
    metrics = {e: evaluate_coco(gt, results, iou_type=iou_type, evaluator=e) for e in EVALUATORS}
    ref, fast = metrics["pycocotools"], metrics["faster_coco_eval"]
    assert 0.2 < ref[f"{iou_type}_mAP"] < 0.9  # a case with something to get wrong
    for name in STATS:
        key = f"{iou_type}_{name}"
        assert close(fast[key], ref[key]), (key, fast[key], ref[key])
    assert [r["category_id"] for r in fast["per_class"]] == [1, 4, 9]
    assert math.isnan(ref["per_class"][2]["AP"]) and math.isnan(fast["per_class"][2]["AP"])
    for a, b in zip(fast["per_class"], ref["per_class"], strict=True):
        assert close(a["AP"], b["AP"]), (a, b)
    p_ref = runs["pycocotools"].eval["precision"]
    p_fast = np.asarray(runs["faster_coco_eval"].eval["precision"])
    assert p_fast.shape == p_ref.shape == (10, 101, 3, 4, 3)  # what the PR plots read
    assert np.abs(p_fast - p_ref).max() <= 1e-4
    assert np.allclose(runs["faster_coco_eval"].stats, runs["pycocotools"].stats, atol=1e-4)


def test_boxes_and_masks_agree_and_subset_of_images():
    gt, results = random_case(seed=1)
    ids = [i for i in range(1, 61) if i % 3]  # a subset: the others must not count
    out = {e: evaluate_boxes_and_masks(gt, results, ids, masks=True, evaluator=e)
           for e in EVALUATORS}
    ref, fast = out["pycocotools"], out["faster_coco_eval"]
    assert ref["bbox_mAP"] != evaluate_coco(gt, results, evaluator="pycocotools")["bbox_mAP"]
    for key in [f"{t}_{s}" for t in ("bbox", "segm") for s in STATS]:
        assert close(fast[key], ref[key]), key
    for a, b in zip(fast["per_class"], ref["per_class"], strict=True):
        assert close(a["AP"], b["AP"]) and close(a["segm_AP"], b["segm_AP"])


def test_ground_truth_conversions():
    gt, results = known_case()
    py = ground_truth(gt, "pycocotools")
    assert isinstance(py, COCO) and ground_truth(py, "pycocotools") is py
    fast = ground_truth(py, "faster_coco_eval")  # the other evaluator's object re-indexed
    assert not isinstance(fast, COCO) and sorted(fast.getImgIds()) == [1, 2]
    for gt_obj in (py, fast):
        assert evaluate_coco(gt_obj, results)["bbox_mAP"] == pytest.approx(0.75, abs=1e-6)
    with pytest.raises(ValueError, match="evaluator"):
        evaluate_coco(gt, results, evaluator="detectron2")
