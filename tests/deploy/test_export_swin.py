"""ONNX export of a Swin-T model: a graph that works at other sizes, or a clear refusal."""

from __future__ import annotations

import pytest
import torch

from o2f.builders import build_detector
from o2f.config import load_config
from o2f.deploy.export_onnx import (
    ExportableDetector,
    ExportShapeError,
    export_onnx,
    verify_other_shape,
)
from o2f.models import swin
from tests.deploy.test_export import assert_same_detections

ort = pytest.importorskip("onnxruntime")


# Swin-T's layout (4 stages, window 7, shifted windows in every second block, patch merging)
# at a third of its width and two blocks per stage: every kind of block the export has to get
# right at other sizes, in a quarter of the export time of the full model.
NARROW_SWIN = {"embed_dim": 32, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 4, 8]}


@pytest.fixture(scope="module")
def swin_model():
    cfg = load_config("swin_1x", ["model.backbone.pretrained=false", "test.score_thr=0.0"])
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in NARROW_SWIN.items():
            mp.setitem(swin._SWIN_T, key, value)
        model = build_detector(cfg, 3).eval()
    assert model.backbone.out_channels == [64, 128, 256]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # spread scores and boxes (a fresh head scores everything ~0.005)
        for p in model.head.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


@pytest.mark.slow
def test_swin_export_runs_at_other_sizes_and_matches_pytorch(swin_model, tmp_path):
    path = tmp_path / "swin.onnx"
    export_onnx(swin_model, path)  # traced at >= 256 px, checked at another size inside
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wrapper = ExportableDetector(swin_model).eval()
    for batch, h, w in ((2, 256, 256), (1, 250, 333), (1, 420, 300)):
        images = torch.randint(0, 256, (batch, 3, h, w), dtype=torch.uint8)
        got = session.run(None, {"images": images.numpy()})
        with torch.no_grad():
            want = [t.numpy() for t in wrapper(images)]
        assert got[1].shape == (batch, 100) and bool((want[1] > 0).all())
        assert len(set(want[2].flatten().tolist())) > 1 and want[1].std() > 1e-3  # no ties
        assert (want[0][..., 2:] > want[0][..., :2]).any()  # boxes with an extent
        assert_same_detections(got, want)


def _graph(node_of_scores: list, extra_inits: list):
    """A hand-made ONNX graph: uint8 images (B, 3, H, W) in, float ``scores`` out."""
    from onnx import TensorProto, helper

    images = helper.make_tensor_value_info("images", TensorProto.UINT8, ["b", 3, "h", "w"])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, None)
    cast = helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT)
    graph = helper.make_graph([cast, *node_of_scores], "g", [images], [scores], extra_inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_graphs_that_fail_or_differ_at_another_size_are_refused():
    from onnx import TensorProto, helper

    cfg = load_config("demo", ["test.score_thr=0.0", "model.num_classes=3"])
    wrapper = ExportableDetector(build_detector(cfg, 3).eval()).eval()
    # A size fixed at trace time (a Reshape to the example's element count) fails elsewhere.
    fixed = helper.make_tensor("shape", TensorProto.INT64, [2], [1, 3 * 96 * 128])
    baked = _graph([helper.make_node("Reshape", ["x", "shape"], ["scores"])], [fixed])
    with pytest.raises(ExportShapeError, match=r"(?s)fails on a 1x3x128x224 input.*traced at 96x128"
                                               r".*225 px"):
        verify_other_shape(baked, wrapper, (96, 128), swin=True)
    # A graph that runs at any size but gives other scores than PyTorch (here all 0).
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [1, 100], [0.0] * 100)
    wrong = _graph([helper.make_node("Mul", ["zero", "zero"], ["scores"])], [zero])
    with pytest.raises(ExportShapeError, match=r"differ from PyTorch's by"):
        verify_other_shape(wrong, wrapper, (96, 128))
