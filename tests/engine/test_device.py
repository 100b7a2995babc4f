"""``train.device``: a clear error for ``cuda`` when CUDA is unusable, a loud warning for a
multi-process CPU run under ``auto``, and the kernel-architecture check."""

from __future__ import annotations

import logging

import pytest
import torch

from o2f.config import ConfigError, load_config
from o2f.engine import distributed_setup as ds
from o2f.engine.distributed_setup import DeviceError, arch_supported, cuda_problem, resolve_device
from o2f.engine.train import batchnorm_frozen

ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]  # torch 2.14.1+cu130's list


@pytest.mark.parametrize(("cap", "ok"), [
    ((7, 5), True), ((8, 0), True), ((8, 6), True), ((8, 9), True),  # 8.9 runs sm_86 cubins
    ((9, 0), True), ((12, 0), True), ((7, 0), False), ((6, 1), False), ((12, 1), True),
    ((11, 0), False), ((13, 0), False),
])
def test_arch_supported_by_cubins_of_the_same_major(cap, ok):
    assert arch_supported(cap, ARCHS) is ok


def test_arch_supported_by_ptx_and_arch_specific_cubins():
    assert arch_supported((13, 0), ["sm_80", "compute_90"])  # PTX: JIT for newer GPUs
    assert not arch_supported((8, 6), ["compute_90"])
    assert arch_supported((9, 0), ["sm_90a"]) and not arch_supported((9, 1), ["sm_90a"])
    assert arch_supported((6, 0), [])  # a build that does not report its list


def test_cuda_choice_names_the_build_when_cuda_is_unavailable():
    # the suite hides the GPUs (tests/conftest.py): torch.cuda.is_available() is False
    with pytest.raises(DeviceError) as err:
        resolve_device("cuda", 0, 1)
    msg = str(err.value)
    assert "train.device=cuda" in msg and torch.__version__ in msg
    if torch.version.cuda is None:
        assert "CPU-only build" in msg
    else:
        assert f"CUDA {torch.version.cuda}" in msg and "is_available() is False" in msg


def test_cuda_choice_names_a_gpu_the_build_has_no_kernels_for(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(ARCHS))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Tesla V100-SXM2-16GB")
    problem = cuda_problem(0)
    assert "Tesla V100" in problem and "7.0 (sm_70)" in problem and "sm_120" in problem
    with pytest.raises(DeviceError, match="no kernels"):
        resolve_device("cuda", 0, 1)
    assert "device_count() is 1" in cuda_problem(1)  # LOCAL_RANK beyond the visible GPUs
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (9, 0))
    assert cuda_problem(0) is None


def test_cuda_choice_quotes_pytorchs_initialisation_warning(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")

    def unavailable():
        import warnings

        warnings.warn("CUDA initialization: The NVIDIA driver on your system is too old "
                      "(found version 12040)", UserWarning, stacklevel=1)
        return False

    monkeypatch.setattr(torch.cuda, "is_available", unavailable)
    assert "driver on your system is too old (found version 12040)" in cuda_problem(0)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def o2f_log():
    handler = _Capture()
    log = ds.get_logger()
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)
    yield handler.messages
    log.removeHandler(handler)
    log.setLevel(level)


def test_auto_warns_loudly_for_a_multi_process_cpu_run(o2f_log):
    assert resolve_device("auto", 0, 1) == torch.device("cpu")
    assert o2f_log == []  # one CPU process: nothing to warn about
    assert resolve_device("auto", 1, 2) == torch.device("cpu")
    assert o2f_log == []  # once per node (local rank 0)
    assert resolve_device("auto", 0, 2) == torch.device("cpu")
    assert len(o2f_log) == 1 and "2 processes will train on the CPU with Gloo" in o2f_log[0]
    assert "train.device=cuda" in o2f_log[0]
    assert resolve_device("cpu", 0, 2) == torch.device("cpu") and len(o2f_log) == 1


def test_train_device_is_validated():
    assert load_config("demo", ["train.device=cpu"]).train.device == "cpu"
    with pytest.raises(ConfigError, match="train.device"):
        load_config("demo", ["train.device=gpu"])


def test_batchnorm_frozen_follows_norm_eval():
    from o2f.builders import build_detector

    frozen = build_detector(load_config("demo", ["model.backbone.norm_eval=true"]), 2)
    trained = build_detector(load_config("demo"), 2)  # demo: BatchNorm trains
    assert batchnorm_frozen(frozen) and not batchnorm_frozen(trained)
    assert frozen.training and trained.training  # the mode is left as it was
