"""``o2f test --plots DIR`` on a small random checkpoint: the pictures and summary.json, and
the printed best-F1 threshold."""

from __future__ import annotations

import json

import torch
from PIL import Image

from o2f.builders import build_detector
from o2f.cli import main
from o2f.config import load_config
from o2f.data import CocoDetection
from o2f.engine.checkpoint import save_checkpoint
from tests.engine.conftest import tiny_overrides


def test_test_command_writes_the_plots(tiny_coco, tmp_path, capsys):
    cfg = load_config("demo", tiny_overrides(tiny_coco, "model.num_classes=4",
                                             "model.backbone.pretrained=false"))
    torch.manual_seed(0)
    model = build_detector(cfg)
    val = CocoDetection(tiny_coco["val_ann"], tiny_coco["val_images"])
    ckpt = tmp_path / "random.pth"
    save_checkpoint({"model": model.state_dict(), "config": cfg.to_dict(),
                     "meta": {"class_names": val.class_names, "cat_ids": val.cat_ids,
                              "num_classes": 4}}, ckpt)
    plots = tmp_path / "plots"
    assert main(["test", "-", str(ckpt), "--plots", str(plots), "--plots-score-thr", "0.05",
                 "test.score_thr=0.01"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((plots / "summary.json").read_text())
    assert f"best F1 {summary['best_f1']:.4f} at score threshold" in out
    assert summary["score_thr"] == 0.05
    for name in ("pr_curves.png", "f1_curve.png", "confusion_matrix.png", "duplicates.png"):
        with Image.open(plots / name) as image:
            assert image.size[0] >= 600, name
    assert set(summary["files"]) >= {"pr_curves.png", "f1_curve.png", "confusion_matrix.png",
                                     "duplicates.png"}
    # a random model misses objects: the worst images are drawn
    assert summary["worst_images"] and (plots / "worst_images.png").is_file()
