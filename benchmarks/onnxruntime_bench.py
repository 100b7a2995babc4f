"""ONNX Runtime vs PyTorch eager for the exported model (``o2f.deploy.export_onnx``).

``onnxruntime``: the R-50 detector (random weights, C = 80) exported with ``export_onnx`` (uint8
images in, top-100 boxes / scores / labels out, no NMS), one 800x1333 image, CPU (the export
alone takes minutes here). ``onnxruntime_small``: the same for the small ``demo`` model at its
test size; ``--quick`` runs only this one. ``ours`` = ONNX Runtime (CPUExecutionProvider,
intra-op threads = the benchmark's threads, inter-op 1, sequential, ORT_ENABLE_ALL, which
includes the NCHWc layout transformer on x86), ``baseline`` = the same ``ExportableDetector``
in PyTorch eager under ``inference_mode`` as ``Detector`` runs the model (BatchNorm folded
into the convolutions, channels-last weights); interleaved medians. The row also records the
ratio against the eager model as built (BatchNorm not folded, NCHW) and the largest difference
of the (sorted) scores; the class bias is set to -1 so that scores pass the threshold (with the
prior-probability init nothing would).

    python benchmarks/onnxruntime_bench.py [--quick] [--only onnxruntime onnxruntime_small]
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
from o2f.models.fuse import for_inference  # noqa: E402

NAMES = ("onnxruntime", "onnxruntime_small")


def _deploy():
    """``(export_onnx, ExportableDetector, onnxruntime)`` or a reason why not."""
    try:
        import onnxruntime

        from o2f.deploy.export_onnx import ExportableDetector, export_onnx
    except ImportError as err:
        return f"not available yet: {err}"
    return export_onnx, ExportableDetector, onnxruntime


def _compare(deploy, config: str, threads: int, repeats: int, size=None) -> dict:
    """One row: ORT on the exported file vs the same wrapper in eager PyTorch as ``Detector``
    runs the model (:func:`o2f.models.fuse.for_inference`: BatchNorm folded, channels-last);
    the time of the model as built (unfused, NCHW) is recorded too."""
    export_onnx, ExportableDetector, ort = deploy
    if config == "r50":
        cfg, cfg_name, name = r50_config(), "r50_1x", "onnxruntime"
        height, width = size or (800, 1333)
    else:
        (cfg, cfg_name), name = small_config(), "onnxruntime_small"
        side = min(cfg.data.test_short, cfg.data.max_size)
        height, width = size or (side, side)
    model = build_ours(cfg, train=False)
    with torch.no_grad():  # prior-prob init passes nothing; let scores pass the threshold
        model.head.conv_cls.bias.fill_(-1.0)
    fused = ExportableDetector(for_inference(model)).eval()
    unfused = ExportableDetector(model).eval()
    images = make_images(1, height, width)[0][None]
    with tempfile.TemporaryDirectory(prefix="o2f-onnx-") as tmp:
        path = Path(tmp) / "model.onnx"
        exporter = export_onnx(model, path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: images.numpy()}

    def onnx_run() -> list:
        return session.run(None, feed)

    def eager(wrapper):
        def call() -> tuple:
            with torch.inference_mode():
                return wrapper(images)
        return call

    o, e = onnx_run(), eager(fused)()
    score_diff = float((torch.from_numpy(o[1]) - e[1]).abs().max())
    t = interleaved(onnx_run, eager(fused), repeats=repeats, warmup=1, min_sample_s=0.0)
    t_unfused = interleaved(onnx_run, eager(unfused), repeats=max(2, repeats // 2), warmup=1,
                            min_sample_s=0.0)
    return result(
        name, t.ours_median, t.baseline_median, "s", threads=threads, repeats=repeats,
        config=cfg_name, image=f"{height}x{width}", exporter=exporter,
        onnxruntime_version=ort.__version__, max_score_diff=score_diff,
        session="CPU EP, ORT_ENABLE_ALL (NCHWc), sequential, intra_op = threads",
        eager_unfused_s=t_unfused.baseline_median,
        ratio_vs_unfused_eager=t_unfused.ours_median / t_unfused.baseline_median,
        note=f"{cfg_name}, 1 image {height}x{width}; ours = ORT, baseline = eager as Detector "
             f"runs it (BN folded, channels-last; vs eager as built: "
             f"{t_unfused.ours_median / t_unfused.baseline_median:.3f})")


def run(quick: bool = False, only: tuple[str, ...] = NAMES,
        repeats: int | None = None) -> list[dict]:
    """``onnxruntime`` (R-50 at 800x1333; skipped with ``quick``) and ``onnxruntime_small``
    (the demo model at its test size)."""
    threads = setup_threads()
    deploy = _deploy()
    if isinstance(deploy, str):
        return [emit(result(n, None, None, "s", skipped=deploy, note="skipped: " + deploy))
                for n in only]
    rows = []
    for name, config in (("onnxruntime", "r50"), ("onnxruntime_small", "small")):
        if name in only and not (quick and config == "r50"):
            rows.append(emit(_compare(deploy, config, threads, repeats or (2 if quick else 7))))
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", nargs="+", default=list(NAMES), choices=NAMES)
    p.add_argument("--repeats", type=int, default=None)
    a = p.parse_args(argv)
    rows = run(a.quick, tuple(a.only), repeats=a.repeats)
    print(markdown_table(rows))
    return rows


if __name__ == "__main__":
    main()
