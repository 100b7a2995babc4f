"""Train and test the ``crowdhuman`` config through the CLI on a CrowdHuman-format dataset."""

import json

import pytest

from o2f.data.crowdhuman import coco_to_odgt, read_odgt, write_odgt
from tests.engine.conftest import tiny_overrides
from tests.engine.test_cli_e2e import o2f


def to_odgt(coco_json, out, ignore_every=4):
    """The synthetic set as CrowdHuman records: every object a person, every 4th an ignore."""
    records = coco_to_odgt(coco_json)
    for rec in records:
        for i, box in enumerate(rec["gtboxes"]):
            box["tag"] = "person"
            box["extra"] = {"ignore": int(i % ignore_every == ignore_every - 1)}
    write_odgt(records, out)
    return out


@pytest.mark.slow
def test_crowdhuman_train_and_test(tiny_coco, tmp_path):
    train_odgt = to_odgt(tiny_coco["train_ann"], tmp_path / "annotation_train.odgt")
    val_odgt = to_odgt(tiny_coco["val_ann"], tmp_path / "annotation_val.odgt")
    overrides = tiny_overrides(
        tiny_coco, "model.backbone.pretrained=false", "model.backbone.frozen_stages=-1",
        "model.backbone.norm_eval=false", "model.fpn.channels=32", "model.head.feat_channels=32",
        "model.head.num_convs=1", "model.head.ctr_channels=32", "model.head.num_ctr_convs=1",
        "model.head.gn_groups=16",
        "train.epochs=1", "train.max_iters_per_epoch=2", "train.val_interval=0",
        f"data.train.ann_file={train_odgt}", f"data.val.ann_file={val_odgt}",
    )
    work = tmp_path / "run"
    o2f("train", "crowdhuman", "--work-dir", work, *overrides)
    metrics_out, dets_out = tmp_path / "m.json", tmp_path / "dets.odgt"
    proc = o2f("test", "-", work / "last.pth", "--metrics-out", metrics_out,
               "--results-out", dets_out, "test.score_thr=0.0")
    metrics = json.loads(metrics_out.read_text())
    assert set(metrics) == {"AP", "mMR", "Recall", "JI"}
    assert all(0 <= metrics[k] <= 1 for k in ("AP", "Recall", "JI"))
    assert "mMR=" in proc.stdout
    dets = read_odgt(dets_out)
    assert {d["ID"] for d in dets} == {r["ID"] for r in read_odgt(val_odgt)}
    assert all(len(d["dtboxes"]) <= 500 for d in dets)
