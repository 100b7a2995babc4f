"""Inference over a dataset, sharded across ranks and gathered, then COCO metrics."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from o2f import distributed as du
from o2f.data import collate

METRIC_KEYS = ("bbox_mAP", "bbox_mAP_50", "bbox_mAP_75", "bbox_mAP_s", "bbox_mAP_m", "bbox_mAP_l")


def metrics_for_file(metrics: dict) -> dict[str, float]:
    """The six box metrics as fractions; a size range without ground truth (NaN from the
    evaluator, -1 in pycocotools) is written as 0.0 so the file stays plain JSON."""
    return {k: (0.0 if math.isnan(metrics[k]) else float(metrics[k])) for k in METRIC_KEYS}


@torch.no_grad()
def run_inference(
    model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 1,
    workers: int = 2, desc: str = "test",
) -> dict[int, dict[str, torch.Tensor]]:
    """Detections of every image of ``dataset``, keyed by image id, on every rank.

    Each rank runs the images ``rank, rank + world, ...``; the results are gathered so that no
    image is dropped or counted twice. Boxes are in original-image pixels, on the CPU.
    """
    rank, world = du.rank(), du.world_size()
    shard = Subset(dataset, list(range(rank, len(dataset), world)))
    loader = DataLoader(shard, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                        pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    local: dict[int, dict[str, torch.Tensor]] = {}
    for images, targets in tqdm(loader, desc=desc, disable=not du.is_main_process(),
                                dynamic_ncols=True):
        images = [img.to(device, non_blocking=True) for img in images]
        for det, tgt in zip(model(images, targets), targets, strict=True):
            local[int(tgt["image_id"])] = {k: v.cpu() for k, v in det.items()}
    model.train(was_training)
    merged: dict[int, dict[str, torch.Tensor]] = {}
    for part in du.all_gather_objects(local):
        merged.update(part)
    if len(merged) != len(dataset):
        raise RuntimeError(f"inference covered {len(merged)} of {len(dataset)} images")
    return merged


def coco_evaluate(
    model: nn.Module, dataset, device: torch.device, batch_size: int = 1, workers: int = 2,
) -> tuple[dict, list[dict]]:
    """COCO box metrics of ``model`` on a :class:`o2f.data.CocoDetection` in eval mode.

    Returns:
        metrics (``bbox_mAP`` ... and ``per_class``; empty on ranks other than 0) and the
        detections in the COCO results format with the dataset's own category ids.
    """
    from o2f.evaluation.coco import detections_to_coco_results, evaluate_coco

    dets = run_inference(model, dataset, device, batch_size, workers)
    image_ids = list(dataset.ids)
    results = detections_to_coco_results([dets[i] for i in image_ids], image_ids,
                                         dataset.cat_ids)
    if not du.is_main_process():
        return {}, results
    return evaluate_coco(dataset.coco, results, image_ids), results
