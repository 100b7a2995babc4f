"""Run every benchmark of issue 7, print each JSON line, then a markdown table with the targets.

    python benchmarks/run.py [--quick] [--only NAME ...] [--json-out FILE]

Names: assign_g10 assign_g50 assign_g100 assign_g300 assign_g1000 infer_r50 infer_r50_unfused
postprocess postprocess_noisy train_step_r50 train_step_small assign_share_g300 onnxruntime
onnxruntime_small data_pipeline data_pipeline_coco coco_eval data_memory (``--only assign``
selects every assign_g*; ``--quick`` skips the R-50 ``onnxruntime`` row). Threads:
``O2F_BENCH_THREADS`` (default 2). Unless the environment
already sets it, ``OMP_WAIT_POLICY=PASSIVE`` is set before torch loads: on a shared machine
libgomp's default spin-waiting makes code with many small ops (the assigner) 5-50x slower
whenever another process holds a core, which measures the neighbours, not the code.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads libgomp
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import torch  # noqa: E402

from benchmarks.common import markdown_table, setup_threads  # noqa: E402

ASSIGN = tuple(f"assign_g{g}" for g in (10, 50, 100, 300, 1000))
INFERENCE = ("infer_r50", "infer_r50_unfused", "postprocess", "postprocess_noisy")
NAMES = (*ASSIGN, *INFERENCE, "train_step_r50", "train_step_small", "assign_share_g300",
         "onnxruntime", "onnxruntime_small", "data_pipeline", "data_pipeline_coco", "coco_eval",
         "data_memory")

# name -> (target text, predicate on the row); ratio = ours / baseline.
TARGETS = {
    "assign_g300": ("ratio <= 0.02 (50x)", lambda r: r["ratio"] <= 0.02),
    "assign_share_g300": ("< 2% of the step", lambda r: r["ratio"] < 0.02),
    "infer_r50": ("ratio <= 1.0", lambda r: r["ratio"] <= 1.0),
    "infer_r50_unfused": ("ratio <= 1.0", lambda r: r["ratio"] <= 1.0),
    "postprocess": ("ratio <= 0.333 (3x)", lambda r: r["ratio"] <= 1 / 3),
    "postprocess_noisy": ("ratio <= 0.333 (3x)", lambda r: r["ratio"] <= 1 / 3),
    "train_step_r50": ("time and memory ratio <= 1.1",
                       lambda r: r["ratio"] <= 1.1 and (r.get("mem_ratio") or 0) <= 1.1),
    "train_step_small": ("time and memory ratio <= 1.1",
                         lambda r: r["ratio"] <= 1.1 and (r.get("mem_ratio") or 0) <= 1.1),
    "onnxruntime": ("ratio <= 0.769 (1.3x)", lambda r: r["ratio"] <= 1 / 1.3),
    "onnxruntime_small": ("ratio <= 0.769 (1.3x)", lambda r: r["ratio"] <= 1 / 1.3),
    "data_pipeline": ("ratio >= 1 (loader keeps up)", lambda r: r["ratio"] >= 1.0),
    "coco_eval": ("ratio < 1, AP equal within 1e-4",
                  lambda r: r["ratio"] < 1.0 and r["max_ap_diff"] <= 1e-4),
}


def verdict(row: dict) -> str:
    """``met`` / ``missed`` (training rows say which of time and memory) / ``-`` (no target) /
    ``n/a`` (not measured)."""
    name = row["name"]
    if name not in TARGETS:
        return "-"
    if row.get("ratio") is None:
        return "n/a"
    if name.startswith("train_step"):
        mem = row.get("mem_ratio")
        time_ok = "met" if row["ratio"] <= 1.1 else "missed"
        mem_ok = "n/a" if mem is None else ("met" if mem <= 1.1 else "missed")
        return f"time {time_ok}, memory {mem_ok}"
    return "met" if TARGETS[name][1](row) else "missed"


def environment(threads: int) -> dict:
    """Hardware and software of this run (one JSON line)."""
    return {"name": "environment", "machine": platform.machine(), "cpu": _cpu_name(),
            "cpus": os.cpu_count(), "threads": threads, "torch": torch.__version__,
            "python": platform.python_version(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def timed(group: str, fn: Callable[[], list[dict]]) -> list[dict]:
    """Run one group of benchmarks, reporting its wall time on stderr."""
    start = time.perf_counter()
    rows = fn()
    print(f"# {group}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return rows


def select(only: list[str] | None) -> set[str]:
    if not only:
        return set(NAMES)
    chosen = set()
    for name in only:
        if name == "assign":
            chosen.update(ASSIGN)
        elif name in NAMES:
            chosen.add(name)
        else:
            raise SystemExit(f"unknown benchmark {name!r}; names: {' '.join(NAMES)}")
    return chosen


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="few repeats, reduced R-50 training / ONNX input (a few minutes)")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME")
    p.add_argument("--json-out", default=None, help="also write the rows (JSON lines) here")
    a = p.parse_args(argv)
    chosen = select(a.only)
    threads = setup_threads()
    env = environment(threads)
    print(json.dumps(env), flush=True)
    start = time.perf_counter()
    rows: list[dict] = []

    gts = tuple(g for g in (10, 50, 100, 300, 1000) if f"assign_g{g}" in chosen)
    if gts:
        from benchmarks import assign

        memory: bool | tuple[int, ...] = (300,) if a.quick else True
        rows += timed("assign", lambda: assign.run(a.quick, gts, memory=memory))
    inf = tuple(n for n in INFERENCE if n in chosen)
    if inf:
        from benchmarks import inference

        rows += timed("inference", lambda: inference.run(a.quick, inf))
    tr = tuple(n for n in ("train_step_r50", "train_step_small", "assign_share_g300")
               if n in chosen)
    if tr:
        from benchmarks import train_step

        rows += timed("train_step", lambda: train_step.run(a.quick, tr))
    onnx = tuple(n for n in ("onnxruntime", "onnxruntime_small") if n in chosen)
    if onnx:
        from benchmarks import onnxruntime_bench

        rows += timed("onnxruntime_bench", lambda: onnxruntime_bench.run(a.quick, onnx))
    if "data_pipeline" in chosen:
        from benchmarks import data_pipeline

        rows += timed("data_pipeline", lambda: data_pipeline.run(a.quick))
    if "data_pipeline_coco" in chosen:
        from benchmarks import data_pipeline

        rows += timed("data_pipeline_coco", lambda: data_pipeline.run_coco_sizes(a.quick))
    if "coco_eval" in chosen:
        from benchmarks import coco_eval

        rows += timed("coco_eval", lambda: coco_eval.run(
            500 if a.quick else 5000, 20 if a.quick else 100))
    if "data_memory" in chosen:
        from benchmarks import data_memory

        rows += timed("data_memory", lambda: data_memory.run(20_000 if a.quick else 100_000))

    for row in rows:
        row["verdict"] = verdict(row)
    elapsed = time.perf_counter() - start
    if a.json_out:
        with open(a.json_out, "w", encoding="utf-8") as f:
            for row in [env, *rows]:
                f.write(json.dumps(row, default=float) + "\n")
    targets = {k: v[0] for k, v in TARGETS.items()}
    print()
    print(f"threads={threads} cpus={env['cpus']} ({env['cpu']}) torch={env['torch']} "
          f"OMP_WAIT_POLICY={env['omp_wait_policy']} quick={a.quick} "
          f"elapsed={elapsed:.0f}s")
    print()
    print(markdown_table(rows, targets, {r["name"]: r["verdict"] for r in rows}))
    return rows


if __name__ == "__main__":
    main()
