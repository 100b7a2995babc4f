"""ONNX export: onnxruntime gives the detections of PyTorch; the graph has no NMS."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from o2f.deploy import load_detector
from o2f.deploy.export_onnx import ExportableDetector, check_onnx_model
from tests.deploy.conftest import deploy_main

ort = pytest.importorskip("onnxruntime")

# batch 2; odd sizes; a large one; and 32 x 32, which has fewer candidates (69) than K (100)
SIZES = [(2, 64, 96), (1, 37, 45), (1, 200, 130), (2, 32, 32)]


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint exported once through the CLI (the slow part: 20-40 s of symbolic
    shape work in torch.export, hence the ``slow`` marks)."""
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    assert deploy_main(["export", "-", str(tiny_checkpoint), "--output", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def session(exported):
    return ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])


def assert_same_detections(got, want, score_tol=1e-4, box_tol=1e-2):
    """Equal sorted scores; boxes and labels equal at each rank, except that detections whose
    scores tie within 1e-5 may come in either order."""
    boxes, scores, labels = got
    want_boxes, want_scores, want_labels = want
    np.testing.assert_allclose(scores, want_scores, atol=score_tol, rtol=0)
    for b in range(scores.shape[0]):
        for i in range(scores.shape[1]):
            if want_scores[b, i] == 0:  # padding: nothing to compare
                continue
            ties = np.flatnonzero(np.abs(want_scores[b] - want_scores[b, i]) <= 1e-5)
            ok = [j for j in ties if labels[b, i] == want_labels[b, j]
                  and np.abs(boxes[b, i] - want_boxes[b, j]).max() <= box_tol]
            assert ok, f"image {b} rank {i}: {boxes[b, i]} {labels[b, i]} has no match"


@pytest.mark.slow
def test_graph_is_valid_and_nms_free(exported):
    counts = check_onnx_model(exported)  # onnx.checker with shape inference
    assert "NonMaxSuppression" not in counts
    assert counts["TopK"] >= 1
    model = onnx.load(str(exported))
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*model.graph.input, *model.graph.output]}
    assert dims == {"images": ["batch", 3, "height", "width"], "boxes": ["batch", 100, 4],
                    "scores": ["batch", 100], "labels": ["batch", 100]}
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    props = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert props["o2f.exporter"] == "dynamo"
    assert props["o2f.class_names"] == ["circle", "square", "triangle"]
    assert not list(exported.parent.glob("*.data"))  # weights inside the one file


@pytest.mark.slow
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_onnxruntime_matches_pytorch(session, tiny_checkpoint, size):
    model, _, _ = load_detector(tiny_checkpoint)
    gen = torch.Generator().manual_seed(sum(size))
    images = torch.randint(0, 256, (size[0], 3, *size[1:]), dtype=torch.uint8, generator=gen)
    got = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        want = [t.numpy() for t in ExportableDetector(model)(images)]
    assert [g.shape for g in got] == [w.shape for w in want]
    assert got[2].dtype == np.int64
    assert_same_detections(got, want)
    h, w = size[1:]
    assert (got[0][..., 0::2] <= w).all() and (got[0][..., 1::2] <= h).all()
    assert (got[0] >= 0).all()
    if size[1:] == (32, 32):
        assert (got[1][:, 69:] == 0).all() and (got[1][:, :69] > 0).any()


def test_wrapper_matches_the_detector(tiny_model):
    """The export wrapper (own padding, levels selected as one) gives O2FDetector's output,
    and so does its per-level path (nms_pre < max_per_img)."""
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (2, 3, 70, 90), dtype=torch.uint8, generator=gen)
    with torch.no_grad():
        want = tiny_model(images)
        for nms_pre in (1000, 10):
            model_pre, tiny_model.nms_pre = tiny_model.nms_pre, nms_pre
            try:
                ref = tiny_model(images)
                boxes, scores, labels = ExportableDetector(tiny_model, nms_pre=nms_pre)(images)
            finally:
                tiny_model.nms_pre = model_pre
            for b, det in enumerate(ref):
                n = len(det["scores"])
                torch.testing.assert_close(scores[b, :n], det["scores"])
                torch.testing.assert_close(boxes[b, :n], det["boxes"])
                assert torch.equal(labels[b, :n], det["labels"])
                assert (scores[b, n:] == 0).all()
    assert len(want[0]["scores"]) > 0


def test_export_safetensors_and_errors(tiny_checkpoint, tiny_config_path, tmp_path, capsys):
    out = tmp_path / "w.safetensors"
    assert deploy_main(["export", "-", str(tiny_checkpoint), "--output", str(out)]) == 0
    model, cfg, meta = load_detector(out)
    assert meta["class_names"] == ["circle", "square", "triangle"]
    assert deploy_main(["export", "-", "--output", str(tmp_path / "x.onnx")]) == 2
    assert "needs a CHECKPOINT" in capsys.readouterr().err
    assert deploy_main(["export", str(tiny_config_path), "--output", str(tmp_path / "x.onnx"),
                        "--set", "model.num_classes=null"]) == 2
    assert "model.num_classes" in capsys.readouterr().err
