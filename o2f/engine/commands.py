"""``o2f train``, ``o2f test`` and ``o2f demo``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from o2f.config import Config, apply_overrides, load_config


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. train.epochs=1 data.batch_size=4")


def run_train(config: str | Path | Config, work_dir: str | Path,
              overrides: Sequence[str] = (), resume: bool = False) -> dict[str, Any]:
    """What ``o2f train CONFIG --work-dir WORK_DIR [--resume] KEY=VALUE ...`` does.

    Args:
        config: a shipped config name, a YAML path, or a :class:`~o2f.config.Config`.
        work_dir: folder for checkpoints (``last.pth`` ...) and logs.
        overrides: ``key=value`` config overrides.
        resume: continue from ``work_dir/last.pth`` (starts fresh if there is none).

    Returns:
        The last validation metrics (may be empty).
    """
    from o2f.engine.distributed_setup import cleanup_distributed
    from o2f.engine.train import train

    if isinstance(config, Config):
        cfg = apply_overrides(config, list(overrides))
    else:
        cfg = load_config(str(config), list(overrides))
    try:
        return train(cfg, work_dir, resume=resume)
    finally:
        cleanup_distributed()


def cmd_train(args: argparse.Namespace) -> int:
    run_train(args.config, args.work_dir, args.overrides, resume=args.resume)
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


def run_test(
    checkpoint: str | Path, config: str | Path | None = None, overrides: Sequence[str] = (),
    metrics_out: str | Path | None = None, results_out: str | Path | None = None,
    plots: str | Path | None = None, plots_score_thr: float | None = None,
    verbose: bool = True,
) -> dict[str, float]:
    """What ``o2f test CONFIG CHECKPOINT [--metrics-out ...] KEY=VALUE ...`` does.

    Args:
        checkpoint: a ``.pth`` checkpoint, ``.safetensors`` weights, or an export (``.onnx``,
            OpenVINO ``.xml``).
        config: a config name or path; None (or ``"-"``) uses the checkpoint's own config.
        overrides: ``key=value`` config overrides (e.g. ``data.val.ann_file=...``).
        metrics_out: also write the returned metrics here as JSON.
        results_out: write the detections here (COCO results, or ``.odgt`` for CrowdHuman).
        plots: write the evaluation plots into this folder.
        plots_score_thr: score threshold of the confusion matrix and worst images (default:
            the best-F1 threshold).
        verbose: print the per-class table, the headline metrics and the plots' summary.

    Returns:
        The headline metrics (``bbox_mAP``, ``bbox_mAP_50``, ..., ``dup_rate``; ``segm_*``
        for a mask model) as fractions: what ``--metrics-out`` writes.
    """
    from o2f import distributed as du
    from o2f.builders import detector_from_checkpoint
    from o2f.deploy.backends import is_exported_model, load_exported
    from o2f.engine.distributed_setup import cleanup_distributed, init_distributed
    from o2f.engine.evaluate import coco_evaluate, headline_keys, metrics_for_file
    from o2f.engine.logs import setup_logging, write_json
    from o2f.engine.train import build_val_dataset
    from o2f.evaluation.coco import format_per_class_table

    _, _, device = init_distributed()
    log = setup_logging(None, du.is_main_process())
    echo = print if verbose else (lambda *_: None)
    try:
        config = None if config in (None, "-") else str(config)
        if is_exported_model(checkpoint):  # .onnx / .xml: the deployed model's AP
            model, cfg, meta = load_exported(checkpoint, config, list(overrides))
        else:
            model, cfg, meta = detector_from_checkpoint(checkpoint, config, list(overrides))
        names, ids = meta.get("class_names"), meta.get("cat_ids")  # classes of VOC data
        categories = ([{"id": int(i), "name": str(n)} for i, n in zip(ids, names, strict=True)]
                      if names and ids and len(names) == len(ids) else None)
        dataset = build_val_dataset(cfg, categories)
        if meta.get("num_classes") and meta["num_classes"] != dataset.num_classes:
            log.warning("the checkpoint has %d classes, %s has %d", meta["num_classes"],
                        cfg.data.val.ann_file, dataset.num_classes)
        details: dict | None = {} if plots else None
        metrics, results = coco_evaluate(model.to(device), dataset, device,
                                         cfg.test.batch_size, cfg.data.workers, details=details,
                                         precision=cfg.test.precision,
                                         evaluator=cfg.test.evaluator)
        if du.is_main_process():
            if "per_class" in metrics:
                echo(format_per_class_table(metrics["per_class"]))
            echo(" ".join(f"{k}={metrics[k]:.4f}" for k in headline_keys(metrics)))
            if metrics_out:
                write_json(Path(metrics_out), metrics_for_file(metrics))
            if results_out:
                write_results(Path(results_out), results)
            if plots:
                from o2f.evaluation.plots import write_evaluation_plots

                summary = write_evaluation_plots(plots, dataset, details["detections"],
                                                 details, plots_score_thr)
                echo(f"best F1 {summary['best_f1']:.4f} at score threshold "
                     f"{summary['best_f1_score_thr']:.2f}; confusion matrix and worst images "
                     f"at {summary['score_thr']:.2f} (precision {summary['precision']:.4f}, "
                     f"recall {summary['recall']:.4f}); duplicate rate "
                     f"{summary['dup_rate']:.4f}; plots in {plots}/: "
                     + ", ".join(summary["files"]))
    finally:
        cleanup_distributed()
    return metrics_for_file(metrics)


def cmd_test(args: argparse.Namespace) -> int:
    run_test(args.checkpoint, args.config, args.overrides, metrics_out=args.metrics_out,
             results_out=args.results_out, plots=args.plots,
             plots_score_thr=args.plots_score_thr)
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
    p.add_argument("checkpoint", help="a .pth checkpoint or .safetensors weights, or an "
                   "export: .onnx (fp32 or int8) or OpenVINO .xml (its config is stored in it)")
    p.add_argument("--metrics-out", help="write bbox_mAP ... (and segm_mAP ... for a mask "
                   "model) as JSON here")
    p.add_argument("--results-out", help="write the detections here: the COCO results format "
                   "(with RLE 'segmentation' for a mask model), or an .odgt of detections for "
                   "CrowdHuman data")
    p.add_argument("--plots", metavar="DIR",
                   help="write evaluation plots here: PR curves per class (IoU 0.5 and "
                   "0.5:0.95), confusion matrix, F1 against score (best threshold printed), "
                   "duplicate rate, worst images; and their numbers in summary.json")
    p.add_argument("--plots-score-thr", type=float, default=None, metavar="T",
                   help="score threshold of the confusion matrix and worst images (default: "
                   "the best-F1 threshold)")
    _add_overrides(p)
    p.set_defaults(func=cmd_test)
