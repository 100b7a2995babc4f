import pytest

from o2f.config import ConfigError, available_configs, load_config, nms_enabled


def test_defaults_are_the_published_recipe():
    cfg = load_config("r50_1x")
    assert cfg.model.assign.topk == 7 and cfg.model.assign.alpha == 0.8
    assert cfg.optim.lr == 0.01 and cfg.optim.steps == [9, 12] and cfg.train.epochs == 12
    assert cfg.test.score_thr == 0.05 and cfg.test.max_per_img == 100 and not nms_enabled(cfg)


def test_base_inheritance_and_overrides():
    cfg = load_config("r101_3x_ms", ["train.epochs=2", "data.train_short=[600, 700]",
                                     "model.backbone.pretrained=false"])
    assert cfg.model.backbone.depth == 101 and cfg.optim.steps == [25, 34]
    assert cfg.train.epochs == 2 and cfg.data.train_short == [600, 700]
    assert {"r50_1x", "r50_3x_ms", "r101_1x", "r101_3x_ms"} <= set(available_configs())


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ConfigError, match="did you mean 'optim.lr'"):
        load_config("r50_1x", ["optim.lrr=0.1"])


def test_wrong_type_and_impossible_values_name_the_key():
    with pytest.raises(ConfigError, match="data.batch_size' must be int"):
        load_config(None, ["data.batch_size=two"])
    with pytest.raises(ConfigError, match="data.batch_size' must be >= 1"):
        load_config(None, ["data.batch_size=0"])
    with pytest.raises(ConfigError, match="optim.lr' must be > 0"):
        load_config(None, ["optim.lr=-0.1"])
    with pytest.raises(ConfigError, match="model.assign.topk' must be >= 1"):
        load_config(None, ["model.assign.topk=0"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(None, ["train.epochs"])


def test_yaml_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(str(bad))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("base: r50_1x\nmodel:\n  head:\n    feat_channel: 64\n")
    with pytest.raises(ConfigError, match="model.head.feat_channels"):
        load_config(str(unknown))
    with pytest.raises(ConfigError, match="neither a file nor a shipped config"):
        load_config("no_such_config")


# Every shipped config, with the recipe numbers it must keep (SPEC §1-6 and the values each YAML
# sets). Keys under active design (normalisation-layer and bias decay, the mask head's selection
# and initialisation) are pinned where they are decided: tests/engine/test_param_groups.py,
# tests/test_mask_*.py.
COCO_BOX = {
    "model.assigner": "o2f", "model.strides": [8, 16, 32, 64, 128],
    "model.pixel_mean": [123.675, 116.28, 103.53], "model.pixel_std": [58.395, 57.12, 57.375],
    "model.size_divisor": 32, "model.backbone.name": "resnet", "model.backbone.depth": 50,
    "model.backbone.pretrained": True, "model.backbone.frozen_stages": 1,
    "model.backbone.norm_eval": True, "model.fpn.channels": 256,
    "model.head.feat_channels": 256, "model.head.num_convs": 4, "model.head.ctr_channels": 64,
    "model.head.num_ctr_convs": 3, "model.head.gn_groups": 32, "model.head.prior_prob": 0.01,
    "model.assign.topk": 7, "model.assign.alpha": 0.8, "model.assign.center_radius": 1.5,
    "model.assign.soft_weight": 0.4, "model.assign.soft_t_start": 0.6,
    "model.assign.soft_t_end": 0.2, "model.loss.cls_weight": 1.0, "model.loss.bbox_weight": None,
    "model.mask.enabled": False, "model.aux.enabled": False,
    "data.max_size": 1333, "data.train_short": [800, 800], "data.test_short": 800,
    "data.flip_prob": 0.5, "data.crop_prob": 0.0, "data.color_jitter": 0.0, "data.repeat": 1,
    "data.batch_size": 2, "optim.name": "sgd", "optim.lr": 0.01, "optim.base_batch_size": 16,
    "optim.scale_lr": True, "optim.momentum": 0.9, "optim.weight_decay": 1e-4,
    "optim.warmup_iters": 1000, "optim.warmup_ratio": 0.001, "optim.schedule": "step",
    "optim.steps": [9, 12], "optim.gamma": 0.1, "train.epochs": 12, "train.ema": False,
    "test.score_thr": 0.05, "test.nms_pre": 1000, "test.max_per_img": 100, "test.nms": None,
    "test.nms_iou": 0.6,
}
THREE_X = {"data.train_short": [640, 800], "optim.steps": [25, 34], "train.epochs": 36}
CONDINST = {"model.mask.enabled": True, "model.loss.bbox_weight": 1.0,
            "optim.warmup_iters": 500, "model.mask.num_bases": 8,
            "model.mask.branch_channels": 128, "model.mask.dice_weight": 2.0,
            "model.mask.out_stride": 4, "model.mask.mask_thr": 0.5}
SWIN = {"model.backbone.name": "swin_t", "model.backbone.drop_path": 0.2, "optim.name": "adamw",
        "optim.lr": 1e-4, "optim.betas": [0.9, 0.999], "optim.weight_decay": 0.05,
        "optim.norm_decay": 0.0}
DEMO = {
    "model.backbone.depth": 10, "model.backbone.pretrained": False,
    "model.backbone.frozen_stages": -1, "model.backbone.norm_eval": False,
    "model.fpn.channels": 64, "model.head.feat_channels": 64, "model.head.num_convs": 2,
    "model.head.ctr_channels": 32, "model.head.num_ctr_convs": 1, "model.head.gn_groups": 16,
    "model.assign.topk": 7, "data.max_size": 192, "data.train_short": [192, 192],
    "data.test_short": 192, "data.batch_size": 8, "optim.name": "adamw", "optim.lr": 0.002,
    "optim.base_batch_size": 8, "optim.weight_decay": 1e-4, "optim.warmup_iters": 50,
    "optim.steps": [3], "train.epochs": 3, "train.val_interval": 3, "test.score_thr": 0.05,
}
SHIPPED = {
    "r50_1x": COCO_BOX,
    "r50_3x_ms": {**COCO_BOX, **THREE_X},
    "r101_1x": {**COCO_BOX, "model.backbone.depth": 101},
    "r101_3x_ms": {**COCO_BOX, **THREE_X, "model.backbone.depth": 101},
    "condinst_r50_1x": {**COCO_BOX, **CONDINST},
    "condinst_r50_3x_ms": {**COCO_BOX, **CONDINST, **THREE_X},
    "swin_1x": {**COCO_BOX, **SWIN},
    "swin_3x_ms": {**COCO_BOX, **SWIN, **THREE_X},
    "crowdhuman": {
        **COCO_BOX, "model.num_classes": 1, "model.assign.topk": 4,
        "data.train_short": [480, 960], "data.max_size": 1400, "data.test_short": 800,
        "optim.name": "adamw", "optim.lr": 4e-5, "optim.weight_decay": 1e-4,
        "optim.steps": [41], "train.epochs": 50, "test.nms_pre": 5000, "test.max_per_img": 500,
    },
    "demo": DEMO,
    "demo_mask": {**DEMO, "model.mask.enabled": True, "model.mask.branch_channels": 32,
                  "model.mask.branch_convs": 2},
    "small": {
        "model.backbone.depth": 18, "model.backbone.pretrained": False,
        "model.backbone.frozen_stages": -1, "model.backbone.norm_eval": False,
        "model.fpn.channels": 64, "model.head.feat_channels": 64, "model.head.num_convs": 4,
        "model.head.ctr_channels": 32, "model.head.num_ctr_convs": 1,
        "model.head.gn_groups": 16, "data.max_size": 512, "data.train_short": [288, 384],
        "data.test_short": 352, "data.crop_prob": 0.5, "data.color_jitter": 0.3,
        "data.repeat": 2, "data.batch_size": 8, "optim.name": "adamw", "optim.lr": 0.002,
        "optim.base_batch_size": 8, "optim.weight_decay": 0.05, "optim.warmup_iters": 200,
        "optim.schedule": "cosine", "train.epochs": 12, "test.max_per_img": 300,
        "train.precision": "auto",
        "model.aux.enabled": True, "model.aux.weight": 1.0, "model.assign.soft_t_start": 0.4,
        "model.assign.soft_t_end": 0.1, "model.mask.enabled": False,
        "model.mask.branch_channels": 32, "model.mask.branch_convs": 2,
    },
}


def _get(cfg, dotted: str):
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def test_every_shipped_config_is_pinned():
    assert set(available_configs()) == set(SHIPPED), "pin the new config's recipe numbers here"


@pytest.mark.parametrize("name", [None, *sorted(SHIPPED)])
def test_shipped_config_keeps_its_recipe_numbers(name):
    """None: the defaults of o2f/config.py are the R-50 1x recipe too."""
    cfg = load_config(name)
    expected = COCO_BOX if name is None else SHIPPED[name]
    wrong = {k: (_get(cfg, k), v) for k, v in expected.items() if _get(cfg, k) != v}
    assert not wrong, f"{name}: key: (now, recipe) {wrong}"


@pytest.mark.parametrize("name", ["r50_1x", "r50_3x_ms", "r101_1x", "r101_3x_ms",
                                  "condinst_r50_1x", "condinst_r50_3x_ms"])
def test_sgd_recipes_build_sgd_with_momentum_and_weight_decay(name):
    import torch
    from torch import nn

    from o2f.engine.optim import build_optimizer

    cfg = load_config(name)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    opt = build_optimizer(model, cfg.optim, 16)  # 16 images per step: lr 0.01 unscaled
    assert type(opt) is torch.optim.SGD
    for g in opt.param_groups:
        assert g["momentum"] == 0.9 and g["dampening"] == 0 and not g["nesterov"]
    (conv_group,) = [g for g in opt.param_groups if any(p is model[0].weight
                                                        for p in g["params"])]
    assert conv_group["weight_decay"] == pytest.approx(1e-4)
    assert conv_group["lr"] == pytest.approx(0.01)
    if not name.startswith("condinst"):  # SPEC §6: no weight decay on normalisation layers
        (bn_group,) = [g for g in opt.param_groups if any(p is model[1].weight
                                                          for p in g["params"])]
        assert bn_group["weight_decay"] == 0.0 and bn_group["lr"] == pytest.approx(0.01)
    assert build_optimizer(model, cfg.optim, 8).param_groups[0]["lr"] == pytest.approx(0.005)


def test_crowdhuman_optimiser_schedule_and_model():
    import torch
    from torch import nn

    from o2f.builders import build_detector
    from o2f.engine.optim import LRSchedule, build_optimizer

    cfg = load_config("crowdhuman")
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    opt = build_optimizer(model, cfg.optim, 16)
    assert type(opt) is torch.optim.AdamW
    (conv_group,) = [g for g in opt.param_groups if any(p is model[0].weight
                                                        for p in g["params"])]
    assert conv_group["lr"] == pytest.approx(4e-5) and conv_group["weight_decay"] == 1e-4
    assert conv_group["betas"] == (0.9, 0.999)
    s = LRSchedule(cfg.optim)
    assert s.factor(0, 0) == pytest.approx(0.001) and s.factor(1000, 0) == 1.0
    assert s.factor(10**6, 39) == 1.0  # epoch 40 (1-based)
    assert s.factor(10**6, 40) == pytest.approx(0.1) and s.factor(10**6, 49) == pytest.approx(0.1)
    small = load_config("crowdhuman", ["model.backbone.depth=10",
                                       "model.backbone.pretrained=false"])
    detector = build_detector(small)
    assert detector.head.num_classes == 1 and detector.criterion.topk == 4
    assert (detector.nms_pre, detector.max_per_img, detector.score_thr) == (5000, 500, 0.05)
    assert not detector.nms and detector.criterion.bbox_weight == 2.0


def test_r101_backbone_is_resnet_101():
    from o2f.builders import build_backbone

    backbone = build_backbone(load_config("r101_1x", ["model.backbone.pretrained=false"])
                              .model.backbone)
    assert [len(getattr(backbone, f"layer{i}")) for i in range(1, 5)] == [3, 4, 23, 3]
    assert backbone.out_channels == [512, 1024, 2048]
