"""Inference over a dataset, sharded across ranks and gathered, then COCO metrics (or the
CrowdHuman metrics when the annotations are a CrowdHuman ``.odgt`` file)."""

from __future__ import annotations

import logging
import math

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from o2f import distributed as du
from o2f.data import collate
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
    workers: int = 2, desc: str = "test", report: dict | None = None,
) -> dict[int, dict[str, torch.Tensor]]:
    """Detections of every image of ``dataset``, keyed by image id, on every rank.

    Each rank runs the images ``rank, rank + world, ...``; the results are gathered so that no
    image is dropped or counted twice. Boxes are in original-image pixels, on the CPU. A mask
    model's ``masks`` (K, H, W) are encoded at once as ``rles``, K compressed COCO RLEs
    (:func:`o2f.evaluation.coco.encode_masks`), which keeps 5000 images small. An image
    the dataset could not read (``unreadable`` in its target) gets no detections; their ids go
    to ``report["unreadable_ids"]`` when a ``report`` dict is given, and to a warning.
    """
    rank, world = du.rank(), du.world_size()
    shard = Subset(dataset, list(range(rank, len(dataset), world)))
    loader = DataLoader(shard, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                        pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    net = for_inference(model)  # eval-only copy, BatchNorm folded: same detections, faster
    local: dict[int, dict[str, torch.Tensor]] = {}
    unreadable: list[int] = []
    for images, targets in tqdm(loader, desc=desc, disable=not du.is_main_process(),
                                dynamic_ncols=True):
        images = [img.to(device, non_blocking=True) for img in images]
        for det, tgt in zip(net(images, targets), targets, strict=True):
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


def _to_host(det: dict[str, torch.Tensor]) -> dict:
    """One image's detections on the CPU, its masks (if any) as compressed RLEs."""
    from o2f.evaluation.coco import encode_masks

    out: dict = {k: v.cpu() for k, v in det.items() if k != "masks"}
    if "masks" in det:
        out["rles"] = encode_masks(det["masks"])
    return out


def coco_evaluate(
    model: nn.Module, dataset, device: torch.device, batch_size: int = 1, workers: int = 2,
) -> tuple[dict, list[dict]]:
    """Metrics of ``model`` on a :class:`o2f.data.CocoDetection` in eval mode.

    Returns:
        metrics (empty on ranks other than 0) and the detections. For COCO-format data: the
        ``bbox_mAP`` ... keys (and ``segm_mAP`` ... when the model predicts masks),
        ``dup_rate`` (:func:`o2f.evaluation.duplicates.duplicate_rate`: what NMS would remove)
        and ``per_class``, and detections in the COCO results format with the dataset's own
        category ids (with an RLE ``segmentation`` for a mask model). For CrowdHuman
        ``.odgt`` data: ``AP``, ``mMR``, ``Recall``, ``JI`` (SPEC §7), and detections as
        ``.odgt`` records.
    """
    from o2f.evaluation.coco import detections_to_coco_results, evaluate_boxes_and_masks

    report: dict = {}
    dets = run_inference(model, dataset, device, batch_size, workers, report=report)
    image_ids = list(dataset.ids)
    if dataset.ann_file.suffix == ".odgt":
        metrics, records = _crowdhuman_metrics(dataset, [dets[i] for i in image_ids], image_ids)
    else:
        records = detections_to_coco_results([dets[i] for i in image_ids], image_ids,
                                             dataset.cat_ids)
        masks = any("rles" in det for det in dets.values())
        try:
            metrics = (evaluate_boxes_and_masks(dataset.coco, records, image_ids, masks)
                       if du.is_main_process() else {})
        except ValueError as e:  # e.g. mask AP asked of annotations without masks
            raise ValueError(f"{dataset.ann_file}: {e}") from e
        if metrics:
            metrics["dup_rate"] = duplicate_rate(dets)
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
