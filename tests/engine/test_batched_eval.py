"""Validation and ``o2f test`` in batches, in a chosen precision, scored by either evaluator.

A batch is padded to its largest image and the head's GroupNorm sees the padding, so the
images are taken by aspect ratio: a batch holds like-shaped images and gives what batch 1
gives. The images here alternate landscape / portrait, so taken in file order every batch of
2 would mix them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from o2f.builders import build_detector
from o2f.config import ConfigError, load_config
from o2f.data import CocoDetection, build_transforms
from o2f.engine.evaluate import coco_evaluate, headline_keys, inference_order, run_inference
from o2f.postprocess import rescale_boxes

CPU = torch.device("cpu")
LANDSCAPE, PORTRAIT = (128, 96), (96, 128)  # (width, height)
SMALL = ["model.backbone.depth=10", "model.fpn.channels=32", "model.head.feat_channels=32",
         "model.head.ctr_channels=16", "model.head.gn_groups=8", "test.score_thr=0.3",
         "test.nms_pre=100000", "test.max_per_img=100000"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """8 images alternating landscape / portrait with 2-4 boxes each (2 classes)."""
    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(8):
        w, h = LANDSCAPE if i % 2 == 0 else PORTRAIT
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": w, "height": h})
        for _ in range(int(rng.integers(2, 5))):
            bw, bh = rng.uniform(12, 60, 2)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "iscrowd": 0,
                         "category_id": int(rng.choice([3, 7])), "area": float(bw * bh),
                         "bbox": [float(x), float(y), float(bw), float(bh)]})
    cats = [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}]
    ann = root / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return CocoDetection(ann, root, build_transforms(False, 128, (96, 96), 0.0))


@pytest.fixture(scope="module")
def detector(mixed):
    """The small detector with its head drawn wider than its init and no low prior, so that
    scores spread."""
    torch.manual_seed(0)
    model = build_detector(load_config("demo", SMALL), mixed.num_classes).eval()
    with torch.no_grad():
        for m in model.head.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0, 0.1)
        model.head.conv_cls.bias.zero_()  # from the 0.01 prior to 0.5
    return model


def sorted_dets(det: dict) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.argsort(det["scores"], descending=True)
    return det["boxes"][order], det["scores"][order]


def assert_same(a: dict[int, dict], b: dict[int, dict]) -> None:
    assert a.keys() == b.keys()
    for image_id in a:
        (ba, sa), (bb, sb) = sorted_dets(a[image_id]), sorted_dets(b[image_id])
        assert len(sa) == len(sb), image_id
        torch.testing.assert_close(sa, sb, atol=1e-4, rtol=0)
        torch.testing.assert_close(ba, bb, atol=1e-2, rtol=0)


def test_inference_order_groups_orientation(mixed):
    order = inference_order(mixed)
    assert sorted(order.tolist()) == list(range(len(mixed)))
    landscape = [mixed.image_info(i)["width"] > mixed.image_info(i)["height"] for i in order]
    assert landscape == [True] * 4 + [False] * 4  # h / w ascending: landscape first
    for world in (1, 2, 3):  # each rank's consecutive pairs are like-shaped where possible
        for rank in range(world):
            shard = [landscape[i] for i in range(rank, len(order), world)]
            assert sum(a != b for a, b in zip(shard, shard[1:])) <= 1


def test_batches_give_the_detections_of_batch_one(mixed, detector):
    one = run_inference(detector, mixed, CPU, batch_size=1, workers=0)
    assert sum(len(d["scores"]) for d in one.values()) > 20  # something to compare
    for batch in (2, 4):
        assert_same(run_inference(detector, mixed, CPU, batch_size=batch, workers=0), one)
    # What the order avoids: a portrait image padded into a landscape batch is detected
    # differently (GroupNorm over the padding), so mixing orientations would fail the above.
    land, portrait = mixed[0], mixed[1]
    alone = detector([portrait[0]], [portrait[1]])[0]
    padded = detector([land[0], portrait[0]], [land[1], portrait[1]])[1]
    assert (len(alone["scores"]) != len(padded["scores"])
            or not torch.allclose(sorted_dets(alone)[1], sorted_dets(padded)[1], atol=1e-4))


def test_bf16_inference_selects_in_fp32(mixed, detector):
    fp32 = run_inference(detector, mixed, CPU, batch_size=2, workers=0)
    bf16 = run_inference(detector, mixed, CPU, batch_size=2, workers=0, precision="bf16")
    for image_id, det in bf16.items():
        assert det["boxes"].dtype == det["scores"].dtype == torch.float32
        # the same objects, up to bf16 rounding of the network: the top detection agrees
        top, ref = sorted_dets(det), sorted_dets(fp32[image_id])
        assert abs(top[1][0] - ref[1][0]) < 0.05
    with pytest.raises(ConfigError, match="test.precision=fp16 needs CUDA"):
        run_inference(detector, mixed, CPU, workers=0, precision="fp16")


class NoisyOracle(nn.Module):
    """Each image's ground truth, jittered, some boxes twice, some missed, plus a false
    positive: the same for an image whatever its batch (seeded by the image id)."""

    def forward(self, images, targets):
        out = []
        for tgt in targets:
            g = torch.Generator().manual_seed(int(tgt["image_id"]))
            boxes = rescale_boxes(tgt["boxes"], tgt["scale_factor"])
            labels = tgt["labels"]
            keep = torch.rand(len(boxes), generator=g) > 0.2
            boxes, labels = boxes[keep], labels[keep]
            twice = torch.rand(len(boxes), generator=g) < 0.3
            boxes = torch.cat([boxes, boxes[twice], torch.tensor([[5.0, 5.0, 40.0, 40.0]])])
            labels = torch.cat([labels, labels[twice], torch.tensor([0])])
            boxes = boxes + torch.randn(boxes.shape, generator=g) * 2
            scores = torch.rand(len(boxes), generator=g) * 0.7 + 0.3
            out.append({"boxes": boxes, "scores": scores, "labels": labels})
        return out


def test_both_evaluators_give_the_same_metrics(mixed):
    runs = {e: coco_evaluate(NoisyOracle(), mixed, CPU, batch_size=3, workers=0, evaluator=e)
            for e in ("faster_coco_eval", "pycocotools")}
    fast, ref = runs["faster_coco_eval"][0], runs["pycocotools"][0]
    assert 0.2 < ref["bbox_mAP"] < 0.95 and ref["dup_rate"] > 0
    assert headline_keys(fast) == headline_keys(ref)
    for key in headline_keys(ref):
        assert fast[key] == pytest.approx(ref[key], abs=1e-4, nan_ok=True), key
    assert [r["category_id"] for r in fast["per_class"]] == [3, 7]
    for a, b in zip(fast["per_class"], ref["per_class"], strict=True):
        assert a["AP"] == pytest.approx(b["AP"], abs=1e-4)
    assert runs["faster_coco_eval"][1] == runs["pycocotools"][1]  # the same results records


def test_config_keys():
    cfg = load_config("demo")
    assert (cfg.test.evaluator, cfg.test.precision) == ("faster_coco_eval", "fp32")
    assert load_config("demo", ["test.evaluator=pycocotools"]).test.evaluator == "pycocotools"
    with pytest.raises(ConfigError, match="test.evaluator"):
        load_config("demo", ["test.evaluator=lvis"])
    with pytest.raises(ConfigError, match="test.precision"):
        load_config("demo", ["test.precision=int8"])
