"""Train -> checkpoint -> test through the ``o2f`` command, resume, and a 2-process Gloo run."""

import json
import os
import subprocess
import sys

import pytest
import torch

from o2f.data import CocoDetection
from o2f.engine.checkpoint import load_checkpoint
from tests.engine.conftest import tiny_overrides

METRICS = ["bbox_mAP", "bbox_mAP_50", "bbox_mAP_75", "bbox_mAP_s", "bbox_mAP_m", "bbox_mAP_l",
           "dup_rate"]


def o2f(*args, launcher=(sys.executable, "-m", "o2f")):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*launcher, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


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

    metrics_out, results_out = tmp_path / "m.json", tmp_path / "r.json"
    proc = o2f("test", "-", work / "last.pth", "--metrics-out", metrics_out,
               "--results-out", results_out, "test.score_thr=0.0")
    metrics = json.loads(metrics_out.read_text())
    assert set(metrics) == set(METRICS)
    assert all(-1 <= v <= 1 for v in metrics.values())
    results = json.loads(results_out.read_text())
    val = CocoDetection(tiny_coco["val_ann"], tiny_coco["val_images"])
    assert results and {r["category_id"] for r in results} <= {1, 3, 7, 12}
    assert {r["image_id"] for r in results} <= set(val.ids)
    assert "bbox_mAP" in proc.stdout

    # resume: a 2-epoch run continues after the first epoch's checkpoint
    proc = o2f("train", "demo", "--work-dir", work, "--resume",
               *tiny_overrides(tiny_coco, "train.epochs=2", "train.max_iters_per_epoch=2"))
    assert "resumed from" in proc.stderr
    state = load_checkpoint(work / "last.pth")
    assert state["epoch"] == 2 and state["iteration"] == 4
    assert [h["epoch"] for h in state["history"]] == [1, 2]


@pytest.mark.slow
def test_two_process_gloo_training_under_torchrun(tiny_coco, tmp_path):
    work = tmp_path / "ddp"
    launcher = (sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
                "--master-port=29533", "-m", "o2f")
    proc = o2f("train", "demo", "--work-dir", work,
               *tiny_overrides(tiny_coco, "train.epochs=1", "train.max_iters_per_epoch=2"),
               launcher=launcher)
    assert "world size 2, total batch 4" in proc.stderr
    state = load_checkpoint(work / "last.pth")
    assert state["iteration"] == 2
    assert set(json.loads((work / "metrics.json").read_text())) >= set(METRICS)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
