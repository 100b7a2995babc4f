"""Config -> objects: the one place where config keys meet constructors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from o2f.config import (
    BackboneConfig,
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    load_config,
    nms_enabled,
)
from o2f.criterion import O2FCriterion
from o2f.engine.checkpoint import CheckpointError, load_model_weights
from o2f.models import FPN, O2FDetector, O2FHead, ResNetBackbone, SwinBackbone

# overrides for a model whose every weight comes from a checkpoint: no backbone weights are
# downloaded or read from a file
WEIGHTS_FROM_CHECKPOINT = ("model.backbone.pretrained=false", "model.backbone.weights=")


def build_criterion(cfg: Config, num_classes: int):
    """The training criterion of ``model.assigner``: ``o2f`` (the paper), ``o2o`` (one-to-one,
    k = 1 and no soft anchors) or ``fcos`` (one-to-many FCOS with its own losses).

    ``model.loss.bbox_weight`` applies to every assigner; when it is None the assigner's recipe
    value is used (2.0 for o2f / o2o, 1.0 for FCOS's GIoU recipe).
    """
    from o2f.criterion import RECIPE_BBOX_WEIGHT, FCOSCriterion, O2OCriterion

    m, a = cfg.model, cfg.model.assign
    if m.assigner not in RECIPE_BBOX_WEIGHT:
        raise ConfigError(f"model.assigner={m.assigner!r}: expected o2f, o2o or fcos")
    bbox_weight = m.loss.bbox_weight
    if bbox_weight is None:
        bbox_weight = RECIPE_BBOX_WEIGHT[m.assigner]
    if m.assigner == "fcos":
        return FCOSCriterion(
            num_classes, center_radius=a.center_radius,
            regress_ranges=tuple(tuple(r) for r in m.fcos.regress_ranges),
            focal_alpha=m.fcos.focal_alpha, focal_gamma=m.fcos.focal_gamma,
            cls_weight=m.loss.cls_weight, bbox_weight=bbox_weight, ctr_weight=m.loss.ctr_weight,
        )
    if m.assigner == "o2o":
        return O2OCriterion(
            num_classes, alpha=a.alpha, center_radius=a.center_radius,
            cls_weight=m.loss.cls_weight, bbox_weight=bbox_weight,
        )
    return O2FCriterion(
        num_classes, topk=a.topk, alpha=a.alpha, center_radius=a.center_radius,
        soft_weight=a.soft_weight, soft_t_start=a.soft_t_start, soft_t_end=a.soft_t_end,
        cls_weight=m.loss.cls_weight, bbox_weight=bbox_weight,
    )


def build_detector(cfg: Config, num_classes: int | None = None) -> O2FDetector:
    """The detector of ``cfg.model`` for ``num_classes`` (default: model.num_classes)."""
    m = cfg.model
    num_classes = num_classes or m.num_classes
    if not num_classes:
        raise ConfigError("model.num_classes is not set and no dataset gave it")
    backbone = build_backbone(m.backbone)
    neck = FPN(backbone.out_channels, m.fpn.channels, num_extra=len(m.strides) - 3)
    h = m.head
    head = O2FHead(
        num_classes, m.fpn.channels, h.feat_channels, h.num_convs, h.ctr_channels,
        h.num_ctr_convs, m.strides, h.gn_groups, h.prior_prob,
    )
    t = cfg.test
    return O2FDetector(
        backbone, neck, head, build_criterion(cfg, num_classes), pixel_mean=m.pixel_mean,
        pixel_std=m.pixel_std, size_divisor=m.size_divisor, score_thr=t.score_thr,
        nms_pre=t.nms_pre, max_per_img=t.max_per_img, nms=nms_enabled(cfg), nms_iou=t.nms_iou,
        **(build_mask_modules(cfg, num_classes) if m.mask.enabled else {}),
        **(build_aux_modules(cfg, num_classes) if m.aux.enabled else {}),
    )


def build_aux_modules(cfg: Config, num_classes: int) -> dict[str, Any]:
    """The training-only one-to-many head of ``model.aux`` as :class:`O2FDetector` keyword
    arguments: the head on the FPN levels (towers as ``model.head``), its FCOS criterion
    (``model.fcos``, the FCOS recipe's GIoU weight) and the weight of its losses."""
    from o2f.criterion import RECIPE_BBOX_WEIGHT, FCOSCriterion
    from o2f.models.head import AuxO2MHead

    m = cfg.model
    return {
        "aux_head": AuxO2MHead(num_classes, m.fpn.channels, m.head.feat_channels,
                               m.head.num_convs, m.strides, m.head.gn_groups, m.head.prior_prob),
        "aux_criterion": FCOSCriterion(
            num_classes, center_radius=m.assign.center_radius,
            regress_ranges=tuple(tuple(r) for r in m.fcos.regress_ranges),
            focal_alpha=m.fcos.focal_alpha, focal_gamma=m.fcos.focal_gamma,
            bbox_weight=RECIPE_BBOX_WEIGHT["fcos"]),
        "aux_weight": m.aux.weight,
    }


def build_backbone(b: BackboneConfig) -> ResNetBackbone | SwinBackbone:
    """The backbone of ``model.backbone``, with its ``weights`` file loaded when one is given
    (then nothing is downloaded, whatever ``pretrained`` says)."""
    download = b.pretrained and not b.weights
    if b.name == "swin_t":
        backbone = SwinBackbone(download, b.frozen_stages, b.drop_path)
    else:
        backbone = ResNetBackbone(b.depth, download, b.frozen_stages, b.norm_eval)
    if b.weights:
        load_backbone_weights(backbone, b.weights)
    return backbone


def load_backbone_weights(backbone: ResNetBackbone | SwinBackbone, path: str | Path) -> None:
    """Load a torchvision ResNet / Swin-T state dict from a ``.pth`` or ``.safetensors`` file
    (a ``state_dict`` / ``model`` wrapper and a ``backbone.`` / ``body.`` prefix are accepted;
    the classifier's ``fc`` / ``head`` keys are ignored).

    Raises:
        ConfigError: the file is missing or unreadable, or its keys or shapes do not fit, named
            with the first offending keys.
    """
    from o2f.deploy.weights import read_state_dict
    from o2f.models.backbone import load_torchvision_weights

    try:
        state = read_state_dict(path, strip_prefixes=("backbone.", "body."))
    except CheckpointError as err:
        raise ConfigError(f"model.backbone.weights: {err}") from err
    try:
        load_torchvision_weights(backbone, state)
    except ValueError as err:
        raise ConfigError(f"model.backbone.weights: {path} does not fit the "
                          f"{type(backbone).__name__}: {err}") from err


def build_mask_modules(cfg: Config, num_classes: int) -> dict[str, Any]:
    """The CondInst-style mask modules of ``model.mask`` as :class:`O2FDetector` keyword
    arguments: mask branch on P3-P5 (initialised as ``model.mask.init``), controller on the
    regression tower, dynamic mask head, mask criterion, test threshold and the test-time
    selection of ``model.mask.selection``."""
    from o2f.criterion import CondInstMaskLoss
    from o2f.models.dynamic_mask_head import DynamicMaskHead, controller_conv
    from o2f.models.mask_branch import MaskBranch

    m, k = cfg.model, cfg.model.mask  # validate() already checked model.assigner
    mask_head = DynamicMaskHead(
        k.num_bases, k.dynamic_channels, k.dynamic_layers, k.sizes_of_interest,
        feat_stride=m.strides[0], out_stride=k.out_stride, rel_coords=k.rel_coords,
    )
    return {
        "mask_branch": MaskBranch(
            m.fpn.channels, k.branch_channels, k.branch_convs, k.num_bases, m.strides[:3],
            num_classes=num_classes if k.sem_weight > 0 else 0, prior_prob=m.head.prior_prob,
            init=k.init,
        ),
        "controller": controller_conv(m.head.feat_channels, mask_head.num_params),
        "mask_head": mask_head,
        "mask_criterion": CondInstMaskLoss(
            num_classes, dice_weight=k.dice_weight, sem_weight=k.sem_weight,
            max_proposals=k.max_proposals, center_from_mask=k.center_from_mask,
        ),
        "mask_thr": k.mask_thr,
        "selection": k.selection,
    }


def detector_from_checkpoint(
    path: str | Path, config: str | None = None, overrides: list[str] | tuple[str, ...] = (),
) -> tuple[O2FDetector, Config, dict[str, Any]]:
    """Rebuild a detector in eval mode from a ``.pth`` checkpoint or a ``.safetensors`` file,
    both read without unpickling arbitrary objects.

    The config is the one stored with the weights unless ``config`` (a name or a path; None or
    "-" for the stored one) is given; overrides apply on top. No ImageNet weights are
    downloaded: every weight comes from the file.

    Returns:
        model, config, meta (``class_names``, ``cat_ids``, ``num_classes`` when recorded).
    """
    from o2f.deploy.weights import read_weights

    state, stored, meta = read_weights(path)
    if config and config != "-":
        cfg = load_config(config)
    elif stored is not None:
        cfg = config_from_dict(stored, f"{path} config")
    else:
        raise CheckpointError(f"{path} has no stored config; give the config explicitly")
    cfg = apply_overrides(cfg, [*overrides, *WEIGHTS_FROM_CHECKPOINT])
    num_classes = meta.get("num_classes") or cfg.model.num_classes
    if not num_classes and "head.conv_cls.weight" in state:
        num_classes = int(state["head.conv_cls.weight"].shape[0])
    model = build_detector(cfg, num_classes)
    load_model_weights(model, state, source=str(path))
    return model.eval(), cfg, dict(meta)
