"""The data.* keys reach the pipelines the trainer builds (found by planted bugs,
``tests/data/mutants_data.py``), and a second flip undoes the first."""

import json

import pytest
import torch
from PIL import Image

from o2f.config import load_config
from o2f.data.transforms import (
    Compose,
    KeepRatioResize,
    RandomCropBoxes,
    RandomHorizontalFlip,
)
from o2f.engine.train import build_datasets, build_val_dataset


def test_two_flips_leave_the_sample_unflipped():
    image = torch.arange(2 * 3 * 4, dtype=torch.uint8).reshape(1, 2, 12).expand(3, 2, 12)
    target = {"boxes": torch.tensor([[1.0, 0, 4, 2]]), "labels": torch.tensor([0])}
    out, t = Compose([RandomHorizontalFlip(1.0), RandomHorizontalFlip(1.0)])(image, target)
    assert t["flipped"] is False
    torch.testing.assert_close(out, image)
    torch.testing.assert_close(t["boxes"], target["boxes"])


@pytest.fixture
def data_cfg(tmp_path):
    img_dir = tmp_path / "img"
    img_dir.mkdir()
    Image.new("RGB", (40, 30)).save(img_dir / "a.png")
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 9, 9]}],
        "categories": [{"id": 1, "name": "x"}]}))
    keys = [f"data.{s}.ann_file={ann}" for s in ("train", "val")]
    keys += [f"data.{s}.img_dir={img_dir}" for s in ("train", "val")]
    return load_config("small", keys + [
        "data.train_short=[200,260]", "data.test_short=224", "data.max_size=300",
        "data.flip_prob=0.25", "data.crop_prob=0.7", "data.crop_min_scale=0.6",
        "data.color_jitter=0.2"])


def test_every_training_data_key_reaches_the_training_pipeline(data_cfg):
    train_set, val_set = build_datasets(data_cfg, with_val=True)
    crop, resize, flip, jitter = train_set.transforms.transforms
    assert isinstance(crop, RandomCropBoxes) and (crop.p, crop.min_scale) == (0.7, 0.6)
    assert isinstance(resize, KeepRatioResize)
    assert (resize.max_size, resize.short_sizes) == (300, (200, 260))
    assert isinstance(flip, RandomHorizontalFlip) and flip.p == 0.25
    assert jitter.brightness == pytest.approx((0.8, 1.2))
    assert jitter.saturation == pytest.approx((0.8, 1.2))
    assert jitter.hue == pytest.approx((-0.02, 0.02))


def test_validation_pipeline_is_the_test_size_alone(data_cfg):
    for val_set in (build_datasets(data_cfg, with_val=True)[1], build_val_dataset(data_cfg)):
        (resize,) = val_set.transforms.transforms
        assert (resize.max_size, resize.short_sizes) == (300, (224, 224))
        image, target = val_set[0]
        assert image.shape == (3, 224, 299)  # 40 x 30 -> scale 224 / 30: 298.67 + 0.5 -> 299
