"""A small Swin-T run through the ``o2f`` command: train a few iterations, then evaluate."""

import json

import pytest

from o2f.engine.checkpoint import load_checkpoint
from tests.engine.conftest import tiny_overrides
from tests.engine.test_cli_e2e import METRICS, assert_metrics_are_cocoeval_of_the_results, o2f


@pytest.mark.slow  # about 30 s on one core: two processes, two 430 MB checkpoints
def test_swin_1x_trains_and_evaluates_through_the_cli(tiny_coco, tmp_path):
    work = tmp_path / "swin"
    proc = o2f("train", "swin_1x", "--work-dir", work, *tiny_overrides(
        tiny_coco, "model.backbone.pretrained=false", "train.epochs=1",
        "train.max_iters_per_epoch=3", "data.max_size=64", "data.train_short=[64,64]",
        "data.test_short=64"))
    state = load_checkpoint(work / "last.pth")
    assert state["epoch"] == 1 and state["iteration"] == 3
    assert state["config"]["model"]["backbone"]["name"] == "swin_t"
    assert state["config"]["optim"]["name"] == "adamw"
    # the recipe's optimiser: AdamW over the trainable tensors only, two groups
    groups = state["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert [tuple(g["betas"]) for g in groups] == [(0.9, 0.999)] * 2
    assert "backbone.features.3.0.attn.relative_position_bias_table" in groups[1]["names"]
    assert "backbone.features.3.0.attn.qkv.weight" in groups[0]["names"]
    assert not any(".features.1." in n for g in groups for n in g["names"])  # frozen stage 1
    model = state["model"]
    assert "backbone.features.7.1.attn.relative_position_bias_table" in model
    assert "backbone.out_norms.2.weight" in model
    assert set(json.loads((work / "metrics.json").read_text())) >= set(METRICS)
    assert "bbox_mAP" in proc.stderr + proc.stdout

    metrics_out, results_out = tmp_path / "m.json", tmp_path / "r.json"
    o2f("test", "-", work / "last.pth", "--metrics-out", metrics_out, "--results-out",
        results_out, "test.score_thr=0.0")
    metrics = json.loads(metrics_out.read_text())
    assert set(metrics) == set(METRICS) and all(0 <= v <= 1 for v in metrics.values())
    results = json.loads(results_out.read_text())
    val = json.loads(open(tiny_coco["val_ann"]).read())
    for image in val["images"]:  # score_thr 0: max_per_img detections on every image
        assert sum(r["image_id"] == image["id"] for r in results) == 100
    assert {r["category_id"] for r in results} <= {c["id"] for c in val["categories"]}
    for r in results:
        x, y, w, h = r["bbox"]
        assert min(x, y, w, h) >= 0 and max(x + w, y + h) <= 128 + 1e-3  # 128 x 128 images
    assert_metrics_are_cocoeval_of_the_results(metrics, results, tiny_coco["val_ann"])
