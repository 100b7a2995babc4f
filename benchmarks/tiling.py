"""Sliced inference: ``Detector.predict(image, tile=640, overlap=0.2)`` against whole-image
``Detector.predict(image)`` on a 4000x3000 image (ratio = sliced / whole time).

The model is R-50 o2f with random weights (no download), the image smooth random blobs. Whole
image: one pass at the test resize (short side 800: 1067x800). Sliced: 48 tiles of 640 px,
each resized as a whole image would be (to 800x800), run ``--tile-batch`` at a time, merged by
core ownership (no NMS); the row records the tile count and the pixels the network sees per
image, which the ratio follows. ``--quick``: ResNet-18 with a 64-channel FPN and head on a
1000x750 image in tiles of 320 (a smoke run, seconds on a CPU).

    python benchmarks/tiling.py [--quick] [--device cuda] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see run.py: before torch loads
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import emit, interleaved, markdown_table, result, setup_threads  # noqa: E402
from o2f.builders import build_detector  # noqa: E402
from o2f.config import load_config  # noqa: E402
from o2f.deploy.predict import Detector  # noqa: E402
from o2f.deploy.tiling import tile_grid  # noqa: E402

FULL = {"size": (4000, 3000), "tile": 640, "overlap": 0.2, "overrides": []}
QUICK = {"size": (1000, 750), "tile": 320, "overlap": 0.2, "overrides": [
    "model.backbone.depth=18", "model.fpn.channels=64", "model.head.feat_channels=64",
    "model.head.num_convs=2", "model.head.ctr_channels=32", "model.head.gn_groups=16",
    "data.test_short=320", "data.max_size=1333"]}


def blobs(width: int, height: int, seed: int = 0, count: int = 400) -> np.ndarray:
    """(height, width, 3) uint8: ``count`` coloured discs on grey."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 90, np.uint8)
    for _ in range(count):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(10, 60)
        x0, x1 = int(max(0, cx - r)), int(min(width, cx + r))
        y0, y1 = int(max(0, cy - r)), int(min(height, cy + r))
        yy, xx = np.mgrid[y0:y1, x0:x1]
        image[y0:y1, x0:x1][(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.integers(0, 256, 3)
    return image


def run(quick: bool = False, device: str = "cpu", repeats: int = 3,
        tile_batch: int = 8) -> list[dict]:
    spec = QUICK if quick else FULL
    threads = setup_threads()
    cfg = load_config(None, ["model.num_classes=80", "model.backbone.pretrained=false",
                             *spec["overrides"]])
    torch.manual_seed(0)
    detector = Detector(build_detector(cfg).eval(), cfg, device=device)
    width, height = spec["size"]
    image = torch.from_numpy(blobs(width, height)).permute(2, 0, 1).contiguous()
    tiles, _ = tile_grid(height, width, spec["tile"], spec["overlap"])
    short = cfg.data.test_short
    with torch.inference_mode():
        timing = interleaved(
            lambda: detector.predict(image, tile=spec["tile"], overlap=spec["overlap"],
                                     tile_batch=tile_batch),
            lambda: detector.predict(image), repeats=repeats, device=device)
    whole_px = detector.transform(image, {})[0].shape[-2:].numel()
    name = f"sliced_predict_{width}x{height}_t{spec['tile']}"
    row = result(name, timing.ours_median, timing.baseline_median, "s", device=device,
                 threads=threads, tiles=len(tiles), tile_batch=tile_batch,
                 overlap=spec["overlap"], pixels_ratio=len(tiles) * short * short / whole_px,
                 detections_sliced=len(timing.ours_output["scores"]),
                 detections_whole=len(timing.baseline_output["scores"]),
                 note="random weights; ratio = sliced / whole-image time")
    return [emit(row)]


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tile-batch", type=int, default=8)
    a = p.parse_args(argv)
    rows = run(a.quick, a.device, a.repeats, a.tile_batch)
    print(markdown_table(rows))
    return rows


if __name__ == "__main__":
    main()
