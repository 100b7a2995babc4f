"""benchmarks/gpu_check.py: its CPU mode runs every check in seconds and prints a table that
says no CUDA check ran; each check can fail."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cpu_mode_runs_every_check_and_says_no_cuda_ran():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = {r["name"]: r for r in map(json.loads, (line for line in out.stdout.splitlines()
                                                   if line.startswith("{")))}
    assert set(rows) == {"frozen_bn_grad_fp32", "frozen_bn_grad_bf16", "train_small_fp32",
                         "train_small_bf16", "ddp_first_step", "host_syncs_per_step"}
    assert all(r["ok"] is True and r["device"] == "cpu" for r in rows.values()), rows
    assert rows["frozen_bn_grad_fp32"]["value"] < 1e-4
    assert rows["ddp_first_step"]["backend"] == "gloo" and rows["ddp_first_step"]["value"] < 1e-3
    assert rows["train_small_fp32"]["finite_losses"] and rows["train_small_fp32"]["value"] > 0
    assert "**CPU-only run: no CUDA check ran**" in out.stdout
    assert "| ddp_first_step | cpu |" in out.stdout


def test_frozen_bn_check_fails_for_wrong_gradients(monkeypatch):
    cpu = torch.device("cpu")
    assert gpu_check.frozen_bn_check(cpu, "fp32", size=8)["ok"] is True
    monkeypatch.setattr(gpu_check, "conv_frozen_bn",
                        lambda conv, bn, x, relu: F.relu(bn(conv(x))) * 1.01)
    row = gpu_check.frozen_bn_check(cpu, "fp32", size=8)
    assert row["ok"] is False and row["value"] == pytest.approx(0.01, rel=1e-3)


def test_table_marks_failures_and_says_what_ran():
    rows = [{"name": "a", "device": "cpu", "value": 0.5, "unit": "x", "ok": False, "note": "n"},
            {"name": "b", "device": "cpu", "value": None, "unit": "-", "ok": None}]
    text = gpu_check.table(rows, "header")
    assert text.startswith("header")
    assert "| a | cpu | 0.5 | x | **NO** | note n |" in text and "| b | cpu | - | - | - |" in text
