import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from o2f.data import CocoDetection, build_transforms, draw_scene, generate_synthetic_coco

SMALL = {"image_size": (96, 128), "num_objects": (6, 12)}


def _iou(a, b):
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(iw, 0) * max(ih, 0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def test_deterministic_files(tmp_path):
    a = generate_synthetic_coco(tmp_path / "a", 3, 2, seed=4, **SMALL)
    b = generate_synthetic_coco(tmp_path / "b", 3, 2, seed=4, **SMALL)
    c = generate_synthetic_coco(tmp_path / "c", 3, 2, seed=5, **SMALL)
    for key in ("train_ann", "val_ann"):
        assert a[key].read_bytes() == b[key].read_bytes()
        assert a[key].read_bytes() != c[key].read_bytes()
    for f in sorted(a["train_images"].iterdir()):
        assert f.read_bytes() == (b["train_images"] / f.name).read_bytes()


def test_annotations_load_and_boxes_lie_in_images(tmp_path):
    paths = generate_synthetic_coco(tmp_path, 4, 2, seed=0, png_fraction=0.0, **SMALL)
    assert paths["train_ann"] == tmp_path / "annotations" / "train.json"
    coco = COCO(str(paths["train_ann"]))
    assert sorted(coco.getCatIds()) == [1, 3, 7, 12]
    assert len(coco.getImgIds()) == 4 and len(COCO(str(paths["val_ann"])).getImgIds()) == 2
    for img in coco.dataset["images"]:
        assert img["file_name"].endswith(".jpg")
        with Image.open(paths["train_images"] / img["file_name"]) as im:
            assert im.size == (img["width"], img["height"]) == (128, 96) and im.mode == "RGB"
        anns = coco.imgToAnns[img["id"]]
        assert len(anns) >= 3
        for ann in anns:
            x, y, w, h = ann["bbox"]
            assert x >= 0 and y >= 0 and x + w <= 128 and y + h <= 96 and w >= 1 and h >= 1
            assert 0 < ann["area"] <= w * h and ann["iscrowd"] == 0


def test_png_option(tmp_path):
    paths = generate_synthetic_coco(tmp_path, 2, 1, png_fraction=1.0, **SMALL)
    files = sorted(p.suffix for p in paths["train_images"].iterdir())
    assert files == [".png", ".png"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools decode vs numpy 2
def test_masks_match_boxes_and_areas(tmp_path):
    paths = generate_synthetic_coco(tmp_path, 2, 0, with_masks=True, **SMALL)
    coco = COCO(str(paths["train_ann"]))
    assert coco.dataset["images"] and not COCO(str(paths["val_ann"])).dataset["images"]
    for ann in coco.dataset["annotations"]:
        m = coco.annToMask(ann)
        ys, xs = np.nonzero(m)
        x, y, w, h = ann["bbox"]
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
        assert m.sum() == ann["area"]


def test_scenes_are_crowded_with_partial_occlusion():
    min_visible = 0.5
    max_ious, sizes = [], []
    for seed in range(6):
        image, objects = draw_scene(np.random.default_rng(seed), (160, 160), min_visible=0.5)
        assert image.shape == (160, 160, 3) and image.dtype == np.uint8
        assert len(objects) >= 8
        boxes = [o.visible_bbox() for o in objects]
        for i, (obj, box) in enumerate(zip(objects, boxes, strict=True)):
            assert obj.mask.sum() >= min_visible * obj.area
            others = [_iou(box, b) for j, b in enumerate(boxes) if j != i]
            max_ious.append(max(others))
            sizes.append(max(box[2:]))
    max_ious = np.array(max_ious)
    assert ((max_ious >= 0.3) & (max_ious <= 0.7)).mean() > 0.2
    assert min(sizes) <= 16 and max(sizes) >= 80


def test_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="size_range"):
        draw_scene(rng, (64, 64), size_range=(10, 100))
    with pytest.raises(ValueError, match="num_classes"):
        draw_scene(rng, (64, 64), num_classes=5)


def test_feeds_the_dataset(tmp_path):
    paths = generate_synthetic_coco(tmp_path, 2, 1, png_fraction=0.5, num_classes=3, **SMALL)
    ds = CocoDetection(
        paths["train_ann"],
        paths["train_images"],
        build_transforms(True, 200, (100, 120)),
        train=True,
    )
    assert ds.cat_ids == [1, 3, 7] and ds.class_names == ["circle", "square", "triangle"]
    image, t = ds[0]
    assert image.dtype == torch.uint8 and 100 <= image.shape[1] <= 120
    assert len(t["boxes"]) > 0 and int(t["labels"].max()) < 3
