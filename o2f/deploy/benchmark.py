"""``o2f benchmark``: speed (and AP) of one detector in every deployment format, side by side.

Formats (:data:`o2f.deploy.backends.FORMATS`): ``pytorch`` (eager, as :class:`o2f.Detector`
and ``o2f test`` run it: BatchNorm folded, channels-last), ``onnx`` and ``onnx-int8`` (ONNX
Runtime, CPU EP), ``openvino`` and ``openvino-int8`` (OpenVINO CPU plugin, fp32 inference
precision). Every format goes through the same call, ``model([image], [target])`` with
:class:`o2f.deploy.backends.ExportedModel` for the exports, one image of the same size.

Timing: every format runs twice as warm-up, then ``repeats`` rounds in which the formats take
turns (so that they share whatever else the machine is doing); ``ms_per_image`` is the median
of a format's rounds. With a checkpoint and an existing ``data.val`` set, ``bbox_mAP`` is
``o2f test``'s COCO box AP of each format at the same short side; otherwise (random weights)
it is None, and the int8 formats calibrate on synthetic scenes.

Results: one JSON object per format with ``format``, ``ms_per_image``, ``bbox_mAP``,
``speedup`` (pytorch time / this time), ``ap_drop`` (pytorch AP - this AP) and the settings;
and a markdown table (:func:`format_table`).
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from o2f.deploy.backends import FORMATS, ExportedModel, load_backend

log = logging.getLogger(__name__)

DEFAULT_CLASSES = 80  # random weights for a config without model.num_classes (COCO's)


def image_size(cfg, short: int) -> tuple[int, int]:
    """(H, W) of the benchmark image at short side ``short``: the config's test aspect
    (``max_size / test_short``, e.g. 800 x 1333 for ``r50_1x``) at that short side."""
    long = int(round(short * cfg.data.max_size / cfg.data.test_short))
    return short, max(short, long)


def _synthetic_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A synthetic scene, uint8 (3, H, W)."""
    from o2f.data.synthetic import draw_scene

    image, _ = draw_scene(np.random.default_rng(seed), (height, width))
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)


def _val_exists(cfg) -> bool:
    return bool(cfg.data.val.ann_file) and Path(cfg.data.val.ann_file).is_file()


def _time_formats(models: dict[str, Any], image: torch.Tensor, repeats: int,
                  warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per call of each model on ``[image]``, formats interleaved round by round."""
    target = [{"scale_factor": (1.0, 1.0)}]
    for _ in range(warmup):
        for net in models.values():
            net([image], target)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, net in models.items():
            start = time.perf_counter()
            with torch.inference_mode():
                net([image], target)
            times[name].append(time.perf_counter() - start)
    return times


def run_benchmark(
    config: str, checkpoint: str | None = None, *, imgsz: int | None = None,
    threads: int = 1, formats: Sequence[str] = FORMATS, repeats: int = 7,
    calib: str | None = None, calib_images: int = 32, overrides: Sequence[str] = (),
    work_dir: str | Path | None = None, evaluate: bool = True,
) -> list[dict[str, Any]]:
    """Time (and with a checkpoint, evaluate) the model of ``config`` in each format.

    Args:
        config: a config name or path ("-": the checkpoint's own).
        checkpoint: trained weights; None: random weights (speed only, with the class bias
            at -1 so that the selection has candidates to sort, as trained weights would).
        imgsz: the short side of the timed image and of the evaluation (default: the
            config's ``data.test_short``).
        threads: intra-op threads of every runtime.
        formats: a subset of :data:`FORMATS`.
        repeats: timed rounds after two warm-up rounds.
        calib: the int8 formats' calibration images (folder or COCO .json; default with a
            checkpoint: ``data.train.ann_file``, else ``data.val``; without one: synthetic).
        calib_images: how many.
        overrides: config overrides.
        work_dir: keep the exported files here (default: a temporary folder).
        evaluate: compute ``bbox_mAP`` (when a checkpoint and a val set are there).

    Returns:
        one dict per format (see the module docstring).
    """
    from o2f.builders import WEIGHTS_FROM_CHECKPOINT, build_detector, detector_from_checkpoint
    from o2f.config import apply_overrides, load_config
    from o2f.deploy.export_openvino import export_deployment, export_metadata
    from o2f.deploy.quantize import calibration_images
    from o2f.models.fuse import for_inference

    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown formats {unknown}; choose from {FORMATS}")
    torch.set_num_threads(threads)
    if checkpoint:
        model, cfg, meta = detector_from_checkpoint(
            checkpoint, None if config == "-" else config, tuple(overrides))
    else:
        cfg = load_config(config, [*overrides, *WEIGHTS_FROM_CHECKPOINT])
        torch.manual_seed(0)
        model = build_detector(cfg, cfg.model.num_classes or DEFAULT_CLASSES).eval()
        with torch.no_grad():
            model.head.conv_cls.bias.fill_(-1.0)
        meta = {}
    short = imgsz or cfg.data.test_short
    height, width = image_size(cfg, short)
    cfg = apply_overrides(cfg, [f"data.test_short={short}", f"data.max_size={width}"])
    model = model.cpu().eval()
    evaluate = evaluate and bool(checkpoint) and _val_exists(cfg)
    calib_meta: dict[str, Any] | None = None
    calib_batches = None
    if any(f.endswith("-int8") for f in formats):
        source = calib
        if source is None and checkpoint:
            for split in (cfg.data.train, cfg.data.val):
                if split.ann_file and Path(split.ann_file).is_file():
                    source = split.ann_file
                    break
        calib_batches, calib_meta = calibration_images(source, cfg, calib_images)
    metadata = export_metadata(cfg, meta, model.head.num_classes,
                               Path(checkpoint).name if checkpoint else "random weights")
    with tempfile.TemporaryDirectory(prefix="o2f-bench-") as tmp:
        out = Path(work_dir or tmp)
        out.mkdir(parents=True, exist_ok=True)
        models: dict[str, Any] = {}
        export_s: dict[str, float] = {}
        fp32 = out / "model.onnx"
        if any(f != "pytorch" for f in formats):
            start = time.perf_counter()
            export_deployment(model, fp32, "onnx", metadata=metadata)
            export_s["onnx"] = time.perf_counter() - start
        for fmt in formats:
            if fmt == "pytorch":
                models[fmt] = for_inference(model)
                continue
            path = fp32 if fmt == "onnx" else out / ("model_" + fmt.replace("-", "_")
                                                     + (".xml" if "openvino" in fmt else ".onnx"))
            if fmt != "onnx":
                start = time.perf_counter()
                export_deployment(None, path, fmt, onnx_path=fp32, calib_images=calib_batches,
                                  calibration=calib_meta)
                export_s[fmt] = time.perf_counter() - start
            models[fmt] = ExportedModel(load_backend(path, threads), cfg.test.score_thr)
        image = _synthetic_image(height, width)
        times = _time_formats(models, image, repeats)
        aps: dict[str, float | None] = {f: None for f in formats}
        if evaluate:
            from o2f.engine.evaluate import coco_evaluate
            from o2f.engine.train import build_val_dataset

            dataset = build_val_dataset(cfg)
            for fmt, net in models.items():
                metrics, _ = coco_evaluate(net, dataset, torch.device("cpu"), 1,
                                           cfg.data.workers)
                aps[fmt] = float(metrics["bbox_mAP"])
    base_ms = (statistics.median(times["pytorch"]) * 1000) if "pytorch" in times else None
    rows = []
    for fmt in formats:
        ms = statistics.median(times[fmt]) * 1000
        ap, base_ap = aps[fmt], aps.get("pytorch")
        rows.append({
            "format": fmt, "ms_per_image": round(ms, 2), "bbox_mAP": ap,
            "speedup": round(base_ms / ms, 3) if base_ms else None,
            "ap_drop": (round(base_ap - ap, 4) if ap is not None and base_ap is not None
                        else None),
            "config": config, "checkpoint": checkpoint, "image": f"{height}x{width}",
            "threads": threads, "repeats": repeats,
            "samples_ms": [round(t * 1000, 2) for t in times[fmt]],
            "export_s": round(export_s[fmt], 1) if fmt in export_s else None,
            **({"calibration": calib_meta} if fmt.endswith("-int8") else {}),
        })
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a markdown table: format, ms per image, speed-up over pytorch, box AP and
    its drop against pytorch (AP points, x 100)."""
    def ap(v):
        return "-" if v is None else f"{100 * v:.1f}"

    lines = ["| format | ms / image | speed-up vs pytorch | bbox mAP | AP drop |",
             "|---|---|---|---|---|"]
    for r in rows:
        speed = "-" if r.get("speedup") is None else f"{r['speedup']:.2f}x"
        drop = "-" if r.get("ap_drop") is None else f"{100 * r['ap_drop']:+.1f}"
        lines.append(f"| {r['format']} | {r['ms_per_image']:.1f} | {speed} | "
                     f"{ap(r.get('bbox_mAP'))} | {drop} |")
    first = rows[0] if rows else {}
    lines.append(f"\n{first.get('config')} at {first.get('image')}, {first.get('threads')} "
                 f"thread(s), median of {first.get('repeats')} rounds")
    return "\n".join(lines)
