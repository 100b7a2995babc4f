"""The benchmark scripts run in a tiny mode and print well-formed JSON lines (a few seconds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import assign
from benchmarks.common import markdown_table, memory_fields, peak_memory_mb, result

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"name", "ours", "baseline", "ratio", "unit"}


def check_row(row: dict, name: str) -> None:
    assert KEYS <= row.keys()
    assert row["name"] == name and row["unit"] == "s"
    assert row["ours"] > 0 and row["baseline"] > 0
    assert row["ratio"] == pytest.approx(row["ours"] / row["baseline"], rel=1e-12)


def test_assign_script_prints_json_lines_and_a_table():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "assign.py"), "--quick", "--gts", "10",
           "--height", "128", "--width", "192", "--repeats", "1", "--no-memory"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, check=True)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 1
    check_row(rows[0], "assign_g10")
    assert rows[0]["same_result"] is True and rows[0]["threads"] == 2
    assert "| assign_g10 |" in out.stdout


def test_assign_run_in_process(capsys):
    rows = assign.run(quick=True, gts=(10,), height=96, width=128, memory=False, repeats=1,
                      devices=("cpu",))
    check_row(rows[0], "assign_g10")
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == json.loads(json.dumps(rows[0]))


def test_peak_memory_in_a_child_process():
    kw = {"num_gt": 10, "height": 96, "width": 128}
    mem = peak_memory_mb("benchmarks.assign:assign_step", {"side": "literal", **kw})
    assert mem["peak_mb"] is not None and 0 < mem["peak_mb"] < 500, mem
    fields = memory_fields(mem, {"peak_mb": 2 * mem["peak_mb"], "method": mem["method"]})
    assert fields["mem_ratio"] == pytest.approx(0.5)


def test_result_ratio_and_table():
    row = result("x", 0.002, 0.004, "s", note="n")
    assert row["ratio"] == 0.5
    assert result("y", None, 1.0, "s")["ratio"] is None
    table = markdown_table([row], {"x": "<= 1"}, {"x": "met"})
    assert "| x | 2 | 4 | 0.500 | ms |" in table and "met" in table


def test_postprocess_rows_count_candidates_and_background():
    """The ``postprocess`` rows on small maps: the trained-like background gives almost no
    candidates of its own, the noisy one gives most of them."""
    from benchmarks import inference

    rows = inference.run(quick=True, only=("postprocess", "postprocess_noisy"), height=256,
                         width=384)
    for row, name in zip(rows, ("postprocess", "postprocess_noisy"), strict=True):
        check_row(row, name)
        assert row["detections_ours"] > 0 and row["detections_baseline"] > 0
    trained, noisy = rows
    assert trained["background_candidates"] < 0.05 * trained["candidates"]
    assert noisy["background_candidates"] > 0.5 * noisy["candidates"]
