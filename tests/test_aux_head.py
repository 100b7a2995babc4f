"""The training-only one-to-many head (model.aux): losses, weights, and no effect at test."""

import pytest
import torch

from o2f.builders import build_detector
from o2f.config import ConfigError, load_config


def _cfg(*extra):
    # small has the aux head on; each test says whether it wants it
    return load_config("small", ["model.backbone.depth=10", "model.fpn.channels=32",
                                 "model.head.feat_channels=32", "model.aux.enabled=false",
                                 *extra])


def _batch():
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 96, 128), generator=g, dtype=torch.uint8)
              for _ in range(2)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [70.0, 5.0, 120.0, 40.0]]),
                "labels": torch.tensor([0, 2])},
               {"boxes": torch.tensor([[30.0, 30.0, 90.0, 90.0]]), "labels": torch.tensor([1])}]
    return images, targets


def _model(*extra, seed=0):
    torch.manual_seed(seed)
    return build_detector(_cfg(*extra), num_classes=3).train()


def test_aux_losses_are_the_fcos_criterion_on_the_aux_maps_times_the_weight():
    images, targets = _batch()
    plain = _model()(images, targets)
    model = _model("model.aux.enabled=true", "model.aux.weight=0.5")
    losses = model(images, targets)
    assert set(losses) == {"loss_cls", "loss_bbox", "loss_aux_cls", "loss_aux_bbox",
                           "loss_aux_ctr"}
    # The one-to-few losses are those of the model without the aux outputs (same weights).
    assert losses["loss_cls"].item() == pytest.approx(plain["loss_cls"].item(), rel=1e-6)
    assert losses["loss_bbox"].item() == pytest.approx(plain["loss_bbox"].item(), rel=1e-6)
    # The aux losses are FCOSCriterion on the aux maps, times model.aux.weight.
    with torch.no_grad():
        batch, _ = model.preprocess(images)
        feats = model.neck(model.backbone(batch))
        points, strides, grids = model.level_points(model.head(feats)[0])
        ref = model.aux_criterion(*model._flat(*model.aux_head(feats), points, strides, grids),
                                  targets)
    for k in ("cls", "bbox", "ctr"):
        assert losses[f"loss_aux_{k}"].item() == pytest.approx(0.5 * ref[f"loss_{k}"].item(),
                                                               rel=1e-5)
        assert ref[f"loss_{k}"].item() > 0


def test_aux_head_trains_backbone_and_fpn_but_not_the_one_to_few_head():
    images, targets = _batch()
    model = _model("model.aux.enabled=true")
    losses = model(images, targets)
    aux = sum(v for k, v in losses.items() if k.startswith("loss_aux_"))
    aux.backward()
    assert model.aux_head.conv_cls.weight.grad.abs().sum() > 0
    assert model.aux_head.cls_convs[0].weight.grad.abs().sum() > 0
    assert model.neck.lateral_convs[0].weight.grad.abs().sum() > 0
    assert model.backbone.stem[0].weight.grad.abs().sum() > 0
    # The one-to-few head has towers of its own: no gradient from the one-to-many losses.
    assert all(p.grad is None for p in model.head.parameters())


def test_inference_ignores_the_aux_outputs():
    images, _ = _batch()
    plain = _model(seed=1).eval()
    model = _model("model.aux.enabled=true", seed=1).eval()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("aux_head.")}
    plain.load_state_dict(state)
    plain.score_thr = model.score_thr = 0.0  # every candidate, so the comparison is not empty
    a, b = plain(images), model(images)
    assert len(a[0]["scores"]) == plain.max_per_img == 300
    for x, y in zip(a, b):
        assert torch.equal(x["boxes"], y["boxes"]) and torch.equal(x["scores"], y["scores"])


def test_aux_config_errors():
    with pytest.raises(ConfigError, match="model.aux.weight"):
        _cfg("model.aux.weight=-1")


def test_aux_head_trains_alongside_the_mask_losses():
    images, targets = _batch()
    for t in targets:
        t["masks"] = torch.zeros((len(t["boxes"]), 96, 128), dtype=torch.uint8)
        for i, (x1, y1, x2, y2) in enumerate(t["boxes"].int().tolist()):
            t["masks"][i, y1:y2, x1:x2] = 1
    model = _model("model.aux.enabled=true", "model.mask.enabled=true",
                   "model.mask.branch_channels=16", "model.mask.branch_convs=1")
    losses = model(images, targets)
    assert {"loss_mask", "loss_aux_cls", "loss_aux_bbox", "loss_cls"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
