"""Measure the NMS-free claim: FCOS (one-to-many), o2o (one-to-one) and o2f trained alike.

    python benchmarks/nms_free.py [--epochs E] [--iters-per-epoch I] [--num-train N]
        [--assigners fcos o2o o2f] [--seed S] [--config demo] [--work-dir DIR]
        [--data-dir DIR] [--json-out FILE] [--set KEY=VALUE ...]

Each assigner trains with the library's training engine on the embedded synthetic dataset (the
``o2f demo`` data: crowded shapes, half of them placed next to an earlier object at IoU 0.3-0.7)
with the same config, budget and seed; only ``model.assigner`` and the GIoU weight of the
assigner's own recipe (see ``o2f.criterion.RECIPE_BBOX_WEIGHT``) differ. Every trained detector
is then evaluated on the validation split twice, without NMS and with class-wise NMS at
``test.nms_iou``, giving COCO box mAP and the duplicate rate (share of detections with score >= 0.3
that overlap a higher-scored detection of the same class at IoU >= 0.7,
``o2f.evaluation.duplicates``). It prints one JSON line per assigner, then a markdown table and
the three checks of the claim. ``--num-train N`` trains on the first N images of the demo's
training split (the generator makes image i from (seed, split, i) alone).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads libgomp (see run.py)
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from benchmarks.common import emit, setup_threads  # noqa: E402

ASSIGNERS = ("fcos", "o2o", "o2f")
FAR_BELOW_AP = 3.0  # AP points: what "far below" means in the checks


def prepare_data(data_dir: Path, num_train: int | None) -> dict[str, Path]:
    """The demo dataset in ``data_dir``, or its first ``num_train`` training images (same
    validation split) in ``data_dir-nN``; generated when missing."""
    from o2f.data.synthetic import generate_synthetic_coco
    from o2f.engine.demo import DEMO_DATA, ensure_demo_data

    if num_train is None or num_train == DEMO_DATA["num_train"]:
        return ensure_demo_data(data_dir)
    out = data_dir.with_name(f"{data_dir.name}-n{num_train}")
    ann = out / "annotations"
    if (ann / "train.json").is_file() and (ann / "val.json").is_file():
        return {"train_ann": ann / "train.json", "val_ann": ann / "val.json",
                "train_images": out / "train", "val_images": out / "val"}
    return generate_synthetic_coco(out, **{**DEMO_DATA, "num_train": num_train})


def overrides_for(assigner: str, args: argparse.Namespace, paths: dict[str, Path]) -> list[str]:
    """Config overrides of one run: data, budget, seed, assigner (user --set last)."""
    from o2f.criterion import RECIPE_BBOX_WEIGHT

    out = [
        f"data.train.ann_file={paths['train_ann']}", f"data.train.img_dir={paths['train_images']}",
        f"data.val.ann_file={paths['val_ann']}", f"data.val.img_dir={paths['val_images']}",
        f"model.assigner={assigner}", f"train.seed={args.seed}", "train.val_interval=0",
        "test.nms=false",
    ]
    if args.epochs is not None:
        out.append(f"train.epochs={args.epochs}")
    if args.iters_per_epoch is not None:
        out.append(f"train.max_iters_per_epoch={args.iters_per_epoch}")
    if not any(s.startswith("model.loss.bbox_weight=") for s in args.set):
        out.append(f"model.loss.bbox_weight={RECIPE_BBOX_WEIGHT[assigner]}")
    return out + list(args.set)


def evaluate(model, dataset, device: torch.device, cfg, nms: bool) -> dict[str, float]:
    """Box mAP and duplicate rate of ``model`` on ``dataset`` with NMS on or off."""
    from o2f.engine.evaluate import run_inference

    model.nms = nms
    dets = run_inference(model, dataset, device, cfg.test.batch_size, cfg.data.workers,
                         desc=f"test nms={nms}")
    return detection_metrics([dets[i] for i in dataset.ids], dataset)


def detection_metrics(per_image: list[dict], dataset) -> dict[str, float]:
    """Box mAP, AP50, duplicate rate and detections per image of any detector's output.

    Args:
        per_image: one dict per image of ``dataset`` in ``dataset.ids`` order, with ``boxes``
            (K, 4) x1, y1, x2, y2 in original-image pixels, ``scores`` (K,) and ``labels`` (K,)
            contiguous labels (``dataset.cat_ids[label]`` is the category id).
        dataset: an ``o2f.data.CocoDetection`` (its ``coco``, ``ids`` and ``cat_ids``).
    """
    from o2f.evaluation.coco import detections_to_coco_results, evaluate_coco
    from o2f.evaluation.duplicates import duplicate_rate

    image_ids = list(dataset.ids)
    results = detections_to_coco_results(per_image, image_ids, dataset.cat_ids)
    metrics = evaluate_coco(dataset.coco, results, image_ids)
    return {"bbox_mAP": metrics["bbox_mAP"], "bbox_mAP_50": metrics["bbox_mAP_50"],
            "dup_rate": duplicate_rate(per_image),
            "dets_per_img": sum(len(d["scores"]) for d in per_image) / max(1, len(per_image))}


def run_assigner(assigner: str, args: argparse.Namespace, paths: dict[str, Path]) -> dict:
    """Train one assigner, evaluate it with and without NMS; returns its JSON row."""
    from o2f.config import load_config
    from o2f.engine.train import Trainer, build_val_dataset

    cfg = load_config(args.config, overrides_for(assigner, args, paths))
    start = time.perf_counter()
    trainer = Trainer(cfg, Path(args.work_dir) / assigner)
    trainer.run()
    train_s = time.perf_counter() - start
    val_set = build_val_dataset(trainer.cfg)
    model = trainer.eval_model()  # the EMA of the weights with train.ema=true
    row: dict[str, Any] = {"name": f"nms_free_{assigner}", "assigner": assigner}
    for nms in (False, True):
        suffix = "nms" if nms else "no_nms"
        for key, value in evaluate(model, val_set, trainer.device, trainer.cfg, nms).items():
            row[f"{key}_{suffix}"] = value
    last = trainer.history[-1] if trainer.history else {}
    row.update({
        "epochs": trainer.cfg.train.epochs, "iterations": trainer.iteration,
        "num_train": len(trainer.train_set), "num_val": len(val_set), "seed": args.seed,
        "batch_size": trainer.cfg.data.batch_size, "train_s": train_s,
        "final_loss": {k: v for k, v in last.items() if k.startswith("loss")},
        "config": args.config, "device": str(trainer.device),
    })
    return row


def _ap(x: float | None) -> str:
    return "-" if x is None or x != x else f"{100 * x:.1f}"


def table(rows: list[dict]) -> str:
    """Markdown table, AP in points (0-100)."""
    header = ["assigner", "mAP no NMS", "mAP NMS", "AP50 no NMS", "AP50 NMS",
              "dup rate no NMS", "dup rate NMS", "dets/img no NMS", "iterations", "train s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["assigner"], _ap(r["bbox_mAP_no_nms"]), _ap(r["bbox_mAP_nms"]),
                 _ap(r["bbox_mAP_50_no_nms"]), _ap(r["bbox_mAP_50_nms"]),
                 f"{r['dup_rate_no_nms']:.3f}", f"{r['dup_rate_nms']:.3f}",
                 f"{r['dets_per_img_no_nms']:.1f}", str(r["iterations"]), f"{r['train_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def checks(rows: list[dict]) -> list[str]:
    """The issue's three checks, each with its measured margin (AP points)."""
    by = {r["assigner"]: r for r in rows}
    out = []
    if {"o2f", "fcos"} <= by.keys():
        gap = 100 * (by["o2f"]["bbox_mAP_no_nms"] - by["fcos"]["bbox_mAP_nms"])
        out.append(f"o2f without NMS vs FCOS with NMS: {gap:+.1f} AP "
                   f"({'holds' if gap >= -1.0 else 'fails'}: needs >= -1.0)")
        worst = min(by["fcos"]["bbox_mAP_nms"], by["o2f"]["bbox_mAP_no_nms"])
        gap = 100 * (by["fcos"]["bbox_mAP_no_nms"] - worst)
        out.append(f"FCOS without NMS vs the lower of (FCOS with NMS, o2f without NMS): "
                   f"{gap:+.1f} AP ({'holds' if gap <= -FAR_BELOW_AP else 'fails'}: "
                   f"'far below' taken as <= -{FAR_BELOW_AP:.0f})")
    if {"o2f", "o2o"} <= by.keys():
        gap = 100 * (by["o2f"]["bbox_mAP_no_nms"] - by["o2o"]["bbox_mAP_no_nms"])
        out.append(f"o2f vs o2o, both without NMS: {gap:+.1f} AP "
                   f"({'holds' if gap > 0 else 'fails'}: needs > 0)")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=None, help="train.epochs (default: the config)")
    p.add_argument("--iters-per-epoch", type=int, default=None,
                   help="train.max_iters_per_epoch, 0 = whole epoch (default: the config)")
    p.add_argument("--num-train", type=int, default=None,
                   help="first N training images of the demo data (default: all 1600)")
    p.add_argument("--assigners", nargs="+", choices=ASSIGNERS, default=list(ASSIGNERS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default="demo")
    p.add_argument("--work-dir", default="work_dirs/nms_free")
    p.add_argument("--data-dir", default="data/synthetic")
    p.add_argument("--json-out", default=None, help="also write the rows here (JSON lines)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 2)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides for every run")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    setup_threads(args.threads)
    paths = prepare_data(Path(args.data_dir), args.num_train)
    rows = [emit(run_assigner(a, args, paths)) for a in args.assigners]
    if args.json_out:
        Path(args.json_out).write_text("".join(json.dumps(r, default=float) + "\n"
                                               for r in rows))
    print()
    print(table(rows))
    print()
    for line in checks(rows):
        print(f"- {line}")
    return rows


if __name__ == "__main__":
    main()
