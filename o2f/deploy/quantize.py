"""INT8 post-training quantization of the exported graph: calibration images, ONNX Runtime
static quantization (QDQ) and OpenVINO / NNCF quantization.

Only the convolutional part is quantized: every Conv of the backbone, FPN and head and every
node upstream of a Conv (normalisation, padding, residual adds, ReLU, max-pool, the FPN's
upsampling and adds; the head's GroupNorm stays in float in both runtimes). With ONNX Runtime,
whose QDQ scheme also quantizes a Conv's output, the head's prediction convolutions stay float
as well, so that logits and box regressions reach the post-processing unrounded; NNCF
quantizes only a layer's inputs and weights, so there they run in int8 with float outputs. The
post-processing (the last convolutions' outputs onwards: the regression scale, sigmoid, score
product, threshold, top-k, gathers and box decoding) is downstream of every Conv and so is left
in float, and the graph's inputs and outputs are unchanged: uint8 images in, float boxes and
scores and int64 labels out.

Calibration images are read and resized exactly as the exported model's input is prepared by
``o2f test`` / ``o2f predict`` (EXIF orientation, the evaluation resize to ``data.test_short`` /
``data.max_size``, uint8 RGB), each one a (1, 3, h, w) batch at its own size.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

DEFAULT_CALIB_IMAGES = 100
CALIB_METHODS = ("minmax", "percentile", "entropy")


# -- calibration images ------------------------------------------------------------------------
def _image_files_of_annotations(ann_file: Path, img_dir: Path | None) -> list[Path]:
    """The image files listed in a COCO-format annotation file, in ascending id order."""
    data = json.loads(ann_file.read_text())
    if not isinstance(data, dict) or "images" not in data:
        raise ValueError(f"{ann_file}: not a COCO-format annotation file (no 'images')")
    if img_dir is None:  # the layout of data/train.json + data/train/, else beside the file
        sibling = ann_file.with_suffix("")
        img_dir = sibling if sibling.is_dir() else ann_file.parent
    images = sorted(data["images"], key=lambda im: im["id"])
    return [img_dir / im["file_name"] for im in images]


def calibration_files(source: str | Path, cfg=None) -> list[Path]:
    """Image files of a calibration source: a folder (searched recursively, as ``o2f
    predict`` does) or a COCO-format annotation ``.json`` (its images in the ``img_dir`` that
    the config pairs with that file in ``data.train`` / ``data.val``, else the folder named
    like the file without ``.json``, else the file's own folder).

    Raises:
        FileNotFoundError: the source, or every listed image, is missing.
    """
    from o2f.deploy.predict import find_images

    source = Path(source)
    if source.is_dir():
        files = [p for p, _ in find_images([source])]
    elif source.is_file() and source.suffix.lower() == ".json":
        img_dir = None
        if cfg is not None:
            for split in (cfg.data.train, cfg.data.val):
                if split.ann_file and Path(split.ann_file).resolve() == source.resolve():
                    img_dir = Path(split.img_dir)
        files = [p for p in _image_files_of_annotations(source, img_dir) if p.is_file()]
    else:
        raise FileNotFoundError(f"calibration source {source}: not a folder of images or a "
                                "COCO-format .json annotation file")
    if not files:
        raise FileNotFoundError(f"calibration source {source}: no readable image files")
    return files


def _evenly_spaced(items: Sequence, n: int) -> list:
    """``n`` items spread over the whole sequence (all of them when there are fewer)."""
    if n >= len(items):
        return list(items)
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in sorted(set(idx.tolist()))]


def calibration_images(source: str | Path | None, cfg, num_images: int = DEFAULT_CALIB_IMAGES,
                       seed: int = 0) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Calibration batches, each uint8 (1, 3, h, w) RGB resized by the evaluation transform of
    ``cfg`` (``data.test_short``, ``data.max_size``), and a description for the metadata.

    Args:
        source: a folder of images or a COCO-format annotation file (see
            :func:`calibration_files`; ``num_images`` of them, evenly spaced in sorted order),
            or None for synthetic scenes (:func:`o2f.data.synthetic.draw_scene`) of size
            ``test_short`` x ``max_size`` (for speed-only runs on random weights).
        cfg: the model's config.
        num_images: how many images.
        seed: the synthetic scenes' seed.
    """
    from o2f.data import build_transforms
    from o2f.deploy.predict import image_to_tensor

    short = cfg.data.test_short
    transform = build_transforms(False, cfg.data.max_size, (short, short))
    batches: list[np.ndarray] = []
    if source is None:
        from o2f.data.synthetic import draw_scene

        rng = np.random.default_rng(seed)
        size = (min(short, cfg.data.max_size), cfg.data.max_size)
        for _ in range(num_images):
            image, _ = draw_scene(rng, size)
            tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
            batches.append(transform(tensor, {})[0][None].numpy())
        return batches, {"source": "synthetic", "images": len(batches),
                         "seed": seed, "size": list(size)}
    files = _evenly_spaced(calibration_files(source, cfg), num_images)
    for path in files:
        try:
            tensor = image_to_tensor(path)  # as o2f predict reads it: EXIF applied, RGB
        except (OSError, ValueError) as err:
            log.warning("calibration: skipping %s (%s)", path, err)
            continue
        batches.append(np.ascontiguousarray(transform(tensor, {})[0][None].numpy()))
    if not batches:
        raise FileNotFoundError(f"calibration source {source}: no image could be read")
    return batches, {"source": str(source), "images": len(batches),
                     "resize": {"test_short": short, "max_size": cfg.data.max_size}}


# -- the part to quantize ----------------------------------------------------------------------
def conv_part(nodes: Sequence[Any], name, op_type, parents, conv_types: set[str]) -> set[str]:
    """Names of the nodes that are a convolution or upstream of one.

    Generic over graph libraries: ``name(node)``, ``op_type(node)`` and ``parents(node)``
    (the nodes producing its inputs) read a node.
    """
    part: set[str] = set()
    stack = [n for n in nodes if op_type(n) in conv_types]
    while stack:
        node = stack.pop()
        if name(node) in part:
            continue
        part.add(name(node))
        stack.extend(parents(node))
    return part


def onnx_conv_part(proto) -> set[str]:
    """:func:`conv_part` of an ONNX graph (node names)."""
    producer = {out: node for node in proto.graph.node for out in node.output}
    return conv_part(proto.graph.node, lambda n: n.name, lambda n: n.op_type,
                     lambda n: [producer[i] for i in n.input if i in producer], {"Conv"})


def onnx_prediction_convs(proto) -> set[str]:
    """Names of the Conv nodes upstream of no other Conv: the head's prediction layers (class
    logits, box regression, centerness of each level), whose outputs the post-processing
    reads."""
    producer = {out: node for node in proto.graph.node for out in node.output}
    upstream: set[str] = set()
    stack = [producer[i] for n in proto.graph.node if n.op_type == "Conv"
             for i in n.input if i in producer]
    while stack:
        node = stack.pop()
        if node.name in upstream:
            continue
        upstream.add(node.name)
        stack.extend(producer[i] for i in node.input if i in producer)
    return {n.name for n in proto.graph.node if n.op_type == "Conv" and n.name not in upstream}


def openvino_conv_part(model) -> set[str]:
    """:func:`conv_part` of an ``openvino.Model`` (friendly names)."""
    return conv_part(model.get_ordered_ops(), lambda n: n.get_friendly_name(),
                     lambda n: n.get_type_name(),
                     lambda n: [v.get_node() for v in n.input_values()], {"Convolution"})


# -- ONNX Runtime ------------------------------------------------------------------------------
# the op types quantized inside the conv part (GroupNorm, exported as Reshape +
# InstanceNormalization + Mul + Add, stays float: ONNX Runtime has no int8 kernel for it)
ONNX_INT8_OPS = ("Conv", "Add", "Relu", "MaxPool", "Resize")


def quantize_onnx(fp32_path: str | Path, out_path: str | Path, images: Sequence[np.ndarray],
                  calibration: dict[str, Any], method: str = "minmax") -> dict[str, Any]:
    """Static INT8 quantization of an exported fp32 ``.onnx`` with
    ``onnxruntime.quantization.quantize_static``: QDQ format, weights int8 per output channel
    (symmetric), activations uint8 per tensor (asymmetric), ranges from running ``images``
    (uint8 (1, 3, h, w) each) through the fp32 graph; only the conv part
    (:func:`onnx_conv_part`, op types :data:`ONNX_INT8_OPS`) is quantized.

    The output keeps the input's metadata plus ``o2f.precision`` = "int8" and
    ``o2f.quantization`` (tool, scheme, calibration set and method, the quantized node
    counts). Returns that ``quantization`` entry.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise ValueError(f"calibration method must be one of {CALIB_METHODS}, got {method!r}")
    proto = onnx.load(str(fp32_path))
    # ONNX Runtime's QDQ quantizer also quantizes a Conv's output: for the prediction layers
    # that would round the logits and box regressions to 8 bits before the post-processing,
    # so they (a few percent of the compute) stay float
    prediction = onnx_prediction_convs(proto)
    part = onnx_conv_part(proto) - prediction
    input_name = proto.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(images)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._it, None)
            return None if batch is None else {input_name: batch}

    quantize_static(
        str(fp32_path), str(out_path), Reader(), quant_format=QuantFormat.QDQ,
        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        op_types_to_quantize=list(ONNX_INT8_OPS), nodes_to_quantize=sorted(part),
        calibrate_method=methods[method],
        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
    )
    quantized = onnx.load(str(out_path))
    counts = Counter(n.op_type for n in quantized.graph.node)
    info = {
        "tool": "onnxruntime.quantization.quantize_static",
        "format": "QDQ", "weights": "int8, per output channel, symmetric",
        "activations": "uint8, per tensor, asymmetric", "calibration_method": method,
        "calibration": calibration, "quantized_op_types": list(ONNX_INT8_OPS),
        "float": "GroupNorm, the head's prediction convolutions and the post-processing "
                 "(sigmoid, threshold, top-k, box decoding)",
        "float_prediction_convs": len(prediction),
        "quantize_linear_nodes": counts.get("QuantizeLinear", 0),
    }
    props = {p.key: p.value for p in proto.metadata_props}
    props.update({"o2f.precision": json.dumps("int8"), "o2f.quantization": json.dumps(info)})
    onnx.helper.set_model_props(quantized, props)
    onnx.save_model(quantized, str(out_path))
    return info


# -- OpenVINO / NNCF ---------------------------------------------------------------------------
def quantize_openvino(model, images: Sequence[np.ndarray], calibration: dict[str, Any]):
    """NNCF post-training quantization (``nncf.quantize``) of an ``openvino.Model``: the
    ``MIXED`` preset (weights int8 symmetric per channel, activations asymmetric), statistics
    from ``images`` (uint8 (1, 3, h, w) each, all of them), fast bias correction; every node
    outside the conv part (:func:`openvino_conv_part`) is in the ignored scope.

    Returns:
        (the quantized ``openvino.Model``, the ``quantization`` metadata entry).
    """
    import nncf

    part = openvino_conv_part(model)
    skip = {"Parameter", "Result", "Constant"}
    ignored = sorted(op.get_friendly_name() for op in model.get_ordered_ops()
                     if op.get_friendly_name() not in part and op.get_type_name() not in skip)
    quantized = nncf.quantize(
        model, nncf.Dataset(list(images)), preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(images), ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
    )
    fq = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ordered_ops())
    info = {
        "tool": f"nncf.quantize {nncf.__version__}", "preset": "MIXED",
        "weights": "int8, per output channel, symmetric",
        "activations": "int8/uint8, per tensor, asymmetric", "calibration_method": "minmax",
        "calibration": calibration, "fast_bias_correction": True,
        "float": "the post-processing (sigmoid, threshold, top-k, box decoding); ignored "
                 f"scope of {len(ignored)} nodes",
        "fake_quantize_nodes": fq,
    }
    return quantized, info
