"""One interface over every way to run a detector: eager PyTorch, ONNX Runtime and OpenVINO.

A :class:`Backend` runs the exported graph's contract (``o2f.deploy.export_onnx``): a uint8
batch (B, 3, H, W) RGB in, ``boxes`` (B, K, 4), ``scores`` (B, K) and ``labels`` (B, K) out,
as numpy arrays, padded with score 0. Its ``format`` is one of :data:`FORMATS` and its
``metadata`` the file's ``o2f.*`` entries (class names, config, precision, calibration).

:class:`ExportedModel` turns a backend into the eval-mode interface of
:class:`o2f.models.O2FDetector` (a list of uint8 (3, h, w) images and their targets in, one
dict of detections per image out, boxes rescaled by ``scale_factor``), which is what
``o2f test`` (:func:`o2f.engine.evaluate.run_inference`), ``o2f predict``
(:class:`o2f.deploy.predict.Detector`) and ``o2f benchmark`` call, so a checkpoint and each of
its exports go through one code path.

>>> backend = load_backend("model.xml", threads=2)      # or model.onnx, or a .pth
>>> boxes, scores, labels = backend(images)             # images uint8 (B, 3, H, W)
>>> model, cfg, meta = load_exported("model_int8.onnx")  # for o2f test / predict
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

FORMATS = ("pytorch", "onnx", "onnx-int8", "openvino", "openvino-int8")
EXPORT_SUFFIXES = (".onnx", ".xml")
# the metadata key of an OpenVINO IR's rt_info holding every o2f.* entry as one JSON object
OPENVINO_RT_KEY = ("o2f", "metadata")

Outputs = tuple[np.ndarray, np.ndarray, np.ndarray]


def is_exported_model(path: str | Path) -> bool:
    """True for an ONNX file (``.onnx``) or an OpenVINO IR (``.xml``), which the deploy
    backends run; False for checkpoints and weights."""
    return Path(path).suffix.lower() in EXPORT_SUFFIXES


def _as_numpy_uint8(images: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(images, Tensor):
        images = images.detach().cpu().numpy()
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8:
        raise ValueError("a backend takes uint8 (B, 3, H, W) RGB images, got "
                         f"shape {images.shape} dtype {images.dtype}")
    return np.ascontiguousarray(images)


class Backend:
    """Runs an exported detector graph. Subclasses set ``format``, ``metadata`` and
    :meth:`run`."""

    format: str = ""
    metadata: dict[str, Any]
    path: Path | None = None

    def run(self, images: np.ndarray) -> Outputs:
        raise NotImplementedError

    def __call__(self, images: np.ndarray | Tensor) -> Outputs:
        """images uint8 (B, 3, H, W) RGB -> boxes float32 (B, K, 4) x1, y1, x2, y2 in input
        pixels, scores float32 (B, K) highest first (0 = padding), labels int64 (B, K)."""
        boxes, scores, labels = self.run(_as_numpy_uint8(images))
        return (np.asarray(boxes, np.float32), np.asarray(scores, np.float32),
                np.asarray(labels, np.int64))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.format}, {self.path})"


def _precision_format(base: str, metadata: dict[str, Any]) -> str:
    return f"{base}-int8" if metadata.get("precision") == "int8" else base


class OnnxRuntimeBackend(Backend):
    """An ``.onnx`` export (fp32, or the int8 QDQ graph of ``o2f export --int8``) on ONNX
    Runtime's CPU execution provider: ``threads`` intra-op threads (default: ONNX Runtime's
    choice), one inter-op thread, sequential, every graph optimisation on."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.path), opts,
                                            providers=["CPUExecutionProvider"])
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata = {k.removeprefix("o2f."): json.loads(v) for k, v in props.items()
                         if k.startswith("o2f.")}
        self.format = _precision_format("onnx", self.metadata)
        self._input = self.session.get_inputs()[0].name

    def run(self, images: np.ndarray) -> Outputs:
        return tuple(self.session.run(["boxes", "scores", "labels"], {self._input: images}))


def read_openvino_metadata(model: Any) -> dict[str, Any]:
    """The ``o2f`` metadata of an ``openvino.Model`` ({} when it has none)."""
    if not model.has_rt_info(list(OPENVINO_RT_KEY)):
        return {}
    return json.loads(model.get_rt_info(list(OPENVINO_RT_KEY)).astype(str))


class OpenVinoBackend(Backend):
    """An OpenVINO IR (``.xml`` with its ``.bin``) compiled for the CPU with the latency hint
    and ``threads`` inference threads.

    ``precision`` is the CPU plugin's ``INFERENCE_PRECISION_HINT`` for the layers that stay in
    floating point: ``f32`` by default. On CPUs with AMX / AVX512-BF16 the plugin would
    otherwise run them in bfloat16, which is faster but rounds scores and box coordinates
    (8 bits of mantissa: several pixels at 1000 px), breaking the fp32 contract; an int8 IR's
    quantized convolutions run in int8 either way."""

    def __init__(self, path: str | Path, threads: int | None = None,
                 precision: str = "f32") -> None:
        import openvino as ov

        self.path = Path(path)
        core = ov.Core()
        model = core.read_model(str(self.path))
        self.metadata = read_openvino_metadata(model)
        self.format = _precision_format("openvino", self.metadata)
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY",
                                  "INFERENCE_PRECISION_HINT": precision}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(model, "CPU", config)
        self._outputs = [self.compiled.output(n) for n in ("boxes", "scores", "labels")]

    def run(self, images: np.ndarray) -> Outputs:
        result = self.compiled(images)
        return tuple(result[o] for o in self._outputs)


class TorchBackend(Backend):
    """Eager PyTorch behind the same contract: :class:`o2f.deploy.export_onnx.
    ExportableDetector` (the module that is exported) on the model as ``Detector`` runs it
    (:func:`o2f.models.fuse.for_inference`), under ``inference_mode``, on the CPU."""

    format = "pytorch"

    def __init__(self, model: torch.nn.Module, metadata: dict[str, Any] | None = None) -> None:
        from o2f.deploy.export_onnx import ExportableDetector
        from o2f.models.fuse import for_inference

        self.wrapper = ExportableDetector(for_inference(model.cpu().eval())).eval()
        self.metadata = {"max_per_img": self.wrapper.max_per_img,
                         "score_thr": self.wrapper.score_thr, **(metadata or {})}

    def run(self, images: np.ndarray) -> Outputs:
        with torch.inference_mode():
            out = self.wrapper(torch.from_numpy(images))
        return tuple(t.numpy() for t in out)


def load_backend(path: str | Path, threads: int | None = None,
                 config: str | None = None) -> Backend:
    """The backend for ``path`` by its suffix: ``.onnx`` (ONNX Runtime), ``.xml`` (OpenVINO),
    otherwise a ``.pth`` checkpoint or ``.safetensors`` weights (eager PyTorch, with the stored
    config unless ``config`` is given; ``threads`` then sets torch's intra-op threads).

    Raises:
        FileNotFoundError: ``path`` (or an IR's ``.bin``) does not exist.
        ImportError: the runtime for the format is not installed (``pip install o2f[onnx]`` /
            ``o2f[openvino]``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such model file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return OnnxRuntimeBackend(path, threads)
    if suffix == ".xml":
        if not path.with_suffix(".bin").is_file():
            raise FileNotFoundError(f"{path}: the OpenVINO IR's weights "
                                    f"{path.with_suffix('.bin')} are missing")
        try:
            return OpenVinoBackend(path, threads)
        except ImportError as err:
            raise ImportError(f"{path}: OpenVINO is not installed (pip install "
                              f"'o2f[openvino]'): {err}") from err
    from o2f.builders import detector_from_checkpoint

    if threads:
        torch.set_num_threads(int(threads))
    model, _, meta = detector_from_checkpoint(path, config)
    backend = TorchBackend(model, meta)
    backend.path = path
    return backend


class ExportedModel:
    """A :class:`Backend` with the eval-mode interface of :class:`o2f.models.O2FDetector`.

    Each image runs alone (batch 1, at its own size), so that no padding between images of a
    batch changes a result. Detections scoring at most ``score_thr`` are dropped (the graph's
    own threshold is the floor: a lower value keeps nothing more), as the eager model does.

    Args:
        backend: the runtime.
        score_thr: default: the graph's ``score_thr`` metadata.
    """

    training = False  # the engine's evaluation loop toggles eval/train on a model

    def __init__(self, backend: Backend, score_thr: float | None = None) -> None:
        self.backend = backend
        meta = backend.metadata
        graph_thr = float(meta.get("score_thr", 0.0))
        self.score_thr = max(graph_thr, graph_thr if score_thr is None else float(score_thr))
        names = meta.get("class_names")
        self.num_classes = int(meta.get("num_classes") or (len(names) if names else 0))
        self.format = backend.format

    def eval(self) -> ExportedModel:
        return self

    def train(self, mode: bool = True) -> ExportedModel:
        if mode:
            raise RuntimeError("an exported model cannot be trained")
        return self

    def to(self, *args: Any, **kwargs: Any) -> ExportedModel:
        """Exports run on the CPU; inputs on another device are copied there."""
        return self

    def __call__(self, images: Sequence[Tensor] | Tensor,
                 targets: Sequence[dict] | None = None) -> list[dict[str, Tensor]]:
        """images: uint8 (3, h, w) RGB each (or a uint8 batch (B, 3, h, w)); targets: their
        ``scale_factor`` (sx, sy), when given, maps the boxes back to the original image.

        Returns:
            per image ``boxes`` float32 (k, 4), ``scores`` (k,) and ``labels`` int64 (k,),
            CPU tensors, highest score first, k <= K.
        """
        from o2f.postprocess import rescale_boxes

        results = []
        for i, image in enumerate(images):
            image = image.detach().cpu()
            if image.dtype != torch.uint8:  # the datasets give uint8; refuse silent rescaling
                raise ValueError(f"exported models take uint8 images, got {image.dtype}")
            boxes, scores, labels = self.backend(image[None].numpy())
            keep = scores[0] > self.score_thr
            bx = torch.from_numpy(boxes[0][keep])
            target = targets[i] if targets is not None else None
            if target is not None and "scale_factor" in target:
                bx = rescale_boxes(bx, target["scale_factor"])
            results.append({"boxes": bx, "scores": torch.from_numpy(scores[0][keep]),
                            "labels": torch.from_numpy(labels[0][keep])})
        return results


def load_exported(
    path: str | Path, config: str | None = None, overrides: Sequence[str] = (),
    threads: int | None = None,
):
    """An exported model (``.onnx`` / ``.xml``) for ``o2f test`` and ``o2f predict``: the
    analogue of :func:`o2f.builders.detector_from_checkpoint`.

    The config is the one stored in the export's metadata (its test-time resize and data
    paths) unless ``config`` (a name or path; None or "-": the stored one) is given;
    ``overrides`` apply on top (``test.score_thr`` above the graph's threshold filters more;
    the selection itself, ``test.max_per_img`` and ``nms_pre``, is fixed in the graph).

    Returns:
        (:class:`ExportedModel`, config, meta with ``class_names``, ``num_classes`` and the
        rest of the export's metadata).
    """
    from o2f.config import ConfigError, apply_overrides, config_from_dict, load_config

    backend = load_backend(path, threads)
    meta = dict(backend.metadata)
    if config not in (None, "-"):
        cfg = apply_overrides(load_config(config), list(overrides))
    elif "config" in meta:
        cfg = apply_overrides(config_from_dict(meta["config"], f"{path} config"),
                              list(overrides))
    else:
        raise ConfigError(f"{path} stores no config (exported before configs were recorded); "
                          "give the CONFIG it was exported from")
    if cfg.model.mask.enabled:
        meta["masks"] = "not exported"
    model = ExportedModel(backend, cfg.test.score_thr)
    meta.setdefault("num_classes", model.num_classes)
    return model, cfg, meta
