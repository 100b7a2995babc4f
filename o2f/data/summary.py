"""What a training set looks like to the model: counts and object sizes after the resize.

Computed from the annotation records alone (no image is read), so it is cheap at the start of a
run even for COCO. Object sizes are sqrt(w * h) of the target boxes, scaled as the training
resize scales their image (:func:`o2f.data.transforms.resize_scale` with the long-side cap and
the mean of the short-side range); objects smaller than the finest FPN stride are hard to
assign a point to, so a large share of them calls for a larger input size.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from o2f.data.coco import CocoDetection
from o2f.data.transforms import resize_scale

SMALL_SHARE_WARNING = 0.2  # warn when more than this share of objects is below the finest stride
PERCENTILES = (5, 50, 95)


def summarize_dataset(dataset: CocoDetection, max_size: int, short_sizes: Sequence[int],
                      finest_stride: int) -> dict[str, Any]:
    """Counts and object sizes of ``dataset``'s items and target boxes.

    Args:
        dataset: the training set (its target boxes: crowd and degenerate boxes excluded).
        max_size: long-side cap of the training resize (``data.max_size``).
        short_sizes: the short-side range [lo, hi] (``data.train_short``); its mean is used.
        finest_stride: the first FPN stride (``model.strides[0]``).

    Returns:
        plain data: ``images``, ``objects``, ``objects_per_image`` (``mean``, ``max``),
        ``resize`` (``max_size``, ``short``), ``object_size`` (``p5``, ``p50``, ``p95``, in
        resized pixels; None without objects), ``finest_stride`` and ``below_finest_stride``
        (the share of objects with a resized size < the stride).
    """
    boxes, items = dataset.target_boxes()
    short = float(np.mean(short_sizes))
    infos = [dataset.image_info(i) for i in range(len(dataset))]
    scales = np.array([resize_scale(im["width"], im["height"], max_size, short)
                       for im in infos], dtype=np.float64)
    wh = (boxes[:, 2:] - boxes[:, :2]).astype(np.float64)
    sizes = np.sqrt(wh[:, 0] * wh[:, 1]) * scales[items]
    counts = np.bincount(items, minlength=len(infos))
    percentiles = (dict(zip((f"p{p}" for p in PERCENTILES),
                            (round(float(v), 2) for v in np.percentile(sizes, PERCENTILES)),
                            strict=True))
                   if len(sizes) else None)
    return {
        "ann_file": str(dataset.ann_file),
        "images": len(infos),
        "objects": len(sizes),
        "objects_per_image": {"mean": round(float(counts.mean()), 3) if len(infos) else 0.0,
                              "max": int(counts.max()) if len(infos) else 0},
        "resize": {"max_size": int(max_size), "short": short},
        "object_size": percentiles,
        "finest_stride": int(finest_stride),
        "below_finest_stride": round(float((sizes < finest_stride).mean()), 4)
        if len(sizes) else 0.0,
    }


def log_dataset_summary(summary: dict[str, Any], log: logging.Logger) -> None:
    """One INFO line of :func:`summarize_dataset`'s numbers, and a WARNING when more than 20%
    of the objects are smaller than the finest stride."""
    sizes = summary["object_size"] or {}
    log.info("training set: %d images, %d objects (per image: mean %.2f, max %d); object sizes "
             "sqrt(w*h) after resizing to short side %g / long side <= %d: %s; %.1f%% below "
             "the finest stride %d", summary["images"], summary["objects"],
             summary["objects_per_image"]["mean"], summary["objects_per_image"]["max"],
             summary["resize"]["short"], summary["resize"]["max_size"],
             " ".join(f"{k} {v:g}" for k, v in sizes.items()) or "none",
             100 * summary["below_finest_stride"], summary["finest_stride"])
    if summary["below_finest_stride"] > SMALL_SHARE_WARNING:
        log.warning("%.1f%% of the training objects are smaller than the finest stride (%d px) "
                    "after resizing: consider raising data.train_short, data.test_short and "
                    "data.max_size", 100 * summary["below_finest_stride"],
                    summary["finest_stride"])
