"""``o2f export``, ``o2f predict`` and ``o2f convert-mmdet``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("o2f.deploy")

_CONFIG_HELP = ("a shipped config name (e.g. r50_1x) or a YAML path; '-' uses the config "
                "stored with the checkpoint")


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override (repeatable), e.g. --set test.max_per_img=50")


def _fail(command: str, err: Exception) -> int:
    print(f"o2f {command}: error: {err}", file=sys.stderr)
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


def cmd_export(args: argparse.Namespace) -> int:
    from o2f.deploy.weights import is_safetensors, save_safetensors_weights

    fmt = args.format or ("safetensors" if is_safetensors(args.output) else "onnx")
    try:
        model, cfg, meta = _export_model(args)
    except _user_errors() as err:
        return _fail("export", err)
    model = model.cpu().eval()
    if fmt == "safetensors":
        save_safetensors_weights(model.state_dict(), args.output, cfg.to_dict(), meta)
        print(f"wrote {args.output} (safetensors weights, config and meta)")
        return 0
    from o2f.deploy.export_onnx import export_onnx

    names = meta.get("class_names") or [str(i) for i in range(model.head.num_classes)]
    exporter = export_onnx(model, args.output, opset=args.opset,
                           metadata={"class_names": list(names)})
    print(f"wrote {args.output} (ONNX opset {args.opset}, exporter: {exporter}; input 'images' "
          f"uint8 (B, 3, H, W) RGB; outputs boxes/scores/labels for K={model.max_per_img})")
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
        result = detector.predict(image, score_thr=args.score_thr)
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


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export to ONNX (NMS-free graph) or to safetensors weights",
        description="Export the whole pipeline to ONNX: input 'images' uint8 (B, 3, H, W) RGB "
        "with dynamic batch, height and width; outputs boxes (B, K, 4) in input pixels, "
        "scores (B, K) and labels (B, K) for K = test.max_per_img, padded with score 0; no "
        "NMS. Or write the weights (with config and class names) as safetensors.")
    p.add_argument("config", help=_CONFIG_HELP)
    p.add_argument("checkpoint", nargs="?",
                   help="a .pth checkpoint or .safetensors weights (omitted: random weights, "
                   "for testing a deployment; needs model.num_classes)")
    p.add_argument("--output", "-o", required=True, help="the .onnx or .safetensors file")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--format", choices=("onnx", "safetensors"),
                   help="default: from the output suffix (.safetensors), else onnx")
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
    p.add_argument("checkpoint", help="a .pth checkpoint or .safetensors weights")
    p.add_argument("images", nargs="+", help="image files and/or folders")
    p.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    p.add_argument("--score-thr", type=float, default=0.3,
                   help="keep detections scoring above this (default 0.3; 0.05, the "
                   "evaluation threshold, keeps every detection the model reports)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
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
