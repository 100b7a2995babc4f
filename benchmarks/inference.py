"""Inference: whole R-50 model latency and post-processing alone, ours vs torchvision's FCOS.

``infer_r50``: one 800x1333 image, eval mode, random weights (prior-probability init, so no
candidate passes either score threshold: this row is the network plus trivial selection; the
selection with realistic maps is the ``postprocess`` row).

``postprocess``: the same head-output maps (B = 1, 800x1344 input, C = 80) through ours
(``O2FDetector.postprocess``: batched ``select_topk``, no NMS) and torchvision's
``FCOS.postprocess_detections`` + ``transform.postprocess`` (per-level Python loop, top-1000,
class-wise NMS at 0.6). The maps imitate a trained detector: 30 objects (COCO-like sizes, some
overlapping), each lighting up the points near its centre on its FPN level and the next one,
with one or two confusable classes, boxes regressed to the object with 5% noise, over a
low-scoring background; about 5k (point, class) pairs pass score > 0.05. torchvision's
threshold is on sqrt(p), so it is set to sqrt(0.05) and the same pairs pass on both sides; its
regression is ltrb / stride on anchors of side = stride centred on our points, so both decode
the same boxes.

    python benchmarks/inference.py [--quick] [--only infer_r50 postprocess]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see run.py: before torch loads
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from benchmarks.common import (  # noqa: E402
    emit,
    interleaved,
    markdown_table,
    result,
    setup_threads,
)
from benchmarks.workloads import (  # noqa: E402
    NUM_CLASSES,
    build_ours,
    infer_workload,
    r50_config,
    tv_fcos_r50,
)
from o2f.boxes import level_points  # noqa: E402

STRIDES = (8, 16, 32, 64, 128)
FCOS_RANGES = (0, 64, 128, 256, 512, math.inf)  # object size -> FPN level, as FCOS assigns


def realistic_maps(height: int = 800, width: int = 1333, num_objects: int = 30,
                   seed: int = 0) -> dict[str, list[Tensor]]:
    """Per-level head outputs (B = 1) that look like a trained detector's (see module doc)."""
    gen = torch.Generator().manual_seed(seed)
    pad_h, pad_w = math.ceil(height / 32) * 32, math.ceil(width / 32) * 32
    sizes = [(pad_h // s, pad_w // s) for s in STRIDES[:3]]
    for _ in STRIDES[3:]:
        sizes.append((math.ceil(sizes[-1][0] / 2), math.ceil(sizes[-1][1] / 2)))
    cls = [torch.randn(1, NUM_CLASSES, h, w, generator=gen) * 1.2 - 5.2 for h, w in sizes]
    ctr = [torch.randn(1, 1, h, w, generator=gen) * 0.8 - 0.5 for h, w in sizes]
    ltrb = [torch.rand(1, 4, h, w, generator=gen) * 3 * s for (h, w), s in zip(sizes, STRIDES)]
    centers = torch.rand(num_objects, 2, generator=gen) * torch.tensor([width, height])
    obj_size = torch.exp(torch.empty(num_objects).uniform_(math.log(12), math.log(600),
                                                           generator=gen))
    labels = torch.randint(0, NUM_CLASSES, (num_objects, 3), generator=gen)
    for o in range(num_objects):
        cx, cy = centers[o].tolist()
        sz = float(obj_size[o])
        box = torch.tensor([cx - sz / 2, cy - sz * 0.4, cx + sz / 2, cy + sz * 0.4])
        level = next(i for i in range(5) if FCOS_RANGES[i] <= sz < FCOS_RANGES[i + 1])
        for lv, strength in ((level, 1.0), (min(level + 1, 4), 0.5)):
            s = STRIDES[lv]
            h, w = sizes[lv]
            r = max(2, int(sz / s / 3))  # cells around the centre that respond
            j0, i0 = int(cx / s), int(cy / s)
            for i in range(max(0, i0 - r), min(h, i0 + r + 1)):
                for j in range(max(0, j0 - r), min(w, j0 + r + 1)):
                    d = math.hypot(i - i0, j - j0) / r
                    if d > 1:
                        continue
                    px, py = (j + 0.5) * s, (i + 0.5) * s
                    peak = strength * (4.0 - 6.0 * d)
                    cls[lv][0, labels[o, 0], i, j] = peak
                    cls[lv][0, labels[o, 1], i, j] = peak - 2.5
                    cls[lv][0, labels[o, 2], i, j] = peak - 4.0
                    ctr[lv][0, 0, i, j] = 3.0 - 4.0 * d
                    noise = 1 + 0.05 * torch.randn(4, generator=gen)
                    dist = torch.stack((px - box[0], py - box[1], box[2] - px, box[3] - py))
                    ltrb[lv][0, :, i, j] = (dist.clamp(min=1.0) * noise).clamp(min=0.5)
    return {"cls": cls, "ltrb": ltrb, "ctr": ctr, "sizes": sizes, "image": (height, width)}


def count_candidates(maps: dict, thr: float = 0.05, nms_pre: int = 1000) -> tuple[int, int]:
    """(pairs with score > thr, pairs left after the per-level top ``nms_pre``)."""
    total = kept = 0
    for c, t in zip(maps["cls"], maps["ctr"]):
        n = int(((torch.sigmoid(c) * torch.sigmoid(t)) > thr).sum())
        total, kept = total + n, kept + min(n, nms_pre)
    return total, kept


def postprocess_fns(maps: dict) -> tuple:
    """(ours, baseline) zero-argument callables over the same maps."""
    height, width = maps["image"]
    ours_model = build_ours(r50_config(), train=False)
    points, _ = level_points(maps["sizes"], STRIDES)
    counts = [h * w for h, w in maps["sizes"]]
    per_level = list(points.split(counts))
    image_sizes = torch.tensor([[height, width]])
    targets = [{"scale_factor": (1.0, 1.0)}]

    def ours() -> list:
        return ours_model.postprocess(maps["cls"], maps["ltrb"], maps["ctr"], per_level,
                                      image_sizes, targets)

    tv = tv_fcos_r50(train=False)
    tv.score_thresh = math.sqrt(0.05)  # its score is sqrt(cls * ctr): same pairs pass

    def flat(x: Tensor) -> Tensor:
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])

    head = {
        "cls_logits": [flat(c) for c in maps["cls"]],
        "bbox_regression": [flat(r) / s for r, s in zip(maps["ltrb"], STRIDES)],
        "bbox_ctrness": [flat(c) for c in maps["ctr"]],
    }
    anchors = [[torch.cat((p - s / 2, p + s / 2), 1) for p, s in zip(per_level, STRIDES)]]
    sizes = [(height, width)]

    def baseline() -> list:
        det = tv.postprocess_detections(head, anchors, sizes)
        return tv.transform.postprocess(det, sizes, sizes)

    return ours, baseline


def run(quick: bool = False, only: tuple[str, ...] = ("infer_r50", "postprocess"),
        height: int = 800, width: int = 1333) -> list[dict]:
    threads = setup_threads()
    rows = []
    if "infer_r50" in only:
        ours, base = infer_workload("ours", height, width), infer_workload("tv", height, width)
        reps = 2 if quick else 7
        t = interleaved(ours, base, repeats=reps, warmup=1, min_sample_s=0.0)
        rows.append(emit(result(
            "infer_r50", t.ours_median, t.baseline_median, "s", threads=threads,
            repeats=reps, image=f"{height}x{width}", batch=1,
            baseline_model="fcos_resnet50_fpn(weights=None, weights_backbone=None, C=80)",
            note=f"1 image {height}x{width}, eval, random init")))
        del ours, base
    if "postprocess" in only:
        maps = realistic_maps(height, width)
        ours, base = postprocess_fns(maps)
        n_ours, n_base = len(ours()[0]["scores"]), len(base()[0]["scores"])
        total, kept = count_candidates(maps)
        reps = 5 if quick else 15
        t = interleaved(ours, base, repeats=reps, warmup=2, min_sample_s=0.05 if quick else 0.2)
        rows.append(emit(result(
            "postprocess", t.ours_median, t.baseline_median, "s", threads=threads,
            repeats=reps, candidates=total, nms_input=kept, detections_ours=n_ours,
            detections_baseline=n_base,
            note=f"same maps, {total} pairs > 0.05, {kept} after top-1000/level (NMS input)")))
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", nargs="+", default=["infer_r50", "postprocess"])
    a = p.parse_args(argv)
    rows = run(a.quick, tuple(a.only))
    print(markdown_table(rows))
    return rows


if __name__ == "__main__":
    main()
