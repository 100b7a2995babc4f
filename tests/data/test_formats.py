"""YOLO and Pascal VOC readers: hand-computed boxes, difficult objects, bad records named,
format detection and the convert-data round trip."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from o2f.config import ConfigError, load_config
from o2f.data import CocoDetection, DataError, detect_format, read_dataset
from o2f.data.yolo import label_path
from tests.data.format_samples import make_voc, make_yolo, voc_xml, write_png


def _yolo(root: Path, labels: dict[str, str], size=(64, 32), names="[a, b, c]") -> Path:
    """A YOLO set with one train image per entry of ``labels`` (file stem -> label text)."""
    for stem, text in labels.items():
        write_png(root / "images" / "train" / f"{stem}.png", size)
        if text is not None:
            (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
            (root / "labels" / "train" / f"{stem}.txt").write_text(text)
    (root / "data.yaml").write_text(f"train: images/train\nval: images/train\nnames: {names}\n")
    return root / "data.yaml"


def test_yolo_lines_become_pixel_boxes_and_polygons(tmp_path):
    # a 64 x 32 image: cx 0.5 -> 32 px, w 0.25 -> 16 px, so x = 32 - 8 = 24; cy 0.5 -> 16 px,
    # h 0.5 -> 16 px, so y = 16 - 8 = 8
    yaml_path = _yolo(tmp_path, {
        "a": "1 0.5 0.5 0.25 0.5\n0 0.25 0.25 0.125 0.25\n\n2 0.25 0.25 0.75 0.25 0.75 0.75\n",
        "b": "",  # an empty label file: an image without objects
        "c": None,  # no label file: the same
    })
    data, folder, fmt = read_dataset(yaml_path)
    assert fmt == "yolo" and folder == tmp_path
    assert data["categories"] == [{"id": 0, "name": "a"}, {"id": 1, "name": "b"},
                                  {"id": 2, "name": "c"}]
    assert [(i["file_name"], i["width"], i["height"]) for i in data["images"]] == [
        ("images/train/a.png", 64, 32), ("images/train/b.png", 64, 32),
        ("images/train/c.png", 64, 32)]
    anns = data["annotations"]
    assert [a["image_id"] for a in anns] == [1, 1, 1]
    assert [a["category_id"] for a in anns] == [1, 0, 2]
    assert anns[0]["bbox"] == pytest.approx([24, 8, 16, 16])
    assert anns[0]["area"] == pytest.approx(256)
    assert anns[1]["bbox"] == pytest.approx([12, 4, 8, 8])  # 0.25*64 - 4, 0.25*32 - 4
    # the polygon (16, 8), (48, 8), (48, 24): its extent, its area 32 * 16 / 2, its points
    assert anns[2]["bbox"] == pytest.approx([16, 8, 32, 16])
    assert anns[2]["area"] == pytest.approx(256)
    assert anns[2]["segmentation"] == [pytest.approx([16, 8, 48, 8, 48, 24])]
    assert "segmentation" not in anns[0]


def test_yolo_dataset_reads_train_and_val_splits_with_class_names(tmp_path):
    yaml_path = make_yolo(tmp_path / "set")
    train = CocoDetection(yaml_path, None, train=True)
    val = CocoDetection(yaml_path, "data/val", train=False)  # a stale img_dir is not used
    assert (len(train), len(val)) == (4, 2)
    assert train.class_names == val.class_names == ["cat", "dog", "bird"]
    assert train.cat_ids == [0, 1, 2]
    _, target = val[1]  # im1: boxes (12, 8, 44, 40) of class 1 and (50, 20, 90, 60) of class 2
    torch.testing.assert_close(target["boxes"], torch.tensor([[12.0, 8, 44, 40],
                                                              [50, 20, 90, 60]]), atol=1e-3,
                               rtol=0)
    assert target["labels"].tolist() == [1, 2]


def test_yolo_roboflow_layout_txt_lists_and_label_paths(tmp_path):
    # Roboflow writes train: ../train/images beside the yaml; the labels are train/labels
    root = tmp_path / "rf"
    write_png(root / "train" / "images" / "x.png", (40, 20))
    (root / "train" / "labels").mkdir(parents=True)
    (root / "train" / "labels" / "x.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    write_png(root / "extra" / "images" / "y.png", (40, 20))
    (root / "val.txt").write_text("./extra/images/y.png\n")
    (root / "data.yaml").write_text("train: ../train/images\nval: val.txt\nnc: 1\n"
                                    "names: ['thing']\n")
    train, _, _ = read_dataset(root / "data.yaml", split="train")
    assert train["annotations"][0]["bbox"] == pytest.approx([10, 5, 20, 10])
    val, _, _ = read_dataset(root / "data.yaml", split="val")
    assert [i["file_name"] for i in val["images"]] == ["extra/images/y.png"]
    assert label_path(Path("/d/images/train/images/a.jpg")) == Path(
        "/d/images/train/labels/a.txt")  # the last images/ folder
    assert label_path(Path("/d/flat/a.jpg")) == Path("/d/flat/a.txt")
    with pytest.raises(DataError, match=r"data\.yaml: no 'test' split"):
        read_dataset(root / "data.yaml", split="test")


@pytest.mark.parametrize(("line", "message"), [
    ("0 0.5 0.5 0.2", r"b\.txt:2: expected 'class cx cy w h' .* got 4 value"),
    ("3 0.5 0.5 0.2 0.2", r"b\.txt:2: class 3 is not one of the data\.yaml's class indices "
                          r"\(0\.\.2\)"),
    ("1 0.5 0.5 abc 0.2", r"b\.txt:2: not a number"),
    ("1 32 16 8 8", r"b\.txt:2: coordinates must be normalised to \[0, 1\]"),
    ("1.5 0.5 0.5 0.2 0.2", r"b\.txt:2: class 1\.5 is not"),
])
def test_yolo_bad_label_lines_are_named_by_file_and_line(tmp_path, line, message):
    yaml_path = _yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n", "b": f"0 0.5 0.5 0.2 0.2\n{line}\n"})
    with pytest.raises(DataError, match=message):
        CocoDetection(yaml_path, None, train=True)


def test_yolo_zero_size_boxes_are_dropped_with_their_line_named(tmp_path, caplog):
    yaml_path = _yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0 0.3\n"})
    with caplog.at_level(logging.WARNING):
        data, _, _ = read_dataset(yaml_path)
    assert len(data["annotations"]) == 1
    assert "a.txt:2: a box of width or height 0" in caplog.text
    with pytest.raises(DataError, match=r"a\.txt:2: .*data\.strict=true"):
        read_dataset(yaml_path, strict=True)


def test_yolo_bad_yaml_names_the_key(tmp_path):
    (tmp_path / "data.yaml").write_text("train: images/train\nnames: 3\n")
    with pytest.raises(DataError, match=r"data\.yaml: 'names' must be a list"):
        read_dataset(tmp_path / "data.yaml")
    (tmp_path / "data.yaml").write_text("train: nowhere\nnames: [a]\n")
    with pytest.raises(DataError, match=r"data\.yaml: train: nowhere is not an image folder"):
        read_dataset(tmp_path / "data.yaml")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' decode on numpy 2
def test_yolo_polygons_are_instance_masks(tmp_path):
    # a rectangle polygon (8, 4)-(40, 20) on a 64 x 32 image: 32 x 16 = 512 pixels
    yaml_path = _yolo(tmp_path, {"a": "0 0.125 0.125 0.625 0.125 0.625 0.625 0.125 0.625\n"})
    dataset = CocoDetection(yaml_path, None, train=True, with_masks=True)
    _, target = dataset[0]
    assert target["masks"].shape == (1, 32, 64)
    torch.testing.assert_close(target["boxes"], torch.tensor([[8.0, 4, 40, 20]]))
    mask = target["masks"][0].numpy()
    assert mask[4:20, 8:40].all() and abs(int(mask.sum()) - 512) <= 48 + 16  # edge pixels


def _voc_set(tmp_path: Path) -> tuple[Path, Path]:
    ann, img = tmp_path / "Annotations", tmp_path / "JPEGImages"
    ann.mkdir()
    write_png(img / "000001.jpg", (100, 80))
    write_png(img / "000002.png", (50, 40))
    (ann / "000001.xml").write_text(voc_xml("000001.jpg", (100, 80), [
        ("car", (11, 21, 40, 60), 0),
        ("person", (10.5, 5.5, 30.5, 25.5), 1),  # floats, difficult
        ("car", (1, 1, 100, 80), None),  # the whole image; no <difficult>: 0
    ]))
    # no <size>: read from the image; the filename lacks its extension
    (ann / "000002.xml").write_text(voc_xml("000002", None, [("person", (5, 5, 20, 30), 0)]))
    return ann, img


def test_voc_boxes_difficult_and_missing_size(tmp_path):
    ann, img = _voc_set(tmp_path)
    data, folder, fmt = read_dataset(ann, img)
    assert fmt == "voc" and folder == img
    assert data["categories"] == [{"id": 1, "name": "car"}, {"id": 2, "name": "person"}]
    assert data["images"] == [
        {"id": 1, "file_name": "000001.jpg", "width": 100, "height": 80},
        {"id": 2, "file_name": "000002.png", "width": 50, "height": 40}]
    anns = data["annotations"]
    # 1-based inclusive pixels: xmin 11 .. xmax 40 is x 10, w 30
    assert [a["bbox"] for a in anns] == [[10, 20, 30, 40], [9.5, 4.5, 21, 21], [0, 0, 100, 80],
                                         [4, 4, 16, 26]]
    assert [a["iscrowd"] for a in anns] == [0, 1, 0, 0]
    assert [a["category_id"] for a in anns] == [1, 2, 1, 2]
    train = CocoDetection(ann, img, train=True)
    _, target = train[0]  # the difficult person is not a target
    torch.testing.assert_close(target["boxes"], torch.tensor([[10.0, 20, 40, 60],
                                                              [0, 0, 100, 80]]))
    assert target["labels"].tolist() == [0, 0]


def test_voc_difficult_objects_are_ignored_in_evaluation(tmp_path):
    from o2f.evaluation.coco import evaluate_coco

    ann, img = _voc_set(tmp_path)
    val = CocoDetection(ann, img, train=False)

    def person_ap(results):
        rows = evaluate_coco(val.coco, results)["per_class"]
        return {r["name"]: r["AP"] for r in rows}["person"]

    hit = {"image_id": 2, "category_id": 2, "bbox": [4, 4, 16, 26], "score": 0.8}
    on_difficult = {"image_id": 1, "category_id": 2, "bbox": [9.5, 4.5, 21, 21], "score": 0.9}
    # the difficult person neither needs a detection nor makes one a false positive
    assert person_ap([hit]) == pytest.approx(1.0)
    assert person_ap([hit, on_difficult]) == pytest.approx(1.0)
    val.annotations["annotations"][1]["iscrowd"] = 0  # as a normal target it is missed
    val._coco = None
    assert person_ap([hit]) == pytest.approx(0.5, abs=0.02)


def test_voc_given_categories_leave_out_other_names(tmp_path, caplog):
    ann, img = _voc_set(tmp_path)
    cats = [{"id": 7, "name": "car"}]
    with caplog.at_level(logging.WARNING):
        data, _, _ = read_dataset(ann, img, categories=cats)
    assert data["categories"] == cats
    assert [a["category_id"] for a in data["annotations"]] == [7, 7]
    assert "000001.xml: object[1] (person): not one of the categories" in caplog.text
    with pytest.raises(DataError, match=r"object\(s\) left out.*data\.strict=true"):
        read_dataset(ann, img, categories=cats, strict=True)


@pytest.mark.parametrize(("text", "message"), [
    ("<annotation>\n<filename>a.jpg</filename>\n<object><name>car</name>\n</annotation>\n",
     r"000003\.xml:4: not valid XML"),
    (voc_xml("a.jpg", (10, 10), [("car", (1, 1, 5, 5), 0), ("dog", (1, 1, "", 5), 0)]),
     r"000003\.xml: object\[1\] \(dog\): no <xmax> in its <bndbox>"),
    (voc_xml("a.jpg", (10, 10), [("car", (1, "one", 5, 5), 0)]),
     r"000003\.xml: object\[0\] \(car\): <ymin> is not a number: 'one'"),
    (voc_xml("a.jpg", (10, 10), [("", (1, 1, 5, 5), 0)]), r"000003\.xml: object\[0\]: no <name>"),
    (voc_xml("a.jpg", (10, 10), [("car", (1, 1, 5, 5), "maybe")]),
     r"object\[0\] \(car\): <difficult> must be 0 or 1"),
    ("<doc></doc>", r"000003\.xml: not a Pascal VOC annotation \(root element <doc>"),
])
def test_voc_bad_records_name_the_file_and_object(tmp_path, text, message):
    ann, img = _voc_set(tmp_path)
    (ann / "000003.xml").write_text(text)
    with pytest.raises(DataError, match=message):
        CocoDetection(ann, img, train=True)


def test_voc_image_set_lists_and_image_folder_beside_the_annotations(tmp_path):
    ann, _ = make_voc(tmp_path / "VOC2007", num=4)
    main = tmp_path / "VOC2007" / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / "val.txt").write_text("000001\n000003\n")
    assert detect_format(main / "val.txt") == "voc"
    data, folder, _ = read_dataset(main / "val.txt")  # no img_dir: JPEGImages/ is found
    assert folder == tmp_path / "VOC2007" / "JPEGImages"
    assert [i["file_name"] for i in data["images"]] == ["000001.png", "000003.png"]
    (main / "val.txt").write_text("000001\n000009\n")
    with pytest.raises(DataError, match=r"val\.txt:2: .*000009\.xml does not exist"):
        read_dataset(main / "val.txt")


def test_format_detection_and_the_config_key(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    assert detect_format(tmp_path / "a.json") == "coco"
    assert detect_format(tmp_path / "data.yml") == "yolo"
    assert detect_format(tmp_path / "x.odgt") == "odgt"
    assert detect_format(tmp_path) == "voc"
    assert detect_format(tmp_path / "a.json", "yolo") == "yolo"
    with pytest.raises(DataError, match="cannot tell the annotation format"):
        detect_format(tmp_path / "labels.csv")
    assert load_config("small", ["data.format=voc"]).data.format == "voc"
    with pytest.raises(ConfigError, match="data.format"):
        load_config("small", ["data.format=xml"])


def _label_values(root: Path) -> dict[str, list[np.ndarray]]:
    """The numbers of each line of each label file under ``root/labels``."""
    return {str(p.relative_to(root)): [np.array(line.split(), dtype=float)
                                       for line in p.read_text().splitlines() if line.strip()]
            for p in sorted((root / "labels").rglob("*.txt"))}


def test_convert_data_round_trip_yolo_coco_yolo(tmp_path, capsys):
    from o2f.cli import main

    src = make_yolo(tmp_path / "src")
    (tmp_path / "src" / "labels" / "train" / "im3.txt").write_text(
        "2 0.1 0.1 0.4 0.1 0.4 0.5 0.1 0.5\n0 0.5 0.5 0.25 0.5\n")  # a polygon, then a box
    out_json, out_yolo = tmp_path / "train.json", tmp_path / "back"
    assert main(["convert-data", str(src), "--to", "coco", "--out", str(out_json)]) == 0
    assert "4 images, 8 annotations, 3 categories" in capsys.readouterr().out
    coco = json.loads(out_json.read_text())
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog", "bird"]
    assert coco["annotations"][0]["bbox"] == pytest.approx([8, 8, 32, 32], abs=1e-3)
    assert main(["convert-data", str(out_json), "--to", "yolo", "--out", str(out_yolo),
                 "--img-dir", str(tmp_path / "src")]) == 0
    assert main(["convert-data", str(src), "--split", "val", "--to", "yolo", "--out",
                 str(out_yolo)]) == 0
    before, after = _label_values(tmp_path / "src"), _label_values(out_yolo)
    assert list(before) == list(after) and len(before) == 6
    for name in before:
        assert len(after[name]) == len(before[name]) == 2
        for got, want in zip(after[name], before[name], strict=True):
            np.testing.assert_allclose(got, want, atol=1e-6, err_msg=name)
    assert (out_yolo / "labels" / "train" / "im3.txt").read_text().splitlines()[0] == (
        "2 0.1 0.1 0.4 0.1 0.4 0.5 0.1 0.5")
    again, _, _ = read_dataset(out_yolo / "data.yaml", split="val")
    assert [c["name"] for c in again["categories"]] == ["cat", "dog", "bird"]
    assert (out_yolo / "images" / "train" / "im0.png").is_file()


def test_convert_voc_to_coco_keeps_difficult_as_crowd(tmp_path):
    from o2f.cli import main

    ann, img = _voc_set(tmp_path)
    out = tmp_path / "voc.json"
    assert main(["convert-data", str(ann), "--img-dir", str(img), "--to", "coco", "--out",
                 str(out)]) == 0
    coco = CocoDetection(out, img, train=False)
    assert coco.class_names == ["car", "person"]
    assert [a["iscrowd"] for a in coco.annotations["annotations"]] == [0, 1, 0, 0]
