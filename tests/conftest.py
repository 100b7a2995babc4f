"""Suite-wide fixtures: every test runs on the CPU unless it asks for CUDA.

On a GPU host the trainer would otherwise take the CUDA + AMP path, and a one-GPU box would
put a second Gloo process on ``cuda:1``. A test marked ``@pytest.mark.cuda`` gets the real
devices back (and is skipped where there are none).
"""

from __future__ import annotations

import os
import socket

import pytest
import torch

_REAL_CUDA_AVAILABLE = torch.cuda.is_available
_REAL_VISIBLE = os.environ.get("CUDA_VISIBLE_DEVICES")


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device (the only tests that see one)")


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (for torchrun / Gloo rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True, scope="session")
def cpu_only():
    """Hide the GPUs from the whole session (session and module fixtures included) and from
    every process it starts.

    ``CUDA_VISIBLE_DEVICES=""`` reaches subprocesses (the CLI, torchrun, spawned Gloo ranks:
    they copy ``os.environ``). In this process CUDA may already be initialised, so the code
    that picks a device (``o2f.engine.distributed_setup.init_distributed``,
    ``o2f.distributed.device_for_rank``, ``o2f.deploy.predict.Detector``, all through
    ``torch.cuda.is_available()``) is told there is none.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CUDA_VISIBLE_DEVICES", "")
        mp.setattr(torch.cuda, "is_available", lambda: False)
        yield


@pytest.fixture(autouse=True)
def real_cuda_when_marked(request, monkeypatch):
    """A test marked ``cuda`` sees the real devices again (skipped without one)."""
    if request.node.get_closest_marker("cuda") is None:
        return
    if not _REAL_CUDA_AVAILABLE():
        pytest.skip("needs a CUDA device")
    monkeypatch.setattr(torch.cuda, "is_available", _REAL_CUDA_AVAILABLE)
    if _REAL_VISIBLE is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", _REAL_VISIBLE)


@pytest.fixture
def one_thread():
    """torch on one thread for the test (restored after), for tests whose numbers or timing
    should not depend on the machine's core count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
