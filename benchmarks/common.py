"""Shared helpers of the benchmarks: interleaved timing, peak memory, JSON lines, a markdown table.

Timing. ``interleaved`` warms both functions up, then alternates them (ours, baseline, baseline,
ours, ...) so that both see the same machine load, and reports the median of each. On a shared
2-core machine the absolute numbers drift with other processes; the ratio of medians taken in one
process does not (much).

Peak memory. ``tracemalloc`` does not see torch's allocator, so on CPU each measured function
runs in a fresh child process: the child imports everything, reads its resident set (VmRSS),
builds the workload, runs it once (warm-up: lazy buffers such as optimiser momentum exist
afterwards), resets the kernel's high-water mark (``/proc/self/clear_refs`` = 5, Linux >= 4.0),
runs it again and reads the high-water mark (VmHWM). The reported number is
``VmHWM - VmRSS after imports``: weights, optimiser state, inputs and the peak of the step's
temporaries, without the interpreter and libraries both sides share. Where the reset is
unavailable it falls back to ``ru_maxrss`` (which then includes the set-up's own peak). The child
runs with ``MALLOC_MMAP_THRESHOLD_=65536``: glibc then gives every freed block of 64 KiB or more
back to the OS at once, so the resident set follows the live tensors instead of the heap's
cached free space (without it, repeated measurements of the same step differed by +-5%; with
it, by under 0.1%). On CUDA it is ``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats``.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_THREADS = 2


def setup_threads(num_threads: int | None = None) -> int:
    """Pin torch's intra-op threads (default: ``O2F_BENCH_THREADS`` or 2); return the number."""
    n = num_threads or int(os.environ.get("O2F_BENCH_THREADS", DEFAULT_THREADS))
    torch.set_num_threads(n)
    return n


def sync(device: str | torch.device = "cpu") -> None:
    """Wait for queued kernels (CUDA) so that wall-clock timing covers them."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@dataclass
class Timing:
    """Per-call seconds of each sample of ours and the baseline (and the last warm-up's
    outputs, for correctness checks without extra calls)."""

    ours: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    ours_output: Any = None
    baseline_output: Any = None

    @property
    def ours_median(self) -> float:
        return statistics.median(self.ours)

    @property
    def baseline_median(self) -> float:
        return statistics.median(self.baseline)


def _time_call(fn: Callable[[], Any], inner: int, device: str) -> tuple[float, Any]:
    sync(device)
    start = time.perf_counter()
    for _ in range(inner):
        out = fn()
    sync(device)
    return (time.perf_counter() - start) / inner, out


def _inner(seconds: float, min_sample_s: float, max_inner: int = 1000) -> int:
    """Calls per sample so that one sample lasts about ``min_sample_s`` (timer noise)."""
    if seconds >= min_sample_s:
        return 1
    return max(1, min(max_inner, int(min_sample_s / max(seconds, 1e-9)) + 1))


def interleaved(
    ours: Callable[[], Any], baseline: Callable[[], Any], *, repeats: int, warmup: int = 1,
    min_sample_s: float = 0.05, device: str = "cpu",
) -> Timing:
    """Median-ready per-call times of ``ours`` and ``baseline``, run alternately.

    ``warmup`` (>= 1) untimed calls of each come first; the last one also sizes the samples:
    each sample runs a function ``inner`` times in a row so that it lasts at least
    ``min_sample_s``, and records the mean per call. Round ``r`` runs ours first when ``r`` is
    even and the baseline first when odd, so neither always follows the other.
    """
    timing = Timing()
    for _ in range(max(1, warmup)):
        t_o, timing.ours_output = _time_call(ours, 1, device)
        t_b, timing.baseline_output = _time_call(baseline, 1, device)
    inner_o, inner_b = _inner(t_o, min_sample_s), _inner(t_b, min_sample_s)
    for r in range(repeats):
        pair = [(ours, inner_o, timing.ours), (baseline, inner_b, timing.baseline)]
        for fn, inner, out in pair if r % 2 == 0 else pair[::-1]:
            out.append(_time_call(fn, inner, device)[0])
    return timing


# --------------------------------------------------------------------------- peak memory


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_in_this_process(factory: Callable[[], Callable[[], Any]], device: str = "cpu",
                            rss_before_kb: int | None = None) -> dict[str, Any]:
    """Peak memory (MB) of one warm call of ``factory()()`` in this process (see module doc)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        step = factory()
        step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"peak_mb": (peak - base) / 2**20, "method": "cuda.max_memory_allocated"}
    before = rss_before_kb if rss_before_kb is not None else _status_kb("VmRSS")
    step = factory()
    step()
    if _reset_peak_rss() and before is not None:
        step()
        peak = _status_kb("VmHWM") or 0
        method = "VmHWM after clear_refs"
    else:
        step()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
        method = "ru_maxrss"
    return {"peak_mb": (peak - (before or 0)) / 1024, "method": method}


# glibc returns every freed block >= 64 KiB to the OS at once, so RSS follows the live tensors
# (with its default heap caching, repeated runs of the same step differed by +-5%).
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}

_CHILD = """
import importlib, json, sys
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads({threads})
mod = importlib.import_module({module!r})
from benchmarks.common import _status_kb, measure_in_this_process
before = _status_kb("VmRSS")
kwargs = json.loads({kwargs!r})
factory = lambda: getattr(mod, {func!r})(**kwargs)
print("@@" + json.dumps(measure_in_this_process(factory, {device!r}, before)))
"""


def peak_memory_mb(target: str, kwargs: dict[str, Any] | None = None, *, device: str = "cpu",
                   threads: int | None = None, timeout: float = 1200) -> dict[str, Any]:
    """Peak memory of ``module:function(**kwargs)()`` measured in a fresh child process.

    ``function`` builds a workload and returns a zero-argument callable (one step). Returns
    ``{"peak_mb": float, "method": str}``, or ``{"peak_mb": None, "error": str}`` on failure.
    """
    module, func = target.split(":")
    code = _CHILD.format(root=str(ROOT), threads=threads or torch.get_num_threads(),
                         module=module, func=func, kwargs=json.dumps(kwargs or {}),
                         device=device)
    env = {**os.environ, **CHILD_ENV}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("@@"):
            return json.loads(line[2:])
    return {"peak_mb": None, "error": (proc.stderr or proc.stdout)[-2000:]}


# --------------------------------------------------------------------------- reporting


def result(name: str, ours: float | None, baseline: float | None, unit: str,
           **extra: Any) -> dict[str, Any]:
    """A benchmark row: ``ratio`` is ``ours / baseline`` (None when either is missing)."""
    ratio = ours / baseline if ours is not None and baseline else None
    return {"name": name, "ours": ours, "baseline": baseline, "ratio": ratio, "unit": unit,
            **extra}


def memory_fields(ours: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """Extra row fields from two :func:`peak_memory_mb` results."""
    o, b = ours.get("peak_mb"), baseline.get("peak_mb")
    out: dict[str, Any] = {"mem_ours_mb": o, "mem_baseline_mb": b,
                           "mem_ratio": o / b if o is not None and b else None,
                           "mem_method": ours.get("method") or baseline.get("method")}
    for side, res in (("ours", ours), ("baseline", baseline)):
        if "error" in res:
            out[f"mem_{side}_error"] = res["error"][-300:]
    return out


def emit(row: dict[str, Any], stream=None) -> dict[str, Any]:
    """Print ``row`` as one JSON line (flushed) and return it."""
    print(json.dumps(row, default=float), file=stream or sys.stdout, flush=True)
    return row


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if x == 0:
            return "0"
        if abs(x) >= 100:
            return f"{x:.0f}"
        if abs(x) >= 1:
            return f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"
        return f"{x:.3g}"
    return str(x)


def markdown_table(rows: Iterable[dict[str, Any]], targets: dict[str, str] | None = None,
                   verdicts: dict[str, str] | None = None) -> str:
    """Rows as a markdown table (time units are converted to ms for reading)."""
    header = ["name", "ours", "baseline", "ratio", "unit", "peak MB ours / base (ratio)",
              "target", "met", "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        scale, unit = (1000.0, "ms") if row.get("unit") == "s" else (1.0, row.get("unit", ""))
        o, b = row.get("ours"), row.get("baseline")
        mem = "-"
        if row.get("mem_ours_mb") is not None or row.get("mem_baseline_mb") is not None:
            mem = (f"{_fmt(row.get('mem_ours_mb'))} / {_fmt(row.get('mem_baseline_mb'))} "
                   f"({_fmt(row.get('mem_ratio'))})")
        ratio = row.get("ratio")
        ratio_text = f"{ratio:.3f}" if ratio is not None and 0.1 <= ratio < 10 else _fmt(ratio)
        cells = [row["name"], _fmt(o * scale if o is not None else None),
                 _fmt(b * scale if b is not None else None), ratio_text, unit, mem,
                 (targets or {}).get(row["name"], "-"), (verdicts or {}).get(row["name"], "-"),
                 str(row.get("note", ""))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)
