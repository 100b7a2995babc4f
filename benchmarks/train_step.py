"""Training step (forward + assignment + losses + backward + optimiser), ours vs torchvision FCOS.

``train_step_r50``: R-50, batch 2 at 800x1333 (``--quick``: 384x640, noted in the row), 15
crowded boxes per image, same images / targets / optimiser on both sides (see
``benchmarks/workloads.py`` for how torchvision's model is made comparable). Peak memory of each
in a fresh process.

``train_step_small``: the small CPU (``demo``) config vs torchvision FCOS with the same
ResNet / 64-channel widths, at the config's batch and image size.

``assign_share_g300``: time spent in ``O2FCriterion.assign`` inside our R-50 training step when
every image has 300 gt boxes, over the step time (target < 2%).

    python benchmarks/train_step.py [--quick] [--only train_step_r50 train_step_small ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see run.py: before torch loads
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import (  # noqa: E402
    emit,
    interleaved,
    markdown_table,
    memory_fields,
    peak_memory_mb,
    result,
    setup_threads,
)
from benchmarks.workloads import (  # noqa: E402
    build_ours,
    make_images,
    make_targets,
    r50_config,
    small_config,
    train_step_fn,
    train_workload,
)

NAMES = ("train_step_r50", "train_step_small", "assign_share_g300")
QUICK_R50 = (384, 640)


def compare(variant: str, quick: bool, memory: bool, threads: int,
            size: tuple[int, int] | None = None, repeats: int | None = None) -> dict:
    """One interleaved ours-vs-torchvision training comparison, as a row."""
    h, w = size or (None, None)
    ours = train_workload("ours", variant, h, w)
    base = train_workload("tv", variant, h, w)
    reps = repeats or (2 if quick else 5)
    t = interleaved(ours["step"], base["step"], repeats=reps, warmup=1, min_sample_s=0.0)
    batch, height, width = ours["batch"], ours["height"], ours["width"]
    extra = {"threads": threads, "repeats": reps, "batch": batch, "image": f"{height}x{width}",
             "images_per_s_ours": batch / t.ours_median,
             "images_per_s_baseline": batch / t.baseline_median}
    del ours, base
    if memory:
        kw = {"variant": variant, "height": height, "width": width, "batch": batch}
        extra.update(memory_fields(
            peak_memory_mb("benchmarks.workloads:train_step", {"side": "ours", **kw},
                           threads=threads),
            peak_memory_mb("benchmarks.workloads:train_step", {"side": "tv", **kw},
                           threads=threads)))
    if variant == "r50":
        model = ("recipe R-50 (frozen stem+layer1, BN stats frozen) vs torchvision FCOS R-50 "
                 "(FrozenBN, 3 trainable stages)")
    else:
        cfg, name = small_config()
        model = (f"{name} config (R-{cfg.model.backbone.depth}, {cfg.model.fpn.channels} ch) vs "
                 "torchvision FCOS same widths")
    quick_note = " (reduced input)" if size else ""
    extra["note"] = f"batch {batch} at {height}x{width}{quick_note}; {model}"
    return result(f"train_step_{variant}", t.ours_median, t.baseline_median, "s", **extra)


def assign_share(quick: bool, threads: int, num_gt: int = 300,
                 size: tuple[int, int] | None = None) -> dict:
    """Seconds per step inside ``criterion.assign`` vs the whole step, G = num_gt per image."""
    height, width = size or (800, 1333)
    cfg = r50_config()
    model = build_ours(cfg, train=True)
    images = make_images(2, height, width, seed=1)
    targets = make_targets(2, height, width, num_gt, seed=1)
    step = train_step_fn(model, images, targets, "sgd")
    spent: list[float] = []
    inner = model.criterion.assign

    def timed_assign(*args, **kwargs):
        start = time.perf_counter()
        out = inner(*args, **kwargs)
        spent.append(time.perf_counter() - start)
        return out

    model.criterion.assign = timed_assign
    step()  # warm-up
    spent.clear()
    steps = []
    for _ in range(1 if quick else 3):
        start = time.perf_counter()
        step()
        steps.append(time.perf_counter() - start)
    a, s = statistics.median(spent), statistics.median(steps)
    gts = [int(t["boxes"].shape[0]) for t in targets]
    return result("assign_share_g300", a, s, "s", threads=threads, batch=2,
                  image=f"{height}x{width}", num_gt=gts,
                  note=f"assign of 2 images x ~{num_gt} gts / our R-50 train step at "
                       f"{height}x{width}; ours = assign s, baseline = step s")


def run(quick: bool = False, only: tuple[str, ...] = NAMES, memory: bool = True,
        r50_size: tuple[int, int] | None = None, repeats: int | None = None) -> list[dict]:
    """``r50_size``: (H, W) of the R-50 rows (default 800x1333, quick 384x640)."""
    threads = setup_threads()
    r50_size = r50_size or (QUICK_R50 if quick else None)
    rows = []
    if "train_step_r50" in only:
        rows.append(emit(compare("r50", quick, memory, threads, r50_size, repeats)))
    if "train_step_small" in only:
        rows.append(emit(compare("small", quick, memory, threads, repeats=repeats)))
    if "assign_share_g300" in only:
        rows.append(emit(assign_share(quick, threads, size=r50_size)))
    torch.set_num_threads(threads)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", nargs="+", default=list(NAMES))
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--r50-size", type=int, nargs=2, default=None, metavar=("H", "W"))
    p.add_argument("--repeats", type=int, default=None)
    a = p.parse_args(argv)
    rows = run(a.quick, tuple(a.only), memory=not a.no_memory,
               r50_size=tuple(a.r50_size) if a.r50_size else None, repeats=a.repeats)
    print(markdown_table(rows))
    return rows


if __name__ == "__main__":
    main()
