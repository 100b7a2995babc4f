"""Instance segmentation through the ``o2f`` command: train demo_mask -> test -> predict."""

import json
from pathlib import Path

import pytest
from pycocotools import mask as mask_utils

from o2f.engine.checkpoint import load_checkpoint
from tests.engine.conftest import tiny_overrides
from tests.engine.test_cli_e2e import METRICS, assert_metrics_are_cocoeval_of_the_results, o2f

SEGM = ["segm_mAP", "segm_mAP_50", "segm_mAP_75", "segm_mAP_s", "segm_mAP_m", "segm_mAP_l"]


@pytest.mark.slow
def test_train_test_and_predict_masks_through_the_cli(tiny_coco_masks, tmp_path):
    work = tmp_path / "run"
    o2f("train", "demo_mask", "--work-dir", work,
        *tiny_overrides(tiny_coco_masks, "train.epochs=1", "train.max_iters_per_epoch=2",
                        "train.val_interval=1"))
    state = load_checkpoint(work / "last.pth")
    assert state["config"]["model"]["mask"]["enabled"] is True
    assert any(k.startswith("controller.") for k in state["model"])
    history = json.loads((work / "history.json").read_text())
    assert history[0]["loss_mask"] > 0
    assert set(json.loads((work / "metrics.json").read_text())) >= set(METRICS + SEGM)

    metrics_out, results_out = tmp_path / "m.json", tmp_path / "r.json"
    proc = o2f("test", "-", work / "last.pth", "--metrics-out", metrics_out,
               "--results-out", results_out, "test.score_thr=0.0")
    metrics = json.loads(metrics_out.read_text())
    assert set(metrics) >= set(METRICS + SEGM)
    assert all(0.0 <= metrics[k] <= 1.0 for k in SEGM)
    assert "segm_mAP" in proc.stdout + proc.stderr
    results = json.loads(results_out.read_text())
    assert_metrics_are_cocoeval_of_the_results(metrics, results, tiny_coco_masks["val_ann"])
    assert_metrics_are_cocoeval_of_the_results(metrics, results, tiny_coco_masks["val_ann"],
                                               "segm")
    val = json.loads(Path(tiny_coco_masks["val_ann"]).read_text())
    sizes = {im["id"]: (im["height"], im["width"]) for im in val["images"]}
    assert results and {r["image_id"] for r in results} <= set(sizes)
    for r in results[:20]:
        rle = r["segmentation"]
        assert tuple(rle["size"]) == sizes[r["image_id"]]
        assert mask_utils.decode({**rle, "counts": rle["counts"].encode()}).dtype.name == "uint8"

    image = Path(tiny_coco_masks["val_images"]) / val["images"][0]["file_name"]
    out = tmp_path / "pred"
    o2f("predict", "-", work / "last.pth", image, "--out", out, "--score-thr", "0.0",
        "--set", "test.score_thr=0.0")
    pred = json.loads((out / f"{image.stem}.json").read_text())
    assert pred["detections"] and all("segmentation" in d for d in pred["detections"])
    assert (out / f"{image.stem}.png").is_file()
