"""The dataset summary at the start of training, on a hand-made COCO file."""

import json
import logging

import pytest

from o2f.data import CocoDetection
from o2f.data.summary import log_dataset_summary, summarize_dataset


@pytest.fixture
def two_images(tmp_path):
    """Image 1 is 100 x 200 (w x h), image 2 400 x 400; three usable boxes and a crowd box."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (images / name).write_bytes(b"")  # never read
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 200},
                   {"id": 2, "file_name": "b.jpg", "width": 400, "height": 400}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 8]},  # sqrt 4
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [10, 10, 10, 10]},  # 10
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 16, 64]},  # 32
            {"id": 4, "image_id": 2, "category_id": 1, "bbox": [0, 0, 300, 300], "iscrowd": 1},
        ],
    }
    ann = tmp_path / "train.json"
    ann.write_text(json.dumps(data))
    return CocoDetection(ann, images, train=True)


def test_sizes_after_the_training_resize(two_images):
    # short side 200 (the mean of [100, 300]), long side <= 1000: image 1 is scaled by
    # min(1000 / 200, 200 / 100) = 2, image 2 by min(1000 / 400, 200 / 400) = 0.5, so the
    # objects measure 4 * 2 = 8, 10 * 2 = 20 and 32 * 0.5 = 16 px.
    summary = summarize_dataset(two_images, 1000, [100, 300], 16)
    assert summary["images"] == 2 and summary["objects"] == 3  # the crowd box is no target
    assert summary["objects_per_image"] == {"mean": 1.5, "max": 2}
    assert summary["resize"] == {"max_size": 1000, "short": 200.0}
    # sorted 8, 16, 20; linear interpolation: p5 = 8 + 0.1 * 8, p95 = 16 + 0.9 * 4
    assert summary["object_size"] == pytest.approx({"p5": 8.8, "p50": 16.0, "p95": 19.6})
    assert summary["below_finest_stride"] == pytest.approx(1 / 3, abs=1e-4)  # 8 < 16, not 16


def test_a_warning_when_over_a_fifth_of_the_objects_are_below_the_finest_stride(two_images,
                                                                                caplog):
    log = logging.getLogger("tests.summary")
    with caplog.at_level(logging.INFO, logger="tests.summary"):
        log_dataset_summary(summarize_dataset(two_images, 1000, [100, 300], 16), log)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "33.3% of the training objects" in warnings[0]
    assert "data.train_short" in warnings[0] and "data.max_size" in warnings[0]
    assert any("2 images, 3 objects" in r.getMessage() for r in caplog.records)

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tests.summary"):  # stride 8: none below
        log_dataset_summary(summarize_dataset(two_images, 1000, [100, 300], 8), log)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
