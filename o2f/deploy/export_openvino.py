"""OpenVINO IR export, and the one entry point for every deployable format.

The IR is converted from the exported ONNX graph (``openvino.convert_model``), so it has the
same input (``images`` uint8 (B, 3, H, W), dynamic batch, height and width), outputs
(``boxes`` (B, K, 4), ``scores`` (B, K), ``labels`` (B, K)) and selection, with no NMS; its
weights are kept in fp32 (not compressed to fp16). The ONNX file's ``o2f.*`` metadata is
stored in the IR's ``rt_info`` under ``o2f/metadata`` as one JSON object
(:func:`o2f.deploy.backends.read_openvino_metadata` reads it back).

:func:`export_deployment` writes any of the formats of :data:`o2f.deploy.backends.FORMATS`
but ``pytorch``: ``onnx``, ``onnx-int8`` (:func:`o2f.deploy.quantize.quantize_onnx`),
``openvino``, ``openvino-int8`` (:func:`o2f.deploy.quantize.quantize_openvino`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from o2f.deploy.backends import OPENVINO_RT_KEY


def _onnx_metadata(onnx_path: str | Path) -> dict[str, Any]:
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)
    return {p.key.removeprefix("o2f."): json.loads(p.value) for p in proto.metadata_props
            if p.key.startswith("o2f.")}


def export_openvino(onnx_path: str | Path, xml_path: str | Path,
                    int8_images: Sequence[np.ndarray] | None = None,
                    calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Convert an exported fp32 ``.onnx`` to an OpenVINO IR at ``xml_path`` (and its
    ``.bin``), INT8 with NNCF when ``int8_images`` (uint8 (1, 3, h, w) each) are given.

    Returns:
        the metadata written (the ONNX file's, plus ``runtime``, ``precision`` and, for int8,
        ``quantization``).
    """
    import openvino as ov

    from o2f.deploy.quantize import quantize_openvino

    model = ov.convert_model(str(onnx_path))
    meta = {**_onnx_metadata(onnx_path), "runtime": f"openvino {ov.__version__}",
            "precision": "fp32"}
    meta.pop("quantization", None)
    if int8_images is not None:
        model, meta["quantization"] = quantize_openvino(model, int8_images, calibration or {})
        meta["precision"] = "int8"
    model.set_rt_info(json.dumps(meta), list(OPENVINO_RT_KEY))
    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    return meta


def export_deployment(
    model: nn.Module | None, path: str | Path, fmt: str, *,
    metadata: dict[str, Any] | None = None, onnx_path: str | Path | None = None,
    calib_images: Sequence[np.ndarray] | None = None,
    calibration: dict[str, Any] | None = None, calib_method: str = "minmax",
    opset: int = 18,
) -> dict[str, Any]:
    """Write ``model`` (an O2FDetector) as ``fmt`` at ``path``.

    Args:
        model: the detector; may be None when ``onnx_path`` (an fp32 export of it) is given.
        path: the output: ``.onnx`` for ``onnx`` / ``onnx-int8``, ``.xml`` (+ ``.bin``) for
            ``openvino`` / ``openvino-int8``.
        fmt: ``onnx``, ``onnx-int8``, ``openvino`` or ``openvino-int8``.
        metadata: extra ``o2f.*`` entries of an ONNX export (class names, config ...).
        onnx_path: an existing fp32 ONNX export to start from instead of exporting ``model``.
        calib_images, calibration: the int8 formats' calibration batches (uint8
            (1, 3, h, w) each, see :func:`o2f.deploy.quantize.calibration_images`) and their
            description.
        calib_method: ONNX Runtime's calibration (``minmax``, ``percentile``, ``entropy``).

    Returns:
        a summary: ``format``, ``path``, ``exporter`` (of the fp32 graph) and, for int8,
        ``quantization``.
    """
    from o2f.deploy.export_onnx import export_onnx
    from o2f.deploy.quantize import quantize_onnx

    if fmt not in ("onnx", "onnx-int8", "openvino", "openvino-int8"):
        raise ValueError(f"unknown export format {fmt!r}")
    int8 = fmt.endswith("-int8")
    if int8 and not calib_images:
        raise ValueError(f"format {fmt} needs calibration images")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="o2f-export-") as tmp:
        fp32 = Path(onnx_path) if onnx_path else Path(tmp) / "fp32.onnx"
        if onnx_path is None:
            if model is None:
                raise ValueError("export_deployment needs a model or an onnx_path")
            target = path if fmt == "onnx" else fp32
            exporter = export_onnx(model, target, opset=opset,
                                   metadata={"precision": "fp32", **(metadata or {})})
            if fmt == "onnx":
                return {"format": fmt, "path": str(path), "exporter": exporter}
        else:
            exporter = _onnx_metadata(fp32).get("exporter")
            if fmt == "onnx":
                if fp32.resolve() != path.resolve():
                    shutil.copyfile(fp32, path)
                return {"format": fmt, "path": str(path), "exporter": exporter}
        if fmt == "onnx-int8":
            info = quantize_onnx(fp32, path, calib_images, calibration or {}, calib_method)
            return {"format": fmt, "path": str(path), "exporter": exporter, "quantization": info}
        meta = export_openvino(fp32, path, calib_images if int8 else None, calibration)
        return {"format": fmt, "path": str(path), "exporter": exporter,
                **({"quantization": meta["quantization"]} if int8 else {})}


def export_metadata(cfg, meta: dict[str, Any], num_classes: int,
                    source: str | None = None) -> dict[str, Any]:
    """The ``o2f.*`` entries every export carries: ``class_names``, ``num_classes``,
    ``cat_ids`` (when known), ``config`` (the whole config, so that ``o2f test`` and
    ``o2f predict`` need no CONFIG for an export) and ``source`` (the checkpoint)."""
    names = meta.get("class_names") or [str(i) for i in range(num_classes)]
    out: dict[str, Any] = {"class_names": [str(n) for n in names], "num_classes": num_classes,
                           "config": cfg.to_dict()}
    if meta.get("cat_ids"):
        out["cat_ids"] = [int(i) for i in meta["cat_ids"]]
    if source:
        out["source"] = source
    return out
