"""The held-out dataset families of benchmarks/custom_data.py: determinism, exact boxes, ranges,
loadable by pycocotools and o2f; and (slow) a tiny side-by-side run of all three systems."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from benchmarks.custom_data import FAMILIES, make_family
from o2f.data import CocoDetection


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, dict[str, Path]]:
    root = tmp_path_factory.mktemp("families")
    return {name: make_family(name, root / name, seed=0, num_train=3, num_val=2)
            for name in FAMILIES}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_same_seed_gives_identical_bytes(made, tmp_path, name):
    again = make_family(name, tmp_path / "again", seed=0, num_train=3, num_val=2)
    first, second = _files(made[name]["root"]), _files(again["root"])
    assert len([f for f in first if f.endswith(".jpg")]) == 5
    assert first == second
    other = make_family(name, tmp_path / "other", seed=1, num_train=3, num_val=2)
    assert _files(other["root"])["annotations/train.json"] != first["annotations/train.json"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' decode on numpy 2
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_annotations_are_exact_and_in_range(made, name):
    fam = FAMILIES[name]
    for split in ("train", "val"):
        data = json.loads(made[name][f"{split}_ann"].read_text())
        cat_ids = [c["id"] for c in data["categories"]]
        assert cat_ids == [c for c, _ in fam.categories]
        assert cat_ids != list(range(1, len(cat_ids) + 1))  # non-contiguous, not 1..C
        for img in data["images"]:
            h, w = img["height"], img["width"]
            anns = [a for a in data["annotations"] if a["image_id"] == img["id"]]
            assert fam.num_objects[0] <= len(anns) <= fam.num_objects[1]
            cover = np.zeros((h, w), dtype=np.int32)
            for a in anns:
                x, y, bw, bh = a["bbox"]
                assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h
                assert max(bw, bh) <= fam.max_size(h, w) + 1
                assert a["iscrowd"] == 0 and a["category_id"] in cat_ids
                m = mask_utils.decode({"size": a["segmentation"]["size"],
                                       "counts": a["segmentation"]["counts"].encode()})
                rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
                assert [cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1] \
                    == [x, y, bw, bh]  # the box is the exact visible extent
                assert a["area"] == m.sum()
                cover += m
            assert cover.max() <= 1  # occlusion: visible masks never overlap


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_loads_with_pycocotools_and_o2f(made, name):
    paths = made[name]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(paths["train_ann"]))
    assert len(coco.getImgIds()) == 3
    ds = CocoDetection(paths["train_ann"], paths["train_images"], train=True, strict=True,
                       with_masks=True)
    assert len(ds) == 3 and ds.cat_ids == [c for c, _ in FAMILIES[name].categories]
    image, target = ds[0]
    info = coco.imgs[ds.ids[0]]
    assert tuple(image.shape) == (3, info["height"], info["width"])
    assert target["boxes"].shape[0] == target["masks"].shape[0] > 0


@pytest.mark.slow
def test_run_tiny_side_by_side(tmp_path):
    from benchmarks.custom_data import main

    out = tmp_path / "rows.jsonl"
    main(["run", "--family", "clutter", "--num-train", "4", "--num-val", "2", "--epochs", "1",
          "--config", "demo", "--work-dir", str(tmp_path / "work"),
          "--data-root", str(tmp_path / "data"), "--json-out", str(out), "--threads", "1",
          "--set", "data.max_size=128", "data.train_short=[96,96]", "data.test_short=96"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["system"], r["nms"]) for r in rows} == {
        (s, n) for s in ("o2f", "fcos", "tv_fcos") for n in (False, True)}
    for r in rows:
        assert r["family"] == "clutter"
        for key in ("bbox_mAP", "bbox_mAP_50", "dup_rate"):
            assert math.isfinite(r[key]) and 0 <= r[key] <= 1, (r["system"], key, r[key])
        assert r["train_s"] > 0


@pytest.mark.parametrize("overrides, epochs, decays, cap", [
    ([], 24, [18, 24], 0),  # small: two passes per epoch, decays at 9/12 and 12/12 of the run
    (["data.repeat=1", "train.max_iters_per_epoch=5"], 12, [9, 12], 5),
    (["train.max_iters_per_epoch=5"], 24, [18, 24], 3),  # 5 per two-pass epoch -> 3 per pass
])
def test_torchvision_fcos_gets_the_iterations_of_the_o2f_systems(monkeypatch, tmp_path,
                                                                 overrides, epochs, decays, cap):
    """`small` makes data.repeat passes per epoch; torchvision's loop one: it must run
    repeat x the epochs, its decays at the same fractions of the run, for equal iterations."""
    import argparse

    from benchmarks import custom_data, tv_fcos

    seen = {}

    def fake(paths, **kw):
        seen.update(kw)
        metrics = {"bbox_mAP": 0.0, "bbox_mAP_50": 0.0, "dup_rate": 0.0, "dets_per_img": 0.0}
        return {"nms": metrics, "no_nms": metrics, "train_s": 1.0, "iterations": 0,
                "epochs": kw["epochs"], "num_train": 1, "num_val": 1, "device": "cpu"}

    monkeypatch.setattr(tv_fcos, "train_and_evaluate", fake)
    paths = {k: tmp_path / k for k in ("train_ann", "train_images", "val_ann", "val_images")}
    args = argparse.Namespace(family="clutter", config="small", seed=0, epochs=12,
                              iters_per_epoch=None, set=overrides, tv_num_convs=4)
    rows = custom_data.run_tv_fcos(args, paths)
    assert seen["epochs"] == epochs and [r["epochs"] for r in rows] == [epochs, epochs]
    assert tv_fcos.decay_epochs(seen["step_fractions"], seen["epochs"]) == decays
    assert seen["max_iters_per_epoch"] == cap
    assert (seen["batch_size"], seen["warmup_iters"]) == (8, 200)
