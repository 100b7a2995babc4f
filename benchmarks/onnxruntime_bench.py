"""ONNX Runtime vs PyTorch eager for the exported model (``o2f.deploy.export_onnx``).

``onnxruntime``: the R-50 detector (random weights, C = 80) exported with ``export_onnx`` (uint8
images in, top-100 boxes / scores / labels out, no NMS), one 800x1333 image, CPU. ``--quick``
exports the small ``demo`` model instead (the R-50 export alone takes about a minute here); the
row says which. ``ours`` = ONNX Runtime (CPUExecutionProvider, intra-op
threads = the benchmark's threads, all graph optimisations), ``baseline`` = the same
``ExportableDetector`` in PyTorch eager under ``inference_mode``; interleaved medians. The row
also records the largest difference of the (sorted) scores; the class bias is set to -1 so
that scores pass the threshold (with the prior-probability init nothing would).

    python benchmarks/onnxruntime_bench.py [--quick] [--config demo]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see run.py: before torch loads
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import emit, interleaved, markdown_table, result, setup_threads  # noqa: E402
from benchmarks.workloads import (  # noqa: E402
    build_ours,
    make_images,
    r50_config,
    small_config,
)


def _deploy():
    """``(export_onnx, ExportableDetector, onnxruntime)`` or a reason why not."""
    try:
        import onnxruntime

        from o2f.deploy.export_onnx import ExportableDetector, export_onnx
    except ImportError as err:
        return f"not available yet: {err}"
    return export_onnx, ExportableDetector, onnxruntime


def run(quick: bool = False, config: str | None = None, size: tuple[int, int] | None = None,
        repeats: int | None = None) -> list[dict]:
    threads = setup_threads()
    deploy = _deploy()
    if isinstance(deploy, str):
        return [emit(result("onnxruntime", None, None, "s", skipped=deploy,
                            note="skipped: " + deploy))]
    export_onnx, ExportableDetector, ort = deploy
    config = config or ("small" if quick else "r50")
    if config == "r50":
        cfg, cfg_name = r50_config(), "r50_1x"
        height, width = size or (800, 1333)
    else:
        cfg, cfg_name = small_config()
        side = min(cfg.data.test_short, cfg.data.max_size)
        height, width = size or (side, side)
    model = build_ours(cfg, train=False)
    with torch.no_grad():  # prior-prob init passes nothing; let scores pass the threshold
        model.head.conv_cls.bias.fill_(-1.0)
    wrapper = ExportableDetector(model).eval()
    images = make_images(1, height, width)[0][None]
    with tempfile.TemporaryDirectory(prefix="o2f-onnx-") as tmp:
        path = Path(tmp) / "model.onnx"
        exporter = export_onnx(model, path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: images.numpy()}

    def onnx_run() -> list:
        return session.run(None, feed)

    def eager_run() -> tuple:
        with torch.inference_mode():
            return wrapper(images)

    o, e = onnx_run(), eager_run()
    score_diff = float((torch.from_numpy(o[1]) - e[1]).abs().max())
    reps = repeats or (2 if quick else 7)
    t = interleaved(onnx_run, eager_run, repeats=reps, warmup=1, min_sample_s=0.0)
    quick_note = " (quick: small model)" if quick and config == "small" else ""
    return [emit(result(
        "onnxruntime", t.ours_median, t.baseline_median, "s", threads=threads, repeats=reps,
        config=cfg_name, image=f"{height}x{width}", exporter=exporter,
        onnxruntime_version=ort.__version__, max_score_diff=score_diff,
        note=f"{cfg_name}, 1 image {height}x{width}{quick_note}; ours = ORT, baseline = eager"))]


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--config", choices=["r50", "small"], default=None,
                   help="default: r50, or small with --quick")
    p.add_argument("--repeats", type=int, default=None)
    a = p.parse_args(argv)
    rows = run(a.quick, a.config, repeats=a.repeats)
    print(markdown_table(rows))
    return rows


if __name__ == "__main__":
    main()
