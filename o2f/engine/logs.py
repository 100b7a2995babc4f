"""Run logs: a plain-text log, loss curves and metrics files (rank 0); the experiment trackers
(TensorBoard, MLflow, W&B) are hooks in :mod:`o2f.engine.loggers`."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

LOGGER_NAME = "o2f"


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def setup_logging(work_dir: Path | None, main_process: bool, filename: str = "train.log"):
    """Console logging on the main process, plus ``work_dir/filename`` when given."""
    logger = get_logger()
    logger.setLevel(logging.INFO if main_process else logging.WARNING)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    logger.addHandler(console)
    if work_dir is not None and main_process:
        work_dir.mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(work_dir / filename)
        file.setFormatter(fmt)
        logger.addHandler(file)
    return logger


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float) + "\n")
    tmp.replace(path)


def plot_loss_curve(records: list[dict[str, float]], path: Path) -> None:
    """Loss terms and their sum against the iteration, one line each (PNG)."""
    if not records:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in records[0] if k.startswith("loss")]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    its = [r["iteration"] for r in records]
    for k in keys:
        ax.plot(its, [r[k] for r in records], label=k, lw=1.2)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    losses = [r[k] for r in records for k in keys if math.isfinite(r[k])]
    if losses:
        ax.set_ylim(0, max(losses) * 1.05)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
