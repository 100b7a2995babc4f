"""The authors' MMDetection 2.x checkpoints (strongwolf/o2f) as o2f weights.

Key mapping (MMDetection 2.x names: mmcv ``ConvModule`` holds ``conv`` and, with GroupNorm,
``gn``; mmcv ``Scale`` holds ``scale``; the authors' ``O2FHead`` calls its centerness tower
``centerness_convs``):

==============================================  ===========================================
MMDetection                                     o2f
==============================================  ===========================================
``backbone.conv1.*`` / ``backbone.bn1.*``       ``backbone.stem.0.*`` / ``backbone.stem.1.*``
``backbone.layer{1..4}.*``                      same (torchvision ResNet names)
``neck.lateral_convs.{i}.conv.*``               ``neck.lateral_convs.{i}.*``
``neck.fpn_convs.{i}.conv.*``, i < 3            ``neck.output_convs.{i}.*``
``neck.fpn_convs.{i}.conv.*``, i >= 3           ``neck.extra_convs.{i-3}.*`` (P6, P7)
``bbox_head.cls_convs.{i}.conv|gn.*``           ``head.cls_convs.{3i}|{3i+1}.*``
``bbox_head.reg_convs.{i}.conv|gn.*``           ``head.reg_convs.{3i}|{3i+1}.*``
``bbox_head.centerness_convs.{i}.conv|gn.*``    ``head.ctr_convs.{3i}|{3i+1}.*``
``bbox_head.conv_cls|conv_reg|conv_centerness`` ``head.conv_cls|conv_reg|conv_centerness``
``bbox_head.scales.{i}.scale`` (scalars)        ``head.scales`` (one tensor, level i at [i])
==============================================  ===========================================

The authors' CondInst-style instance-segmentation checkpoints (``E2ECondInstHead`` of their
``condinst_head.py``, configs ``condinst_r50_1x.py`` / ``condinst_r50_3x.py``) hold the same
backbone, FPN and towers, with the centerness output named ``conv_quality`` and the mask modules
in ``bbox_head`` too (plain ``nn.Sequential`` indices: conv at 0, BatchNorm at 1, ReLU at 2):

==============================================  ===========================================
MMDetection (CondInst)                          o2f (``model.mask.enabled=true``)
==============================================  ===========================================
``bbox_head.conv_quality.*``                    ``head.conv_centerness.*``
``bbox_head.controller.*``                      ``controller.*``
``bbox_head.refine.{i}.{0,1}.*``                ``mask_branch.refine.{i}.{0,1}.*``
``bbox_head.mask_tower.{j}.{0,1}.*``, last 1x1  ``mask_branch.tower.{j}.{0,1}.*``, same index
``bbox_head.seg_head.{0,1,3,4}.*``              ``mask_branch.sem_head.{0.0,0.1,1.0,1.1}.*``
``bbox_head.seg_out.*``                         ``mask_branch.sem_out.*``
``bbox_head.sizes_of_interest`` (buffer)        dropped (unused: their code divides by 8 x stride)
==============================================  ===========================================

BatchNorm ``num_batches_tracked`` counters are carried over, or set to 0 where a checkpoint
lacks them (they do not affect inference). Any other key is an error, as is any key the o2f
model needs that the checkpoint does not provide, or two keys that map onto the same o2f key.

Loading the ``.pth`` never unpickles arbitrary objects unless asked to: ``torch.load`` runs
with ``weights_only=True``, allowing only numpy's scalar and dtype constructors besides plain
data (MMCV stores some numpy scalars in ``meta``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from o2f.config import Config, apply_overrides, load_config
from o2f.engine.checkpoint import CheckpointError, load_model_weights, save_checkpoint

_TOWERS = {"cls_convs": "cls_convs", "reg_convs": "reg_convs", "centerness_convs": "ctr_convs"}
# o2f towers are nn.Sequential([Conv2d, GroupNorm, ReLU] * n): block i's conv at 3i, GN at 3i+1
_TOWER_OFFSET = {"conv": 0, "gn": 1}
_LATERAL = re.compile(r"neck\.lateral_convs\.(\d+)\.conv\.(weight|bias)")
_BN_PARAM = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
# the authors' semantic head: Sequential(conv, BN, ReLU, conv, BN, ReLU); o2f: two conv-BN-ReLU
_SEM_HEAD = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1"}
# keys only the authors' CondInst-style checkpoints hold (their ``E2ECondInstHead``)
_MASK_KEY = re.compile(r"bbox_head\.(controller|refine|mask_tower|seg_head|seg_out|conv_quality)\.")
# a buffer of E2ECondInstHead that its code never reads (it divides by 8 x stride instead)
_UNUSED = {"bbox_head.sizes_of_interest"}


class ConversionError(CheckpointError):
    """An MMDetection checkpoint does not map onto the o2f model; the message names the keys."""


def _rules(num_laterals: int) -> list[tuple[re.Pattern, Callable[[re.Match], str]]]:
    def fpn(m: re.Match) -> str:
        i = int(m[1])
        if i < num_laterals:
            return f"neck.output_convs.{i}.{m[2]}"
        return f"neck.extra_convs.{i - num_laterals}.{m[2]}"

    def tower(m: re.Match) -> str:
        return f"head.{_TOWERS[m[1]]}.{3 * int(m[2]) + _TOWER_OFFSET[m[3]]}.{m[4]}"

    rules: list[tuple[str, Callable[[re.Match], str]]] = [
        (r"backbone\.conv1\.(weight)", lambda m: f"backbone.stem.0.{m[1]}"),
        (r"backbone\.bn1\.(weight|bias|running_mean|running_var|num_batches_tracked)",
         lambda m: f"backbone.stem.1.{m[1]}"),
        (r"backbone\.(layer[1-4]\.\d+\.(?:conv|bn)\d\.\w+)", lambda m: f"backbone.{m[1]}"),
        (r"backbone\.(layer[1-4]\.\d+\.downsample\.[01]\.\w+)", lambda m: f"backbone.{m[1]}"),
        (_LATERAL.pattern, lambda m: f"neck.lateral_convs.{m[1]}.{m[2]}"),
        (r"neck\.fpn_convs\.(\d+)\.conv\.(weight|bias)", fpn),
        (r"bbox_head\.(cls_convs|reg_convs|centerness_convs)\.(\d+)\.(conv|gn)\.(weight|bias)",
         tower),
        (r"bbox_head\.(conv_cls|conv_reg|conv_centerness)\.(weight|bias)",
         lambda m: f"head.{m[1]}.{m[2]}"),
        # CondInst-style mask checkpoints
        (r"bbox_head\.conv_quality\.(weight|bias)", lambda m: f"head.conv_centerness.{m[1]}"),
        (r"bbox_head\.controller\.(weight|bias)", lambda m: f"controller.{m[1]}"),
        (rf"bbox_head\.refine\.(\d+)\.(0\.weight|1\.{_BN_PARAM})",
         lambda m: f"mask_branch.refine.{m[1]}.{m[2]}"),
        (rf"bbox_head\.mask_tower\.(\d+)\.(0\.weight|1\.{_BN_PARAM}|weight|bias)",
         lambda m: f"mask_branch.tower.{m[1]}.{m[2]}"),
        (r"bbox_head\.seg_head\.([0134])\.(\w+)",
         lambda m: f"mask_branch.sem_head.{_SEM_HEAD[m[1]]}.{m[2]}"),
        (r"bbox_head\.seg_out\.(weight|bias)", lambda m: f"mask_branch.sem_out.{m[1]}"),
    ]
    return [(re.compile(p), fn) for p, fn in rules]


_SCALE = re.compile(r"bbox_head\.scales\.(\d+)\.scale")


def _listing(keys: Iterable[str], limit: int = 20) -> str:
    keys = sorted(keys)
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def is_mask_checkpoint(mmdet_sd: dict[str, Tensor]) -> bool:
    """Whether a state dict is one of the authors' CondInst-style instance-segmentation
    checkpoints (it holds ``bbox_head.controller`` / ``refine`` / ``mask_tower`` ... keys)."""
    return any(_MASK_KEY.match(k.removeprefix("module.")) for k in mmdet_sd)


def convert_mmdet_state_dict(
    mmdet_sd: dict[str, Tensor], expected_keys: Iterable[str] | None = None,
) -> dict[str, Tensor]:
    """Rename an MMDetection 2.x o2f/FCOS state dict, box-only or CondInst-style with masks,
    to o2f names (see the module tables).

    Args:
        mmdet_sd: the checkpoint's ``state_dict`` (a ``module.`` prefix is removed).
        expected_keys: the o2f model's state-dict keys; when given, keys the conversion
            does not produce are an error too.

    Returns:
        the o2f state dict (same tensors, renamed; the level scales stacked into one (L,)).

    Raises:
        ConversionError: naming every unmatched MMDetection key, every pair of keys that map
            onto the same o2f key, or every missing o2f key.
    """
    sd = dict(mmdet_sd)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    num_laterals = len({m[1] for k in sd if (m := _LATERAL.fullmatch(k))}) or 3
    rules = _rules(num_laterals)
    out: dict[str, Tensor] = {}
    source: dict[str, str] = {}
    scales: dict[int, Tensor] = {}
    unmatched, clashes = [], []
    for key, value in sd.items():
        if key in _UNUSED:
            continue
        if m := _SCALE.fullmatch(key):
            scales[int(m[1])] = value.reshape(())
            continue
        for pattern, rename in rules:
            if m := pattern.fullmatch(key):
                name = rename(m)
                if name in source:
                    clashes.append(f"{source[name]} and {key} -> {name}")
                out[name], source[name] = value, key
                break
        else:
            unmatched.append(key)
    if unmatched:
        raise ConversionError(
            f"{len(unmatched)} MMDetection keys have no o2f counterpart: {_listing(unmatched)}")
    if clashes:
        raise ConversionError(f"MMDetection keys that map onto the same o2f key: "
                              f"{'; '.join(sorted(clashes))}")
    if scales:
        if sorted(scales) != list(range(len(scales))):
            raise ConversionError(f"bbox_head.scales has levels {sorted(scales)}, expected "
                                  f"0..{len(scales) - 1}")
        out["head.scales"] = torch.stack([scales[i] for i in range(len(scales))])
    for key in [k for k in out if k.endswith(".running_mean")]:
        counter = key[: -len("running_mean")] + "num_batches_tracked"
        out.setdefault(counter, torch.tensor(0, dtype=torch.long))
    if expected_keys is not None:
        expected = set(expected_keys)
        missing = expected - set(out)
        extra = set(out) - expected
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"o2f keys missing from the checkpoint ({len(missing)}): "
                             f"{_listing(missing)}")
            if extra:
                parts.append(f"converted keys the o2f model does not have ({len(extra)}): "
                             f"{_listing(extra)}")
            raise ConversionError("; ".join(parts))
    return out


def _numpy_scalar_globals() -> list:
    """numpy's scalar and dtype constructors, under their numpy 1 and 2 module names: they
    rebuild numbers from bytes and run no code (MMCV's ``meta`` may hold numpy scalars)."""
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    dtypes = {type(np.dtype(t)) for t in ("bool", "int32", "int64", "float32", "float64")}
    return [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"),
            np.dtype, *dtypes]


def load_mmdet_checkpoint(path: str | Path, trust_pickle: bool = False) -> dict[str, Any]:
    """Read an MMDetection ``.pth``: a dict with ``state_dict`` (and usually ``meta``).

    Args:
        trust_pickle: unpickle arbitrary objects (``weights_only=False``). UNSAFE: a
            malicious file can run code; only for files from a source you trust, and only
            when safe loading fails.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"checkpoint {path} does not exist")
    if trust_pickle:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    else:
        try:
            with torch.serialization.safe_globals(_numpy_scalar_globals()):
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ConversionError(
                f"{path} could not be loaded safely (torch.load weights_only=True): {err}\n"
                "It holds Python objects other than tensors and plain data. If you trust the "
                "file's origin, rerun with --trust-pickle (this unpickles arbitrary objects "
                "and can run code: unsafe)."
            ) from err
    if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        return ckpt
    if isinstance(ckpt, dict) and ckpt and all(isinstance(v, Tensor) for v in ckpt.values()):
        return {"state_dict": ckpt, "meta": {}}  # a bare state dict
    raise ConversionError(f"{path} is not an MMDetection checkpoint (no 'state_dict' entry)")


def resnet_depth(mmdet_sd: dict[str, Tensor]) -> int | None:
    """ResNet depth implied by a backbone state dict (10 ... 152), None if unknown."""
    blocks = {int(m[1]) for k in mmdet_sd if (m := re.match(r"backbone\.layer3\.(\d+)\.", k))}
    bottleneck = any(re.match(r"backbone\.layer1\.0\.conv3\.", k) for k in mmdet_sd)
    table = {(1, False): 10, (2, False): 18, (6, False): 34, (6, True): 50, (23, True): 101,
             (36, True): 152}
    return table.get((len(blocks), bottleneck))


def _class_names(meta: dict[str, Any], cfg: Config, num_classes: int) -> list[str] | None:
    from o2f.deploy.coco_classes import COCO_CLASSES

    classes = meta.get("CLASSES") if isinstance(meta, dict) else None
    if classes is not None and len(classes) == num_classes:
        return [str(c) for c in classes]
    coco_like = "coco" in (cfg.data.val.ann_file + cfg.data.train.ann_file).lower()
    if num_classes == len(COCO_CLASSES) and coco_like:
        return list(COCO_CLASSES)
    return None


def convert_mmdet_checkpoint(
    src: str | Path, dst: str | Path, config: str | None = None,
    overrides: list[str] | tuple[str, ...] = (), trust_pickle: bool = False,
) -> dict[str, Any]:
    """Convert an MMDetection checkpoint into an o2f ``.pth`` checkpoint (or ``.safetensors``
    weights when ``dst`` ends so), verified by loading it into the model built from
    ``config`` (number of classes from ``bbox_head.conv_cls``).

    Args:
        config: the o2f config (name or YAML path); None: ``condinst_r50_1x`` for a
            CondInst-style mask checkpoint (:func:`is_mask_checkpoint`), else ``r50_1x``. Its
            ``model.mask.enabled`` must match the checkpoint's kind.

    Returns:
        the meta written (``num_classes``, ``class_names``, ``cat_ids``, ``source``), plus
        ``config``: the config used.
    """
    from o2f.builders import WEIGHTS_FROM_CHECKPOINT, build_detector
    from o2f.deploy.coco_classes import COCO_CAT_IDS, COCO_CLASSES
    from o2f.deploy.weights import is_safetensors, save_safetensors_weights

    ckpt = load_mmdet_checkpoint(src, trust_pickle)
    mmdet_sd = ckpt["state_dict"]
    if "bbox_head.conv_cls.weight" not in mmdet_sd:
        raise ConversionError(f"{src} has no bbox_head.conv_cls.weight: not an FCOS-style "
                              "MMDetection detector")
    num_classes = int(mmdet_sd["bbox_head.conv_cls.weight"].shape[0])
    masks = is_mask_checkpoint(mmdet_sd)
    if config is None:
        config = "condinst_r50_1x" if masks else "r50_1x"
    cfg = load_config(config, [*overrides, f"model.num_classes={num_classes}"])
    if masks and not cfg.model.mask.enabled:
        raise ConversionError(
            f"{src} is a CondInst-style instance-segmentation checkpoint (bbox_head.controller, "
            f"mask_tower ...) but config '{config}' has model.mask.enabled=false; use --config "
            "condinst_r50_1x (or condinst_r50_3x_ms), or leave --config out")
    if cfg.model.mask.enabled and not masks:
        raise ConversionError(
            f"{src} is a box-only checkpoint (no bbox_head.controller / mask_tower keys) but "
            f"config '{config}' has model.mask.enabled=true; use a box config such as r50_1x, "
            "or leave --config out")
    depth = resnet_depth(mmdet_sd)
    if depth is not None and depth != cfg.model.backbone.depth:
        hint = ("--set model.backbone.depth=" + str(depth) if masks
                else "--config r101_1x for ResNet-101")
        raise ConversionError(
            f"{src} holds a ResNet-{depth} backbone but config '{config}' has "
            f"model.backbone.depth={cfg.model.backbone.depth}; pick a config of that depth "
            f"(e.g. {hint})")
    if masks:
        # the authors' code divides the relative coordinates by 8 x stride (it never reads its
        # sizes_of_interest buffer); other values would give other masks
        expected_soi = [8.0 * s for s in cfg.model.strides]
        if [float(v) for v in cfg.model.mask.sizes_of_interest] != expected_soi:
            raise ConversionError(
                f"config '{config}' has model.mask.sizes_of_interest="
                f"{cfg.model.mask.sizes_of_interest}, but the authors' CondInst code uses 8 x "
                f"stride = {expected_soi}")
    model = build_detector(apply_overrides(cfg, list(WEIGHTS_FROM_CHECKPOINT)))
    weights = convert_mmdet_state_dict(mmdet_sd, model.state_dict().keys())
    load_model_weights(model, weights, source=f"{src} (converted)")
    mm_meta = ckpt.get("meta") or {}
    names = _class_names(mm_meta, cfg, num_classes)
    meta: dict[str, Any] = {"num_classes": num_classes, "class_names": names,
                            "source": f"mmdet:{Path(src).name}"}
    if names == list(COCO_CLASSES):
        meta["cat_ids"] = list(COCO_CAT_IDS)
    config_data = cfg.to_dict()
    if is_safetensors(dst):
        save_safetensors_weights(model.state_dict(), dst, config_data, meta)
    else:
        save_checkpoint({"model": model.state_dict(), "config": config_data, "meta": meta}, dst)
    return {**meta, "config": config}
