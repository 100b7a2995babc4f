"""Mask AP: RLE encoding, segm evaluation on hand-made cases, the evaluation loop with masks."""

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch import nn

from o2f.data import CocoDetection, build_transforms, generate_synthetic_coco
from o2f.data.coco import decode_segmentation
from o2f.engine.commands import write_results
from o2f.engine.evaluate import (
    METRIC_KEYS,
    SEGM_KEYS,
    coco_evaluate,
    headline_keys,
    metrics_for_file,
)
from o2f.evaluation.coco import (
    detections_to_coco_results,
    encode_masks,
    evaluate_boxes_and_masks,
    evaluate_coco,
    format_per_class_table,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools vs numpy 2


def square(x, y, w, h, size=(100, 100)):
    m = torch.zeros(size, dtype=torch.bool)
    m[y:y + h, x:x + w] = True
    return m


def make_gt(segmentations=True):
    """Image 1 (100x100): a 'cat' (id 5), mask = box [10, 10, 50, 50]; image 2: a 'dog' (id 7),
    an L shape in box [0, 0, 40, 60] (the box minus its top-right 20 x 30 corner)."""
    l_shape = square(0, 0, 40, 60).numpy().astype(np.uint8)
    l_shape[0:30, 20:40] = 0
    rle = mask_utils.encode(np.asfortranarray(l_shape))
    anns = [
        {"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 10, 50, 50], "area": 2500,
         "iscrowd": 0, "segmentation": [[10, 10, 60, 10, 60, 60, 10, 60]]},
        {"id": 2, "image_id": 2, "category_id": 7, "bbox": [0, 0, 40, 60], "area": 1800,
         "iscrowd": 0, "segmentation": {"size": [100, 100], "counts": rle["counts"].decode()}},
    ]
    if not segmentations:
        del anns[1]["segmentation"]
    gt = COCO()
    gt.dataset = {
        "images": [{"id": i, "height": 100, "width": 100, "file_name": f"{i}.jpg"}
                   for i in (1, 2)],
        "annotations": anns,
        "categories": [{"id": 5, "name": "cat"}, {"id": 7, "name": "dog"}],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt, torch.from_numpy(l_shape.astype(bool))


def detections(cat_mask, dog_mask):
    return [
        {"boxes": torch.tensor([[10.0, 10, 60, 60]]), "scores": torch.tensor([0.9]),
         "labels": torch.tensor([0]), "masks": cat_mask[None]},
        {"boxes": torch.tensor([[0.0, 0, 40, 60]]), "scores": torch.tensor([0.8]),
         "labels": torch.tensor([1]), "masks": dog_mask[None]},
    ]


def test_encode_masks_round_trip_tensor_and_numpy():
    masks = torch.zeros(3, 7, 5, dtype=torch.bool)
    masks[0, 1:4, 2:5] = True
    masks[1, 6, 0] = True  # masks[2] stays empty
    rles = encode_masks(masks)
    assert rles == encode_masks(masks.numpy()) == encode_masks(masks.to(torch.uint8))
    assert all(r["size"] == [7, 5] and isinstance(r["counts"], str) for r in rles)
    json.dumps(rles)
    for rle, m in zip(rles, masks, strict=True):
        np.testing.assert_array_equal(decode_segmentation(rle, 7, 5), m.numpy())
    assert mask_utils.area(rles[0]) == 9
    # a non-contiguous view and an empty set
    assert encode_masks(masks.transpose(1, 2))[0]["size"] == [5, 7]
    assert encode_masks(torch.zeros(0, 7, 5, dtype=torch.bool)) == []
    with pytest.raises(ValueError, match=r"\(K, H, W\)"):
        encode_masks(torch.zeros(7, 5))


def test_gt_masks_give_mask_ap_one_and_box_shaped_masks_less():
    gt, l_shape = make_gt()
    results = detections_to_coco_results(detections(square(10, 10, 50, 50), l_shape), [1, 2],
                                         [5, 7])
    assert results[1]["segmentation"]["counts"] == gt.anns[2]["segmentation"]["counts"]
    out = evaluate_boxes_and_masks(gt, results, masks=True)
    for key in ("bbox_mAP", "segm_mAP", "segm_mAP_50", "segm_mAP_75", "segm_mAP_m"):
        assert out[key] == pytest.approx(1.0), key
    assert math.isnan(out["segm_mAP_s"]) and math.isnan(out["segm_mAP_l"])
    assert [(r["AP"], r["segm_AP"]) for r in out["per_class"]] == [
        pytest.approx((1.0, 1.0)), pytest.approx((1.0, 1.0))]

    # the dog's mask filling its whole box: IoU 1800 / 2400 = 0.75 with the L shape, a match
    # at IoU thresholds 0.50 ... 0.75 (6 of 10): dog AP 0.6, mean (1 + 0.6) / 2 = 0.8
    results = detections_to_coco_results(
        detections(square(10, 10, 50, 50), square(0, 0, 40, 60)), [1, 2], [5, 7])
    out = evaluate_boxes_and_masks(gt, results, masks=True)
    assert out["bbox_mAP"] == pytest.approx(1.0)  # boxes unchanged
    assert out["segm_mAP"] == pytest.approx(0.8)
    assert out["segm_mAP_50"] == pytest.approx(1.0) and out["segm_mAP_75"] == pytest.approx(1.0)
    assert out["per_class"][1]["segm_AP"] == pytest.approx(0.6)


def test_shifted_mask_hand_computed():
    # the cat's mask shifted 10 px right: IoU 2000 / 3000 = 0.667, a match at 0.50 ... 0.65
    gt, l_shape = make_gt()
    results = detections_to_coco_results(detections(square(20, 10, 50, 50), l_shape), [1, 2],
                                         [5, 7])
    out = evaluate_coco(gt, results, iou_type="segm")
    assert out["per_class"][0]["AP"] == pytest.approx(0.4)
    assert out["segm_mAP"] == pytest.approx(0.7)
    assert out["segm_mAP_50"] == pytest.approx(1.0) and out["segm_mAP_75"] == pytest.approx(0.5)
    # mask area ranges use the mask areas: the results' boxes are not used for segm
    results[0]["bbox"] = [0.0, 0.0, 1.0, 1.0]
    assert evaluate_coco(gt, results, iou_type="segm")["segm_mAP"] == pytest.approx(0.7)


def test_rles_or_masks_and_count_check():
    _, l_shape = make_gt()
    dets = detections(square(10, 10, 50, 50), l_shape)
    from_masks = detections_to_coco_results(dets, [1, 2], [5, 7])
    for det in dets:
        det["rles"] = encode_masks(det.pop("masks"))
    assert detections_to_coco_results(dets, [1, 2], [5, 7]) == from_masks
    dets[0]["rles"] = dets[0]["rles"] * 2
    with pytest.raises(ValueError, match="image 1: 2 masks for 1 boxes"):
        detections_to_coco_results(dets, [1, 2], [5, 7])


def test_gt_without_segmentation_is_named():
    gt, l_shape = make_gt(segmentations=False)
    results = detections_to_coco_results(detections(square(10, 10, 50, 50), l_shape), [1, 2],
                                         [5, 7])
    with pytest.raises(ValueError, match=r"1 annotation\(s\) have no 'segmentation': id\(s\) 2"):
        evaluate_boxes_and_masks(gt, results, masks=True)
    assert evaluate_boxes_and_masks(gt, results)["bbox_mAP"] == pytest.approx(1.0)


def test_table_keys_and_results_file(tmp_path):
    table = format_per_class_table([{"name": "cat", "category_id": 5, "AP": 0.5,
                                     "segm_AP": float("nan")}])
    assert table.splitlines() == ["| category | id | box AP | mask AP |",
                                  "| --- | ---: | ---: | ---: |", "| cat | 5 | 50.0 | n/a |"]
    metrics = {k: 0.5 for k in METRIC_KEYS + SEGM_KEYS}
    metrics["segm_mAP_s"] = math.nan
    assert headline_keys(metrics) == METRIC_KEYS + SEGM_KEYS
    assert headline_keys({k: 0.5 for k in METRIC_KEYS}) == METRIC_KEYS
    assert metrics_for_file(metrics) == {**{k: 0.5 for k in METRIC_KEYS + SEGM_KEYS},
                                         "segm_mAP_s": 0.0}
    assert SEGM_KEYS == ("segm_mAP", "segm_mAP_50", "segm_mAP_75", "segm_mAP_s", "segm_mAP_m",
                         "segm_mAP_l")
    _, l_shape = make_gt()
    results = detections_to_coco_results(detections(square(10, 10, 50, 50), l_shape), [1, 2],
                                         [5, 7])
    write_results(tmp_path / "results.json", results)
    loaded = json.loads((tmp_path / "results.json").read_text())
    assert loaded == results
    np.testing.assert_array_equal(decode_segmentation(loaded[1]["segmentation"], 100, 100),
                                  l_shape.numpy())


class OracleMaskModel(nn.Module):
    """Returns each image's ground truth (boxes, masks at the original size) as detections;
    ``shift`` moves every mask right by that many pixels."""

    def __init__(self, coco: COCO, cat_ids: list[int], shift: int = 0):
        super().__init__()
        self.coco, self.label_of, self.shift = coco, {c: i for i, c in enumerate(cat_ids)}, shift

    def forward(self, images, targets):
        out = []
        for tgt in targets:
            anns = [a for a in self.coco.imgToAnns[tgt["image_id"]] if not a["iscrowd"]]
            h, w = tgt["orig_size"]
            masks = torch.stack([torch.from_numpy(self.coco.annToMask(a)).bool() for a in anns])
            masks = torch.roll(masks, self.shift, dims=2)
            boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32)
            boxes[:, 2:] += boxes[:, :2]
            out.append({"boxes": boxes, "scores": torch.linspace(0.9, 0.5, len(anns)),
                        "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns]),
                        "masks": masks})
        return out


def test_coco_evaluate_reports_mask_ap(tmp_path):
    paths = generate_synthetic_coco(tmp_path, 0, 3, image_size=(64, 64), seed=3,
                                    num_objects=(3, 5), size_range=(12, 40), with_masks=True)
    ds = CocoDetection(paths["val_ann"], paths["val_images"], build_transforms(False, 96, (96, 96)))
    metrics, results = coco_evaluate(OracleMaskModel(ds.coco, ds.cat_ids), ds,
                                     torch.device("cpu"), workers=0)
    assert metrics["bbox_mAP"] == pytest.approx(1.0) and metrics["segm_mAP"] == pytest.approx(1.0)
    assert set(SEGM_KEYS) <= set(metrics) and "segm_AP" in metrics["per_class"][0]
    assert len(results) == len(ds.coco.anns) and all("segmentation" in r for r in results)
    shifted, _ = coco_evaluate(OracleMaskModel(ds.coco, ds.cat_ids, shift=4), ds,
                               torch.device("cpu"), workers=0)
    assert shifted["bbox_mAP"] == pytest.approx(1.0) and shifted["segm_mAP"] < 0.9


def test_datasets_follow_model_mask_enabled(tmp_path):
    from o2f.config import ConfigError, load_config
    from o2f.engine.train import build_datasets, build_val_dataset

    masked = generate_synthetic_coco(tmp_path / "m", 2, 2, image_size=(64, 64), seed=1,
                                     num_objects=(2, 3), size_range=(12, 40), with_masks=True)
    boxes = generate_synthetic_coco(tmp_path / "b", 2, 2, image_size=(64, 64), seed=1,
                                    num_objects=(2, 3), size_range=(12, 40))

    def cfg(paths, enabled):
        return load_config("demo", [
            f"data.train.ann_file={paths['train_ann']}",
            f"data.train.img_dir={paths['train_images']}",
            f"data.val.ann_file={paths['val_ann']}", f"data.val.img_dir={paths['val_images']}",
            f"model.mask.enabled={str(enabled).lower()}"])

    train_set, val_set = build_datasets(cfg(masked, True), with_val=True)
    _, target = train_set[0]
    assert target["masks"].shape[0] == len(target["boxes"]) > 0
    assert target["masks"].shape[1:] == target["img_size"]
    assert "masks" not in val_set[0][1]  # evaluation reads gt masks from the annotation file
    assert "masks" not in build_datasets(cfg(masked, False), with_val=False)[0][0][1]
    with pytest.raises(ConfigError, match=r"data\.val\.ann_file .*val\.json have no 'segm"):
        build_val_dataset(cfg(boxes, True))
    build_val_dataset(cfg(boxes, False))
