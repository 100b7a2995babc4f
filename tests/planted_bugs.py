"""Runner for lists of planted one-line bugs: each is applied in a fresh copy of the project and
the tests are run there; every one must make a test fail.

A list is a module with ``MUTANTS = [(file, snippet, replacement), ...]`` that calls
:func:`main` (``tests/engine/mutants_trainer.py``, ``tests/mutants_data_eval.py``). Each snippet
must occur exactly once in its file; a test run that exceeds ``--timeout`` counts as killed (a
hang, as CI would time out). Prints one JSON line per mutant and the survivors at the end. Not
collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP_TOP = {".venv", ".git", "data", "work_dirs", "mutants"}

Mutant = tuple[str, str, str]


def _copy_project(dest: Path) -> None:
    def ignore(folder: str, names: list[str]) -> list[str]:
        top = Path(folder) == ROOT
        return [n for n in names if (top and n in SKIP_TOP) or n == "__pycache__"]

    shutil.copytree(ROOT, dest, ignore=ignore)


def apply_mutant(root: Path, mutant: Mutant, index: int) -> None:
    """Replace the mutant's snippet in ``root``'s copy of its file (it must occur once)."""
    path, old, new = mutant
    text = (root / path).read_text()
    if text.count(old) != 1:
        raise SystemExit(f"mutant {index}: the snippet occurs {text.count(old)} times in "
                         f"{path} (expected once): {old!r}")
    (root / path).write_text(text.replace(old, new))


def run_mutant(mutants: list[Mutant], index: int, tests: list[str], timeout: float) -> dict:
    """Apply mutant ``index`` in a temporary copy and run ``tests`` there (one thread)."""
    path, old, _ = mutants[index]
    with tempfile.TemporaryDirectory(prefix="o2f-mutant-") as tmp:
        copy = Path(tmp) / "o2f"
        _copy_project(copy)
        apply_mutant(copy, mutants[index], index)
        env = {**os.environ, "PYTHONPATH": str(copy), "OMP_NUM_THREADS": "1"}
        start = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p",
                                   "no:cacheprovider", *tests], cwd=copy, env=env,
                                  capture_output=True, text=True, timeout=timeout)
            killed, tail = proc.returncode != 0, proc.stdout.strip().splitlines()[-1:]
        except subprocess.TimeoutExpired:
            killed, tail = True, [f"timed out after {timeout:.0f} s"]
    return {"mutant": index, "file": path, "snippet": old.strip()[:80], "killed": killed,
            "seconds": round(time.perf_counter() - start), "result": tail}


def main(mutants: list[Mutant], default_tests: list[str], description: str,
         argv: list[str] | None = None) -> int:
    """Command line of a mutant list: ``--only``, ``--tests``, ``--timeout``, ``--check``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--only", type=int, nargs="+", default=None, help="mutant indices")
    p.add_argument("--tests", nargs="+", default=default_tests)
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per mutant")
    p.add_argument("--check", action="store_true",
                   help="only check that every snippet occurs once in the project")
    args = p.parse_args(argv)
    indices = args.only if args.only is not None else range(len(mutants))
    if args.check:
        for index in indices:
            path, old, _ = mutants[index]
            count = (ROOT / path).read_text().count(old)
            if count != 1:
                raise SystemExit(f"mutant {index}: the snippet occurs {count} times in {path}")
        print(f"{len(list(indices))} snippets found once each")
        return 0
    survivors = []
    for index in indices:
        row = run_mutant(mutants, index, args.tests, args.timeout)
        print(json.dumps(row), flush=True)
        if not row["killed"]:
            survivors.append(index)
    print(f"survivors: {survivors}")
    return 0
