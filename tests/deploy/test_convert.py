"""``convert-mmdet``: MMDetection 2.x names -> o2f weights with identical outputs; clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from o2f.builders import build_detector
from o2f.config import load_config
from o2f.deploy import COCO_CLASSES, ConversionError, Detector, convert_mmdet_state_dict
from tests.deploy.conftest import CLASS_NAMES, spread_head

_TOWERS = {"cls_convs": "cls_convs", "reg_convs": "reg_convs", "ctr_convs": "centerness_convs"}


def to_mmdet(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """o2f names -> the names of the authors' MMDetection 2.x checkpoints, spelled out by hand
    (mmcv ConvModule: ``conv`` / ``gn``; mmcv Scale: ``scale``; ResNet conv1/bn1)."""
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        if key.startswith("backbone.stem."):
            out[f"backbone.{['conv1', 'bn1'][int(parts[2])]}.{parts[3]}"] = value
        elif key.startswith("backbone."):
            out[key] = value
        elif parts[1] == "lateral_convs":
            out[f"neck.lateral_convs.{parts[2]}.conv.{parts[3]}"] = value
        elif parts[1] == "output_convs":
            out[f"neck.fpn_convs.{parts[2]}.conv.{parts[3]}"] = value
        elif parts[1] == "extra_convs":
            out[f"neck.fpn_convs.{int(parts[2]) + 3}.conv.{parts[3]}"] = value
        elif parts[1] in _TOWERS:
            index = int(parts[2])
            kind = {0: "conv", 1: "gn"}[index % 3]
            out[f"bbox_head.{_TOWERS[parts[1]]}.{index // 3}.{kind}.{parts[3]}"] = value
        elif key == "head.scales":
            for level, scale in enumerate(value):
                out[f"bbox_head.scales.{level}.scale"] = scale.clone()  # 0-dim, like mmcv
        else:
            assert parts[1] in ("conv_cls", "conv_reg", "conv_centerness"), key
            out[f"bbox_head.{parts[1]}.{parts[2]}"] = value
    return out


class NotData:
    """Stands for an arbitrary pickled object that safe loading must refuse."""


@pytest.fixture(scope="module")
def mmdet_sd(tiny_model):
    sd = to_mmdet(tiny_model.state_dict())
    assert "bbox_head.centerness_convs.0.gn.weight" in sd and "neck.fpn_convs.4.conv.bias" in sd
    return sd


def _maps(model, images):
    with torch.no_grad():
        return model.forward_maps(model.preprocess(images)[0])


def _fresh(tiny_config_path, **kw):
    torch.manual_seed(123)
    return build_detector(load_config(str(tiny_config_path)), **kw).eval()


def test_round_trip_gives_identical_outputs(tiny_model, tiny_config_path, mmdet_sd):
    model = _fresh(tiny_config_path)
    converted = convert_mmdet_state_dict(mmdet_sd, model.state_dict().keys())
    model.load_state_dict(converted)
    images = torch.randint(0, 256, (1, 3, 64, 96), dtype=torch.uint8)
    for got, want in zip(_maps(model, images), _maps(tiny_model, images), strict=True):
        for g, w in zip(got, want, strict=True):
            assert torch.equal(g, w)


def test_unmatched_and_missing_keys_are_named(tiny_model, mmdet_sd):
    expected = tiny_model.state_dict().keys()
    extra = {**mmdet_sd, "bbox_head.conv_iou.weight": torch.zeros(1)}
    with pytest.raises(ConversionError, match=r"no o2f counterpart: bbox_head\.conv_iou\.weight"):
        convert_mmdet_state_dict(extra, expected)
    partial = {k: v for k, v in mmdet_sd.items() if not k.startswith("neck.fpn_convs.4.")}
    with pytest.raises(ConversionError, match=r"neck\.extra_convs\.1\.bias, neck\.extra_convs\.1"
                                              r"\.weight"):
        convert_mmdet_state_dict(partial, expected)
    no_counters = {k: v for k, v in mmdet_sd.items() if "num_batches_tracked" not in k}
    assert convert_mmdet_state_dict(no_counters, expected)["backbone.stem.1.num_batches_tracked"] \
        == 0


def test_cli_converts_a_checkpoint_file(cli, tiny_model, tiny_config_path, mmdet_sd, tmp_path):
    src = tmp_path / "r18.pth"
    meta = {"CLASSES": tuple(CLASS_NAMES), "epoch": 12, "mmdet_version": "2.25.0",
            "lr": np.float64(0.01)}  # numpy scalars load safely
    torch.save({"meta": meta, "state_dict": mmdet_sd, "optimizer": {"state": {}}}, src)
    images = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    for dst in (tmp_path / "out.pth", tmp_path / "out.safetensors"):
        assert cli(["convert-mmdet", str(src), str(dst), "--config", str(tiny_config_path)]) == 0
        det = Detector.from_checkpoint(dst, device="cpu")
        assert det.class_names == CLASS_NAMES
        for got, want in zip(_maps(det.model, images), _maps(tiny_model, images), strict=True):
            assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


def test_cli_errors(cli, tiny_config_path, mmdet_sd, tmp_path, capsys):
    src = tmp_path / "unsafe.pth"
    torch.save({"meta": {"hook": NotData()}, "state_dict": mmdet_sd}, src)
    assert cli(["convert-mmdet", str(src), str(tmp_path / "o.pth"), "--config",
                str(tiny_config_path)]) == 2
    assert "--trust-pickle" in capsys.readouterr().err
    assert cli(["convert-mmdet", str(src), str(tmp_path / "o.pth"), "--config",
                str(tiny_config_path), "--trust-pickle"]) == 0
    safe = tmp_path / "safe.pth"
    torch.save({"state_dict": mmdet_sd}, safe)
    assert cli(["convert-mmdet", str(safe), str(tmp_path / "o.pth"), "--config", "r50_1x"]) == 2
    assert "ResNet-18 backbone but config 'r50_1x'" in capsys.readouterr().err


def test_coco_names_for_an_80_class_checkpoint(tiny_config_path, tmp_path):
    from o2f.deploy import convert_mmdet_checkpoint

    model = spread_head(_fresh(tiny_config_path, num_classes=80))
    src = tmp_path / "coco.pth"
    torch.save({"meta": {}, "state_dict": to_mmdet(model.state_dict())}, src)
    meta = convert_mmdet_checkpoint(src, tmp_path / "coco_o2f.pth", str(tiny_config_path))
    assert meta["class_names"] == list(COCO_CLASSES) and meta["cat_ids"][-1] == 90
    assert meta["num_classes"] == 80
