"""``o2f export``, ``o2f predict``, ``o2f convert-mmdet`` and ``o2f benchmark``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("o2f.deploy")

_CONFIG_HELP = ("a shipped config name (e.g. r50_1x) or a YAML path; '-' uses the config "
                "stored with the checkpoint")


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override (repeatable), e.g. --set test.max_per_img=50")


def _fail(command: str, err: Exception) -> int:
    print(f"o2f: error: {command}: {err}", file=sys.stderr)
    return 2


def _user_errors() -> tuple[type[Exception], ...]:
    from o2f.config import ConfigError
    from o2f.engine.checkpoint import CheckpointError

    return ConfigError, CheckpointError, FileNotFoundError


# -- export ------------------------------------------------------------------------------------
def _export_model(args: argparse.Namespace):
    """(model, cfg, meta) from the checkpoint, or randomly initialised from the config."""
    from o2f.builders import WEIGHTS_FROM_CHECKPOINT, build_detector, detector_from_checkpoint
    from o2f.config import ConfigError, load_config

    if args.checkpoint:
        config = None if args.config == "-" else args.config
        return detector_from_checkpoint(args.checkpoint, config, args.overrides)
    if args.config == "-":
        raise ConfigError("CONFIG '-' (the checkpoint's config) needs a CHECKPOINT")
    cfg = load_config(args.config, [*args.overrides, *WEIGHTS_FROM_CHECKPOINT])
    if not cfg.model.num_classes:
        raise ConfigError(f"config '{args.config}' does not set model.num_classes; give a "
                          "CHECKPOINT or --set model.num_classes=N")
    log.warning("no CHECKPOINT given: exporting RANDOMLY INITIALISED weights (%d classes)",
                cfg.model.num_classes)
    model = build_detector(cfg).eval()
    return model, cfg, {"num_classes": cfg.model.num_classes}


def _calibration(args: argparse.Namespace, cfg):
    """The int8 formats' calibration batches and their description, from ``--calib`` (default:
    ``data.train.ann_file`` of the config)."""
    from o2f.deploy.quantize import calibration_images

    source = args.calib or cfg.data.train.ann_file
    if not source or not Path(source).exists():
        raise FileNotFoundError(f"--int8 needs calibration images: give --calib DIR_OR_ANN "
                                f"(the config's data.train.ann_file {source!r} does not exist)")
    log.info("calibrating on %d image(s) of %s", args.calib_images, source)
    return calibration_images(source, cfg, args.calib_images)


def _stored_export(args: argparse.Namespace):
    """(None, cfg, meta) of an fp32 ``.onnx`` given as CHECKPOINT (to quantize or convert)."""
    from o2f.config import apply_overrides, config_from_dict, load_config
    from o2f.deploy.export_openvino import _onnx_metadata

    meta = _onnx_metadata(args.checkpoint)
    if meta.get("precision") == "int8":
        raise ValueError(f"{args.checkpoint} is already quantized; give the fp32 export")
    if args.config != "-":
        cfg = load_config(args.config, args.overrides)
    elif "config" in meta:
        cfg = apply_overrides(config_from_dict(meta["config"], str(args.checkpoint)),
                              args.overrides)
    else:
        raise FileNotFoundError(f"{args.checkpoint} stores no config; give CONFIG")
    return None, cfg, meta


def _plan_export(args: argparse.Namespace) -> dict[str, Any]:
    """Read what ``o2f export`` needs (the model or the stored export, its config, the int8
    calibration images) before writing anything; a user's error is raised here."""
    from o2f.deploy.weights import is_safetensors

    suffix = Path(args.output).suffix.lower()
    fmt = args.format or ("safetensors" if is_safetensors(args.output)
                          else "openvino" if suffix == ".xml" else "onnx")
    from_onnx = bool(args.checkpoint) and Path(args.checkpoint).suffix.lower() == ".onnx"
    if args.int8 and fmt == "safetensors":
        raise ValueError("--int8 applies to --format onnx and openvino")
    model, cfg, meta = _stored_export(args) if from_onnx else _export_model(args)
    if from_onnx and fmt == "safetensors":
        raise ValueError("an .onnx CHECKPOINT can only be quantized or converted")
    calib, calibration = _calibration(args, cfg) if args.int8 else (None, None)
    return {"fmt": fmt, "from_onnx": from_onnx, "model": model, "cfg": cfg, "meta": meta,
            "calib": calib, "calibration": calibration}


def _write_export(args: argparse.Namespace, plan: dict[str, Any]) -> str:
    """Write the export :func:`_plan_export` prepared; returns the line ``o2f export`` prints.
    A missing runtime raises ImportError naming the extra to install."""
    from o2f.deploy.weights import save_safetensors_weights

    fmt, model, cfg, meta = plan["fmt"], plan["model"], plan["cfg"], plan["meta"]
    calibration = plan["calibration"]
    if fmt == "safetensors":
        model = model.cpu().eval()
        save_safetensors_weights(model.state_dict(), args.output, cfg.to_dict(), meta)
        return f"wrote {args.output} (safetensors weights, config and meta)"
    from o2f.deploy.export_openvino import export_deployment, export_metadata

    if model is not None:
        model = model.cpu().eval()
        metadata = export_metadata(cfg, meta, model.head.num_classes, Path(args.checkpoint).name
                                   if args.checkpoint else "random weights")
    else:
        metadata = None
    full = fmt + ("-int8" if args.int8 else "")
    try:
        done = export_deployment(model, args.output, full, metadata=metadata,
                                 onnx_path=args.checkpoint if plan["from_onnx"] else None,
                                 calib_images=plan["calib"], calibration=calibration,
                                 calib_method=args.calib_method, opset=args.opset)
    except ImportError as err:
        raise ImportError(f"{err} (pip install 'o2f[openvino]' for OpenVINO, 'o2f[onnx]' for "
                          "ONNX)") from err
    what = {"onnx": f"ONNX opset {args.opset}", "onnx-int8": "ONNX, int8 QDQ (ONNX Runtime)",
            "openvino": "OpenVINO IR fp32", "openvino-int8": "OpenVINO IR int8 (NNCF)"}[full]
    extra = f", calibrated on {calibration['images']} image(s) of {calibration['source']}" \
        if calibration else ""
    return (f"wrote {args.output} ({what}{extra}; exporter: {done['exporter']}; input 'images' "
            f"uint8 (B, 3, H, W) RGB; outputs boxes/scores/labels, no NMS)")


def run_export(
    checkpoint: str | Path | None, output: str | Path, config: str | Path | None = None,
    overrides: Sequence[str] = (), fmt: str | None = None, int8: bool = False,
    calib: str | Path | None = None, calib_images: int = 100, calib_method: str = "minmax",
    opset: int = 18,
) -> str:
    """What ``o2f export CONFIG [CHECKPOINT] --output OUTPUT ...`` does; the arguments are its
    options. ``config`` None (or ``"-"``) uses the checkpoint's config; ``checkpoint`` None
    exports randomly initialised weights of ``config``. Returns the line the command prints."""
    args = argparse.Namespace(
        checkpoint=None if checkpoint is None else str(checkpoint), output=str(output),
        config="-" if config is None else str(config), overrides=list(overrides), format=fmt,
        int8=int8, calib=None if calib is None else str(calib), calib_images=calib_images,
        calib_method=calib_method, opset=opset)
    return _write_export(args, _plan_export(args))


def cmd_export(args: argparse.Namespace) -> int:
    try:
        plan = _plan_export(args)
    except (*_user_errors(), ValueError) as err:
        return _fail("export", err)
    try:
        print(_write_export(args, plan))
    except ImportError as err:
        return _fail("export", err)
    return 0


# -- predict -----------------------------------------------------------------------------------
def cmd_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from o2f.deploy.predict import (
        Detector,
        detections_to_json,
        find_images,
        format_json,
        image_to_tensor,
    )
    from o2f.visualize import save_image

    if args.tile is not None and (args.tile < 1 or not 0 <= args.overlap < 1):
        return _fail("predict", ValueError(f"--tile must be >= 1 and --overlap in [0, 1), got "
                                           f"{args.tile} and {args.overlap}"))
    try:
        images = find_images(args.images)
        if not images:
            raise FileNotFoundError("no images (jpg, jpeg, png, bmp, webp) in "
                                    + ", ".join(args.images))
        detector = Detector.from_checkpoint(args.checkpoint, args.config, args.overrides,
                                            args.device)
    except _user_errors() as err:
        return _fail("predict", err)
    out = Path(args.out)
    failed = []
    for path, stem in tqdm(images, desc="predict", unit="img", dynamic_ncols=True):
        try:
            image = image_to_tensor(path)
        except (OSError, ValueError) as err:
            tqdm.write(f"o2f predict: error: {err}", file=sys.stderr)
            failed.append(path)
            continue
        result = detector.predict(image, score_thr=args.score_thr, tile=args.tile,
                                  overlap=args.overlap)
        target = out / stem
        target.parent.mkdir(parents=True, exist_ok=True)
        data = detections_to_json(result, str(path), tuple(image.shape[-2:]))
        target.with_name(target.name + ".json").write_text(format_json(data))
        save_image(detector.draw(image, result), target.with_name(target.name + ".png"))
    done = len(images) - len(failed)
    print(f"wrote detections of {done} image(s) to {out}/ (one .json and one .png each)")
    if failed:
        print(f"o2f predict: {len(failed)} of {len(images)} image(s) could not be read: "
              + ", ".join(map(str, failed[:10])) + (" ..." if len(failed) > 10 else ""),
              file=sys.stderr)
        return 1
    return 0


# -- convert-mmdet -----------------------------------------------------------------------------
def cmd_convert_mmdet(args: argparse.Namespace) -> int:
    from o2f.deploy.convert_mmdet import convert_mmdet_checkpoint

    try:
        meta = convert_mmdet_checkpoint(args.src, args.dst, args.config, args.overrides,
                                        args.trust_pickle)
    except _user_errors() as err:
        return _fail("convert-mmdet", err)
    names = "with" if meta.get("class_names") else "without"
    print(f"wrote {args.dst}: config {meta['config']}, {meta['num_classes']} classes, {names} "
          "class names")
    return 0


# -- benchmark ---------------------------------------------------------------------------------
def cmd_benchmark(args: argparse.Namespace) -> int:
    import json

    from o2f.deploy.benchmark import format_table, run_benchmark

    try:
        rows = run_benchmark(args.config, args.checkpoint, imgsz=args.imgsz,
                             threads=args.threads, formats=args.formats, repeats=args.repeats,
                             calib=args.calib, calib_images=args.calib_images,
                             overrides=args.overrides, work_dir=args.work_dir)
    except (*_user_errors(), ValueError, ImportError) as err:
        return _fail("benchmark", err)
    lines = [json.dumps(r) for r in rows]
    print("\n".join(lines))
    print(format_table(rows))
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text("\n".join(lines) + "\n")
    return 0


def _register_benchmark(sub: argparse._SubParsersAction) -> None:
    from o2f.deploy.backends import FORMATS

    p = sub.add_parser(
        "benchmark", help="time (and evaluate) eager PyTorch, ONNX Runtime and OpenVINO, "
        "fp32 and int8", description="Export the model of CONFIG (random weights, or "
        "CHECKPOINT) to every format, time one image of short side --imgsz in each, the "
        "formats taking turns after a warm-up (median of --repeats rounds), and with a "
        "CHECKPOINT and the config's data.val set also their COCO box AP. Prints one JSON "
        "line per format (format, ms_per_image, bbox_mAP, speedup, ap_drop, ...) and a table.")
    p.add_argument("config", help=_CONFIG_HELP)
    p.add_argument("checkpoint", nargs="?",
                   help="trained weights (omitted: random weights, speed only; int8 then "
                   "calibrates on synthetic images)")
    p.add_argument("--imgsz", type=int, default=None, metavar="SHORT",
                   help="short side of the image (default: the config's data.test_short; "
                   "the long side follows the config's max_size / test_short)")
    p.add_argument("--threads", type=int, default=1, help="threads of every runtime (1)")
    p.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    p.add_argument("--repeats", type=int, default=7, help="timed rounds (default 7)")
    p.add_argument("--calib", metavar="DIR_OR_ANN", help="int8 calibration images (default: "
                   "data.train with a CHECKPOINT, synthetic scenes without)")
    p.add_argument("--calib-images", type=int, default=32, metavar="N",
                   help="calibration images (default 32)")
    p.add_argument("--work-dir", help="keep the exported files here")
    p.add_argument("--json-out", metavar="F", help="also write the JSON lines to F")
    _add_set(p)
    p.set_defaults(func=cmd_benchmark)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export to ONNX / OpenVINO, fp32 or int8 (NMS-free graph), or to "
        "safetensors weights",
        description="Export the whole pipeline to ONNX: input 'images' uint8 (B, 3, H, W) RGB "
        "with dynamic batch, height and width; outputs boxes (B, K, 4) in input pixels, "
        "scores (B, K) and labels (B, K) for K = test.max_per_img, padded with score 0; no "
        "NMS. --int8 quantizes it (ONNX Runtime QDQ; calibrated on --calib images); "
        "--format openvino (or an .xml output) writes an OpenVINO IR, int8 with NNCF under "
        "--int8. Or write the weights (with config and class names) as safetensors.")
    p.add_argument("config", help=_CONFIG_HELP)
    p.add_argument("checkpoint", nargs="?",
                   help="a .pth checkpoint or .safetensors weights (omitted: random weights, "
                   "for testing a deployment; needs model.num_classes), or an fp32 .onnx "
                   "export to quantize (--int8) or convert (--format openvino)")
    p.add_argument("--output", "-o", required=True,
                   help="the .onnx, OpenVINO .xml (its .bin beside it) or .safetensors file")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--format", choices=("onnx", "openvino", "safetensors"),
                   help="default: from the output suffix (.safetensors, .xml: openvino), "
                   "else onnx")
    p.add_argument("--int8", action="store_true",
                   help="INT8 post-training quantization of the backbone, FPN and head "
                   "convolutions (post-processing stays float): ONNX Runtime static QDQ "
                   "quantization for onnx, NNCF for openvino")
    p.add_argument("--calib", metavar="DIR_OR_ANN",
                   help="with --int8: calibration images, a folder or a COCO-format .json "
                   "(default: the config's data.train.ann_file); resized as at test time")
    p.add_argument("--calib-images", type=int, default=100, metavar="N",
                   help="with --int8: how many calibration images, evenly spaced (default 100)")
    p.add_argument("--calib-method", choices=("minmax", "percentile", "entropy"),
                   default="minmax", help="with --int8 for onnx: ONNX Runtime's calibration "
                   "(default minmax; NNCF uses its own min-max statistics)")
    _add_set(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "predict", help="detect objects in images; write JSON and pictures",
        description="Run a checkpoint on image files or folders (searched recursively for "
        "jpg, jpeg, png, bmp, webp). For each image, OUT/NAME.json holds the boxes (x1, y1, "
        "x2, y2 in the image's pixels), scores, labels and category names, highest score "
        "first (with a mask model, each mask as a COCO RLE 'segmentation'), and OUT/NAME.png "
        "the image with labelled boxes (and tinted masks). Images that cannot be read "
        "are reported and skipped (exit status 1).")
    p.add_argument("config", help=_CONFIG_HELP)
    p.add_argument("checkpoint", help="a .pth checkpoint or .safetensors weights, or an "
                   "export: .onnx or OpenVINO .xml (boxes only; CONFIG '-' uses its stored one)")
    p.add_argument("images", nargs="+", help="image files and/or folders")
    p.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    p.add_argument("--score-thr", type=float, default=0.3,
                   help="keep detections scoring above this (default 0.3; 0.05, the "
                   "evaluation threshold, keeps every detection the model reports)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--tile", type=int, default=None, metavar="PIXELS",
                   help="sliced inference for large images: run square tiles of this side (in "
                   "the original image's pixels, each resized like a whole image) and keep "
                   "each detection only from the tile whose core holds its centre (no NMS)")
    p.add_argument("--overlap", type=float, default=0.2,
                   help="with --tile: the share of a tile that adjacent tiles have in common "
                   "(default 0.2); objects up to this size are never cut")
    _add_set(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "convert-mmdet", help="convert the authors' MMDetection 2.x checkpoint",
        description="Map a released MMDetection 2.x o2f checkpoint (e.g. r50_1x.pth, or a "
        "CondInst-style instance-segmentation one) to o2f weights, checked key by key against "
        "the o2f model of --config. The input is loaded "
        "with torch.load(weights_only=True).")
    p.add_argument("src", metavar="IN.pth", help="the MMDetection checkpoint")
    p.add_argument("dst", metavar="OUT",
                   help="o2f checkpoint (.pth), or safetensors weights (.safetensors)")
    p.add_argument("--config", default=None,
                   help="the o2f config matching the checkpoint (default: condinst_r50_1x for a "
                   "CondInst-style mask checkpoint, else r50_1x; r101_1x ...)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="UNSAFE: fully unpickle the input (can run arbitrary code) when safe "
                   "loading fails; only for files from a source you trust")
    _add_set(p)
    p.set_defaults(func=cmd_convert_mmdet)

    _register_benchmark(sub)
