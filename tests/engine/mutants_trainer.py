"""Planted one-line bugs in the trainer's wiring (``o2f/engine/train.py``, ``hooks.py``), each
run against the tests in a fresh copy of the project: every one must make a test fail.

    python tests/engine/mutants_trainer.py                # all, against tests/engine (not slow)
    python tests/engine/mutants_trainer.py --only 3 8 --tests tests/engine/test_resume.py

Each mutant replaces one exact snippet of a file (it must occur once); a test run that exceeds
``--timeout`` counts as killed (a hang, as CI would time out). Prints one JSON line per mutant
and the survivors at the end. Not collected by pytest (no ``test_`` prefix); results and the
one equivalent survivor: docs/testing.md.
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

ROOT = Path(__file__).resolve().parents[2]
SKIP_TOP = {".venv", ".git", "data", "work_dirs", "mutants"}

# (file, snippet, replacement)
MUTANTS: list[tuple[str, str, str]] = [
    ('o2f/engine/train.py',
     '        self.model.set_epoch(epoch, cfg.train.epochs)\n',
     ''),
    ('o2f/engine/train.py',
     '        self.sampler.set_epoch(epoch)\n',
     ''),
    ('o2f/engine/train.py',
     '        self.batches.set_epoch(epoch)\n',
     ''),
    ('o2f/engine/train.py',
     '        torch.manual_seed(seed)\n',
     ''),
    ('o2f/engine/train.py',
     'self.schedule.apply(self.optimizer, self.iteration, epoch)',
     'self.schedule.apply(self.optimizer, self.iteration + 1, epoch)'),
    ('o2f/engine/train.py',
     '            lr = self.schedule.apply(self.optimizer, self.iteration, epoch)\n',
     "            lr = self.optimizer.param_groups[0]['lr']\n"),
    ('o2f/engine/train.py',
     '            self.iteration += 1\n',
     ''),
    ('o2f/engine/train.py',
     '            if i >= num_iters:',
     '            if i > num_iters:'),
    ('o2f/engine/train.py',
     'dict(zip(names, sums / done, strict=True))',
     'dict(zip(names, sums / num_iters, strict=True))'),
    ('o2f/engine/train.py',
     'record["loss"] = sum(v for k, v in record.items() if k.startswith("loss_"))',
     'record["loss"] = record[names[0]]'),
    ('o2f/engine/train.py',
     'or self.epoch % cfg.val_interval == 0):',
     'or self.epoch % cfg.val_interval == 1):'),
    ('o2f/engine/train.py',
     '(self.epoch == cfg.epochs\n',
     '(False\n'),
    ('o2f/engine/train.py',
     'if last or self.epoch % cfg.checkpoint_interval == 0:',
     'if last:'),
    ('o2f/engine/train.py',
     'if t.keep_checkpoints != 0 and self.epoch',
     'if self.epoch'),
    ('o2f/engine/train.py',
     'if self.scaler.get_scale() >= scale:',
     'if self.scaler.get_scale() > scale:'),
    ('o2f/engine/train.py',
     'return self.ema.module if self.ema is not None else self.model',
     'return self.model'),
    ('o2f/engine/train.py',
     'shuffle=True,\n',
     'shuffle=False,\n'),
    ('o2f/engine/train.py',
     'epoch_set = Repeated(self.train_set, cfg.data.repeat)',
     'epoch_set = Repeated(self.train_set, 1)'),
    ('o2f/engine/train.py',
     'LRSchedule(cfg.optim, self.iters_per_epoch() * t.epochs)',
     'LRSchedule(cfg.optim, self.iters_per_epoch())'),
    ('o2f/engine/train.py',
     'build_datasets(cfg, with_val=t.val_interval > 0)',
     'build_datasets(cfg, with_val=True)'),
    ('o2f/engine/train.py',
     '                window_n += 1\n',
     ''),
    ('o2f/engine/train.py',
     'window = terms if window is None else window + terms',
     'window = terms'),
    ('o2f/engine/train.py',
     'sums = terms if sums is None else sums + terms',
     'sums = terms'),
    ('o2f/engine/train.py',
     '            self._step(sum(losses.values()))\n',
     '            self._step(losses[names[0]])\n'),
    ('o2f/engine/train.py',
     '        self.scaler.step(self.optimizer)\n',
     '        self.optimizer.step()\n'),
    ('o2f/engine/train.py',
     '        self.optimizer.load_state_dict(state["optimizer"])\n',
     ''),
    ('o2f/engine/train.py',
     '        self.history, self.curve = list(state["history"]), list(state["curve"])\n',
     '        self.history, self.curve = [], list(state["curve"])\n'),
    ('o2f/engine/train.py',
     'load_model_weights(self.model, state.get("model_raw", state["model"]), str(path))',
     'load_model_weights(self.model, state["model"], str(path))'),
    ('o2f/engine/train.py',
     '        self.ddp.train()\n',
     ''),
    ('o2f/engine/train.py',
     'while self.epoch < cfg.epochs and not self._should_stop():',
     'while self.epoch < cfg.epochs:'),
    ('o2f/engine/train.py',
     '        self.epoch += 1\n        return summary',
     '        return summary'),
    ('o2f/engine/train.py',
     'torch.manual_seed(t.seed + self.rank)',
     'torch.manual_seed(t.seed)'),
    ('o2f/engine/train.py',
     'self.optimizer = build_optimizer(self.model, cfg.optim, total_batch)',
     'self.optimizer = build_optimizer(self.model, cfg.optim, cfg.data.batch_size)'),
    ('o2f/engine/train.py',
     'self.total_batch = total_batch = cfg.data.batch_size * self.world',
     'self.total_batch = total_batch = cfg.data.batch_size'),
    ('o2f/engine/train.py',
     'last = self.epoch == cfg.epochs or self._should_stop()',
     'last = self.epoch == cfg.epochs'),
    ('o2f/engine/hooks.py',
     'if not value > self.value:',
     'if not value >= self.value:'),
    ('o2f/engine/hooks.py',
     'return self.best.stale >= self.patience',
     'return self.best.stale > self.patience'),
    ('o2f/engine/hooks.py',
     '        self.ema.update(trainer.model)\n',
     '        pass\n'),
    ('o2f/engine/hooks.py',
     'if cfg.train.patience > 0:',
     'if cfg.train.patience >= 0:'),
    ('o2f/engine/hooks.py',
     'self.key, self.value, self.epoch, self.stale = key, value, trainer.epoch, 0',
     'self.key, self.value, self.epoch = key, value, trainer.epoch'),
]


def _copy_project(dest: Path) -> None:
    def ignore(folder: str, names: list[str]) -> list[str]:
        top = Path(folder) == ROOT
        return [n for n in names if (top and n in SKIP_TOP) or n == "__pycache__"]

    shutil.copytree(ROOT, dest, ignore=ignore)


def run_mutant(index: int, tests: list[str], timeout: float) -> dict:
    """Apply mutant ``index`` in a temporary copy and run ``tests`` there (one thread)."""
    path, old, new = MUTANTS[index]
    with tempfile.TemporaryDirectory(prefix="o2f-mutant-") as tmp:
        copy = Path(tmp) / "o2f"
        _copy_project(copy)
        text = (copy / path).read_text()
        if text.count(old) != 1:
            raise SystemExit(f"mutant {index}: the snippet occurs {text.count(old)} times in "
                             f"{path} (expected once): {old!r}")
        (copy / path).write_text(text.replace(old, new))
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", type=int, nargs="+", default=None, help="mutant indices")
    p.add_argument("--tests", nargs="+", default=["tests/engine", "tests/test_learning.py",
                                                  "-m", "not slow"])
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per mutant")
    args = p.parse_args(argv)
    survivors = []
    for index in args.only if args.only is not None else range(len(MUTANTS)):
        row = run_mutant(index, args.tests, args.timeout)
        print(json.dumps(row), flush=True)
        if not row["killed"]:
            survivors.append(index)
    print(f"survivors: {survivors}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
