"""`o2f demo`: its picture's operating point (best F1 on the validation images) and the command
end to end on a tiny copy of the embedded dataset."""

from __future__ import annotations

import pytest
import torch
import yaml

import o2f.engine.demo as demo
from o2f.cli import main
from o2f.config import load_config
from o2f.engine.demo import operating_point
from o2f.engine.train import build_val_dataset
from o2f.evaluation.plots import _ground_truth
from tests.engine.conftest import tiny_overrides

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_picture_threshold_is_that_of_the_best_f1_with_its_duplicate_rate(tiny_coco):
    val = build_val_dataset(load_config("demo", tiny_overrides(tiny_coco)))
    detections = {}
    for image_id, gt in _ground_truth(val).items():
        # every object found at 0.905, and its first object found again at 0.4, shifted by one
        # pixel (IoU >= 0.7 with the first: a duplicate, and a false positive)
        dup = gt["boxes"][:1] + 1.0
        detections[image_id] = {
            "boxes": torch.cat([gt["boxes"], dup]),
            "scores": torch.cat([torch.full((len(gt["boxes"]),), 0.905), torch.tensor([0.4])]),
            "labels": torch.cat([gt["labels"], gt["labels"][:1]]),
        }
    point = operating_point(val, detections)
    # F1 is 1 for every threshold in (0.4, 0.905]; the highest on the 0.01 grid is taken
    assert point["score_thr"] == pytest.approx(0.9)
    assert point["f1"] == pytest.approx(1.0)
    assert point["dup_rate"] == 0.0
    assert operating_point(val, None) == {"score_thr": 0.3}


def test_demo_trains_prints_ap_and_duplicate_rate_and_draws(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "DEMO_DATA", {"num_train": 4, "num_val": 2, "image_size": (96, 96),
                                            "seed": 0, "size_range": (16, 60),
                                            "with_masks": True})
    work = tmp_path / "work"
    assert main(["demo", "--work-dir", str(work), "--data-dir", str(tmp_path / "data"),
                 "train.epochs=1", "train.max_iters_per_epoch=2", "data.batch_size=2",
                 "data.workers=0", "data.max_size=96", "data.train_short=[96,96]",
                 "data.test_short=96", "test.score_thr=0.0"]) == 0
    out = capsys.readouterr().out
    assert "bbox_mAP=" in out and "dup_rate=" in out
    assert "duplicate rate" in out and "without NMS" in out
    assert "predictions.png shows detections scoring >=" in out
    for name in ("predictions.png", "last.pth", "loss_curve.png", "metrics.json"):
        assert (work / name).is_file(), name
    # the demo's own recipe on top of the demo config (DEMO_RECIPE)
    model = yaml.safe_load((work / "config.yaml").read_text())["model"]
    assert model["aux"]["enabled"] is True
    assert (model["assign"]["soft_t_start"], model["assign"]["soft_t_end"]) == (0.4, 0.1)
