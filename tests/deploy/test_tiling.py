"""Sliced inference (``Detector.predict(tile=...)``, ``o2f predict --tile``): the tile grid, core
ownership on hand-computed cases, and a composed large image whose objects straddle tile
borders, run through a model whose output we control (it finds coloured squares)."""

from __future__ import annotations

import colorsys
import json

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops import box_iou

from o2f.config import load_config
from o2f.deploy.predict import Detector
from o2f.deploy.tiling import in_core, merge_tiles, tile_grid, tile_starts
from tests.deploy.conftest import blob_picture, deploy_main


# -- the grid and core ownership, by hand --------------------------------------------------------
def test_tile_starts_end_at_the_border():
    assert tile_starts(1000, 400, 100) == [0, 300, 600]
    assert tile_starts(1200, 400, 100) == [0, 300, 600, 800]  # the last moved back from 900
    assert tile_starts(400, 400, 100) == [0]
    assert tile_starts(300, 400, 100) == [0]  # shorter than a tile: one tile
    assert tile_starts(10, 4, 0) == [0, 4, 6]


def test_grid_and_cores_by_hand():
    # width 1200, height 900, tile 400, overlap 0.25 -> 100 px shared
    tiles, cores = tile_grid(900, 1200, 400, 0.25)
    assert tiles.shape == (12, 4)
    assert tiles[:4].tolist() == [[0, 0, 400, 400], [300, 0, 700, 400], [600, 0, 1000, 400],
                                  [800, 0, 1200, 400]]
    assert tiles[4:, 1].unique().tolist() == [300, 500]
    # x cores cut at the middle of each overlap: 350, 650, (800 + 1000) / 2 = 900
    assert cores[:4].tolist() == [[0, 0, 350, 350], [350, 0, 650, 350], [650, 0, 900, 350],
                                  [900, 0, 1200, 350]]
    # y cuts at 350 and (500 + 700) / 2 = 600; the far border keeps its full extent
    assert cores[::4, 1].tolist() == [0, 350, 600] and cores[::4, 3].tolist() == [350, 600, 900]


def test_a_tile_larger_than_the_image_is_the_image():
    tiles, cores = tile_grid(300, 500, 640, 0.2)
    assert tiles.tolist() == [[0, 0, 500, 300]] and cores.tolist() == [[0, 0, 500, 300]]


def owners(cx: float, cy: float, cores: torch.Tensor, h: int, w: int) -> list[int]:
    box = torch.tensor([[cx - 5, cy - 5, cx + 5, cy + 5]])
    return [i for i, core in enumerate(cores) if in_core(box, core, h, w).item()]


def test_a_centre_on_a_core_boundary_goes_to_exactly_one_tile():
    tiles, cores = tile_grid(900, 1200, 400, 0.25)
    assert owners(350, 100, cores, 900, 1200) == [1]  # on the cut between tiles 0 and 1
    assert owners(349.99, 100, cores, 900, 1200) == [0]
    assert owners(350, 350, cores, 900, 1200) == [5]  # a corner of four cores
    assert owners(1200, 900, cores, 900, 1200) == [11]  # the image's far corner
    assert owners(0, 0, cores, 900, 1200) == [0]
    # every point of a fine lattice (all cuts on it) has exactly one owner
    xs, ys = torch.meshgrid(torch.arange(0, 1201, 25.0), torch.arange(0, 901, 25.0),
                            indexing="ij")
    centres = torch.stack([xs.flatten(), ys.flatten()], 1)
    boxes = torch.cat([centres - 5, centres + 5], 1)
    counts = torch.stack([in_core(boxes, core, 900, 1200) for core in cores]).sum(0)
    assert counts.tolist() == [1] * len(boxes)


def test_merge_shifts_boxes_and_keeps_the_owner_only():
    tiles, cores = tile_grid(100, 200, 120, 0.5)  # x starts 0, 60, 80
    assert tiles[:, 0].tolist() == [0, 60, 80]
    # cuts at (60 + 120) / 2 = 90 and (80 + 180) / 2 = 130
    assert cores[:, 0].tolist() == [0, 90, 130] and cores[:, 2].tolist() == [90, 130, 200]
    one = {"boxes": torch.tensor([[20.0, 10, 40, 30]]),  # centre x 30 in tile pixels
           "scores": torch.tensor([0.5]), "labels": torch.tensor([1])}
    two = {"boxes": torch.tensor([[20.0, 10, 40, 30], [40, 10, 60, 30]]),  # centres 30, 50
           "scores": torch.tensor([0.5, 0.6]), "labels": torch.tensor([1, 2])}
    out = merge_tiles([one, one, two], tiles, cores, 100, 200)
    # image centres: 30 (tile 0's core), 90 (tile 1's: on its cut), from tile 2: 110 (tile
    # 1's core: dropped) and 130 (tile 2's: on its cut); highest score first
    assert out["boxes"].tolist() == [[120, 10, 140, 30], [20, 10, 40, 30], [80, 10, 100, 30]]
    assert out["labels"].tolist() == [2, 1, 1]
    empty = {k: v[:0] for k, v in one.items()}
    assert len(merge_tiles([empty, one, empty], tiles, cores, 100, 200)["boxes"]) == 1


def test_bad_tile_arguments_are_refused():
    with pytest.raises(ValueError, match="overlap"):
        tile_grid(100, 100, 50, 1.0)
    with pytest.raises(ValueError, match="tile"):
        tile_grid(100, 100, 0, 0.2)


# -- a large composed image through a model whose output we control -------------------------------
def palette(n: int) -> list[tuple[int, int, int]]:
    """n saturated colours, hues evenly spread."""
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / n, 1.0, 1.0)) for i in range(n)]


class SquareFinder(nn.Module):
    """A 'detector' that reports, for each palette colour present in an input image, the box of
    its pixels (scaled back by the target's ``scale_factor``): label = the colour's index."""

    def __init__(self, colors: list[tuple[int, int, int]]) -> None:
        super().__init__()
        self.colors = torch.tensor(colors, dtype=torch.float32)
        self.head = nn.Module()
        self.head.num_classes = len(colors)
        self.calls: list[int] = []  # batch sizes seen

    def forward(self, images, targets):
        self.calls.append(len(images))
        out = []
        for img, tgt in zip(images, targets, strict=True):
            img = img.float()
            boxes, labels = [], []
            for k, c in enumerate(self.colors):
                hit = ((img - c[:, None, None]).abs().amax(0) < 24).nonzero()
                if len(hit) < 4:
                    continue
                (y0, x0), (y1, x1) = hit.amin(0).tolist(), (hit.amax(0) + 1).tolist()
                sx, sy = tgt["scale_factor"]
                boxes.append([x0 / sx, y0 / sy, x1 / sx, y1 / sy])
                labels.append(k)
            out.append({"boxes": torch.tensor(boxes).reshape(-1, 4),
                        "scores": 0.9 - 0.01 * torch.tensor(labels, dtype=torch.float32),
                        "labels": torch.tensor(labels, dtype=torch.int64)})
        return out


# centres on and around the cuts (x 350, 650, 900; y 350, 600) and across tile edges (x 300,
# 400, 700, 800; y 300, 400, 500, 700): 60 px squares, smaller than the 100 px overlap
CENTRES_X = [100, 345, 402, 655, 805, 1100]
CENTRES_Y = [120, 352, 495, 702]
SIDE = 60


@pytest.fixture(scope="module")
def composed():
    colors = palette(len(CENTRES_X) * len(CENTRES_Y))
    image = np.zeros((900, 1200, 3), np.uint8)
    truth = []
    for k, (cy, cx) in enumerate((y, x) for y in CENTRES_Y for x in CENTRES_X):
        x0, y0 = cx - SIDE // 2, cy - SIDE // 2
        image[y0:y0 + SIDE, x0:x0 + SIDE] = colors[k]
        truth.append([x0, y0, x0 + SIDE, y0 + SIDE])
    cfg = load_config(None, ["data.test_short=600", "data.max_size=2000"])
    detector = Detector(SquareFinder(colors), cfg, device="cpu")
    return image, torch.tensor(truth, dtype=torch.float32), detector


def by_label(result: dict) -> dict[int, list[list[float]]]:
    out: dict[int, list[list[float]]] = {}
    for box, label in zip(result["boxes"].tolist(), result["labels"].tolist(), strict=True):
        out.setdefault(label, []).append(box)
    return out


def test_objects_straddling_tile_borders_are_neither_lost_nor_doubled(composed):
    image, truth, detector = composed
    whole = detector.predict(image)
    tiled = detector.predict(image, tile=400, overlap=0.25)
    n = len(truth)
    assert len(whole["labels"]) == n  # the whole image sees every square once
    assert sorted(tiled["labels"].tolist()) == list(range(n))  # each exactly once in tiles
    w, t = by_label(whole), by_label(tiled)
    whole_boxes = torch.tensor([w[k][0] for k in range(n)])
    tiled_boxes = torch.tensor([t[k][0] for k in range(n)])
    assert box_iou(tiled_boxes, whole_boxes).diagonal().min() > 0.85
    assert box_iou(tiled_boxes, truth).diagonal().min() > 0.9  # tiles see them finer
    # the same tiles merged without core ownership report cut squares twice or more
    detector.model.calls.clear()
    tiles, _ = tile_grid(900, 1200, 400, 0.25)
    naive = merge_tiles(detector_tiles(detector, image, tiles), tiles,
                        tiles.float(), 900, 1200)
    assert len(naive["labels"]) > n + 10


def detector_tiles(detector, image, tiles):
    x = torch.from_numpy(image).permute(2, 0, 1)
    inputs, targets = [], []
    for x0, y0, x1, y1 in tiles.tolist():
        r, tgt = detector.transform(x[:, y0:y1, x0:x1], {})
        inputs.append(r)
        targets.append(tgt)
    return detector.model(inputs, targets)


def test_tiles_go_through_the_model_in_batches(composed):
    image, _, detector = composed
    detector.model.calls.clear()
    detector.predict(image, tile=400, overlap=0.25, tile_batch=5)
    assert detector.model.calls == [5, 5, 2]  # 12 tiles


def test_tiles_are_resized_by_the_test_resize(composed):
    image, _, detector = composed
    seen = []
    forward = detector.model.forward
    detector.model.forward = lambda images, targets: seen.extend(
        tuple(i.shape[-2:]) for i in images) or forward(images, targets)
    try:
        detector.predict(image[:500, :700], tile=400, overlap=0.25)
    finally:
        del detector.model.forward
    assert set(seen) == {(600, 600)}  # 400 px tiles at test_short 600


# -- a real model ----------------------------------------------------------------------------------
def test_one_tile_covering_the_image_equals_whole_image_predict(tiny_checkpoint):
    detector = Detector.from_checkpoint(tiny_checkpoint, device="cpu")
    picture = blob_picture(150, 100, 3)
    whole = detector.predict(picture)
    tiled = detector.predict(picture, tile=1000, overlap=0.2)
    assert len(whole["scores"]) > 0
    torch.testing.assert_close(tiled["boxes"], whole["boxes"])
    assert tiled["labels"].tolist() == whole["labels"].tolist()


def test_predict_cli_with_tiles(tiny_checkpoint, tmp_path):
    from PIL import Image

    Image.fromarray(blob_picture(300, 200, 4)).save(tmp_path / "big.png")
    out = tmp_path / "out"
    assert deploy_main(["predict", "-", str(tiny_checkpoint), str(tmp_path / "big.png"),
                        "--out", str(out), "--tile", "128", "--overlap", "0.25",
                        "--score-thr", "0.05", "--device", "cpu"]) == 0
    data = json.loads((out / "big.json").read_text())
    assert (data["height"], data["width"]) == (200, 300)
    assert data["detections"] and all(0 <= d["box"][0] <= d["box"][2] <= 300
                                      for d in data["detections"])
    assert (out / "big.png").is_file()
    assert deploy_main(["predict", "-", str(tiny_checkpoint), str(tmp_path / "big.png"),
                        "--out", str(out), "--tile", "128", "--overlap", "1.5"]) == 2


def test_masks_are_pasted_into_the_image():
    tiles, cores = tile_grid(10, 16, 10, 0.4)  # x starts 0, 6; cut at 8
    masks = torch.zeros(1, 10, 10, dtype=torch.bool)
    masks[0, 2:4, 1:3] = True
    det = {"boxes": torch.tensor([[1.0, 2, 3, 4]]), "scores": torch.tensor([0.5]),
           "labels": torch.tensor([0]), "masks": masks}
    out = merge_tiles([det, det], tiles, cores, 10, 16)  # centres x 2 and 8: both owned
    assert out["masks"].shape == (2, 10, 16)
    assert out["masks"][0].nonzero().tolist() == [[2, 1], [2, 2], [3, 1], [3, 2]]
    assert out["masks"][1].nonzero().tolist() == [[2, 7], [2, 8], [3, 7], [3, 8]]
