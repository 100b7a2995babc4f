"""Typed configuration: dataclasses, YAML files with ``base:`` inheritance, key=value overrides.

Every recipe number of SPEC.md has a key here; the defaults are the published R-50 1x COCO
recipe. A YAML file mirrors the nesting of :class:`Config` and may name a ``base`` config (a
shipped config name or a path) whose values it overrides.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config file, key or value is wrong; the message names it."""


@dataclass
class BackboneConfig:
    name: str = "resnet"  # resnet | swin_t
    depth: int = 50  # ResNet depth: 10 (CPU variant, random init), 18, 34, 50 or 101
    pretrained: bool = True  # torchvision IMAGENET1K_V1 weights
    frozen_stages: int = 1  # -1 none, 0 stem (Swin: patch embedding), 1 + layer1 (Swin: stage 1)
    norm_eval: bool = True  # BatchNorm statistics frozen (ResNet only; Swin has no BatchNorm)
    drop_path: float = 0.2  # Swin only: stochastic depth rate of the last block
    # a local .pth / .safetensors torchvision ResNet or Swin-T state dict, loaded in place of
    # downloading the `pretrained` ImageNet weights ("": none)
    weights: str = ""


@dataclass
class FPNConfig:
    channels: int = 256


@dataclass
class HeadConfig:
    feat_channels: int = 256
    num_convs: int = 4
    ctr_channels: int = 64
    num_ctr_convs: int = 3
    gn_groups: int = 32
    prior_prob: float = 0.01


@dataclass
class AssignConfig:
    topk: int = 7
    alpha: float = 0.8
    center_radius: float = 1.5
    soft_weight: float = 0.4
    soft_t_start: float = 0.6  # soft-label ceiling at the first epoch
    soft_t_end: float = 0.2  # ... and at the last


@dataclass
class LossConfig:
    cls_weight: float = 1.0
    bbox_weight: float | None = None  # None: the assigner's recipe (2.0 o2f/o2o, 1.0 fcos)
    ctr_weight: float = 1.0  # fcos only: its separate centerness BCE loss


@dataclass
class FCOSConfig:
    """The one-to-many FCOS baseline (model.assigner=fcos)."""

    regress_ranges: list[list[float]] = field(default_factory=lambda: [
        [-1.0, 64.0], [64.0, 128.0], [128.0, 256.0], [256.0, 512.0], [512.0, float("inf")]])
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


@dataclass
class AuxConfig:
    """Training-only one-to-many head with towers of its own on the FPN levels
    (``o2f.models.head.AuxO2MHead``), trained with the FCOS assignment and losses of
    ``model.fcos``; off: the paper's model."""

    enabled: bool = False
    weight: float = 1.0  # multiplies each of its losses (loss_aux_cls, _bbox, _ctr)


@dataclass
class MaskConfig:
    """CondInst-style instance masks (Tian et al., ECCV 2020) on the detector, trained with the
    o2f (or o2o) assignment; off: boxes only. Defaults: AdelaiDet's CondInst and the o2f
    authors' CondInst head (``E2ECondInstHead`` of their code), whose choices are noted."""

    enabled: bool = False
    branch_channels: int = 128  # mask branch on P3-P5: conv3x3-BN-ReLU per level, then a tower
    branch_convs: int = 4  # tower convs of the mask branch
    num_bases: int = 8  # mask branch outputs, at the P3 stride
    dynamic_channels: int = 8  # hidden channels of the dynamic 1x1 convs
    dynamic_layers: int = 3  # dynamic 1x1 convs (169 controller outputs with 8/8/3)
    rel_coords: bool = True  # feed (point - location) / soi as 2 extra inputs
    # soi per FPN level: CondInst's [64, 128, 256, 512] plus 2 x 512 for P7 (= 8 x stride)
    sizes_of_interest: list[float] = field(
        default_factory=lambda: [64.0, 128.0, 256.0, 512.0, 1024.0])
    out_stride: int = 4  # masks predicted (and trained) at this stride
    dice_weight: float = 2.0  # dice loss weight (the authors' code; CondInst uses 1.0)
    sem_weight: float = 1.0  # auxiliary semantic focal loss on P3 (on in the authors' code); 0: off
    center_from_mask: bool = True  # candidate regions centred on the mask's centre of mass
    max_proposals: int = -1  # random cap on the points of the dice loss per batch; -1: all
    mask_thr: float = 0.5  # test: mask probability threshold
    # test-time selection: box (SPEC §4: threshold on sigmoid(cls) x sigmoid(ctr), top nms_pre
    # pairs per level) | authors (their CondInst head: top nms_pre points per level by best
    # class score x quality, threshold on sigmoid(cls) alone); docs/differences.md
    selection: str = "box"
    # mask branch convs: adelaidet (Kaiming-uniform a=1, AdelaiDet's) | authors (Normal(0, 0.01)
    # on every conv incl. the bases' 1x1, what the authors' code does); docs/differences.md
    init: str = "adelaidet"


@dataclass
class ModelConfig:
    num_classes: int | None = None  # None: taken from the training dataset
    assigner: str = "o2f"
    strides: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128])
    pixel_mean: list[float] = field(default_factory=lambda: [123.675, 116.28, 103.53])
    pixel_std: list[float] = field(default_factory=lambda: [58.395, 57.12, 57.375])
    size_divisor: int = 32
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    assign: AssignConfig = field(default_factory=AssignConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    fcos: FCOSConfig = field(default_factory=FCOSConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    aux: AuxConfig = field(default_factory=AuxConfig)


@dataclass
class SplitConfig:
    ann_file: str = ""
    img_dir: str = ""


@dataclass
class DataConfig:
    train: SplitConfig = field(default_factory=lambda: SplitConfig(
        "data/coco/annotations/instances_train2017.json", "data/coco/train2017"))
    val: SplitConfig = field(default_factory=lambda: SplitConfig(
        "data/coco/annotations/instances_val2017.json", "data/coco/val2017"))
    max_size: int = 1333  # long-side cap, train and test
    train_short: list[int] = field(default_factory=lambda: [800, 800])  # short side lo..hi
    test_short: int = 800
    flip_prob: float = 0.5
    crop_prob: float = 0.0  # train: random crop before the resize (RandomCropBoxes); 0 off
    crop_min_scale: float = 0.5  # ... each crop side at least this fraction of the image side
    color_jitter: float = 0.0  # train: brightness/contrast/saturation jitter strength; 0 off
    repeat: int = 1  # train: passes over the training images per epoch (small data sets)
    group_by_aspect: bool = True  # train: each batch all landscape or all portrait images
    batch_size: int = 2  # images per process
    workers: int = 2  # loader processes per training process
    strict: bool = False  # turn documented skips of bad data into errors
    # annotation format of both splits: auto (from the path: .json coco, .yaml/.yml a YOLO
    # data.yaml, a folder of .xml voc, .odgt CrowdHuman) | coco | yolo | voc | odgt
    format: str = "auto"


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw
    lr: float = 0.01  # for base_batch_size images per step
    base_batch_size: int = 16
    scale_lr: bool = True  # lr * total batch / base_batch_size
    momentum: float = 0.9
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-4
    norm_decay: float = 0.0  # weight decay of norm layers and Swin relative-position tables
    bias_lr_mult: float = 1.0  # lr x this for the biases of other layers (MMCV's paramwise_cfg)
    bias_decay_mult: float = 1.0  # weight_decay x this for those biases
    warmup_iters: int = 1000
    warmup_ratio: float = 0.001
    schedule: str = "step"  # step: x gamma at each of steps | cosine: over the whole run
    steps: list[int] = field(default_factory=lambda: [9, 12])  # 1-based epochs: lr *= gamma
    gamma: float = 0.1
    min_lr_ratio: float = 0.05  # cosine: final lr / lr


@dataclass
class TrainConfig:
    epochs: int = 12
    checkpoint_interval: int = 1  # epochs
    val_interval: int = 1  # epochs; 0 disables validation during training
    seed: int = 0
    deterministic: bool = False
    # fp32 | bf16 | fp16 (CUDA, with a GradScaler) | auto (bf16 where the device computes it
    # natively: CUDA with bf16, a CPU with AMX / AVX512-BF16; else fp32). Network only: the
    # assignment and the losses always run in fp32.
    precision: str = "fp32"
    # auto (CUDA when usable, else the CPU; a loud warning for a multi-process CPU run) | cuda
    # (an error naming PyTorch's CUDA build and what torch.cuda reports when CUDA is unusable)
    # | cpu
    device: str = "auto"
    log_interval: int = 50  # iterations
    max_iters_per_epoch: int = 0  # 0: the whole epoch (a cap is for smoke tests)
    nonfinite: str = "error"  # error | skip: a step whose loss is NaN/inf
    ema: bool = False  # keep an EMA of the weights; validation and deployment use it
    ema_decay: float = 0.9998  # decay d: ema = d_k * ema + (1 - d_k) * weights after each step
    ema_warmup: int = 2000  # d_k = d * (1 - exp(-k / ema_warmup)) at update k; 0: d_k = d
    patience: int = 0  # stop after this many validations without a better AP; 0: off
    keep_checkpoints: int = 1  # newest epoch_N.pth files kept; 0: none written, -1: all
    # experiment trackers, any of tensorboard | mlflow | wandb (o2f.engine.loggers)
    loggers: list[str] = field(default_factory=lambda: ["tensorboard"])
    plots: bool = True  # evaluation plots of the last validation into WORK_DIR/plots


@dataclass
class TestConfig:
    score_thr: float = 0.05
    nms_pre: int = 1000
    max_per_img: int = 100
    nms: bool | None = None  # None: off for o2f/o2o, on for fcos
    nms_iou: float = 0.6
    batch_size: int = 1  # images per process and batch (validation and o2f test)
    # network precision of validation and o2f test: fp32 | bf16 | fp16 (CUDA) | auto (as
    # train.precision); box selection and masks always run in fp32
    precision: str = "fp32"
    evaluator: str = "faster_coco_eval"  # COCO AP: faster_coco_eval | pycocotools


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    test: TestConfig = field(default_factory=TestConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _resolve(name_or_path: str, relative_to: Path | None = None) -> Path:
    candidates = [Path(name_or_path)]
    if relative_to is not None:
        candidates.append(relative_to / name_or_path)
    candidates.append(CONFIG_DIR / f"{name_or_path}.yaml")
    for c in candidates:
        if c.is_file():
            return c
    raise ConfigError(
        f"config '{name_or_path}' is neither a file nor a shipped config "
        f"({', '.join(available_configs())})"
    )


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base' configs form a cycle")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    base = data.pop("base", None)
    if base is None:
        return data
    parent = _read_yaml(_resolve(str(base), path.parent), seen + (path.resolve(),))
    return _merge(parent, data)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        key = f"{prefix}{f.name}"
        keys.append(key)
        if dataclasses.is_dataclass(tp):
            keys += _all_keys(tp, key + ".")
    return keys


PRECISIONS = ("fp32", "bf16", "fp16", "auto")
EVALUATORS = ("faster_coco_eval", "pycocotools")
LOGGERS = ("tensorboard", "mlflow", "wandb")  # train.loggers

#: keys that were removed, with what replaces them
REMOVED_KEYS = {
    "train.amp": "train.amp was replaced by train.precision (fp32 | bf16 | fp16 | auto)",
}


def _unknown(key: str) -> ConfigError:
    if key in REMOVED_KEYS:
        return ConfigError(f"config key '{key}' is no longer supported: {REMOVED_KEYS[key]}")
    close = difflib.get_close_matches(key, _all_keys(Config), n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return _build(tp, value, key + ".")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp)
    if ok is None:
        raise TypeError(f"unsupported config type {tp} for {key}")
    if not ok:
        raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")
    return float(value) if tp is float else value


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            raise _unknown(f"{prefix}{k}")
    defaults = cls()
    kwargs = {}
    for name in names:
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], f"{prefix}{name}")
        else:
            kwargs[name] = getattr(defaults, name)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b.c=value' -> (['a', 'b', 'c'], value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{text}': the value is not valid YAML ({err})") from err
    return key.strip().split("."), value


def _set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    key = ".".join(path)
    if key not in _all_keys(Config):
        raise _unknown(key)
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key '{key}': '{part}' is not a section")
    node[path[-1]] = value


def load_config(
    name_or_path: str | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Load a shipped config by name or a YAML path (None: the defaults), apply key=value
    overrides, check types and values."""
    data = _read_yaml(_resolve(name_or_path)) if name_or_path else {}
    for text in overrides:
        _set_path(data, *parse_override(text))
    cfg = _build(Config, data)
    validate(cfg)
    return cfg


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """A new config: ``cfg`` with key=value overrides applied and validated."""
    data = cfg.to_dict()
    for text in overrides:
        _set_path(data, *parse_override(text))
    out = _build(Config, data)
    validate(out)
    return out


def _yaml_text(value: Any, key: str) -> str:
    """A Python value as the YAML text :func:`parse_override` reads back as that value (strings
    double-quoted, so a path or "true" stays a string; floats always with a point, which
    PyYAML needs to read ``1e-05`` as a number)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return ".nan"
        if value in (float("inf"), float("-inf")):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)
        return text.replace("e", ".0e", 1) if "e" in text and "." not in text else text
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_yaml_text(v, key) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {_yaml_text(v, key)}"
                               for k, v in value.items()) + "}"
    raise ConfigError(f"override '{key}': a value of type {type(value).__name__} is not a "
                      "config value (bool, int, float, str, path, None, list or dict)")


def as_overrides(
    overrides: Mapping[str, Any] | Sequence[str] | str | None = None, **keywords: Any
) -> list[str]:
    """Overrides given in Python, as the ``key=value`` strings of the command line.

    Args:
        overrides: a mapping of dotted keys to Python values, ``{"train.epochs": 1,
            "data.train.ann_file": "a.json"}``; or ``key=value`` strings as typed after
            ``o2f train`` (the value read as YAML), ``["train.epochs=1"]``; or one such string.
        **keywords: more overrides as Python values, with ``__`` for each dot:
            ``train__epochs=1`` is ``train.epochs=1``. Applied after ``overrides``.

    Returns:
        The ``key=value`` strings, in order (a later one wins).
    """
    if overrides is None:
        items: list[str] = []
    elif isinstance(overrides, str):
        items = [overrides]
    elif isinstance(overrides, Mapping):
        items = [f"{k}={_yaml_text(v, k)}" for k, v in overrides.items()]
    else:
        items = [str(text) for text in overrides]
    for name, value in keywords.items():
        key = name.replace("__", ".")
        items.append(f"{key}={_yaml_text(value, key)}")
    for text in items:
        parse_override(text)  # a malformed one fails here, naming itself
    return items


def config_from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """A validated :class:`Config` from plain data (e.g. the copy stored in a checkpoint).

    Keys of :data:`REMOVED_KEYS` are dropped here (a checkpoint written before their removal
    still loads), while a config file or an override that sets one is refused."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a config must be a mapping")
    data = copy.deepcopy(data)
    for key in REMOVED_KEYS:
        *parents, leaf = key.split(".")
        section = data
        for part in parents:
            section = section.get(part) if isinstance(section, dict) else None
        if isinstance(section, dict):
            section.pop(leaf, None)
    cfg = _build(Config, data)
    validate(cfg)
    return cfg


def _check(ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}' {rule}, got {value!r}")


def validate(cfg: Config) -> None:
    """Reject impossible values with a message naming the key."""
    m, d, o, t, te = cfg.model, cfg.data, cfg.optim, cfg.train, cfg.test
    _check(m.num_classes is None or m.num_classes >= 1, "model.num_classes", "must be >= 1",
           m.num_classes)
    _check(m.assigner in ("o2f", "o2o", "fcos"), "model.assigner", "must be o2f, o2o or fcos",
           m.assigner)
    _check(len(m.strides) == 5 and m.strides == sorted(m.strides), "model.strides",
           "must be 5 increasing strides (P3..P7)", m.strides)
    _check(len(m.pixel_mean) == 3, "model.pixel_mean", "must have 3 values", m.pixel_mean)
    _check(len(m.pixel_std) == 3 and min(m.pixel_std) > 0, "model.pixel_std",
           "must be 3 positive values", m.pixel_std)
    _check(m.backbone.name in ("resnet", "swin_t"), "model.backbone.name",
           "must be resnet or swin_t", m.backbone.name)
    _check(0 <= m.backbone.drop_path < 1, "model.backbone.drop_path", "must be in [0, 1)",
           m.backbone.drop_path)
    _check(m.backbone.depth in (10, 18, 34, 50, 101), "model.backbone.depth",
           "must be 10, 18, 34, 50 or 101", m.backbone.depth)
    _check(-1 <= m.backbone.frozen_stages <= 4, "model.backbone.frozen_stages",
           "must be in -1..4", m.backbone.frozen_stages)
    for key, value in (("model.fpn.channels", m.fpn.channels),
                       ("model.head.feat_channels", m.head.feat_channels),
                       ("model.head.ctr_channels", m.head.ctr_channels),
                       ("model.head.gn_groups", m.head.gn_groups)):
        _check(value >= 1, key, "must be >= 1", value)
    _check(m.head.feat_channels % m.head.gn_groups == 0, "model.head.gn_groups",
           f"must divide model.head.feat_channels={m.head.feat_channels}", m.head.gn_groups)
    _check(m.head.ctr_channels % m.head.gn_groups == 0, "model.head.gn_groups",
           f"must divide model.head.ctr_channels={m.head.ctr_channels}", m.head.gn_groups)
    _check(0 < m.head.prior_prob < 1, "model.head.prior_prob", "must be in (0, 1)",
           m.head.prior_prob)
    a = m.assign
    _check(a.topk >= 1, "model.assign.topk", "must be >= 1", a.topk)
    _check(0 <= a.alpha <= 1, "model.assign.alpha", "must be in [0, 1]", a.alpha)
    _check(a.center_radius > 0, "model.assign.center_radius", "must be > 0", a.center_radius)
    _check(0 <= a.soft_weight <= 1, "model.assign.soft_weight", "must be in [0, 1]",
           a.soft_weight)
    for key, value in (("model.assign.soft_t_start", a.soft_t_start),
                       ("model.assign.soft_t_end", a.soft_t_end)):
        _check(0 < value <= 1, key, "must be in (0, 1]", value)
    ranges = m.fcos.regress_ranges
    _check(len(ranges) == len(m.strides) and all(len(r) == 2 and r[0] < r[1] for r in ranges),
           "model.fcos.regress_ranges", "must be one [lo, hi] with lo < hi per stride", ranges)
    _check(m.loss.bbox_weight is None or m.loss.bbox_weight >= 0, "model.loss.bbox_weight",
           "must be >= 0", m.loss.bbox_weight)
    _validate_mask(m)
    _check(m.aux.weight >= 0, "model.aux.weight", "must be >= 0", m.aux.weight)
    _check(d.max_size >= 32, "data.max_size", "must be >= 32", d.max_size)
    _check(len(d.train_short) == 2 and 1 <= d.train_short[0] <= d.train_short[1],
           "data.train_short", "must be [lo, hi] with 1 <= lo <= hi", d.train_short)
    _check(d.test_short >= 1, "data.test_short", "must be >= 1", d.test_short)
    _check(0 <= d.flip_prob <= 1, "data.flip_prob", "must be in [0, 1]", d.flip_prob)
    _check(0 <= d.crop_prob <= 1, "data.crop_prob", "must be in [0, 1]", d.crop_prob)
    _check(0 < d.crop_min_scale <= 1, "data.crop_min_scale", "must be in (0, 1]",
           d.crop_min_scale)
    _check(0 <= d.color_jitter < 1, "data.color_jitter", "must be in [0, 1)", d.color_jitter)
    _check(d.repeat >= 1, "data.repeat", "must be >= 1", d.repeat)
    _check(d.batch_size >= 1, "data.batch_size", "must be >= 1", d.batch_size)
    _check(d.workers >= 0, "data.workers", "must be >= 0", d.workers)
    _check(d.format in ("auto", "coco", "yolo", "voc", "odgt"), "data.format",
           "must be auto, coco, yolo, voc or odgt", d.format)
    _check(o.name in ("sgd", "adamw"), "optim.name", "must be sgd or adamw", o.name)
    _check(o.lr > 0, "optim.lr", "must be > 0", o.lr)
    _check(o.base_batch_size >= 1, "optim.base_batch_size", "must be >= 1", o.base_batch_size)
    _check(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0", o.weight_decay)
    _check(o.norm_decay >= 0, "optim.norm_decay", "must be >= 0", o.norm_decay)
    _check(o.bias_lr_mult > 0, "optim.bias_lr_mult", "must be > 0", o.bias_lr_mult)
    _check(o.bias_decay_mult >= 0, "optim.bias_decay_mult", "must be >= 0", o.bias_decay_mult)
    _check(o.warmup_iters >= 0, "optim.warmup_iters", "must be >= 0", o.warmup_iters)
    _check(0 < o.warmup_ratio <= 1, "optim.warmup_ratio", "must be in (0, 1]", o.warmup_ratio)
    _check(all(s >= 1 for s in o.steps) and o.steps == sorted(o.steps), "optim.steps",
           "must be increasing 1-based epochs", o.steps)
    _check(0 < o.gamma <= 1, "optim.gamma", "must be in (0, 1]", o.gamma)
    _check(o.schedule in ("step", "cosine"), "optim.schedule", "must be step or cosine",
           o.schedule)
    _check(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]", o.min_lr_ratio)
    _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas",
           "must be two values in [0, 1)", o.betas)
    _check(t.epochs >= 1, "train.epochs", "must be >= 1", t.epochs)
    _check(t.checkpoint_interval >= 1, "train.checkpoint_interval", "must be >= 1",
           t.checkpoint_interval)
    _check(t.val_interval >= 0, "train.val_interval", "must be >= 0", t.val_interval)
    _check(t.log_interval >= 1, "train.log_interval", "must be >= 1", t.log_interval)
    _check(t.max_iters_per_epoch >= 0, "train.max_iters_per_epoch", "must be >= 0",
           t.max_iters_per_epoch)
    _check(t.nonfinite in ("error", "skip"), "train.nonfinite", "must be error or skip",
           t.nonfinite)
    _check(t.precision in PRECISIONS, "train.precision", "must be fp32, bf16, fp16 or auto",
           t.precision)
    _check(t.device in ("auto", "cuda", "cpu"), "train.device", "must be auto, cuda or cpu",
           t.device)
    _check(0 < t.ema_decay < 1, "train.ema_decay", "must be in (0, 1)", t.ema_decay)
    _check(t.ema_warmup >= 0, "train.ema_warmup", "must be >= 0", t.ema_warmup)
    _check(t.patience >= 0, "train.patience", "must be >= 0", t.patience)
    _check(t.patience == 0 or t.val_interval > 0, "train.patience",
           "needs validation during training (train.val_interval >= 1)", t.patience)
    _check(t.keep_checkpoints >= -1, "train.keep_checkpoints", "must be >= -1",
           t.keep_checkpoints)
    _check(all(n in LOGGERS for n in t.loggers), "train.loggers",
           f"must be a list of names from {', '.join(LOGGERS)}", t.loggers)
    _check(0 <= te.score_thr < 1, "test.score_thr", "must be in [0, 1)", te.score_thr)
    _check(te.nms_pre >= 1, "test.nms_pre", "must be >= 1", te.nms_pre)
    _check(te.max_per_img >= 1, "test.max_per_img", "must be >= 1", te.max_per_img)
    _check(0 < te.nms_iou <= 1, "test.nms_iou", "must be in (0, 1]", te.nms_iou)
    _check(te.batch_size >= 1, "test.batch_size", "must be >= 1", te.batch_size)
    _check(te.precision in PRECISIONS, "test.precision", "must be fp32, bf16, fp16 or auto",
           te.precision)
    _check(te.evaluator in EVALUATORS, "test.evaluator",
           "must be faster_coco_eval or pycocotools", te.evaluator)


def _validate_mask(m: ModelConfig) -> None:
    k = m.mask
    if k.enabled:
        _check(m.assigner in ("o2f", "o2o"), "model.assigner",
               "must be o2f or o2o with model.mask.enabled (the mask loss needs the matched gt "
               "of each point, which the fcos baseline does not give)", m.assigner)
    for key, value, low in (("branch_channels", k.branch_channels, 1),
                            ("branch_convs", k.branch_convs, 0), ("num_bases", k.num_bases, 1),
                            ("dynamic_channels", k.dynamic_channels, 1),
                            ("dynamic_layers", k.dynamic_layers, 1),
                            ("out_stride", k.out_stride, 1)):
        _check(value >= low, f"model.mask.{key}", f"must be >= {low}", value)
    _check(m.strides[0] % k.out_stride == 0, "model.mask.out_stride",
           f"must divide the first stride {m.strides[0]}", k.out_stride)
    _check(len(k.sizes_of_interest) == len(m.strides) and min(k.sizes_of_interest) > 0,
           "model.mask.sizes_of_interest", f"must be {len(m.strides)} positive values (one per "
           "stride)", k.sizes_of_interest)
    _check(k.dice_weight >= 0, "model.mask.dice_weight", "must be >= 0", k.dice_weight)
    _check(k.sem_weight >= 0, "model.mask.sem_weight", "must be >= 0", k.sem_weight)
    _check(k.max_proposals == -1 or k.max_proposals >= 1, "model.mask.max_proposals",
           "must be -1 (no cap) or >= 1", k.max_proposals)
    _check(0 < k.mask_thr < 1, "model.mask.mask_thr", "must be in (0, 1)", k.mask_thr)
    _check(k.selection in ("box", "authors"), "model.mask.selection", "must be box or authors",
           k.selection)
    _check(k.init in ("adelaidet", "authors"), "model.mask.init", "must be adelaidet or authors",
           k.init)


def nms_enabled(cfg: Config) -> bool:
    """test.nms, or the assigner's default (NMS only for the one-to-many fcos baseline)."""
    return cfg.test.nms if cfg.test.nms is not None else cfg.model.assigner == "fcos"


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
