"""safetensors weights: a round trip gives the same model; reading never unpickles."""

from __future__ import annotations

import pytest
import torch

from o2f.deploy import Detector, load_detector, load_safetensors_weights, save_safetensors_weights
from o2f.engine.checkpoint import CheckpointError
from tests.deploy.conftest import CLASS_NAMES


def test_round_trip(tiny_model, tiny_config_path, tmp_path):
    from o2f.config import load_config

    path = tmp_path / "w.safetensors"
    meta = {"class_names": CLASS_NAMES, "num_classes": 3}
    save_safetensors_weights(tiny_model.state_dict(), path,
                             load_config(str(tiny_config_path)).to_dict(), meta)
    state, config, stored_meta = load_safetensors_weights(path)
    assert stored_meta == meta and config["model"]["num_classes"] == 3
    assert state.keys() == tiny_model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in tiny_model.state_dict().items())
    model, cfg, _ = load_detector(path)
    images = torch.randint(0, 256, (2, 3, 64, 80), dtype=torch.uint8)
    with torch.no_grad():
        got, want = model(images), tiny_model(images)
    assert all(len(w["scores"]) > 0 for w in want)  # detections to compare
    for g, w in zip(got, want, strict=True):
        assert all(torch.equal(g[k], w[k]) for k in ("boxes", "scores", "labels"))
    assert Detector.from_checkpoint(path, device="cpu").class_names == CLASS_NAMES


def test_weights_alone_need_a_config(tiny_model, tiny_config_path, tmp_path):
    path = tmp_path / "bare.safetensors"
    save_safetensors_weights(tiny_model.state_dict(), path)
    with pytest.raises(CheckpointError, match="no stored config"):
        load_detector(path)
    model, _, meta = load_detector(path, str(tiny_config_path))
    assert meta == {} and model.head.num_classes == 3
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_detector(broken)
