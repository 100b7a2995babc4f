"""model.backbone.weights: torchvision ResNet / Swin-T state dicts from local files."""

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from o2f.builders import build_backbone, build_detector, detector_from_checkpoint
from o2f.config import ConfigError, load_config
from o2f.engine.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def resnet18_state():
    torch.manual_seed(0)
    return torchvision.models.resnet18().state_dict()


def config(path, *extra):
    return load_config("demo", ["model.backbone.depth=18", f"model.backbone.weights={path}",
                                *extra])


def assert_same_tensors(backbone, state):
    own = backbone.state_dict()
    assert torch.equal(own["stem.0.weight"], state["conv1.weight"])  # the stem is conv1, bn1
    assert torch.equal(own["stem.1.running_var"], state["bn1.running_var"])
    for key, value in own.items():
        assert torch.equal(value, state[backbone.torchvision_key(key)]), key


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_torchvision_resnet18_file_gives_identical_backbone_tensors(resnet18_state, tmp_path,
                                                                      suffix):
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".pth":
        torch.save(resnet18_state, path)
    else:
        save_file(resnet18_state, str(path))
    model = build_detector(config(path), num_classes=3)
    assert_same_tensors(model.backbone, resnet18_state)


@pytest.mark.parametrize("wrapper, prefix", [("state_dict", "backbone."), ("model", "body."),
                                             ("model", "backbone.body.")])
def test_wrappers_and_prefixes_are_accepted(resnet18_state, tmp_path, wrapper, prefix):
    path = tmp_path / "wrapped.pth"
    torch.save({wrapper: {prefix + k: v for k, v in resnet18_state.items()}, "epoch": 3}, path)
    assert_same_tensors(build_backbone(config(path).model.backbone), resnet18_state)


def test_weights_replace_the_download(resnet18_state, tmp_path, monkeypatch):
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18_state, path)
    original = torchvision.models.resnet18

    def no_download(weights=None, **kwargs):
        assert weights is None, "ImageNet weights requested although a weights file is set"
        return original(weights=None, **kwargs)

    monkeypatch.setattr(torchvision.models, "resnet18", no_download)
    backbone = build_backbone(config(path, "model.backbone.pretrained=true").model.backbone)
    assert_same_tensors(backbone, resnet18_state)


def _bad(state, what):
    state = dict(state)
    if what == "unexpected":
        state["layer5.0.conv1.weight"] = torch.zeros(1)
        return state, r"unexpected keys \(1\): layer5\.0\.conv1\.weight"
    if what == "missing":
        del state["layer4.1.conv2.weight"]
        return state, r"missing keys \(1\): layer4\.1\.conv2\.weight"
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    return state, (r"shape mismatches \(1\): conv1\.weight \(64, 3, 3, 3\) "
                   r"\(expected \(64, 3, 7, 7\)")


@pytest.mark.parametrize("what", ["unexpected", "missing", "shape"])
def test_a_file_that_does_not_fit_names_the_file_and_the_key(resnet18_state, tmp_path, what):
    state, message = _bad(resnet18_state, what)
    path = tmp_path / f"{what}.pth"
    torch.save(state, path)
    with pytest.raises(ConfigError, match=message) as err:
        build_backbone(config(path).model.backbone)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith("model.backbone.weights: ")


def test_a_missing_or_unreadable_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"model.backbone.weights: .*nope\.pth does not exist"):
        build_backbone(config(tmp_path / "nope.pth").model.backbone)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ConfigError, match=r"list\.pth does not hold a state dict"):
        build_backbone(config(tmp_path / "list.pth").model.backbone)


def test_a_file_of_another_depth_does_not_fit(tmp_path):
    torch.manual_seed(0)
    state = torchvision.models.resnet34().state_dict()
    path = tmp_path / "resnet34.pth"
    torch.save(state, path)
    with pytest.raises(ConfigError, match="resnet34.pth does not fit the ResNetBackbone"):
        build_backbone(config(path).model.backbone)  # a ResNet-34 file for a ResNet-18


def test_checkpoints_load_without_the_weights_file(resnet18_state, tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18_state, path)
    cfg = config(path)
    model = build_detector(cfg, num_classes=3)
    save_checkpoint({"model": model.state_dict(), "config": cfg.to_dict(),
                     "meta": {"num_classes": 3}}, tmp_path / "last.pth")
    path.unlink()  # e.g. deployed on another machine
    restored, _, _ = detector_from_checkpoint(tmp_path / "last.pth")
    assert torch.equal(restored.backbone.stem[0].weight, resnet18_state["conv1.weight"])


def test_a_torchvision_swin_t_file_loads_into_the_swin_backbone(tmp_path):
    torch.manual_seed(0)
    state = torchvision.models.swin_t().state_dict()  # with the classifier's norm and head
    path = tmp_path / "swin_t.safetensors"
    save_file(state, str(path))
    cfg = load_config("swin_1x", ["model.backbone.pretrained=false",
                                  f"model.backbone.weights={path}"])
    backbone = build_backbone(cfg.model.backbone)
    own = backbone.state_dict()
    for key, value in own.items():
        if key.startswith("out_norms."):  # new layers: LayerNorm's weight 1, bias 0
            assert torch.equal(value, torch.ones_like(value) if key.endswith("weight")
                               else torch.zeros_like(value)), key
        else:
            assert torch.equal(value, state[key]), key
    assert len(own) == len(state) - 4 + 6  # norm/head (weight, bias) out; 3 out_norms in
