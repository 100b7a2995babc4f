"""Inference over a dataset, sharded across ranks and gathered, then COCO metrics (or the
CrowdHuman metrics when the annotations are a CrowdHuman ``.odgt`` file)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from o2f import distributed as du
from o2f.data import collate

METRIC_KEYS = ("bbox_mAP", "bbox_mAP_50", "bbox_mAP_75", "bbox_mAP_s", "bbox_mAP_m", "bbox_mAP_l")
CROWDHUMAN_KEYS = ("AP", "mMR", "Recall", "JI")


def headline_keys(metrics: dict) -> tuple[str, ...]:
    """The metrics a run reports: COCO box AP, or CrowdHuman's AP / mMR / Recall / JI."""
    return CROWDHUMAN_KEYS if "mMR" in metrics else METRIC_KEYS


def metrics_for_file(metrics: dict) -> dict[str, float]:
    """The headline metrics as fractions; a COCO size range without ground truth (NaN from the
    evaluator, -1 in pycocotools) is written as 0.0 so the file stays plain JSON."""
    return {k: (0.0 if math.isnan(metrics[k]) else float(metrics[k]))
            for k in headline_keys(metrics)}


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
    """Metrics of ``model`` on a :class:`o2f.data.CocoDetection` in eval mode.

    Returns:
        metrics (empty on ranks other than 0) and the detections. For COCO-format data: the
        ``bbox_mAP`` ... keys and ``per_class``, and detections in the COCO results format with
        the dataset's own category ids. For CrowdHuman ``.odgt`` data: ``AP``, ``mMR``,
        ``Recall``, ``JI`` (SPEC §7), and detections as ``.odgt`` records.
    """
    from o2f.evaluation.coco import detections_to_coco_results, evaluate_coco

    dets = run_inference(model, dataset, device, batch_size, workers)
    image_ids = list(dataset.ids)
    if dataset.ann_file.suffix == ".odgt":
        return _crowdhuman_metrics(dataset, [dets[i] for i in image_ids], image_ids)
    results = detections_to_coco_results([dets[i] for i in image_ids], image_ids,
                                         dataset.cat_ids)
    if not du.is_main_process():
        return {}, results
    return evaluate_coco(dataset.coco, results, image_ids), results


def _crowdhuman_metrics(dataset, dets: list[dict], image_ids: list[int]) -> tuple[dict, list]:
    from o2f.data.crowdhuman import detections_to_odgt, read_odgt
    from o2f.evaluation.crowdhuman import evaluate_odgt

    imgs = [dataset.coco.imgs[i] for i in image_ids]
    records = detections_to_odgt(dets, [im["odgt_id"] for im in imgs],
                                 [(im["height"], im["width"]) for im in imgs])
    if not du.is_main_process():
        return {}, records
    return evaluate_odgt(read_odgt(dataset.ann_file), records), records
