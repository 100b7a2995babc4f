"""The suite runs on the CPU unless a test asks for CUDA (tests/conftest.py), in this process
and in every process it starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch


def test_device_choices_see_no_gpu(tiny_detector_cfg):
    from o2f.builders import build_detector
    from o2f.deploy.predict import Detector
    from o2f.distributed import device_for_rank
    from o2f.engine.distributed_setup import init_distributed

    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert init_distributed()[2] == torch.device("cpu")
    assert device_for_rank(1) == torch.device("cpu")
    detector = Detector(build_detector(tiny_detector_cfg, 2), tiny_detector_cfg)
    assert detector.device == torch.device("cpu")


def test_subprocesses_see_no_gpu():
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                         capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "0"


@pytest.mark.cuda
def test_a_test_marked_cuda_sees_the_gpu():
    assert torch.cuda.is_available() and os.environ.get("CUDA_VISIBLE_DEVICES") != ""
    x = torch.ones(2, device="cuda")
    assert x.sum().item() == 2


@pytest.fixture
def tiny_detector_cfg():
    from o2f.config import load_config

    return load_config("demo", ["model.fpn.channels=16", "model.head.feat_channels=16",
                                "model.head.ctr_channels=16", "model.head.gn_groups=4"])
