"""Assignment: ``o2f_assign`` (pairs inside the centre windows) vs the literal per-gt reading.

Rows ``assign_g{G}``: per-image time (s) of both on the points of an 800x1333 image padded to
800x1344 (22,400 points over strides 8..128), C = 80, G crowded gt boxes (clusters of
overlapping boxes, sizes log-uniform 16..400 px), time as the median of interleaved runs;
peak memory of each in a fresh process. CUDA rows ``assign_g{G}_cuda`` when a GPU is present
(the literal version then runs on the GPU too, by making CUDA the default device).

    python benchmarks/assign.py [--quick] [--gts 10 300] [--height 800 --width 1333]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see run.py: before torch loads
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import (  # noqa: E402
    ROOT,
    emit,
    interleaved,
    markdown_table,
    memory_fields,
    peak_memory_mb,
    result,
    setup_threads,
)
from o2f.assigners import o2f_assign  # noqa: E402
from o2f.boxes import decode_ltrb, level_points  # noqa: E402

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from tests.literal_o2f import literal_o2f_assign  # noqa: E402

STRIDES = (8, 16, 32, 64, 128)
GTS = (10, 50, 100, 300, 1000)
NUM_CLASSES = 80


def make_case(num_gt: int, height: int = 800, width: int = 1333, num_classes: int = NUM_CLASSES,
              seed: int = 0, device: str = "cpu") -> tuple[torch.Tensor, ...]:
    """Inputs of one image: points of the image padded to a multiple of 32, random head outputs,
    ``num_gt`` crowded boxes. Returns (points, strides, cls, ctr, pred_boxes, gt_boxes, labels).
    """
    gen = torch.Generator().manual_seed(seed)
    pad_h, pad_w = math.ceil(height / 32) * 32, math.ceil(width / 32) * 32
    sizes = [(pad_h // s, pad_w // s) for s in STRIDES[:3]]  # C3..C5 of the padded batch
    for _ in STRIDES[3:]:  # P6, P7: stride-2 convs with padding 1 on the level below
        sizes.append((math.ceil(sizes[-1][0] / 2), math.ceil(sizes[-1][1] / 2)))
    points, strides = level_points(sizes, STRIDES)
    n = points.shape[0]
    cls = torch.randn(n, num_classes, generator=gen) * 1.5 - 4.0
    ctr = torch.randn(n, generator=gen)
    ltrb = torch.rand(n, 4, generator=gen) * strides[:, None] * 4
    pred = decode_ltrb(points, ltrb)
    # Crowds: ~6 boxes per cluster, centres scattered 30 px around the cluster centre.
    num_clusters = max(1, num_gt // 6)
    centers = torch.rand(num_clusters, 2, generator=gen) * torch.tensor([width, height])
    pick = torch.randint(0, num_clusters, (num_gt,), generator=gen)
    c = centers[pick] + torch.randn(num_gt, 2, generator=gen) * 30
    size = torch.exp(torch.empty(num_gt).uniform_(math.log(16), math.log(400), generator=gen))
    aspect = torch.exp(torch.empty(num_gt).uniform_(math.log(0.4), math.log(2.5), generator=gen))
    wh = torch.stack((size * aspect.sqrt(), size / aspect.sqrt()), dim=1)
    gt = torch.cat([c - wh / 2, c + wh / 2], dim=1)
    gt = torch.minimum(gt.clamp(min=0), torch.tensor([width, height, width, height]) - 1.0)
    gt[:, 2:] = torch.maximum(gt[:, 2:], gt[:, :2] + 2.0)
    labels = torch.randint(0, num_classes, (num_gt,), generator=gen)
    return tuple(t.to(device) for t in (points, strides, cls, ctr, pred, gt, labels))


def _device_context(device: str) -> contextlib.AbstractContextManager:
    """The literal version allocates its outputs with factory defaults: make them ``device``."""
    return torch.device(device) if device != "cpu" else contextlib.nullcontext()


def assign_step(side: str, num_gt: int, height: int = 800, width: int = 1333,
                device: str = "cpu", seed: int = 0) -> Callable[[], object]:
    """One assignment of one image with ``ours`` or the ``literal`` version (for memory runs)."""
    case = make_case(num_gt, height, width, seed=seed, device=device)
    if side == "ours":
        return lambda: o2f_assign(*case)

    def literal() -> object:
        with _device_context(device):
            return literal_o2f_assign(*case)

    return literal


def _same(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> bool:
    return (torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and torch.equal(a[3], b[3])
            and torch.allclose(a[2], b[2], atol=1e-5, rtol=0))


def run(quick: bool = False, gts: tuple[int, ...] = GTS, height: int = 800, width: int = 1333,
        memory: bool | tuple[int, ...] = True, devices: tuple[str, ...] | None = None,
        repeats: int | None = None) -> list[dict]:
    """Benchmark every G on every device; print and return the rows.

    ``memory``: measure peak memory (in child processes) for every G (True), none (False) or
    the listed G values.
    """
    threads = setup_threads()
    if devices is None:
        devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    rows = []
    for device in devices:
        for g in gts:
            case = make_case(g, height, width, device=device)
            n = case[0].shape[0]
            ours = lambda case=case: o2f_assign(*case)  # noqa: E731

            def literal(case=case, device=device):
                with _device_context(device):
                    return literal_o2f_assign(*case)

            reps = repeats or (3 if quick else (5 if g >= 1000 else 7))
            t = interleaved(ours, literal, repeats=reps, warmup=1, device=device,
                            min_sample_s=0.02 if quick else 0.1)
            same = _same(t.ours_output, t.baseline_output)
            suffix = "" if device == "cpu" else f"_{device}"
            extra = {"device": device, "threads": threads, "num_points": n, "num_gt": g,
                     "num_classes": NUM_CLASSES, "image": f"{height}x{width}",
                     "repeats": reps, "same_result": same,
                     "note": f"{n} points, C={NUM_CLASSES}, literal = tests/literal_o2f.py"}
            if memory is True or (memory and g in memory):
                kw = {"num_gt": g, "height": height, "width": width, "device": device}
                extra.update(memory_fields(
                    peak_memory_mb("benchmarks.assign:assign_step", {"side": "ours", **kw},
                                   device=device, threads=threads),
                    peak_memory_mb("benchmarks.assign:assign_step", {"side": "literal", **kw},
                                   device=device, threads=threads)))
            rows.append(emit(result(f"assign_g{g}{suffix}", t.ours_median, t.baseline_median,
                                    "s", **extra)))
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--gts", type=int, nargs="+", default=list(GTS))
    p.add_argument("--height", type=int, default=800)
    p.add_argument("--width", type=int, default=1333)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--device", nargs="+", default=None)
    a = p.parse_args(argv)
    rows = run(a.quick, tuple(a.gts), a.height, a.width, memory=not a.no_memory,
               devices=tuple(a.device) if a.device else None, repeats=a.repeats)
    print(markdown_table(rows))
    return rows


if __name__ == "__main__":
    main()
