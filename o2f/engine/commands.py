"""``o2f train``, ``o2f test`` and ``o2f demo``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from o2f.config import load_config


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. train.epochs=1 data.batch_size=4")


def cmd_train(args: argparse.Namespace) -> int:
    from o2f.engine.distributed_setup import cleanup_distributed
    from o2f.engine.train import train

    cfg = load_config(args.config, args.overrides)
    try:
        train(cfg, args.work_dir, resume=args.resume)
    finally:
        cleanup_distributed()
    return 0


def write_results(path: Path, results: list[dict]) -> None:
    """COCO results as one JSON list, or CrowdHuman detections as ``.odgt`` (one record per
    line) when the records carry an odgt ``ID``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if results and "dtboxes" in results[0]:
        from o2f.data.crowdhuman import write_odgt

        write_odgt(results, path)
    else:
        path.write_text(json.dumps(results))


def cmd_test(args: argparse.Namespace) -> int:
    from o2f import distributed as du
    from o2f.builders import detector_from_checkpoint
    from o2f.engine.distributed_setup import cleanup_distributed, init_distributed
    from o2f.engine.evaluate import coco_evaluate, headline_keys, metrics_for_file
    from o2f.engine.logs import setup_logging, write_json
    from o2f.engine.train import build_val_dataset
    from o2f.evaluation.coco import format_per_class_table

    _, _, device = init_distributed()
    log = setup_logging(None, du.is_main_process())
    try:
        config = None if args.config == "-" else args.config
        model, cfg, meta = detector_from_checkpoint(args.checkpoint, config, args.overrides)
        dataset = build_val_dataset(cfg)
        if meta.get("num_classes") and meta["num_classes"] != dataset.num_classes:
            log.warning("the checkpoint has %d classes, %s has %d", meta["num_classes"],
                        cfg.data.val.ann_file, dataset.num_classes)
        metrics, results = coco_evaluate(model.to(device), dataset, device,
                                         cfg.test.batch_size, cfg.data.workers)
        if du.is_main_process():
            if "per_class" in metrics:
                print(format_per_class_table(metrics["per_class"]))
            print(" ".join(f"{k}={metrics[k]:.4f}" for k in headline_keys(metrics)))
            if args.metrics_out:
                write_json(Path(args.metrics_out), metrics_for_file(metrics))
            if args.results_out:
                write_results(Path(args.results_out), results)
    finally:
        cleanup_distributed()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a detector",
                       description="Train; the final checkpoint is WORK_DIR/last.pth. Run under "
                       "torchrun for data-parallel training.")
    p.add_argument("config", help="a shipped config name (e.g. r50_1x, demo) or a YAML path")
    p.add_argument("--work-dir", required=True, help="folder for checkpoints and logs")
    p.add_argument("--resume", action="store_true",
                   help="continue from WORK_DIR/last.pth (starts fresh if there is none)")
    _add_overrides(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("test", help="evaluate a checkpoint (COCO box AP, no NMS)")
    p.add_argument("config", help="config name or path; '-' uses the checkpoint's own config")
    p.add_argument("checkpoint")
    p.add_argument("--metrics-out", help="write bbox_mAP ... (and segm_mAP ... for a mask "
                   "model) as JSON here")
    p.add_argument("--results-out", help="write the detections here: the COCO results format "
                   "(with RLE 'segmentation' for a mask model), or an .odgt of detections for "
                   "CrowdHuman data")
    _add_overrides(p)
    p.set_defaults(func=cmd_test)
