"""Inference over a dataset, sharded across ranks and gathered, then COCO metrics (or the
CrowdHuman metrics when the annotations are a CrowdHuman ``.odgt`` file)."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from o2f import distributed as du
from o2f.data import collate
from o2f.engine.precision import autocast_dtype
from o2f.evaluation.duplicates import duplicate_rate
from o2f.models.fuse import for_inference

METRIC_KEYS = ("bbox_mAP", "bbox_mAP_50", "bbox_mAP_75", "bbox_mAP_s", "bbox_mAP_m", "bbox_mAP_l")
SEGM_KEYS = ("segm_mAP", "segm_mAP_50", "segm_mAP_75", "segm_mAP_s", "segm_mAP_m", "segm_mAP_l")
CROWDHUMAN_KEYS = ("AP", "mMR", "Recall", "JI")

logger = logging.getLogger(__name__)


def headline_keys(metrics: dict) -> tuple[str, ...]:
    """The metrics a run reports: COCO box AP (and mask AP for a mask model) and the duplicate
    rate, or CrowdHuman's AP / mMR / Recall / JI."""
    if "mMR" in metrics:
        return CROWDHUMAN_KEYS
    keys = METRIC_KEYS + SEGM_KEYS if "segm_mAP" in metrics else METRIC_KEYS
    return keys + ("dup_rate",) if "dup_rate" in metrics else keys


def primary_metric(metrics: dict) -> str:
    """The AP that ranks checkpoints (``best.pth``, ``train.patience``): CrowdHuman's ``AP``,
    ``segm_mAP`` for a mask model, else ``bbox_mAP``."""
    if "mMR" in metrics:
        return "AP"
    return "segm_mAP" if "segm_mAP" in metrics else "bbox_mAP"


def metrics_for_file(metrics: dict) -> dict[str, float]:
    """The headline metrics as fractions; a COCO size range without ground truth (NaN from the
    evaluator, -1 in pycocotools) is written as 0.0 so the file stays plain JSON. The number of
    images that could not be read (evaluated with no detections) is kept when there were any."""
    out = {k: (0.0 if math.isnan(metrics[k]) else float(metrics[k]))
           for k in headline_keys(metrics)}
    if metrics.get("unreadable_images"):
        out["unreadable_images"] = int(metrics["unreadable_images"])
    return out


@torch.no_grad()
def run_inference(
    model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 1,
    workers: int = 2, desc: str = "test", report: dict | None = None, precision: str = "fp32",
) -> dict[int, dict[str, torch.Tensor]]:
    """Detections of every image of ``dataset``, keyed by image id, on every rank.

    The images are taken in the order of :func:`inference_order` (by aspect ratio, so a batch
    of ``batch_size`` images holds like-shaped ones and the model pads each batch to little
    more than its largest image: the head's GroupNorm sees the padding, so a portrait image in
    a landscape batch would be detected differently than alone). Rank r runs positions
    ``r, r + world, ...`` of that order (shards differ by at most one image; no image is
    repeated to even them out); the results are gathered so that no image is dropped or
    counted twice. The network runs under autocast in ``precision`` (``test.precision``:
    fp32, bf16, fp16 or auto, see :func:`o2f.engine.precision.autocast_dtype`); box
    selection and masks run in fp32. Boxes are in original-image pixels, on the CPU. A mask
    model's ``masks`` (K, H, W) are encoded at once as ``rles``, K compressed COCO RLEs
    (:func:`o2f.evaluation.coco.encode_masks`), which keeps 5000 images small. An image
    the dataset could not read (``unreadable`` in its target) gets no detections; their ids go
    to ``report["unreadable_ids"]`` when a ``report`` dict is given, and to a warning.
    """
    rank, world = du.rank(), du.world_size()
    dtype = autocast_dtype(precision, device, key="test.precision")
    shard = Subset(dataset, inference_order(dataset)[rank::world].tolist())
    loader = DataLoader(shard, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                        pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    # eval-only copy, BatchNorm folded: same detections, faster; an export
    # (o2f.deploy.backends.ExportedModel) runs as it is
    net = for_inference(model) if isinstance(model, nn.Module) else model
    local: dict[int, dict[str, torch.Tensor]] = {}
    unreadable: list[int] = []
    for images, targets in tqdm(loader, desc=desc, disable=not du.is_main_process(),
                                dynamic_ncols=True):
        images = [img.to(device, non_blocking=True) for img in images]
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            dets = net(images, targets)
        for det, tgt in zip(dets, targets, strict=True):
            if tgt.get("unreadable"):  # counted with no detections, never dropped
                det = {k: v[:0] for k, v in det.items()}
                unreadable.append(int(tgt["image_id"]))
            local[int(tgt["image_id"])] = _to_host(det)
    model.train(was_training)
    merged: dict[int, dict[str, torch.Tensor]] = {}
    bad: list[int] = []
    for part, part_bad in du.all_gather_objects((local, unreadable)):
        merged.update(part)
        bad += part_bad
    if len(merged) != len(dataset):
        raise RuntimeError(f"inference covered {len(merged)} of {len(dataset)} images")
    if bad and du.is_main_process():
        logger.warning("%d image(s) could not be read and count with no detections: ids %s",
                       len(bad), sorted(bad)[:20])
    if report is not None:
        report["unreadable_ids"] = sorted(bad)
    return merged


def inference_order(dataset: Dataset) -> np.ndarray:
    """Item indices (len(dataset),) int64 sorted by aspect ratio (height / width; ties by
    area, then index), so that consecutive items resize to equal or close sizes. Uses the
    dataset's ``image_sizes()`` ((N, 2) width, height) or ``image_info(i)``; a dataset with
    neither keeps its own order."""
    if hasattr(dataset, "image_sizes"):
        wh = np.asarray(dataset.image_sizes(), dtype=np.float64).reshape(-1, 2)
    elif hasattr(dataset, "image_info"):
        infos = [dataset.image_info(i) for i in range(len(dataset))]
        wh = np.array([(im["width"], im["height"]) for im in infos], dtype=np.float64)
    else:
        return np.arange(len(dataset), dtype=np.int64)
    wh = wh.reshape(-1, 2)
    index = np.arange(len(wh))
    return np.lexsort((index, wh[:, 0] * wh[:, 1], wh[:, 1] / wh[:, 0])).astype(np.int64)


def _to_host(det: dict[str, torch.Tensor]) -> dict:
    """One image's detections on the CPU, its masks (if any) as compressed RLEs."""
    from o2f.evaluation.coco import encode_masks

    out: dict = {k: v.cpu() for k, v in det.items() if k != "masks"}
    if "masks" in det:
        out["rles"] = encode_masks(det["masks"])
    return out


def coco_evaluate(
    model: nn.Module, dataset, device: torch.device, batch_size: int = 1, workers: int = 2,
    details: dict | None = None, precision: str = "fp32", evaluator: str = "faster_coco_eval",
) -> tuple[dict, list[dict]]:
    """Metrics of ``model`` on a :class:`o2f.data.CocoDetection` in eval mode, inferred in
    batches of ``batch_size`` in ``precision`` (:func:`run_inference`; ``test.batch_size``,
    ``test.precision``) and scored by ``evaluator`` (``test.evaluator``: faster_coco_eval or
    pycocotools, :mod:`o2f.evaluation.coco`; same AP).

    Returns:
        metrics (empty on ranks other than 0) and the detections. For COCO-format data: the
        ``bbox_mAP`` ... keys (and ``segm_mAP`` ... when the model predicts masks),
        ``dup_rate`` (:func:`o2f.evaluation.duplicates.duplicate_rate`: what NMS would remove)
        and ``per_class``, and detections in the COCO results format with the dataset's own
        category ids (with an RLE ``segmentation`` for a mask model). For CrowdHuman
        ``.odgt`` data: ``AP``, ``mMR``, ``Recall``, ``JI`` (SPEC §7), and detections as
        ``.odgt`` records. ``details``, when a dict, receives (rank 0) ``detections`` (image id
        -> ``boxes`` (K, 4), ``scores`` (K,), ``labels`` (K,)) and, for COCO-format data, the
        box evaluator's ``precision`` array (:func:`o2f.evaluation.coco.evaluate_coco`): what
        :mod:`o2f.evaluation.plots` draws.
    """
    from o2f.evaluation.coco import detections_to_coco_results, evaluate_boxes_and_masks

    report: dict = {}
    dets = run_inference(model, dataset, device, batch_size, workers, report=report,
                         precision=precision)
    image_ids = list(dataset.ids)
    if getattr(dataset, "format", None) == "odgt":
        metrics, records = _crowdhuman_metrics(dataset, [dets[i] for i in image_ids], image_ids)
    else:
        records = detections_to_coco_results([dets[i] for i in image_ids], image_ids,
                                             dataset.cat_ids)
        masks = any("rles" in det for det in dets.values())
        try:
            metrics = {}
            if du.is_main_process():  # pycocotools indexes its own COCO object, built once
                gt = dataset.coco if evaluator == "pycocotools" else dataset.annotations
                metrics = evaluate_boxes_and_masks(gt, records, image_ids, masks,
                                                   evaluator=evaluator, details=details)
        except ValueError as e:  # e.g. mask AP asked of annotations without masks
            raise ValueError(f"{dataset.ann_file}: {e}") from e
        if metrics:
            metrics["dup_rate"] = duplicate_rate(dets)
    if details is not None and du.is_main_process():
        details["detections"] = dets
    if metrics and report["unreadable_ids"]:
        metrics["unreadable_images"] = len(report["unreadable_ids"])
    return metrics, records


def _crowdhuman_metrics(dataset, dets: list[dict], image_ids: list[int]) -> tuple[dict, list]:
    from o2f.data.crowdhuman import detections_to_odgt, read_odgt
    from o2f.evaluation.crowdhuman import evaluate_odgt

    imgs = [dataset.coco.imgs[i] for i in image_ids]
    records = detections_to_odgt(dets, [im["odgt_id"] for im in imgs],
                                 [(im["height"], im["width"]) for im in imgs])
    if not du.is_main_process():
        return {}, records
    return evaluate_odgt(read_odgt(dataset.ann_file), records), records
