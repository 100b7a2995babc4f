"""Hand cases for rules of the COCO reader the broader tests leave open (found by planted bugs,
``tests/data/mutants_data.py``): the 1-pixel boundary of a usable box, clipping in y of
portrait images, boxes wholly below an image, which image replaces an unreadable one, EXIF
orientations 5 and 7, and the ``iscrowd`` values allowed."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from o2f.data.coco import CocoDetection, read_image_size
from o2f.data.errors import DataError

CATEGORIES = [{"id": 4, "name": "thing"}]


def _dataset(tmp_path: Path, sizes: list[tuple[int, int]], boxes: list[tuple[int, list]],
             **extra) -> tuple[Path, Path]:
    """Images of ``sizes`` (w, h) with ids 1..N and annotations ``(image_id, xywh)``."""
    img_dir = tmp_path / "img"
    img_dir.mkdir(exist_ok=True)
    images = []
    for i, (w, h) in enumerate(sizes, start=1):
        Image.new("RGB", (w, h), (10 * i, 0, 0)).save(img_dir / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": w, "height": h})
    anns = [{"id": k, "image_id": img, "category_id": 4, "bbox": bbox, **extra}
            for k, (img, bbox) in enumerate(boxes, start=1)]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns,
                               "categories": CATEGORIES}))
    return ann, img_dir


def test_a_box_of_exactly_one_pixel_is_a_target(tmp_path):
    # w >= 1 and h >= 1 are kept; 0.99 is not.
    ann, img_dir = _dataset(tmp_path, [(20, 10)],
                            [(1, [2, 2, 1, 5]), (1, [5, 2, 4, 1]), (1, [9, 2, 0.99, 5])])
    _, t = CocoDetection(ann, img_dir)[0]
    torch.testing.assert_close(t["boxes"], torch.tensor([[2.0, 2, 3, 7], [5, 2, 9, 3]]))


def test_portrait_images_clip_y_to_their_height_not_their_width(tmp_path):
    # A 30 x 60 (w x h) image: y is clipped to [0, 60]. A box from y 40 to 70 keeps
    # y1 = 40 (below the width 30) and ends at the bottom, 60.
    ann, img_dir = _dataset(tmp_path, [(30, 60)], [(1, [5, 40, 10, 30]), (1, [-4, -3, 8, 10])])
    _, t = CocoDetection(ann, img_dir)[0]
    torch.testing.assert_close(t["boxes"], torch.tensor([[5.0, 40, 15, 60], [0, 0, 4, 7]]))


def test_boxes_wholly_below_or_above_the_image_are_dropped(tmp_path):
    ann, img_dir = _dataset(tmp_path, [(40, 30)],
                            [(1, [5, 35, 10, 10]), (1, [5, -20, 10, 10]), (1, [1, 1, 4, 4])])
    ds = CocoDetection(ann, img_dir)
    _, t = ds[0]
    torch.testing.assert_close(t["boxes"], torch.tensor([[1.0, 1, 5, 5]]))
    assert ds.bad_annotations["outside"] == [1, 2]


def test_evaluation_sets_skip_no_image(tmp_path):
    ann, img_dir = _dataset(tmp_path, [(20, 10), (20, 10)], [(1, [2, 2, 4, 4])])
    ds = CocoDetection(ann, img_dir)
    assert ds.ids == [1, 2] and ds.num_skipped == 0
    train = CocoDetection(ann, img_dir, train=True)
    assert train.ids == [1] and train.num_skipped == 1


def test_an_unreadable_training_image_is_replaced_by_the_next_one(tmp_path):
    sizes = [(20, 10), (22, 11), (24, 12)]
    ann, img_dir = _dataset(tmp_path, sizes, [(i, [1, 1, 4, 4]) for i in (1, 2, 3)])
    (img_dir / "2.png").write_bytes(b"truncated")
    train = CocoDetection(ann, img_dir, train=True)
    image, t = train[1]  # image 2: the next, image 3, comes instead (not the previous, 1)
    assert t["image_id"] == 3 and t["replaced_image_id"] == 2 and image.shape == (3, 12, 24)


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_transposing_exif_orientations_and_only_they_swap_width_and_height(tmp_path,
                                                                           orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "r.jpg"
    Image.fromarray(np.zeros((30, 40, 3), dtype=np.uint8)).save(path, exif=exif)
    # stored 40 x 30; orientations 5-8 turn it by 90 degrees: shown 30 x 40
    assert read_image_size(path) == ((30, 40) if orientation >= 5 else (40, 30))


@pytest.mark.parametrize("value", [2, -1, True])
def test_iscrowd_must_be_zero_or_one(tmp_path, value):
    ann, img_dir = _dataset(tmp_path, [(20, 10)], [(1, [2, 2, 4, 4])], iscrowd=value)
    if value is True:  # JSON true reads as Python True == 1: accepted as a crowd box
        assert CocoDetection(ann, img_dir)[0][1]["boxes"].shape == (0, 4)
        return
    with pytest.raises(DataError, match=r"annotations\[0\]\.iscrowd"):
        CocoDetection(ann, img_dir)
