"""ONNX export of the whole NMS-free pipeline: uint8 RGB images in, top-K detections out.

The graph holds normalisation, padding to the size divisor, backbone, FPN, head, score
computation, top-k selection and box decoding and clipping; it ends in ``TopK``/``Gather``, with
no NonMaxSuppression node. Inputs and outputs:

- ``images``: uint8 (B, 3, H, W) RGB, B, H and W dynamic.
- ``boxes``: float32 (B, K, 4) x1, y1, x2, y2 in input pixels, clipped to the image.
- ``scores``: float32 (B, K), highest first; 0 marks padding (fewer than K candidates above
  the score threshold), whose boxes and labels mean nothing.
- ``labels``: int64 (B, K) contiguous class indices.

K is ``test.max_per_img``. The exporter is ``torch.onnx.export(dynamo=True)`` (torch.export);
the TorchScript exporter is only a fallback when that fails, and the function says which ran.

Instance masks stay out of the graph: a mask model (``model.mask.enabled``) exports the same
three outputs, its detection part, and the file's ``o2f.masks`` metadata says ``"not
exported"``. Its masks (dynamic per-detection convs on the mask features, then resizing to
each original image) come from PyTorch (``o2f predict``, :class:`o2f.Detector`).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from o2f.boxes import level_points
from o2f.models.fuse import fuse_conv_bn
from o2f.postprocess import select_topk

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
INPUT_NAME = "images"
OUTPUT_NAMES = ("boxes", "scores", "labels")
AXIS_NAMES = {0: "batch", 2: "height", 3: "width"}
# Example input traced by the exporter: batch 2 and every pyramid level at least 2 x 2, so that
# no dimension is specialised to 1 (the graph still runs on any size, see the tests).
EXAMPLE_SIZE = (160, 192)
# Swin-T: torchvision's shifted-window attention turns the shift off on a map no larger than one
# window (7), a branch torch.export fixes from the example. 256 px gives every stage (down to
# stride 32: 8 x 8) a map larger than a window, so the graph takes any side over 224 px.
SWIN_MIN_EXAMPLE = 256
SWIN_MIN_SIDE = 225


class ExportShapeError(RuntimeError):
    """The exported graph does not run, or differs from PyTorch, at an input shape other than
    the example it was traced with."""


def _flat(maps: Sequence[Tensor]) -> Tensor:
    """[(B, K, H_l, W_l)] -> (B, K, 1, sum H_l W_l): the points of the levels in the order of
    :func:`o2f.boxes.level_points` (levels in turn, each row-major) as one row."""
    return torch.cat([m.flatten(2) for m in maps], 2).unsqueeze(2)


# logit of the dummy points that pad the candidates: sigmoid gives exactly 0 in float32
_DUMMY_LOGIT = -1e4


class ExportableDetector(nn.Module):
    """An :class:`o2f.models.O2FDetector` as one tensor-in, tensors-out function for export.

    Selection is SPEC §4 (:func:`o2f.postprocess.select_topk`): scores sigmoid(cls) *
    sigmoid(ctr), those > ``score_thr``, the ``nms_pre`` best per level, the ``max_per_img``
    best overall. Two changes of form keep the graph small and free of size-dependent
    branches, without changing the result:

    - when ``nms_pre >= max_per_img`` (every shipped config) the levels are selected as one:
      an overall top-K entry is among its level's top K, so the per-level cut changes nothing;
    - each selection gets ``ceil(nms_pre / C)`` dummy points of score 0 appended, so that it
      always has at least ``nms_pre`` candidates (no ``min(nms_pre, H W C)`` in the graph);
      dummies rank below every real candidate and, like real entries at or below the score
      threshold, come out with score 0 (box 0, 0, 0, 0), which is the output's padding.

    Args:
        model: the detector (its pixel_mean/pixel_std buffers and size divisor are used).
        max_per_img, score_thr, nms_pre: default to the model's test settings.
    """

    def __init__(self, model: nn.Module, max_per_img: int | None = None,
                 score_thr: float | None = None, nms_pre: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.max_per_img = int(max_per_img or model.max_per_img)
        self.score_thr = float(model.score_thr if score_thr is None else score_thr)
        self.nms_pre = int(nms_pre or model.nms_pre)

    def normalise_and_pad(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """uint8 (B, 3, H, W) -> normalised float (B, 3, H', W') padded with zeros to a multiple
        of the size divisor, and image sizes (B, 2) h, w (float)."""
        m = self.model
        x = (images.float() - m.pixel_mean) / m.pixel_std
        h, w = x.shape[-2:]
        d = m.size_divisor
        x = F.pad(x, (0, (w + d - 1) // d * d - w, 0, (h + d - 1) // d * d - h))
        one = x.new_ones(())
        sizes = torch.stack((one * h, one * w)).expand(x.shape[0], 2)
        return x, sizes

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """images uint8 (B, 3, H, W) RGB -> boxes (B, K, 4), scores (B, K), labels (B, K)."""
        x, sizes = self.normalise_and_pad(images)
        cls, ltrb, ctr = self.model.forward_maps(x)
        shapes = [tuple(c.shape[-2:]) for c in cls]
        points, _ = level_points(shapes, self.model.strides, device=x.device)
        if self.nms_pre >= self.max_per_img:
            groups = [slice(0, len(cls))]
            group_points = [points]
        else:
            groups = [slice(i, i + 1) for i in range(len(cls))]
            group_points = list(points.split([h * w for h, w in shapes]))
        dummies = -(-self.nms_pre // cls[0].shape[1])  # ceil(nms_pre / C)
        sel_cls, sel_ltrb, sel_ctr, sel_points = [], [], [], []
        for g, pts in zip(groups, group_points, strict=True):
            sel_cls.append(F.pad(_flat(cls[g]), (0, dummies), value=_DUMMY_LOGIT))
            sel_ctr.append(F.pad(_flat(ctr[g]), (0, dummies), value=_DUMMY_LOGIT))
            sel_ltrb.append(F.pad(_flat(ltrb[g]), (0, dummies)))
            sel_points.append(F.pad(pts, (0, 0, 0, dummies)))
        boxes, scores, labels, _ = select_topk(
            sel_cls, sel_ltrb, sel_ctr, sel_points, sizes, score_thr=self.score_thr,
            nms_pre=self.nms_pre, max_per_img=self.max_per_img,
        )
        pad = self.max_per_img - scores.shape[1]  # > 0 only if levels * nms_pre < K
        return (F.pad(boxes, (0, 0, 0, pad)), F.pad(scores, (0, pad)), F.pad(labels, (0, pad)))


def _export_dynamo(wrapper: nn.Module, example: Tensor, opset: int):
    auto = torch.export.Dim.AUTO
    program = torch.onnx.export(
        wrapper, (example,), dynamo=True, input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES), opset_version=opset,
        dynamic_shapes={INPUT_NAME: {axis: auto for axis in AXIS_NAMES}}, verbose=False,
    )
    return program.model_proto


def _export_torchscript(wrapper: nn.Module, example: Tensor, opset: int):
    import io

    import onnx

    buffer = io.BytesIO()
    axes = {INPUT_NAME: AXIS_NAMES, **{name: {0: "batch"} for name in OUTPUT_NAMES}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (example,), buffer, dynamo=False, input_names=[INPUT_NAME],
                          output_names=list(OUTPUT_NAMES), dynamic_axes=axes,
                          opset_version=min(opset, 20))
    return onnx.load_from_string(buffer.getvalue())


def _name_dynamic_axes(proto) -> None:
    """Rename the exporter's symbolic dims of the input (s0, s1, ...) to batch/height/width,
    wherever they appear in the graph's inputs, outputs and value infos."""
    (inp,) = [i for i in proto.graph.input if i.name == INPUT_NAME]
    dims = inp.type.tensor_type.shape.dim
    rename = {dims[a].dim_param: n for a, n in AXIS_NAMES.items() if dims[a].dim_param}
    for info in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for d in info.type.tensor_type.shape.dim:
            if d.dim_param in rename:
                d.dim_param = rename[d.dim_param]


def onnx_op_counts(proto) -> Counter:
    """Op types of every node of the model, its subgraphs and its local functions."""
    counts: Counter = Counter()

    def visit(nodes) -> None:
        for node in nodes:
            counts[node.op_type] += 1
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    visit(attr.g.node)
                for g in attr.graphs:
                    visit(g.node)

    visit(proto.graph.node)
    for fn in proto.functions:
        visit(fn.node)
    return counts


@torch.no_grad()
def verify_other_shape(proto, wrapper: ExportableDetector, example_size: tuple[int, int],
                       swin: bool = False) -> None:
    """Run the exported graph with onnxruntime on one image of a size other than the traced
    example (batch 1, +32 / +96 px) and compare its scores with PyTorch's, so that a graph whose
    exporter fixed a size-dependent branch is refused here rather than failing at deployment.
    Skipped (with a warning) when onnxruntime is not installed.

    Raises:
        ExportShapeError: the graph fails at that shape or its scores differ by more than 1e-4.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        log.warning("onnxruntime is not installed: the exported graph was not run")
        return
    h, w = example_size[0] + 32, example_size[1] + 96
    gen = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8, generator=gen)
    device = next(wrapper.parameters()).device
    expected = wrapper(image.to(device))[1].float().cpu()
    limits = (f" (Swin-T graphs take images with both sides >= {SWIN_MIN_SIDE} px)"
              if swin else "")
    try:
        session = ort.InferenceSession(proto.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        scores = session.run([OUTPUT_NAMES[1]], {INPUT_NAME: image.numpy()})[0]
    except Exception as err:
        raise ExportShapeError(
            f"the exported graph fails on a 1x3x{h}x{w} input although it was traced at "
            f"{example_size[0]}x{example_size[1]}: {err}{limits}") from err
    diff = float((torch.from_numpy(scores) - expected).abs().max())
    if diff > 1e-4:
        raise ExportShapeError(
            f"the exported graph's scores differ from PyTorch's by {diff:.3g} on a 1x3x{h}x{w} "
            f"input (traced at {example_size[0]}x{example_size[1]}){limits}")


def check_onnx_model(proto_or_path) -> Counter:
    """``onnx.checker`` (with shape inference) and the absence of NonMaxSuppression.

    Returns the op counts. Raises ``onnx.checker.ValidationError`` or ``ValueError``.
    """
    import onnx

    proto = proto_or_path
    if isinstance(proto_or_path, str | Path):
        proto = onnx.load(str(proto_or_path))
    onnx.checker.check_model(proto, full_check=True)
    counts = onnx_op_counts(proto)
    if counts.get("NonMaxSuppression"):
        raise ValueError("the exported graph contains a NonMaxSuppression node")
    return counts


def export_onnx(
    model: nn.Module, path: str | Path, *, opset: int = DEFAULT_OPSET,
    metadata: dict[str, Any] | None = None, example_size: tuple[int, int] = EXAMPLE_SIZE,
    dynamo: bool = True,
) -> str:
    """Export ``model`` (an O2FDetector) with :class:`ExportableDetector` to ``path``.

    The model is exported on its own device in eval mode, from a copy with its BatchNorm folded
    into the convolutions (:func:`o2f.models.fuse.fuse_conv_bn`); ``metadata`` entries are stored as
    JSON strings in the model's ``metadata_props`` (``o2f.*`` keys). The file is checked with
    :func:`check_onnx_model` before it is written.

    Returns:
        the exporter that produced the file: ``"dynamo"`` (torch.export based) or
        ``"torchscript"`` (the fallback, used only when the first fails or ``dynamo=False``).
    """
    import onnx

    if getattr(model, "nms", False):
        log.warning("the model applies NMS at test time (test.nms); the exported graph does "
                    "not: its detections are the NMS-free top-%d", model.max_per_img)
    with_masks = bool(getattr(model, "with_masks", False))
    if with_masks:
        log.warning("the model predicts instance masks; the exported graph gives its boxes, "
                    "scores and labels only (masks are not exported)")
    wrapper = ExportableDetector(fuse_conv_bn(model)).eval()  # BatchNorm folded (a copy)
    device = next(model.parameters()).device
    swin = type(getattr(model, "backbone", None)).__name__ == "SwinBackbone"
    if swin:
        example_size = tuple(max(s, SWIN_MIN_EXAMPLE) for s in example_size)
    gen = torch.Generator().manual_seed(0)
    example = torch.randint(0, 256, (2, 3, *example_size), dtype=torch.uint8, generator=gen)
    example = example.to(device)
    exporter = "dynamo" if dynamo else "torchscript"
    if dynamo:
        try:
            proto = _export_dynamo(wrapper, example, opset)
        except Exception as err:  # any failure of torch.export / the ONNX translation
            log.warning("torch.onnx.export(dynamo=True) failed (%s: %s); falling back to the "
                        "TorchScript exporter", type(err).__name__, err)
            exporter = "torchscript"
    if exporter == "torchscript":
        proto = _export_torchscript(wrapper, example, opset)
    _name_dynamic_axes(proto)
    props = {"o2f.exporter": exporter, "o2f.max_per_img": wrapper.max_per_img,
             "o2f.score_thr": wrapper.score_thr, "o2f.nms_pre": wrapper.nms_pre,
             **({"o2f.masks": "not exported"} if with_masks else {}),
             **{f"o2f.{k}": v for k, v in (metadata or {}).items()}}
    onnx.helper.set_model_props(proto, {k: json.dumps(v) for k, v in props.items()})
    check_onnx_model(proto)
    verify_other_shape(proto, wrapper, example_size, swin)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path))
    return exporter
