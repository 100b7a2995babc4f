"""odgt reading/writing and the odgt <-> COCO converters."""

import json

import pytest
import torch
from PIL import Image

from o2f.data.crowdhuman import (
    coco_to_odgt,
    detections_to_odgt,
    odgt_to_coco,
    read_odgt,
    write_odgt,
)
from o2f.evaluation import evaluate_odgt

RECORDS = [
    {
        "ID": "273271,c9db000d5146c15",
        "gtboxes": [
            {
                "tag": "person",
                "fbox": [72, 202, 163, 503],
                "vbox": [72, 202, 163, 398],
                "hbox": [171, 208, 62, 83],
                "extra": {"box_id": 0, "occ": 1},
                "head_attr": {"ignore": 0, "occ": 0},
            },
            {
                "tag": "mask",
                "fbox": [199, 180, 144, 499],
                "vbox": [199, 180, 144, 499],
                "hbox": [0, 0, 0, 0],
                "extra": {"ignore": 1},
            },
            {"tag": "person", "fbox": [10.5, 20, 30, 40], "extra": {"ignore": 1}},
        ],
        "height": 800,
        "width": 600,
    },
    {"ID": "empty", "gtboxes": [], "height": 10, "width": 20},
]


def test_read_write_roundtrip(tmp_path):
    path = tmp_path / "sub" / "a.odgt"
    write_odgt(RECORDS, path)
    assert len(path.read_text().splitlines()) == 2
    assert read_odgt(path) == RECORDS
    path.write_text(path.read_text() + "\n\n")  # trailing blank lines are fine
    assert read_odgt(path) == RECORDS


def test_odgt_to_coco_fields(tmp_path):
    write_odgt(RECORDS, tmp_path / "gt.odgt")
    coco = odgt_to_coco(tmp_path / "gt.odgt", None, tmp_path / "gt.json")
    assert json.loads((tmp_path / "gt.json").read_text()) == coco
    assert coco["categories"] == [{"id": 1, "name": "person", "supercategory": "person"}]
    assert coco["images"][0] == {
        "id": 1,
        "file_name": "273271,c9db000d5146c15.jpg",
        "height": 800,
        "width": 600,
        "odgt_id": "273271,c9db000d5146c15",
    }
    a0, a1, a2 = coco["annotations"]
    assert a0["bbox"] == [72.0, 202.0, 163.0, 503.0] and a0["area"] == 163 * 503
    assert a0["vbox"] == [72, 202, 163, 398] and a0["iscrowd"] == 0 and a0["category_id"] == 1
    assert a1["iscrowd"] == 1  # tag mask
    assert a2["iscrowd"] == 1  # person with extra.ignore = 1
    assert [a["id"] for a in coco["annotations"]] == [1, 2, 3]


def test_roundtrip_odgt_coco_odgt(tmp_path):
    write_odgt(RECORDS, tmp_path / "gt.odgt")
    odgt_to_coco(tmp_path / "gt.odgt", None, tmp_path / "gt.json")
    back = coco_to_odgt(tmp_path / "gt.json", tmp_path / "back.odgt")
    expected = json.loads(json.dumps(RECORDS))
    for record in expected:
        for box in record["gtboxes"]:
            box["fbox"] = [float(v) for v in box["fbox"]]
    assert back == expected
    assert read_odgt(tmp_path / "back.odgt") == expected


def test_coco_to_odgt_defaults_for_plain_coco():
    coco = {
        "images": [{"id": 7, "file_name": "dir/abc.png", "height": 5, "width": 6}],
        "annotations": [
            {
                "id": 1,
                "image_id": 7,
                "category_id": 1,
                "bbox": [1, 2, 3, 4],
                "area": 12,
                "iscrowd": 1,
            }
        ],
        "categories": [{"id": 1, "name": "person"}],
    }
    assert coco_to_odgt(coco) == [
        {
            "ID": "abc",
            "gtboxes": [{"tag": "person", "fbox": [1.0, 2.0, 3.0, 4.0], "extra": {"ignore": 1}}],
            "height": 5,
            "width": 6,
        }
    ]


def test_image_size_from_the_image_file(tmp_path):
    write_odgt([{"ID": "img1", "gtboxes": []}], tmp_path / "gt.odgt")
    Image.new("RGB", (31, 17)).save(tmp_path / "img1.png")
    coco = odgt_to_coco(tmp_path / "gt.odgt", tmp_path)
    assert coco["images"][0]["file_name"] == "img1.png"
    assert (coco["images"][0]["height"], coco["images"][0]["width"]) == (17, 31)
    with pytest.raises(ValueError, match="img1"):
        odgt_to_coco(tmp_path / "gt.odgt", None)


def test_detections_to_odgt_feeds_evaluation():
    gt = [
        {
            "ID": "a",
            "height": 100,
            "width": 100,
            "gtboxes": [{"tag": "person", "fbox": [10, 10, 20, 30]}],
        }
    ]
    dets = [{"boxes": torch.tensor([[10.0, 10.0, 30.0, 40.0]]), "scores": torch.tensor([0.9])}]
    records = detections_to_odgt(dets, ["a"], sizes=[(100, 100)])
    assert records == [
        {
            "ID": "a",
            "dtboxes": [{"box": [10.0, 10.0, 20.0, 30.0], "score": pytest.approx(0.9), "tag": 1}],
            "height": 100,
            "width": 100,
        }
    ]
    assert evaluate_odgt(gt, records)["Recall"] == 1.0
