"""Deployment backends: ONNX Runtime and OpenVINO exports, fp32 and int8, against eager PyTorch.

fp32 exports must give PyTorch's scores within 1e-3; int8 exports are judged by the COCO box AP
of a `small`-architecture model trained (overfit) on a few synthetic images, through the same
evaluation `o2f test` runs. The CLI tests export, test and predict through the `o2f` command.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from o2f.builders import build_detector
from o2f.config import load_config
from o2f.data import CocoDetection, build_transforms, collate
from o2f.data.synthetic import generate_synthetic_coco
from o2f.deploy.backends import (
    ExportedModel,
    TorchBackend,
    is_exported_model,
    load_backend,
    load_exported,
)
from o2f.deploy.export_openvino import export_deployment, export_metadata
from o2f.deploy.quantize import (
    calibration_images,
    onnx_conv_part,
    onnx_prediction_convs,
    openvino_conv_part,
)
from o2f.engine.checkpoint import save_checkpoint
from o2f.engine.evaluate import coco_evaluate
from o2f.engine.optim import LRSchedule, build_optimizer
from tests.deploy.test_export import assert_same_detections

ort = pytest.importorskip("onnxruntime")
ov = pytest.importorskip("openvino")
pytest.importorskip("nncf")

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE, ITERS = 96, 100
# the `small` architecture (ResNet-18, 64-channel FPN, 4-conv towers, GroupNorm, aux head) at a
# test size a few seconds of training can overfit
SMALL = [f"data.test_short={SIZE}", f"data.max_size={SIZE}", "optim.lr=0.004",
         "optim.warmup_iters=20", "optim.schedule=step", "optim.steps=[]", "train.epochs=3"]


# -- unit tests (fast) -------------------------------------------------------------------------
class FakeBackend:
    """Scores 0.9, 0.5, 0.04, 0 (padding) for boxes in resized pixels."""

    format = "fake"
    metadata = {"score_thr": 0.05, "class_names": ["a", "b"]}

    def __call__(self, images):
        assert images.dtype == np.uint8 and images.shape[0] == 1
        boxes = np.array([[[10, 20, 30, 40], [0, 0, 8, 8], [1, 1, 2, 2], [0, 0, 0, 0]]],
                         np.float32)
        return boxes, np.array([[0.9, 0.5, 0.04, 0.0]], np.float32), np.array([[1, 0, 1, 0]])


def test_exported_model_filters_and_rescales_like_the_eager_model():
    model = ExportedModel(FakeBackend())
    assert model.num_classes == 2 and model.score_thr == 0.05
    image = torch.zeros(3, 40, 60, dtype=torch.uint8)
    (det,) = model([image], [{"scale_factor": (2.0, 4.0)}])
    torch.testing.assert_close(det["scores"], torch.tensor([0.9, 0.5]))
    torch.testing.assert_close(det["boxes"][0], torch.tensor([5.0, 5.0, 15.0, 10.0]))
    assert det["labels"].tolist() == [1, 0]
    (higher,) = ExportedModel(FakeBackend(), score_thr=0.6)([image])
    assert higher["scores"].tolist() == [pytest.approx(0.9)]
    with pytest.raises(ValueError, match="uint8"):
        model([image.float()])


def test_is_exported_model_and_missing_files(tmp_path):
    assert is_exported_model("a/model.onnx") and is_exported_model("m.XML")
    assert not is_exported_model("last.pth") and not is_exported_model("w.safetensors")
    with pytest.raises(FileNotFoundError):
        load_backend(tmp_path / "none.onnx")
    (tmp_path / "m.xml").write_text("<net/>")
    with pytest.raises(FileNotFoundError, match=r"\.bin"):
        load_backend(tmp_path / "m.xml")


def test_conv_part_stops_at_the_last_convolution():
    """Input -> Sub -> Conv -> Relu -> Conv -> Sigmoid -> TopK: all but Sigmoid and TopK."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Sub", ["x", "m"], ["a"], name="sub"),
             helper.make_node("Conv", ["a", "w"], ["b"], name="conv1"),
             helper.make_node("Relu", ["b"], ["c"], name="relu"),
             helper.make_node("Conv", ["c", "w"], ["d"], name="conv2"),
             helper.make_node("Sigmoid", ["d"], ["e"], name="sig"),
             helper.make_node("TopK", ["e", "k"], ["v", "i"], name="topk")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 1, 4, 4])], [])
    assert onnx_conv_part(helper.make_model(graph)) == {"sub", "conv1", "relu", "conv2"}


def test_calibration_images_are_the_evaluation_input(tmp_path):
    """From a folder, from a COCO json (images beside it) and synthetic: uint8 (1, 3, h, w)
    batches resized exactly as the val dataset resizes them."""
    paths = generate_synthetic_coco(tmp_path, 3, 2, image_size=(120, 90), seed=0)
    cfg = load_config(None, ["data.test_short=64", "data.max_size=100"])
    tf = build_transforms(False, 100, (64, 64), 0.0)
    val = CocoDetection(paths["val_ann"], paths["val_images"], tf)
    from_dir, info = calibration_images(paths["val_images"], cfg, 10)
    assert info["images"] == 2 and info["source"] == str(paths["val_images"])
    for batch, (image, _) in zip(from_dir, [val[0], val[1]], strict=True):
        assert batch.dtype == np.uint8 and batch.shape == (1, *image.shape)
        np.testing.assert_array_equal(batch[0], image.numpy())
    cfg_json = load_config(None, ["data.test_short=64", "data.max_size=100",
                                  f"data.val.ann_file={paths['val_ann']}",
                                  f"data.val.img_dir={paths['val_images']}"])
    from_json, info = calibration_images(paths["val_ann"], cfg_json, 1)
    assert info["images"] == 1
    np.testing.assert_array_equal(from_json[0][0], val[0][0].numpy())
    synthetic, info = calibration_images(None, cfg, 2)
    assert info["source"] == "synthetic" and synthetic[0].shape == (1, 3, 64, 100)
    with pytest.raises(FileNotFoundError):
        calibration_images(tmp_path / "nothing", cfg, 2)


# -- a trained small model and its exports (slow: one torch.export of ~40 s) -----------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Four 96 x 96 synthetic images (1-3 objects, 4 classes), train = val."""
    root = tmp_path_factory.mktemp("data")
    paths = generate_synthetic_coco(root, 4, 1, image_size=(SIZE, SIZE), seed=0,
                                    num_objects=(1, 3), size_range=(SIZE // 5, SIZE // 2))
    return paths


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """(model, cfg, checkpoint path): `small` overfit on the four images (full batch)."""
    torch.set_num_threads(1)
    overrides = [*SMALL, f"data.train.ann_file={data['train_ann']}",
                 f"data.train.img_dir={data['train_images']}",
                 f"data.val.ann_file={data['train_ann']}",
                 f"data.val.img_dir={data['train_images']}", "data.workers=0"]
    cfg = load_config("small", overrides)
    tf = build_transforms(False, SIZE, (SIZE, SIZE), 0.0)
    train = CocoDetection(data["train_ann"], data["train_images"], tf, train=True)
    torch.manual_seed(0)
    model = build_detector(cfg, train.num_classes).train()
    optimizer = build_optimizer(model, cfg.optim, 4)
    schedule = LRSchedule(cfg.optim)
    images, targets = collate([train[i] for i in range(len(train))])
    for it in range(ITERS):
        epoch = 3 * it // ITERS
        model.set_epoch(epoch, 3)
        schedule.apply(optimizer, it, epoch)
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    path = tmp_path_factory.mktemp("ckpt") / "small.pth"
    meta = {"class_names": train.class_names, "cat_ids": train.cat_ids,
            "num_classes": train.num_classes}
    save_checkpoint({"model": model.state_dict(), "config": cfg.to_dict(), "meta": meta}, path)
    return model, cfg, path, meta


@pytest.fixture(scope="module")
def exports(trained, data, tmp_path_factory):
    """{format: path} of the four exports (int8 calibrated on the training images)."""
    model, cfg, path, meta = trained
    out = tmp_path_factory.mktemp("exports")
    metadata = export_metadata(cfg, meta, model.head.num_classes, path.name)
    export_deployment(model, out / "model.onnx", "onnx", metadata=metadata)
    calib, info = calibration_images(data["train_images"], cfg, 16)
    files = {"onnx": out / "model.onnx", "onnx-int8": out / "model_int8.onnx",
             "openvino": out / "model.xml", "openvino-int8": out / "model_int8.xml"}
    for fmt in ("onnx-int8", "openvino", "openvino-int8"):
        export_deployment(None, files[fmt], fmt, onnx_path=files["onnx"], calib_images=calib,
                          calibration=info)
    return files


def _ap(model, cfg) -> float:
    from o2f.engine.train import build_val_dataset

    metrics, _ = coco_evaluate(model, build_val_dataset(cfg), torch.device("cpu"), 1, 0)
    return float(metrics["bbox_mAP"])


@pytest.fixture(scope="module")
def checkpoint_ap(trained):
    model, cfg, _, _ = trained
    ap = _ap(model, cfg)
    assert ap > 0.5, f"the overfit model should detect its training images (AP {ap:.3f})"
    return ap


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
@pytest.mark.parametrize("size", [(2, 96, 96), (1, 75, 133)], ids=lambda s: "x".join(map(str, s)))
def test_fp32_exports_match_pytorch(trained, exports, fmt, size):
    model, _, _, _ = trained
    backend = load_backend(exports[fmt], threads=1)
    assert backend.format == fmt
    gen = torch.Generator().manual_seed(sum(size))
    images = torch.randint(0, 256, (size[0], 3, *size[1:]), dtype=torch.uint8, generator=gen)
    images[:, :, 20:60, 20:60] = 200  # something object-like among the noise
    got = backend(images)
    want = TorchBackend(model)(images)
    assert [g.shape for g in got] == [w.shape for w in want]
    assert got[2].dtype == np.int64 and (want[1] > 0.05).any()
    assert_same_detections(got, want, score_tol=1e-3, box_tol=0.05)


@pytest.mark.slow
def test_exports_keep_interface_and_record_metadata(exports, data):
    onnx_props = {}
    for fmt, path in exports.items():
        backend = load_backend(path)
        meta = backend.metadata
        assert backend.format == fmt
        assert meta["class_names"] == ["circle", "square", "triangle", "ring"]
        assert meta["config"]["data"]["test_short"] == SIZE and meta["cat_ids"] == [1, 3, 7, 12]
        assert meta["precision"] == ("int8" if fmt.endswith("int8") else "fp32")
        if fmt.endswith("int8"):
            calib = meta["quantization"]["calibration"]
            assert calib["source"] == str(data["train_images"]) and calib["images"] == 4
            assert meta["quantization"]["calibration_method"] == "minmax"
        if fmt.startswith("onnx"):
            proto = onnx.load(str(path))
            onnx_props[fmt] = {v.name: (v.type.tensor_type.elem_type,
                                        [d.dim_param or d.dim_value
                                         for d in v.type.tensor_type.shape.dim])
                               for v in [*proto.graph.input, *proto.graph.output]}
        else:
            model = ov.Core().read_model(str(path))
            names = [sorted(p.get_names())[0] for p in model.inputs + model.outputs]
            assert names == ["images", "boxes", "scores", "labels"]
            assert model.input(0).get_element_type() == ov.Type.u8
            assert model.output(2).get_element_type() == ov.Type.i64
            assert str(model.input(0).get_partial_shape()) == "[?,3,?,?]"
    assert onnx_props["onnx"] == onnx_props["onnx-int8"]  # the same interface


@pytest.mark.slow
def test_int8_quantizes_the_convolutions_only(exports):
    """QDQ pairs around the convolutions, none in the post-processing (sigmoid, top-k ...);
    NNCF's FakeQuantize nodes likewise only upstream of a convolution."""
    proto = onnx.load(str(exports["onnx-int8"]))
    conv = onnx_conv_part(proto)
    post = [n for n in proto.graph.node if n.name not in conv]
    ops = {n.op_type for n in post}
    assert {"Sigmoid", "TopK"} <= ops
    assert not ops & {"QuantizeLinear", "DequantizeLinear"}, sorted(ops)
    dequantized = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    prediction = onnx_prediction_convs(proto)  # 3 per level: cls, box, centerness
    assert len(prediction) == 15
    for node in (n for n in proto.graph.node if n.op_type == "Conv"):
        # int8 weights (a DequantizeLinear input) except in the float prediction layers
        assert (node.input[1] in dequantized) == (node.name not in prediction), node.name
    model = ov.Core().read_model(str(exports["openvino-int8"]))
    part = openvino_conv_part(model)
    fq = [op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]
    assert len(fq) > 50 and all(op.get_friendly_name() in part for op in fq)


@pytest.mark.slow
def test_exports_ap_against_the_checkpoint(trained, exports, checkpoint_ap):
    """fp32: the checkpoint's AP (within 0.002); int8: within 0.05 (4 images, coarse)."""
    _, cfg, _, _ = trained
    aps = {fmt: _ap(load_exported(path, threads=1)[0], cfg) for fmt, path in exports.items()}
    for fmt, ap in aps.items():
        tol = 0.05 if fmt.endswith("int8") else 0.002
        assert abs(ap - checkpoint_ap) <= tol, (fmt, ap, checkpoint_ap, aps)


@pytest.mark.slow
def test_cli_export_test_and_predict_the_deployed_models(trained, exports, data, tmp_path,
                                                         capsys):
    """`o2f export` from the fp32 .onnx (int8 ONNX, OpenVINO IR), then `o2f test` and
    `o2f predict` of each file with the config stored in it."""
    from o2f import cli

    _, _, ckpt, _ = trained
    out_int8, out_xml = tmp_path / "q.onnx", tmp_path / "m.xml"
    assert cli.main(["export", "-", str(exports["onnx"]), "--int8", "--calib",
                     str(data["train_ann"]), "--calib-images", "3", "-o", str(out_int8)]) == 0
    assert "calibrated on 3 image(s)" in capsys.readouterr().out
    assert cli.main(["export", "-", str(exports["onnx"]), "-o", str(out_xml)]) == 0
    assert out_xml.with_suffix(".bin").is_file()
    assert load_backend(out_int8).metadata["quantization"]["calibration"]["source"] == str(
        data["train_ann"])
    metrics = {}
    for name, path in (("ckpt", ckpt), ("int8", out_int8), ("openvino", out_xml)):
        target = tmp_path / f"{name}.json"
        assert cli.main(["test", "-", str(path), "--metrics-out", str(target)]) == 0
        metrics[name] = json.loads(target.read_text())["bbox_mAP"]
    assert metrics["openvino"] == pytest.approx(metrics["ckpt"], abs=0.002), metrics
    assert metrics["int8"] == pytest.approx(metrics["ckpt"], abs=0.05), metrics
    image = sorted(data["train_images"].iterdir())[0]
    for path in (out_xml, out_int8):
        out = tmp_path / f"pred_{path.suffix[1:]}"
        assert cli.main(["predict", "-", str(path), str(image), "--out", str(out),
                         "--score-thr", "0.3"]) == 0
        dets = json.loads((out / (image.stem + ".json")).read_text())["detections"]
        assert dets and {d["name"] for d in dets} <= {"circle", "square", "triangle", "ring"}


@pytest.mark.slow
def test_benchmark_rows_for_every_format(trained, tmp_path):
    """`o2f benchmark` with the checkpoint: every format timed, AP measured, JSON lines out."""
    from o2f import cli

    _, _, ckpt, _ = trained
    target = tmp_path / "bench.jsonl"
    assert cli.main(["benchmark", "-", str(ckpt), "--repeats", "2", "--calib-images", "4",
                     "--json-out", str(target)]) == 0
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["format"] for r in rows] == ["pytorch", "onnx", "onnx-int8", "openvino",
                                           "openvino-int8"]
    for r in rows:
        assert r["ms_per_image"] > 0 and len(r["samples_ms"]) == 2 and r["image"] == "96x96"
        assert 0.5 < r["bbox_mAP"] <= 1.0
    assert rows[1]["bbox_mAP"] == pytest.approx(rows[0]["bbox_mAP"], abs=0.002)
    assert rows[0]["ap_drop"] == 0 and rows[0]["speedup"] == 1.0


def test_benchmark_without_checkpoint_is_speed_only(tiny_config_path):
    """Random weights: bbox_mAP null, the image at the config's aspect (eager PyTorch only:
    the exports' rows are the slow test's)."""
    from o2f.deploy import benchmark

    rows = benchmark.run_benchmark(str(tiny_config_path), None, formats=["pytorch"],
                                   repeats=2, imgsz=64)
    assert rows[0]["bbox_mAP"] is None and rows[0]["image"] == "64x85"
    assert rows[0]["speedup"] == 1.0 and len(rows[0]["samples_ms"]) == 2
    assert "| pytorch |" in benchmark.format_table(rows)
