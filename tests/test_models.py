import math

import pytest
import torch
from torch import nn

from o2f.builders import build_detector
from o2f.config import load_config
from o2f.models import FPN, O2FHead, ResNetBackbone


def conv(cin, cout, k, bias=True):
    return cin * cout * k * k + (cout if bias else 0)


def bn_or_gn(c):
    return 2 * c


def resnet50_without_fc() -> int:
    """ResNet-50 from its definition: stem, 3-4-6-3 bottlenecks of widths 64..512, expansion 4."""
    total = conv(3, 64, 7, bias=False) + bn_or_gn(64)
    cin = 64
    for width, blocks in zip([64, 128, 256, 512], [3, 4, 6, 3]):
        for b in range(blocks):
            total += conv(cin, width, 1, False) + bn_or_gn(width)
            total += conv(width, width, 3, False) + bn_or_gn(width)
            total += conv(width, 4 * width, 1, False) + bn_or_gn(4 * width)
            if b == 0:  # projection shortcut
                total += conv(cin, 4 * width, 1, False) + bn_or_gn(4 * width)
            cin = 4 * width
    return total


def o2f_neck_and_head(num_classes=80) -> int:
    fpn = sum(conv(c, 256, 1) for c in (512, 1024, 2048)) + 3 * conv(256, 256, 3)
    fpn += 2 * conv(256, 256, 3)  # P6, P7
    tower = 4 * (conv(256, 256, 3) + bn_or_gn(256))
    ctr = conv(256, 64, 3) + bn_or_gn(64) + 2 * (conv(64, 64, 3) + bn_or_gn(64))
    outputs = conv(256, num_classes, 3) + conv(256, 4, 3) + conv(64, 1, 3)
    return fpn + 2 * tower + ctr + outputs + 5  # 5 per-level scales


def test_r50_recipe_parameter_count_matches_the_published_architecture():
    assert resnet50_without_fc() == 25_557_032 - (2048 * 1000 + 1000)  # torchvision's count
    cfg = load_config("r50_1x", ["model.backbone.pretrained=false"])
    model = build_detector(cfg, num_classes=80)
    assert sum(p.numel() for p in model.parameters()) == resnet50_without_fc() + o2f_neck_and_head()


def test_backbone_freezing_and_norm_eval():
    bb = ResNetBackbone(depth=18, frozen_stages=1, norm_eval=True).train()
    assert not any(p.requires_grad for p in bb.stem.parameters())
    assert not any(p.requires_grad for p in bb.layer1.parameters())
    assert all(p.requires_grad for p in bb.layer2.parameters())  # BN affine still trains
    assert all(not m.training for m in bb.modules() if isinstance(m, nn.BatchNorm2d))
    free = ResNetBackbone(depth=18, frozen_stages=-1, norm_eval=False).train()
    assert all(p.requires_grad for p in free.parameters())
    assert all(m.training for m in free.modules() if isinstance(m, nn.BatchNorm2d))
    before = bb.layer2[0].bn1.running_mean.clone()
    bb(torch.randn(2, 3, 64, 64))
    assert torch.equal(before, bb.layer2[0].bn1.running_mean)


def test_backbone_fpn_shapes_on_odd_sizes():
    bb = ResNetBackbone(depth=18)
    fpn = FPN(bb.out_channels, 32)
    feats = bb(torch.randn(1, 3, 100, 76))
    assert [f.shape[1] for f in feats] == [128, 256, 512]
    outs = fpn(feats)
    assert [tuple(o.shape[-2:]) for o in outs] == [(13, 10), (7, 5), (4, 3), (2, 2), (1, 1)]
    assert all(o.shape[1] == 32 for o in outs)


def test_fpn_extra_levels_come_from_the_p5_output():
    fpn = FPN([8, 8, 8], 8)
    feats = [torch.randn(1, 8, 16, 16), torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4)]
    outs = fpn(feats)
    p6 = fpn.extra_convs[0](outs[2])
    torch.testing.assert_close(outs[3], p6)
    torch.testing.assert_close(outs[4], fpn.extra_convs[1](torch.relu(p6)))


def test_head_initialisation_and_regression_output():
    head = O2FHead(3, in_channels=32, feat_channels=32, num_convs=2, ctr_channels=32,
                   num_ctr_convs=1, gn_groups=8)
    assert head.conv_cls.bias.allclose(torch.full((3,), -math.log(99)))
    assert head.conv_reg.bias.abs().sum() == 0 and head.scales.tolist() == [1.0] * 5
    assert abs(head.conv_reg.weight.std().item() - 0.01) < 0.002
    feats = [torch.randn(2, 32, s, s) for s in (8, 4, 2, 1, 1)]
    cls, reg, ctr = head(feats)
    assert [c.shape for c in cls][0] == (2, 3, 8, 8) and ctr[0].shape == (2, 1, 8, 8)
    assert all((r >= 0).all() for r in reg)
    with torch.no_grad():
        head.scales[1] = 2.0
        raw = head.conv_reg(head.reg_convs(feats[1]))
        reg = head(feats)[1]
    torch.testing.assert_close(reg[1], torch.relu(2.0 * raw) * 16)


@pytest.fixture(scope="module")
def tiny_detector():
    cfg = load_config(None, [
        "model.backbone.depth=18", "model.backbone.pretrained=false",
        "model.backbone.frozen_stages=-1", "model.backbone.norm_eval=false",
        "model.fpn.channels=32", "model.head.feat_channels=32", "model.head.num_convs=1",
        "model.head.ctr_channels=16", "model.head.num_ctr_convs=1", "model.head.gn_groups=8",
    ])
    return build_detector(cfg, num_classes=3)


def test_detector_training_losses_and_gradients(tiny_detector):
    model = tiny_detector.train()
    images = [torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8),
              torch.randint(0, 256, (3, 64, 100), dtype=torch.uint8)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 70.0], [50.0, 20.0, 120.0, 90.0]]),
                "labels": torch.tensor([0, 2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    losses = model(images, targets)
    assert set(losses) == {"loss_cls", "loss_bbox"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    head = model.head
    for p in (head.conv_cls.weight, head.conv_reg.weight, head.conv_centerness.weight,
              model.backbone.stem[0].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    model.zero_grad()


def test_detector_without_any_gt_has_zero_box_loss_in_the_graph(tiny_detector):
    model = tiny_detector.train()
    images = [torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)]
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    losses = model(images, targets)
    assert losses["loss_bbox"].item() == 0 and losses["loss_bbox"].requires_grad
    sum(losses.values()).backward()
    model.zero_grad()


def test_detector_eval_returns_sorted_rescaled_detections(tiny_detector):
    model = tiny_detector.eval()
    images = torch.randint(0, 256, (2, 3, 70, 90), dtype=torch.uint8)
    with torch.no_grad():
        dets = model(images)
        scaled = model(images, [{"scale_factor": (0.5, 0.25)}] * 2)
    for d, s in zip(dets, scaled):
        assert d["boxes"].shape[1] == 4 and len(d["boxes"]) <= 100
        assert (d["scores"] > 0.05).all() and (d["scores"].diff() <= 0).all()
        assert (d["boxes"][:, 2] <= 90).all() and (d["boxes"][:, 3] <= 70).all()
        torch.testing.assert_close(s["boxes"], d["boxes"] / torch.tensor([0.5, 0.25, 0.5, 0.25]))


def test_preprocess_normalises_then_pads_with_zeros(tiny_detector):
    img = torch.full((3, 40, 50), 200, dtype=torch.uint8)
    batch, sizes = tiny_detector.preprocess([img])
    assert batch.shape == (1, 3, 64, 64) and sizes.tolist() == [[40, 50]]
    mean = torch.tensor([123.675, 116.28, 103.53])
    std = torch.tensor([58.395, 57.12, 57.375])
    torch.testing.assert_close(batch[0, :, 0, 0], (200 - mean) / std)
    assert batch[0, :, 40:].abs().sum() == 0 and batch[0, :, :, 50:].abs().sum() == 0
    same, _ = tiny_detector.preprocess(img[None])
    torch.testing.assert_close(same, batch)
