"""A tiny random detector (ResNet-18, 32-channel FPN and head, 3 classes) and its checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from o2f.builders import build_detector
from o2f.config import load_config
from o2f.engine.checkpoint import save_checkpoint

CLASS_NAMES = ["circle", "square", "triangle"]


def blob_picture(w: int = 150, h: int = 100, seed: int = 0) -> np.ndarray:
    """(h, w, 3) uint8 with four smooth coloured discs rather than noise, so JPEG keeps them and
    the model sees structure."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.full((h, w, 3), 40.0)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(8, 30)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    return img.astype(np.uint8)
TINY = {
    "model": {
        "num_classes": 3,
        "backbone": {"depth": 18, "pretrained": False, "frozen_stages": -1, "norm_eval": False},
        "fpn": {"channels": 32},
        "head": {"feat_channels": 32, "num_convs": 1, "ctr_channels": 16, "num_ctr_convs": 1,
                 "gn_groups": 8},
    },
    "data": {"test_short": 96, "max_size": 128},
}


def spread_head(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random head weights with spread-out scores (a fresh head scores everything ~0.005)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.head.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        model.head.scales.fill_(1.0)
    return model


@pytest.fixture(scope="session")
def tiny_config_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_config_path):
    torch.manual_seed(0)
    return spread_head(build_detector(load_config(str(tiny_config_path)))).eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model, tiny_config_path, tmp_path_factory):
    """An o2f checkpoint of ``tiny_model`` with class names in its meta."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    cfg = load_config(str(tiny_config_path))
    save_checkpoint({"model": tiny_model.state_dict(), "config": cfg.to_dict(),
                     "meta": {"class_names": CLASS_NAMES, "cat_ids": [3, 7, 9],
                              "num_classes": 3}}, path)
    return path


def deploy_main(argv: list[str]) -> int:
    """Run a deploy sub-command (export, predict, convert-mmdet) as ``o2f`` would."""
    import argparse

    from o2f.deploy.commands import register

    parser = argparse.ArgumentParser(prog="o2f")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture
def cli(monkeypatch):
    """``o2f`` main() with the deploy commands registered."""
    from o2f import cli as cli_module

    if "o2f.deploy.commands" not in cli_module.COMMANDS:
        monkeypatch.setattr(cli_module, "COMMANDS", [*cli_module.COMMANDS, "o2f.deploy.commands"])
    return cli_module.main
