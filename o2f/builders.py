"""Config -> objects: the one place where config keys meet constructors."""

from __future__ import annotations

from o2f.config import Config, ConfigError, nms_enabled
from o2f.criterion import O2FCriterion
from o2f.models import FPN, O2FDetector, O2FHead, ResNetBackbone


def build_criterion(cfg: Config, num_classes: int):
    m = cfg.model
    if m.assigner != "o2f":
        raise ConfigError(f"model.assigner={m.assigner!r} is not available yet (only 'o2f')")
    a = m.assign
    return O2FCriterion(
        num_classes, topk=a.topk, alpha=a.alpha, center_radius=a.center_radius,
        soft_weight=a.soft_weight, soft_t_start=a.soft_t_start, soft_t_end=a.soft_t_end,
        cls_weight=m.loss.cls_weight, bbox_weight=m.loss.bbox_weight,
    )


def build_detector(cfg: Config, num_classes: int | None = None) -> O2FDetector:
    """The detector of ``cfg.model`` for ``num_classes`` (default: model.num_classes)."""
    m = cfg.model
    num_classes = num_classes or m.num_classes
    if not num_classes:
        raise ConfigError("model.num_classes is not set and no dataset gave it")
    b = m.backbone
    backbone = ResNetBackbone(b.depth, b.pretrained, b.frozen_stages, b.norm_eval)
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
    )
