"""Evaluation: COCO metrics (pycocotools) and CrowdHuman metrics (AP, mMR, Recall, JI)."""

from o2f.data.crowdhuman import (
    coco_to_odgt,
    detections_to_odgt,
    odgt_to_coco,
    read_odgt,
    write_odgt,
)
from o2f.evaluation.coco import (
    detections_to_coco_results,
    encode_masks,
    evaluate_boxes_and_masks,
    evaluate_coco,
    format_per_class_table,
)
from o2f.evaluation.crowdhuman import evaluate_odgt

__all__ = [
    "coco_to_odgt",
    "detections_to_coco_results",
    "detections_to_odgt",
    "encode_masks",
    "evaluate_boxes_and_masks",
    "evaluate_coco",
    "evaluate_odgt",
    "format_per_class_table",
    "odgt_to_coco",
    "read_odgt",
    "write_odgt",
]
