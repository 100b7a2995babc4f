"""Datasets, transforms and synthetic data for detection (SPEC §5)."""

from o2f.data.coco import (
    CocoDetection,
    Repeated,
    category_ids_from_labels,
    collate,
    decode_segmentation,
    load_coco_json,
    load_rgb_image,
)
from o2f.data.synthetic import SHAPE_CLASSES, draw_scene, generate_synthetic_coco
from o2f.data.transforms import (
    Compose,
    KeepRatioResize,
    RandomHorizontalFlip,
    build_transforms,
    resize_scale,
    resized_size,
)

__all__ = [
    "SHAPE_CLASSES",
    "CocoDetection",
    "Repeated",
    "Compose",
    "KeepRatioResize",
    "RandomHorizontalFlip",
    "build_transforms",
    "category_ids_from_labels",
    "collate",
    "decode_segmentation",
    "draw_scene",
    "generate_synthetic_coco",
    "load_coco_json",
    "load_rgb_image",
    "resize_scale",
    "resized_size",
]
