"""Deployment formats side by side: ``o2f benchmark`` for ``r50_1x`` at 800x1333 and ``small``
at its test size, with one thread and two (the tables of ``benchmarks/README.md``,
"Deployment formats").

Each (config, threads) pair is one ``o2f.deploy.benchmark.run_benchmark`` run: the model
exported to ONNX (fp32, int8) and OpenVINO (fp32, int8), then every format timed on the same
image, the formats taking turns (median of ``--repeats`` rounds). Random weights give speed
only; ``--small-checkpoint`` adds the AP (and its drop) of each format of a trained ``small``
model on its ``data.val``. One JSON line per (run, format), then a markdown table.

    python benchmarks/deploy_formats.py [--only r50 small] [--threads 1 2] [--repeats 7]
        [--small-checkpoint work_dirs/small/last.pth] [--json-out rows.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see run.py: before torch loads
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from o2f.deploy.benchmark import run_benchmark  # noqa: E402

RUNS = {"r50": ("r50_1x", 800), "small": ("small", None)}


def table(rows: list[dict]) -> str:
    """One markdown table over every run: ms per image, speed-up and AP drop per format."""
    lines = ["| config | image | threads | format | ms / image | speed-up vs pytorch | "
             "bbox mAP | AP drop (points) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ap = "-" if r["bbox_mAP"] is None else f"{100 * r['bbox_mAP']:.1f}"
        drop = "-" if r["ap_drop"] is None else f"{100 * r['ap_drop']:+.1f}"
        lines.append(f"| {r['config']} | {r['image']} | {r['threads']} | {r['format']} | "
                     f"{r['ms_per_image']:.1f} | {r['speedup']:.2f}x | {ap} | {drop} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--calib-images", type=int, default=32)
    p.add_argument("--small-checkpoint", help="a trained small model (adds the AP columns)")
    p.add_argument("--json-out")
    a = p.parse_args(argv)
    rows: list[dict] = []
    for name in a.only:
        config, imgsz = RUNS[name]
        checkpoint = a.small_checkpoint if name == "small" else None
        for threads in a.threads:
            for row in run_benchmark("-" if checkpoint else config, checkpoint, imgsz=imgsz,
                                     threads=threads, repeats=a.repeats,
                                     calib_images=a.calib_images):
                row["config"] = config
                print(json.dumps(row), flush=True)
                rows.append(row)
    if a.json_out:
        Path(a.json_out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
