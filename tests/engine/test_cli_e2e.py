"""Train -> checkpoint -> test through the ``o2f`` command, resume, and a 2-process Gloo run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from o2f.data import CocoDetection
from o2f.engine.checkpoint import load_checkpoint
from tests.conftest import free_port
from tests.engine.conftest import tiny_overrides

METRICS = ["bbox_mAP", "bbox_mAP_50", "bbox_mAP_75", "bbox_mAP_s", "bbox_mAP_m", "bbox_mAP_l",
           "dup_rate"]


def o2f(*args, launcher=(sys.executable, "-m", "o2f")):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*launcher, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_train_test_and_resume_through_the_cli(tiny_coco, tmp_path):
    work = tmp_path / "run"
    o2f("train", "demo", "--work-dir", work,
        *tiny_overrides(tiny_coco, "train.epochs=1", "train.max_iters_per_epoch=2"))
    for name in ("last.pth", "epoch_1.pth", "metrics.json", "loss_curve.png", "train.log",
                 "config.yaml"):
        assert (work / name).is_file(), name
    assert any((work / "tensorboard").iterdir())
    state = load_checkpoint(work / "last.pth")
    assert state["epoch"] == 1 and state["iteration"] == 2
    assert state["meta"]["cat_ids"] == [1, 3, 7, 12]

    # tested at 96 px (trained at 128): the boxes must come back in original pixels
    metrics_out, results_out = tmp_path / "m.json", tmp_path / "r.json"
    proc = o2f("test", "-", work / "last.pth", "--metrics-out", metrics_out,
               "--results-out", results_out, "test.score_thr=0.0", "data.test_short=96",
               "data.max_size=96")
    metrics = json.loads(metrics_out.read_text())
    assert set(metrics) == set(METRICS)
    assert all(0 <= v <= 1 for v in metrics.values())
    results = json.loads(results_out.read_text())
    val = CocoDetection(tiny_coco["val_ann"], tiny_coco["val_images"])
    assert {r["image_id"] for r in results} == set(val.ids)
    assert "bbox_mAP" in proc.stdout
    assert_results_are_the_models(work / "last.pth", results, tiny_coco, size=96)
    assert_metrics_are_cocoeval_of_the_results(metrics, results, tiny_coco["val_ann"])

    # resume: a 2-epoch run continues after the first epoch's checkpoint
    proc = o2f("train", "demo", "--work-dir", work, "--resume",
               *tiny_overrides(tiny_coco, "train.epochs=2", "train.max_iters_per_epoch=2"))
    assert "resumed from" in proc.stderr
    state = load_checkpoint(work / "last.pth")
    assert state["epoch"] == 2 and state["iteration"] == 4
    assert [h["epoch"] for h in state["history"]] == [1, 2]


def assert_results_are_the_models(checkpoint, results, paths, size):
    """Each image's COCO results are the checkpoint's detections on the image resized by hand
    to ``size`` (square images), scaled back to original pixels as x, y, w, h, with the
    dataset's category ids (not the contiguous labels)."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as F

    from o2f.builders import detector_from_checkpoint

    model, _, meta = detector_from_checkpoint(checkpoint, overrides=["test.score_thr=0.0"])
    coco = json.loads(open(paths["val_ann"]).read())
    for info in coco["images"]:
        image = Image.open(f"{paths['val_images']}/{info['file_name']}").convert("RGB")
        array = torch.from_numpy(np.array(image)).permute(2, 0, 1)
        scale = size / info["width"]
        with torch.no_grad():
            det = model([F.resize(array, [size, size], antialias=True)])[0]
        xyxy = det["boxes"] / scale
        want = torch.cat((xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]), 1)
        got = [r for r in results if r["image_id"] == info["id"]]
        assert len(got) == len(det["scores"]) == 100
        got_scores = torch.tensor([r["score"] for r in got])
        torch.testing.assert_close(got_scores, det["scores"], atol=1e-4, rtol=0)
        for r in got:  # the same detection (ties in score may come in either order)
            close = (det["scores"] - r["score"]).abs() <= 1e-4
            same_box = (want - torch.tensor(r["bbox"])).abs().max(1).values <= 1e-2
            cats = torch.tensor([meta["cat_ids"][i] for i in det["labels"].tolist()])
            assert (close & same_box & (cats == r["category_id"])).any(), r


def assert_metrics_are_cocoeval_of_the_results(metrics, results, ann_file, iou_type="bbox"):
    """bbox_mAP ... (segm_mAP ... with ``iou_type="segm"``) as pycocotools computes them from
    the results file (for masks from the RLEs alone, boxes dropped, as o2f.evaluation.coco
    documents)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        if iou_type == "segm":
            results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
        evaluator = COCOeval(gt, gt.loadRes(results), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    keys = [f"{iou_type}_{k.split('_', 1)[1]}" for k in METRICS[:6]]
    for key, value in zip(keys, evaluator.stats[:6], strict=True):
        assert metrics[key] == pytest.approx(max(float(value), 0.0), abs=1e-9), key


@pytest.mark.slow
def test_two_process_gloo_training_under_torchrun(tiny_coco, tmp_path):
    work = tmp_path / "ddp"
    launcher = (sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
                f"--master-port={free_port()}", "-m", "o2f")
    proc = o2f("train", "demo", "--work-dir", work,
               *tiny_overrides(tiny_coco, "train.epochs=1", "train.max_iters_per_epoch=2"),
               launcher=launcher)
    assert "world size 2, total batch 4" in proc.stderr
    state = load_checkpoint(work / "last.pth")
    assert state["iteration"] == 2
    assert set(json.loads((work / "metrics.json").read_text())) >= set(METRICS)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
