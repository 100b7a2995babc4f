"""COCO evaluation time: faster_coco_eval (``test.evaluator``'s default) against pycocotools.

``coco_eval``: :func:`o2f.evaluation.coco.evaluate_coco` (index the ground truth, load the
results, evaluate, accumulate, summarize, per-class AP) on a synthetic 5,000-image set (COCO
val2017's size: about 7 objects per image over 80 classes, 5% crowd, sizes from 4 to 400 px)
and a results file of ``--dets`` detections per image (jittered objects, duplicates, misses,
false positives), read from JSON as ``o2f test --results-out`` writes it. ``ours`` is
faster_coco_eval's seconds, ``baseline`` pycocotools', ``ratio`` = ours / baseline (below 1:
faster); ``max_ap_diff`` is the largest difference of the six APs and of the per-class APs
(the two must agree within 1e-4). Each evaluator runs ``--repeats`` times, alternately;
the median counts. ``--segm`` also times mask AP (RLE masks).

    python benchmarks/coco_eval.py [--images 5000] [--dets 100] [--repeats 1] [--segm]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.common import emit, markdown_table, result  # noqa: E402
from o2f.evaluation.coco import evaluate_coco  # noqa: E402

W, H = 640, 480


def _rle(box: list[float]) -> dict:
    from pycocotools import mask as mask_utils

    x, y, w, h = box
    rle = mask_utils.frPyObjects([[x, y, x + w, y, x + w, y + h, x, y + h]], H, W)[0]
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def synthetic(num_images: int, dets_per_image: int, seed: int = 0,
              masks: bool = False) -> tuple[dict, list[dict]]:
    """Ground truth (COCO-format dict) and results (list of records) as the module doc says."""
    rng = np.random.default_rng(seed)
    cats = [{"id": c, "name": f"class{c}"} for c in range(1, 81)]
    images, anns, results = [], [], []
    for i in range(1, num_images + 1):
        images.append({"id": i, "file_name": f"{i:012d}.jpg", "width": W, "height": H})
        objects = []
        for _ in range(int(rng.poisson(7))):
            side = float(np.exp(rng.uniform(np.log(4), np.log(400))))
            w = min(side * rng.uniform(0.5, 1.5), W - 2)
            h = min(side * rng.uniform(0.5, 1.5), H - 2)
            box = [float(rng.uniform(0, W - w - 1)), float(rng.uniform(0, H - h - 1)), w, h]
            cat = int(rng.integers(1, 81))
            ann = {"id": len(anns) + 1, "image_id": i, "category_id": cat, "bbox": box,
                   "area": w * h, "iscrowd": int(rng.random() < 0.05)}
            if masks:
                ann["segmentation"] = _rle(box)
            anns.append(ann)
            objects.append((box, cat))
        dets = []
        for box, cat in objects:
            if rng.random() < 0.15:
                continue
            for _ in range(1 + int(rng.random() < 0.2)):
                j = rng.normal(0, 0.08 * math.sqrt(box[2] * box[3]), 4)
                dets.append(([max(0.0, box[0] + j[0]), max(0.0, box[1] + j[1]),
                              max(1.0, box[2] + j[2]), max(1.0, box[3] + j[3])], cat,
                             float(rng.uniform(0.3, 1))))
        while len(dets) < dets_per_image:
            w, h = rng.uniform(4, 200, 2)
            dets.append(([float(rng.uniform(0, W - w)), float(rng.uniform(0, H - h)), w, h],
                         int(rng.integers(1, 81)), float(rng.uniform(0.01, 0.5))))
        for box, cat, score in dets[:dets_per_image]:
            rec = {"image_id": i, "category_id": cat, "bbox": box, "score": score}
            if masks:
                rec["segmentation"] = _rle(box)
            results.append(rec)
    return {"images": images, "annotations": anns, "categories": cats}, results


def _timed(gt: dict, results_file: Path, iou_type: str, evaluator: str) -> tuple[float, dict]:
    results = json.loads(results_file.read_text())
    start = time.perf_counter()
    metrics = evaluate_coco(gt, results, iou_type=iou_type, evaluator=evaluator)
    return time.perf_counter() - start, metrics


def _max_diff(a: dict, b: dict, iou_type: str) -> float:
    pairs = [(a[k], b[k]) for k in a if k.startswith(iou_type)]
    pairs += [(x["AP"], y["AP"]) for x, y in zip(a["per_class"], b["per_class"], strict=True)]
    return max((0.0 if math.isnan(x) and math.isnan(y) else abs(x - y)) for x, y in pairs)


def run(num_images: int = 5000, dets: int = 100, repeats: int = 1,
        segm: bool = False) -> list[dict]:
    gt, results = synthetic(num_images, dets, masks=segm)
    rows = []
    with tempfile.TemporaryDirectory(prefix="o2f-eval-") as tmp:
        results_file = Path(tmp) / "results.json"
        results_file.write_text(json.dumps(results))
        del results
        for iou_type in ("bbox", "segm") if segm else ("bbox",):
            times: dict[str, list[float]] = {"faster_coco_eval": [], "pycocotools": []}
            metrics: dict[str, dict] = {}
            for r in range(repeats):
                order = ("faster_coco_eval", "pycocotools")
                for evaluator in order if r % 2 == 0 else order[::-1]:
                    seconds, metrics[evaluator] = _timed(gt, results_file, iou_type, evaluator)
                    times[evaluator].append(seconds)
            ours, base = (statistics.median(times[e]) for e in times)
            diff = _max_diff(metrics["faster_coco_eval"], metrics["pycocotools"], iou_type)
            ap = metrics["pycocotools"][f"{iou_type}_mAP"]
            rows.append(emit(result(
                f"coco_eval_{iou_type}" if segm else "coco_eval", ours, base, "s",
                images=num_images, detections=num_images * dets, gt=len(gt["annotations"]),
                repeats=repeats, max_ap_diff=diff, ap=ap, cpus=os.cpu_count(),
                note=f"faster_coco_eval vs pycocotools, {iou_type} AP {ap:.4f} both (max "
                     f"difference {diff:.1e}, per-class included), {num_images} images x "
                     f"{dets} detections")))
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--dets", type=int, default=100, help="detections per image")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--segm", action="store_true", help="also mask AP (RLE masks)")
    a = p.parse_args(argv)
    rows = run(a.images, a.dets, a.repeats, a.segm)
    print(markdown_table(rows))
    return rows


if __name__ == "__main__":
    main()
