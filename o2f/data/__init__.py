"""Datasets (COCO, YOLO, Pascal VOC, CrowdHuman annotations), transforms and synthetic data
for detection (SPEC §5)."""

from o2f.data.coco import (
    CocoDetection,
    Repeated,
    category_ids_from_labels,
    collate,
    decode_segmentation,
    load_coco_json,
    load_rgb_image,
    read_image_size,
)
from o2f.data.errors import DataError
from o2f.data.formats import FORMATS, convert_dataset, detect_format, read_dataset
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
    "FORMATS",
    "SHAPE_CLASSES",
    "CocoDetection",
    "Repeated",
    "Compose",
    "DataError",
    "KeepRatioResize",
    "RandomHorizontalFlip",
    "build_transforms",
    "category_ids_from_labels",
    "collate",
    "convert_dataset",
    "decode_segmentation",
    "detect_format",
    "draw_scene",
    "generate_synthetic_coco",
    "load_coco_json",
    "load_rgb_image",
    "read_dataset",
    "read_image_size",
    "resize_scale",
    "resized_size",
]
