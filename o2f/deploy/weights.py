"""Weights-only files (safetensors) and one loader for every kind of o2f weights file.

A safetensors file written here holds the model's state dict and, as string metadata, the
resolved config (``o2f_config``, JSON) and the checkpoint meta (``o2f_meta``, JSON: class names,
category ids, number of classes), so it can rebuild a detector on its own. Reading it never
unpickles anything. ``.pth`` checkpoints go through :func:`o2f.engine.checkpoint.load_checkpoint`
(``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from o2f.engine.checkpoint import CheckpointError, load_checkpoint

SAFETENSORS_SUFFIX = ".safetensors"


def is_safetensors(path: str | Path) -> bool:
    return Path(path).suffix.lower() == SAFETENSORS_SUFFIX


def save_safetensors_weights(
    state_dict: dict[str, torch.Tensor], path: str | Path, config: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> None:
    """Write ``state_dict`` (and the config and meta as JSON metadata) to a safetensors file.

    Tensors are copied to contiguous CPU memory; tensors sharing storage are cloned apart.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    metadata = {"format": "pt", "o2f_format": "o2f-weights-1"}
    if config is not None:
        metadata["o2f_config"] = json.dumps(config)
    if meta is not None:
        metadata["o2f_meta"] = json.dumps(meta)
    save_file(tensors, str(path), metadata=metadata)


def load_safetensors_weights(
    path: str | Path,
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, dict[str, Any]]:
    """Read a safetensors weights file.

    Returns:
        state dict (CPU tensors), the stored config as plain data (None if absent), and the
        stored meta (empty if absent).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # header or data corrupt
        raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err
    try:
        config = json.loads(metadata["o2f_config"]) if "o2f_config" in metadata else None
        meta = json.loads(metadata["o2f_meta"]) if "o2f_meta" in metadata else {}
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: the o2f metadata is not valid JSON: {err}") from err
    return state, config, meta


def read_weights(
    path: str | Path,
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, dict[str, Any]]:
    """State dict, stored config (plain data or None) and meta of a ``.pth`` checkpoint or a
    ``.safetensors`` file, both read without unpickling arbitrary objects. The state dict is
    the checkpoint's deploy weights, ``model`` (the EMA weights of a run with ``train.ema``),
    never its ``model_raw``."""
    if is_safetensors(path):
        return load_safetensors_weights(path)
    state = load_checkpoint(path)
    return state["model"], state.get("config"), dict(state.get("meta") or {})


def read_state_dict(
    path: str | Path, strip_prefixes: tuple[str, ...] = (),
) -> dict[str, torch.Tensor]:
    """A plain state dict from a ``.safetensors`` file or a ``.pth`` file (read with
    ``torch.load(weights_only=True)``), such as ``torchvision.models.resnet50().state_dict()``
    saved with ``torch.save``. A ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is
    unwrapped, and each prefix of ``strip_prefixes`` that every key has is removed, in order.

    Raises:
        CheckpointError: the file is missing, unreadable or holds no mapping of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    if is_safetensors(path):
        state: Any = load_safetensors_weights(path)[0]
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # corrupt archive, or objects weights_only refuses
            raise CheckpointError(f"{path} could not be read safely: {err}") from err
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not (isinstance(state, dict) and state
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    for prefix in strip_prefixes:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state
