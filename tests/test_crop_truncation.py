"""benchmarks/crop_truncation.py: the shares of boxes at the border, dropped and cut by the crop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.crop_truncation import crop_statistics


def _write(path: Path, boxes: list[list[float]]) -> Path:
    path.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "height": 100, "width": 100}],
        "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b,
                         "area": b[2] * b[3], "iscrowd": 0} for i, b in enumerate(boxes)],
        "categories": [{"id": 1, "name": "x"}]}))
    return path


def test_a_whole_image_window_cuts_nothing_and_the_border_share_is_counted(tmp_path):
    ann = _write(tmp_path / "a.json", [[40, 40, 20, 20], [0, 10, 20, 20]])
    s = crop_statistics(ann, min_scale=1.0, draws=3, seed=0)
    assert s["boxes"] == 2
    assert s["at_border"] == pytest.approx(0.5)  # the second box starts at x = 0
    assert s["dropped"] == 0.0 and s["cut"] == 0.0


def test_an_object_filling_the_image_is_cut_by_almost_every_crop(tmp_path):
    ann = _write(tmp_path / "a.json", [[0, 0, 100, 100]])
    s = crop_statistics(ann, min_scale=0.5, draws=50, seed=0)
    assert s["at_border"] == 1.0
    assert s["dropped"] == 0.0  # a window that would hide 60% of it is redrawn, never kept
    assert s["cut"] > 0.9


def test_boxes_on_the_right_and_bottom_edges_count_as_at_the_border(tmp_path):
    ann = _write(tmp_path / "a.json", [[80, 40, 20, 20], [40, 80, 20, 20], [40, 40, 20, 20]])
    s = crop_statistics(ann, min_scale=1.0, draws=1, seed=0)
    assert s["at_border"] == pytest.approx(2 / 3)
