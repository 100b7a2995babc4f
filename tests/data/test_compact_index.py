"""A box-only training set keeps a compact index (numpy arrays), not the annotation records:
the same targets and image records as a set that keeps them, at a fraction of the memory."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from o2f.data import CocoDetection
from o2f.engine.evaluate import inference_order


@pytest.fixture(scope="module")
def polygons(tmp_path_factory):
    """30 images (some without boxes, one crowd box each) with 40-point polygon masks."""
    root = tmp_path_factory.mktemp("polygons")
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(30):
        w, h = (64, 48) if i % 3 else (48, 64)
        Image.fromarray(np.full((h, w, 3), i, dtype=np.uint8)).save(root / f"{i}.png")
        images.append({"id": 100 - i, "file_name": f"{i}.png", "width": w, "height": h,
                       "coco_url": "http://example.com/" + "x" * 40})
        for k in range(int(rng.integers(0, 5))):
            bw, bh = rng.uniform(4, 30, 2)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            poly = [float(v) for _ in range(40)
                    for v in (x + rng.uniform(0, bw), y + rng.uniform(0, bh))]
            anns.append({"id": len(anns) + 1, "image_id": 100 - i, "iscrowd": int(k == 3),
                         "category_id": int(rng.choice([2, 5])), "area": float(bw * bh),
                         "bbox": [float(x), float(y), float(bw), float(bh)],
                         "segmentation": [poly]})
    cats = [{"id": 2, "name": "a"}, {"id": 5, "name": "b"}]
    ann = root / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return ann, root


def test_compact_training_set_has_the_same_targets(polygons):
    ann, root = polygons
    compact = CocoDetection(ann, root, train=True)
    full = CocoDetection(ann, root, train=True, with_masks=True)
    evaluation = CocoDetection(ann, root, train=False)
    assert compact.ids == full.ids and 0 < len(compact) < len(evaluation)  # boxless skipped
    assert compact.ids == sorted(compact.ids)
    for i, image_id in enumerate(compact.ids):
        image, target = compact[i]
        _, ref = full[i]
        _, ev = evaluation[evaluation.ids.index(image_id)]
        assert target["image_id"] == image_id and int(image[0, 0, 0]) == 100 - image_id
        for key in ("boxes", "labels"):
            assert torch.equal(target[key], ref[key]) and torch.equal(target[key], ev[key])
        record = evaluation.image_info(evaluation.ids.index(image_id))
        assert compact.image_info(i) == {k: record[k] for k in ("id", "file_name", "width",
                                                                 "height")}
    assert np.array_equal(compact.image_sizes(),
                          [[compact.image_info(i)["width"], compact.image_info(i)["height"]]
                           for i in range(len(compact))])
    boxes, items = compact.target_boxes()
    ref_boxes, ref_items = full.target_boxes()
    assert np.array_equal(boxes, ref_boxes) and np.array_equal(items, ref_items)


def test_compact_training_set_keeps_no_records(polygons):
    ann, root = polygons
    compact = CocoDetection(ann, root, train=True)
    full = CocoDetection(ann, root, train=True, with_masks=True)
    with pytest.raises(RuntimeError, match="compact index"):
        _ = compact.annotations
    with pytest.raises(RuntimeError, match="compact index"):
        _ = compact.coco
    assert "coco_url" in full.image_info(0) and "coco_url" not in compact.image_info(0)
    # what a spawned loader worker receives: a fraction of the records' size
    assert len(pickle.dumps(compact)) < 0.25 * len(pickle.dumps(full))
    # evaluation sets keep the records; pycocotools indexes them once, on first use
    evaluation = CocoDetection(ann, root, train=False)
    assert evaluation.annotations["annotations"][0]["segmentation"]
    assert evaluation.coco is evaluation.coco
    assert len(evaluation.coco.anns) == len(evaluation.annotations["annotations"])


def test_inference_order_uses_the_compact_sizes(polygons):
    ann, root = polygons
    compact = CocoDetection(ann, root, train=True)
    order = inference_order(compact)
    ratios = [compact.image_info(i)["height"] / compact.image_info(i)["width"] for i in order]
    assert ratios == sorted(ratios) and sorted(order.tolist()) == list(range(len(compact)))
