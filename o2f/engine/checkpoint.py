"""Checkpoints: atomic writes, safe loads (no arbitrary unpickling), model restoration.

A checkpoint is a dict with ``model`` (state dict), ``config`` (the resolved config as plain
data), ``meta`` (``class_names``, ``cat_ids``, ``num_classes``) and, for training checkpoints,
``optimizer``, ``scheduler``, ``epoch`` (epochs completed), ``iteration``, ``rng`` and
``scaler``. Everything in it is tensors and plain Python data, so it loads with
``torch.load(weights_only=True)``.

``model`` always holds the weights to deploy, the ones every loader (``o2f test``, ``predict``,
``export``, :class:`o2f.Detector`) reads. When training kept an EMA of the weights
(``train.ema``), those are the EMA weights, and the checkpoint also has ``model_raw`` (the
trained weights, which ``--resume`` continues from) and ``ema`` (its update count). Training
checkpoints also keep ``hooks``, the state of the training hooks (best AP so far, early stop).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the model."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, fsync'd,
    then renamed over the target, so a kill mid-save never leaves a broken file at ``path``.
    Temporary files of ``path`` left by a killed writer are removed first (one writer per
    path: rank 0)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer that was killed
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without unpickling arbitrary objects (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # corrupt archive, or objects weights_only refuses
        raise CheckpointError(f"checkpoint {path} could not be read safely: {err}") from err
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not an o2f checkpoint (no 'model' entry)")
    return state


def load_model_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor],
                       source: str = "checkpoint") -> None:
    """Load a state dict strictly, naming every missing, unexpected or mis-shaped key."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(weights)) if weights[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shape mismatches: " + "; ".join(shapes[:10]))
        if missing:
            parts.append(f"missing keys ({len(missing)}): " + ", ".join(missing[:10]))
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): " + ", ".join(unexpected[:10]))
        raise CheckpointError(f"{source} does not fit this model: " + " | ".join(parts))
    model.load_state_dict(weights)


def prune_epoch_checkpoints(work_dir: str | Path, keep: int, epoch: int) -> list[Path]:
    """Delete all but the newest ``keep`` ``epoch_N.pth`` files of ``work_dir`` with N <=
    ``epoch`` (``keep`` -1: delete none). Files of later epochs (left by an earlier, longer run
    in the same folder) are not touched. Returns the deleted paths."""
    if keep < 0:
        return []
    found = []
    for path in Path(work_dir).glob("epoch_*.pth"):
        number = path.stem[len("epoch_"):]
        if number.isdigit() and int(number) <= epoch:
            found.append((int(number), path))
    old = [path for _, path in sorted(found)[: max(0, len(found) - keep)]]
    for path in old:
        path.unlink(missing_ok=True)
    return old
