import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from o2f.data.coco import (
    CocoDetection,
    category_ids_from_labels,
    collate,
    load_coco_json,
)
from o2f.data.transforms import build_transforms

# Categories deliberately unsorted and non-contiguous: sorted ids 1, 3, 7 -> labels 0, 1, 2.
CATEGORIES = [{"id": 7, "name": "seven"}, {"id": 1, "name": "one"}, {"id": 3, "name": "three"}]


def _write_images(img_dir: Path) -> list[dict]:
    """Five tiny images of different modes/formats; returns their `images` records."""
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(img_dir / "rgb.jpg")
    Image.new("L", (20, 16), 77).save(img_dir / "gray.png")
    Image.new("RGBA", (24, 12), (10, 20, 30, 0)).save(img_dir / "rgba.png")
    Image.new("CMYK", (18, 14), (0, 255, 255, 0)).save(img_dir / "cmyk.jpg")
    pal = Image.new("P", (10, 10), 1)
    pal.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    pal.info["transparency"] = 0
    pal.save(img_dir / "palette.png")
    return [
        {"id": 1, "file_name": "rgb.jpg", "width": 40, "height": 30},
        {"id": 2, "file_name": "gray.png", "width": 20, "height": 16},
        {"id": 3, "file_name": "rgba.png", "width": 24, "height": 12},
        {"id": 4, "file_name": "cmyk.jpg", "width": 18, "height": 14},
        {"id": 5, "file_name": "palette.png", "width": 10, "height": 10},
    ]


def _ann(ann_id, image_id, cat, bbox, **extra):
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cat,
        "bbox": bbox,
        "area": bbox[2] * bbox[3],
        **extra,
    }


ANNOTATIONS = [
    _ann(1, 1, 7, [5, 5, 10, 8]),  # usable -> label 2
    _ann(2, 1, 3, [0, 0, 20, 20], iscrowd=1),  # crowd
    _ann(3, 1, 1, [1, 1, 0.5, 10]),  # w < 1
    _ann(4, 1, 1, [1, 1, 10, 0.9]),  # h < 1
    _ann(5, 1, 1, [45, 5, 10, 10]),  # right of the 40-wide image
    _ann(6, 1, 1, [-5, 20, 12, 15], iscrowd=0),  # partly outside: clipped to [0, 20, 7, 30]
    _ann(7, 2, 3, [2, 2, 5, 5], iscrowd=1),  # image 2 has only a crowd box
    _ann(8, 3, 3, [1, 2, 3, 4]),
    _ann(9, 4, 1, [0, 0, 18, 14]),
    _ann(10, 1, 3, [30, 0, 10, 10]),  # usable -> label 1
]


def _write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def tiny(tmp_path):
    images = _write_images(tmp_path / "images")
    data = {"images": images, "annotations": ANNOTATIONS, "categories": CATEGORIES}
    return _write_json(tmp_path / "ann.json", data), tmp_path / "images", data


def test_category_mapping(tiny):
    ann, img_dir, _ = tiny
    ds = CocoDetection(ann, img_dir)
    assert ds.cat_ids == [1, 3, 7] and ds.class_names == ["one", "three", "seven"]
    assert ds.num_classes == 3
    cats = category_ids_from_labels(torch.tensor([2, 0, 1, 2]), ds.cat_ids)
    assert cats.tolist() == [7, 1, 3, 7]
    assert ds.coco.loadImgs(1)[0]["file_name"] == "rgb.jpg"


def test_targets_drop_crowd_degenerate_and_outside_boxes(tiny):
    ann, img_dir, _ = tiny
    ds = CocoDetection(ann, img_dir)
    image, t = ds[ds.ids.index(1)]
    expected = torch.tensor([[5.0, 5, 15, 13], [0, 20, 7, 30], [30, 0, 40, 10]])
    torch.testing.assert_close(t["boxes"], expected)
    assert t["boxes"].dtype == torch.float32
    assert t["labels"].tolist() == [2, 0, 1] and t["labels"].dtype == torch.int64
    assert t["image_id"] == 1 and t["orig_size"] == (30, 40) and t["img_size"] == (30, 40)
    assert t["scale_factor"] == (1.0, 1.0) and t["flipped"] is False
    _, t2 = ds[ds.ids.index(2)]
    assert t2["boxes"].shape == (0, 4) and t2["labels"].shape == (0,)


def test_train_skips_images_without_boxes_eval_keeps_all(tiny, caplog):
    ann, img_dir, _ = tiny
    assert CocoDetection(ann, img_dir).ids == [1, 2, 3, 4, 5]
    with caplog.at_level(logging.INFO, logger="o2f.data.coco"):
        train = CocoDetection(ann, img_dir, train=True)
    assert train.ids == [1, 3, 4] and len(train) == 3 and train.num_skipped == 2
    assert "skipped 2 of 5" in caplog.text
    assert [train[i][1]["image_id"] for i in range(len(train))] == [1, 3, 4]


def test_all_image_modes_become_rgb_uint8(tiny):
    ann, img_dir, data = tiny
    ds = CocoDetection(ann, img_dir)
    sizes = {img["id"]: (img["height"], img["width"]) for img in data["images"]}
    for i in range(len(ds)):
        image, t = ds[i]
        assert image.dtype == torch.uint8 and image.shape == (3, *sizes[t["image_id"]])
    gray, _ = ds[ds.ids.index(2)]
    assert (gray == 77).all()
    cmyk, _ = ds[ds.ids.index(4)]
    assert cmyk[0].float().mean() > 200 and cmyk[1].float().mean() < 60  # red


def test_exif_orientation_applied(tmp_path):
    raw = np.zeros((30, 40, 3), dtype=np.uint8)
    raw[:, :20] = (255, 0, 0)  # left half red, right half blue
    raw[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # display = raw rotated 90 degrees clockwise
    (tmp_path / "img").mkdir()
    Image.fromarray(raw).save(tmp_path / "img" / "r.jpg", exif=exif, quality=95)
    data = {
        "images": [{"id": 1, "file_name": "r.jpg", "width": 30, "height": 40}],
        "annotations": [],
        "categories": CATEGORIES,
    }
    image, _ = CocoDetection(_write_json(tmp_path / "a.json", data), tmp_path / "img")[0]
    assert image.shape == (3, 40, 30)
    assert image[0, :15].float().mean() > 200 and image[2, 25:].float().mean() > 200

    data["images"][0].update(width=40, height=30)
    ds = CocoDetection(_write_json(tmp_path / "b.json", data), tmp_path / "img", strict=True)
    with pytest.raises(ValueError, match="r.jpg"):
        ds[0]


def test_strict_missing_and_unreadable_image_errors_name_the_file(tiny, tmp_path):
    _, img_dir, data = tiny
    clean = {**data, "annotations": [a for a in data["annotations"] if a["id"] != 5]}
    ann = _write_json(tmp_path / "clean.json", clean)  # no box outside its image
    ds = CocoDetection(ann, img_dir, strict=True)
    (img_dir / "gray.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"gray\.png.*image id 2"):
        ds[ds.ids.index(2)]
    (img_dir / "rgba.png").write_bytes(b"not an image at all")
    with pytest.raises(OSError, match=r"rgba\.png.*image id 3"):
        ds[ds.ids.index(3)]
    # Checked up front too: a missing file fails at construction, before any work.
    with pytest.raises(FileNotFoundError, match=r"1 of 5 image files.*gray\.png.*image id"):
        CocoDetection(ann, img_dir, strict=True)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_training_replaces_unreadable_images_and_reports_them(tiny, caplog):
    ann, img_dir, _ = tiny
    _truncate(img_dir / "rgb.jpg")  # image 1, a truncated JPEG
    (img_dir / "cmyk.jpg").unlink()  # image 4, missing: left out up front
    with caplog.at_level(logging.WARNING, logger="o2f.data.coco"):
        train = CocoDetection(ann, img_dir, train=True)
    assert "1 of 5 image files" in caplog.text and "cmyk.jpg" in caplog.text
    assert train.missing_ids == [4] and train.ids == [1, 3]
    image, target = train[0]  # image 1 cannot be read: image 3 comes instead
    assert target["image_id"] == 3 and target["replaced_image_id"] == 1
    assert image.shape == (3, 12, 24)
    assert "rgb.jpg (image id 1)" in caplog.text and "using the next image" in caplog.text
    _, ok = train[1]
    assert ok["image_id"] == 3 and "replaced_image_id" not in ok


def test_evaluation_keeps_unreadable_images_as_black_and_flagged(tiny, caplog):
    ann, img_dir, _ = tiny
    _truncate(img_dir / "rgb.jpg")
    (img_dir / "cmyk.jpg").unlink()
    with caplog.at_level(logging.WARNING, logger="o2f.data.coco"):
        ds = CocoDetection(ann, img_dir)
    assert ds.ids == [1, 2, 3, 4, 5]  # nothing dropped
    assert "evaluated as images with no detections" in caplog.text
    for image_id, size in ((1, (30, 40)), (4, (14, 18))):
        image, target = ds[ds.ids.index(image_id)]
        assert target["unreadable"] is True and target["image_id"] == image_id
        assert image.shape == (3, *size) and int(image.max()) == 0
    assert "unreadable" not in ds[ds.ids.index(2)][1]


def test_bad_boxes_are_counted_or_strict_errors(tiny, tmp_path, caplog):
    _, img_dir, data = tiny
    data = json.loads(json.dumps(data))
    data["annotations"].append(_ann(11, 1, 1, [3, 3, -4, 5]))  # negative width
    data["annotations"].append(_ann(12, 1, 1, [3, 3, 5, 0], iscrowd=1))  # crowd: not bad data
    bad = _write_json(tmp_path / "boxes.json", data)
    with caplog.at_level(logging.WARNING, logger="o2f.data.coco"):
        ds = CocoDetection(bad, img_dir, train=True)
    # Annotation 5 lies right of the image; 3 and 4 are recipe filters (w or h < 1), not bad.
    assert ds.bad_annotations == {"non_positive": [11], "outside": [5]}
    assert "annotation id(s) 11" in caplog.text and "annotation id(s) 5" in caplog.text
    with pytest.raises(ValueError, match=r"boxes\.json: 1 non-crowd box.*<= 0.*id\(s\) 11"):
        CocoDetection(bad, img_dir, strict=True)


def test_empty_dataset_is_an_error(tiny, tmp_path):
    _, img_dir, data = tiny
    empty = _write_json(tmp_path / "empty.json", {**data, "images": [], "annotations": []})
    with pytest.raises(ValueError, match=r"empty\.json: no images \(0 images"):
        CocoDetection(empty, img_dir)
    no_boxes = _write_json(tmp_path / "nobox.json", {**data, "annotations": []})
    with pytest.raises(ValueError, match=r"nobox\.json: no images with usable boxes"):
        CocoDetection(no_boxes, img_dir, train=True)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.pop("images"), "images: missing required field"),
        (lambda d: d["annotations"][0].pop("bbox"), r"annotations\[0\].*'bbox'"),
        (lambda d: d["images"][1].pop("file_name"), r"images\[1\].*'file_name'"),
        (lambda d: d["categories"][0].pop("name"), r"categories\[0\].*'name'"),
        (lambda d: d["annotations"][2].update(bbox=[1, 2, 3]), r"annotations\[2\]\.bbox"),
        (lambda d: d["annotations"][0].update(category_id=99), "unknown category id 99"),
        (lambda d: d["annotations"][0].update(image_id=42), "unknown image id 42"),
        (lambda d: d["images"][0].update(width=0), r"images\[0\]\.width"),
        (lambda d: d["annotations"][1].update(id=1), "duplicate id 1"),
        (lambda d: d.update(annotations={}), "annotations: must be a list"),
    ],
)
def test_malformed_annotations_raise_clear_errors(tiny, tmp_path, mutate, match):
    _, img_dir, data = tiny
    data = json.loads(json.dumps(data))
    mutate(data)
    bad = _write_json(tmp_path / "bad.json", data)
    with pytest.raises(ValueError, match=match) as err:
        CocoDetection(bad, img_dir)
    assert "bad.json" in str(err.value)


def test_invalid_json_and_missing_file(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(ValueError, match="broken.json.*not valid JSON"):
        load_coco_json(broken)
    with pytest.raises(ValueError, match="top level"):
        load_coco_json(_write_json(tmp_path / "list.json", []))
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_coco_json(tmp_path / "nope.json")


def test_annotations_field_is_optional(tiny, tmp_path):
    _, img_dir, data = tiny
    data = {k: v for k, v in data.items() if k != "annotations"}
    ds = CocoDetection(_write_json(tmp_path / "test.json", data), img_dir)
    assert len(ds) == 5 and ds[0][1]["boxes"].shape == (0, 4)
    with pytest.raises(ValueError, match="no images with usable boxes"):  # nothing to train on
        CocoDetection(tmp_path / "test.json", img_dir, train=True)


def test_transforms_and_collate(tiny):
    ann, img_dir, _ = tiny
    tf = build_transforms(False, max_size=80, short_sizes=(60, 60))
    ds = CocoDetection(ann, img_dir, transforms=tf, train=True)
    image, t = ds[0]  # image 1, 40x30 -> scale min(80 / 40, 60 / 30) = 2
    assert image.shape == (3, 60, 80) and t["img_size"] == (60, 80)
    assert t["orig_size"] == (30, 40) and t["scale_factor"] == (2.0, 2.0)
    torch.testing.assert_close(t["boxes"][0], torch.tensor([10.0, 10, 30, 26]))

    images, targets = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate)))
    assert isinstance(images, list) and isinstance(targets, list)
    assert [tuple(im.shape) for im in images] == [(3, 60, 80), (3, 40, 80), (3, 60, 77)]
    assert [t["image_id"] for t in targets] == [1, 3, 4]
