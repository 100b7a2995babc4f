"""Data pipeline throughput vs the small-config training step (is loading ever the bottleneck?).

``data_pipeline``: images/s out of a ``DataLoader`` over ``o2f.data.CocoDetection`` with the
training transforms of the small (``demo``) config and its ``data.workers`` / ``batch_size``,
on a synthetic COCO-format set written by ``generate_synthetic_coco`` into a temporary folder
(``ours``), against images/s of the small-config training step on batches already in memory
(``baseline``). Here ``ratio`` = loader / training throughput: above 1 the loader keeps up.
Both are measured alternately (three loader epochs over 8 batches, then 2 (quick) or 4
training steps) and the loader's workers are persistent, so worker start-up is not counted.
``end_to_end_images_per_s`` is the training step fed by the running loader (workers and
training share the 2 cores).

    python benchmarks/data_pipeline.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see run.py: before torch loads
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import emit, markdown_table, result, setup_threads  # noqa: E402
from benchmarks.workloads import small_config, trainer  # noqa: E402
from o2f.builders import build_detector  # noqa: E402


def _data_modules():
    """``(CocoDetection, build_transforms, collate, generate_synthetic_coco)`` or an error text."""
    try:
        from o2f.data import CocoDetection, build_transforms, collate, generate_synthetic_coco
    except ImportError as err:
        return f"o2f.data is not available yet: {err}"
    return CocoDetection, build_transforms, collate, generate_synthetic_coco


def run(quick: bool = False, num_images: int | None = None, rounds: int | None = None,
        workers: int | None = None) -> list[dict]:
    threads = setup_threads()
    mods = _data_modules()
    if isinstance(mods, str):
        return [emit(result("data_pipeline", None, None, "images/s", skipped=mods,
                            note="skipped: " + mods))]
    CocoDetection, build_transforms, collate, generate = mods
    cfg, cfg_name = small_config()
    d = cfg.data
    side = min(d.train_short[1], d.max_size)
    num_images = num_images or 8 * d.batch_size
    rounds = rounds or (2 if quick else 4)
    loader_epochs = 3
    workers = d.workers if workers is None else workers
    with tempfile.TemporaryDirectory(prefix="o2f-bench-") as tmp:
        paths = generate(tmp, num_train=num_images, num_val=1, image_size=(side, side), seed=0)
        tf = build_transforms(True, d.max_size, tuple(d.train_short), d.flip_prob)
        dataset = CocoDetection(paths["train_ann"], paths["train_images"], tf, train=True)
        loader = torch.utils.data.DataLoader(
            dataset, d.batch_size, shuffle=True, num_workers=workers, collate_fn=collate,
            persistent_workers=workers > 0, drop_last=True)
        torch.manual_seed(0)
        model = build_detector(cfg, dataset.num_classes).train()
        batches = list(loader)  # first epoch: starts the workers; batches for the step
        step = trainer(model, cfg.optim.name)
        step(*batches[0])  # warm-up
        train_batches = 2 if quick else 4
        loader_ips, train_ips, e2e_ips = [], [], []
        for _ in range(rounds):
            start, n = time.perf_counter(), 0
            for _epoch in range(loader_epochs):
                for imgs, _t in loader:
                    n += len(imgs)
            loader_ips.append(n / (time.perf_counter() - start))
            start = time.perf_counter()
            for imgs, tgts in batches[:train_batches]:
                step(imgs, tgts)
            train_ips.append(train_batches * d.batch_size / (time.perf_counter() - start))
            start, n = time.perf_counter(), 0
            for i, (imgs, tgts) in enumerate(loader):
                if i == train_batches:
                    break
                step(imgs, tgts)
                n += len(imgs)
            e2e_ips.append(n / (time.perf_counter() - start))
        del loader
    lo, tr, e2e = (statistics.median(x) for x in (loader_ips, train_ips, e2e_ips))
    return [emit(result(
        "data_pipeline", lo, tr, "images/s", threads=threads, workers=workers,
        batch=d.batch_size, image=f"{side}x{side}", num_images=num_images, rounds=rounds,
        end_to_end_images_per_s=e2e, loader_slowdown=1 - e2e / tr,
        note=f"loader ({workers} workers) vs {cfg_name}-config train step, images/s "
             f"(higher is better; ratio > 1: loading keeps up); end-to-end {e2e:.1f} img/s"))]


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--workers", type=int, default=None, help="default: the config's")
    a = p.parse_args(argv)
    rows = run(a.quick, workers=a.workers)
    print(markdown_table(rows))
    return rows


if __name__ == "__main__":
    main()
