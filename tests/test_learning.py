"""Training learns: a small detector overfits four synthetic images, for each assigner.

Every other training test runs a few iterations and checks that the losses are finite; these
check the outcome. A rule broken anywhere between the data and the metric (targets, losses,
box decoding, selection, rescaling, evaluation) shows up as a loss that does not fall or an AP
far below what the rules reach.

Observed on a 2-core CPU (one thread, 100 full-batch iterations, ~15 s per assigner), for seeds
0 / 1 / 2 of the data and the weights (the test uses seed 0):

=============  =================  ===========  ===============  ===========================
assigner       box AP             AP50         dup rate         loss, last / first 5 iters
=============  =================  ===========  ===============  ===========================
o2f, no NMS    0.93 0.98 0.84     1 1 0.92     0 0 0            0.06 0.05 0.06
o2o, no NMS    0.88 0.82 0.82     1 0.94 1     0 0 0            0.03 0.08 0.05
fcos, NMS      0.94 0.79 0.97     1 1 1        0 0 0            0.24 0.26 0.24 (centerness
                                                                BCE stays ~0.6)
fcos, no NMS   0.87 0.76 0.83     .92 .92 .87  0.70 0.82 0.81
=============  =================  ===========  ===============  ===========================

The thresholds below leave a wide margin under those values.
"""

from __future__ import annotations

import json

import pytest
import torch

from o2f.builders import build_detector
from o2f.config import load_config
from o2f.data import CocoDetection, build_transforms, collate
from o2f.data.synthetic import generate_synthetic_coco
from o2f.engine.evaluate import coco_evaluate
from o2f.engine.optim import LRSchedule, build_optimizer

SIZE, ITERS, EPOCHS = 96, 100, 3
SMALL = ["model.backbone.depth=10", "model.fpn.channels=32", "model.head.feat_channels=32",
         "model.head.ctr_channels=16", "model.head.gn_groups=8", "optim.lr=0.004",
         "optim.warmup_iters=20", "optim.steps=[]", f"train.epochs={EPOCHS}"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def four_images(tmp_path_factory):
    """Four 96 x 96 synthetic images with 1-3 objects of 19-48 px each (4 classes)."""
    paths = generate_synthetic_coco(tmp_path_factory.mktemp("learn"), 4, 1,
                                    image_size=(SIZE, SIZE), seed=0, num_objects=(1, 3),
                                    size_range=(SIZE // 5, SIZE // 2))
    tf = build_transforms(False, SIZE, (SIZE, SIZE), 0.0)
    train = CocoDetection(paths["train_ann"], paths["train_images"], tf, train=True)
    evaluation = CocoDetection(paths["train_ann"], paths["train_images"], tf, train=False)
    assert len(train) == len(evaluation) == 4
    return train, evaluation


def overfit(assigner: str, train: CocoDetection):
    """Full-batch training of the small model; the epoch (soft-label ceiling of o2f) advances
    every ITERS / EPOCHS iterations, as over a 3-epoch run. Returns the model and the losses."""
    torch.manual_seed(0)
    cfg = load_config("demo", [*SMALL, f"model.assigner={assigner}"])
    model = build_detector(cfg, train.num_classes).train()
    optimizer = build_optimizer(model, cfg.optim, 4)
    schedule = LRSchedule(cfg.optim)
    images, targets = collate([train[i] for i in range(len(train))])
    losses = []
    for it in range(ITERS):
        epoch = EPOCHS * it // ITERS
        model.set_epoch(epoch, EPOCHS)
        schedule.apply(optimizer, it, epoch)
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model.eval(), losses


@pytest.fixture(scope="module")
def trained(four_images):
    """overfit(assigner) once per module: the model and its losses."""
    cache: dict = {}

    def get(assigner: str):
        if assigner not in cache:
            cache[assigner] = overfit(assigner, four_images[0])
        return cache[assigner]

    return get


def evaluate(model, dataset) -> dict:
    metrics, _ = coco_evaluate(model, dataset, torch.device("cpu"), batch_size=4, workers=0)
    return metrics


@pytest.mark.slow
@pytest.mark.parametrize("assigner", ["o2f", "o2o"])
def test_end_to_end_assigners_overfit_without_nms(assigner, four_images, trained):
    _, evaluation = four_images
    model, losses = trained(assigner)
    assert not model.nms  # what is measured is the NMS-free output
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.25 * first, (first, last)
    metrics = evaluate(model, evaluation)
    assert metrics["bbox_mAP"] > 0.6 and metrics["bbox_mAP_50"] > 0.8, metrics
    assert metrics["dup_rate"] < 0.3, metrics  # one detection per object without NMS


@pytest.mark.slow
def test_fcos_overfits_with_nms_and_needs_it(four_images, trained):
    _, evaluation = four_images
    model, losses = trained("fcos")
    assert model.nms  # the baseline's default
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)
    metrics = evaluate(model, evaluation)
    assert metrics["bbox_mAP"] > 0.6 and metrics["bbox_mAP_50"] > 0.8, metrics
    assert metrics["dup_rate"] < 0.3, metrics
    model.nms = False  # one-to-many: without NMS most confident detections are duplicates
    assert evaluate(model, evaluation)["dup_rate"] > 0.5


@pytest.mark.slow
def test_o2f_test_command_reports_the_ap_of_the_overfit_model(four_images, trained, tmp_path):
    """``o2f test`` on a checkpoint of the overfit o2f model: the metrics file holds the AP of
    the in-process evaluation, and pycocotools on the results file gives the same numbers."""
    from o2f.engine.checkpoint import save_checkpoint
    from tests.engine.test_cli_e2e import assert_metrics_are_cocoeval_of_the_results, o2f

    _, evaluation = four_images
    model, _ = trained("o2f")
    cfg = load_config("demo", [*SMALL, "model.assigner=o2f"])
    save_checkpoint({"model": model.state_dict(), "config": cfg.to_dict(),
                     "meta": {"num_classes": evaluation.num_classes,
                              "class_names": list(evaluation.class_names),
                              "cat_ids": [int(c) for c in evaluation.cat_ids]}},
                    tmp_path / "o2f.pth")
    metrics_out, results_out = tmp_path / "m.json", tmp_path / "r.json"
    o2f("test", "-", tmp_path / "o2f.pth", "--metrics-out", metrics_out, "--results-out",
        results_out, f"data.val.ann_file={evaluation.ann_file}",
        f"data.val.img_dir={evaluation.img_dir}", f"data.test_short={SIZE}",
        f"data.max_size={SIZE}", "data.workers=0")
    metrics = json.loads(metrics_out.read_text())
    want = evaluate(model, evaluation)
    assert metrics["bbox_mAP"] > 0.6
    for key in ("bbox_mAP", "bbox_mAP_50", "bbox_mAP_75", "dup_rate"):
        assert metrics[key] == pytest.approx(want[key], abs=1e-6), key
    assert_metrics_are_cocoeval_of_the_results(metrics, json.loads(results_out.read_text()),
                                               evaluation.ann_file)
