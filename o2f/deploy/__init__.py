"""Deployment and interoperability: single-image prediction, ONNX export without NMS,
safetensors weights, and conversion of the authors' MMDetection checkpoints."""

from o2f.builders import detector_from_checkpoint as load_detector
from o2f.deploy.backends import FORMATS, load_backend, load_exported
from o2f.deploy.coco_classes import COCO_CAT_IDS, COCO_CLASSES
from o2f.deploy.convert_mmdet import (
    ConversionError,
    convert_mmdet_checkpoint,
    convert_mmdet_state_dict,
    load_mmdet_checkpoint,
)
from o2f.deploy.export_onnx import ExportableDetector, check_onnx_model, export_onnx
from o2f.deploy.predict import Detector, find_images, image_to_tensor
from o2f.deploy.weights import (
    load_safetensors_weights,
    read_weights,
    save_safetensors_weights,
)

__all__ = [
    "COCO_CAT_IDS",
    "FORMATS",
    "COCO_CLASSES",
    "ConversionError",
    "Detector",
    "ExportableDetector",
    "check_onnx_model",
    "convert_mmdet_checkpoint",
    "convert_mmdet_state_dict",
    "export_onnx",
    "find_images",
    "image_to_tensor",
    "load_backend",
    "load_detector",
    "load_exported",
    "load_mmdet_checkpoint",
    "load_safetensors_weights",
    "read_weights",
    "save_safetensors_weights",
]
