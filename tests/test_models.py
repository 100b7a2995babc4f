import copy
import math

import pytest
import torch
import torch.nn.functional as F
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
    model = copy.deepcopy(tiny_detector).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a fresh head scores ~0.005 < 0.05: spread, high scores instead
        model.head.conv_cls.weight.copy_(torch.randn(model.head.conv_cls.weight.shape,
                                                     generator=gen) * 0.5)
        model.head.conv_cls.bias.fill_(1.0)
    images = torch.randint(0, 256, (2, 3, 70, 90), dtype=torch.uint8, generator=gen)
    with torch.no_grad():
        dets = model(images)
        scaled = model(images, [{"scale_factor": (0.5, 0.25)}] * 2)
    for d, s in zip(dets, scaled):
        # 96 x 96 padded: 144 + 36 + 9 + 4 + 1 points x 3 classes, most above 0.05: capped
        assert d["boxes"].shape == (100, 4) and d["labels"].shape == d["scores"].shape == (100,)
        assert (d["scores"] > 0.05).all() and (d["scores"].diff() <= 0).all()
        assert (d["boxes"] >= 0).all()
        assert (d["boxes"][:, 2] <= 90).all() and (d["boxes"][:, 3] <= 70).all()
        assert (d["boxes"][:, 2:] >= d["boxes"][:, :2]).all()
        torch.testing.assert_close(s["boxes"], d["boxes"] / torch.tensor([0.5, 0.25, 0.5, 0.25]))
        torch.testing.assert_close(s["scores"], d["scores"])
        assert torch.equal(s["labels"], d["labels"])
    assert set(torch.cat([d["labels"] for d in dets]).tolist()) == {0, 1, 2}


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


def _conv(x, conv, stride=1):
    return F.conv2d(x, conv.weight, conv.bias, stride=stride, padding=conv.padding)


def _tower(x, seq):
    """conv -> GroupNorm -> ReLU blocks of a tower, written out with functional ops."""
    mods = list(seq)
    for conv, gn in zip(mods[0::3], mods[1::3], strict=True):
        x = F.relu(F.group_norm(_conv(x, conv), gn.num_groups, gn.weight, gn.bias, gn.eps))
    return x


def test_head_outputs_by_definition_with_a_scale_per_level():
    """cls = conv_cls(cls tower); ltrb = relu(scale_l * conv_reg(reg tower)) * stride_l;
    centerness = conv_centerness(ctr branch(reg tower)), every weight random and each level's
    scale different (one negative, so relu(s x) and s relu(x) differ)."""
    torch.manual_seed(0)
    head = O2FHead(2, in_channels=8, feat_channels=8, num_convs=2, ctr_channels=4,
                   num_ctr_convs=2, gn_groups=2)
    assert isinstance(head.scales, nn.Parameter) and head.scales.shape == (5,)
    scales = [1.0, 2.0, -0.5, 3.0, 0.25]
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape))
        head.scales.copy_(torch.tensor(scales))
    sizes = [(6, 5), (3, 3), (2, 2), (1, 1), (1, 1)]
    feats = [torch.randn(2, 8, h, w) for h, w in sizes]
    with torch.no_grad():
        cls, reg, ctr = head(feats)
    for level, (x, stride) in enumerate(zip(feats, (8, 16, 32, 64, 128), strict=True)):
        reg_feat = _tower(x, head.reg_convs)
        want_cls = _conv(_tower(x, head.cls_convs), head.conv_cls)
        want_reg = F.relu(scales[level] * _conv(reg_feat, head.conv_reg)) * stride
        want_ctr = _conv(_tower(reg_feat, head.ctr_convs), head.conv_centerness)
        torch.testing.assert_close(cls[level], want_cls)
        torch.testing.assert_close(reg[level], want_reg)
        torch.testing.assert_close(ctr[level], want_ctr)
        assert reg[level].shape == (2, 4, *sizes[level]) and ctr[level].shape[1] == 1
    assert reg[2].abs().sum() > 0 and (reg[2] >= 0).all()  # the negative scale: relu after it


def _nearest(x, size):
    """Nearest resize as PyTorch's 'nearest': output row i reads input row floor(i * in / out)."""
    h, w = x.shape[-2:]
    rows = [i * h // size[0] for i in range(size[0])]
    cols = [j * w // size[1] for j in range(size[1])]
    return x[..., rows, :][..., cols]


def test_fpn_by_definition_on_odd_sizes():
    """Laterals 1x1, top-down: each merged map plus the nearest resize of the merged map above
    to its exact size; 3x3 outputs; P6 = conv/s2(P5 output), P7 = conv/s2(relu(P6))."""
    torch.manual_seed(0)
    fpn = FPN([4, 6, 8], 5)
    with torch.no_grad():
        for m in fpn.modules():
            if isinstance(m, nn.Conv2d):
                m.bias.copy_(torch.randn(m.bias.shape))
    c3, c4, c5 = torch.randn(1, 4, 13, 10), torch.randn(1, 6, 7, 5), torch.randn(1, 8, 4, 3)
    with torch.no_grad():
        outs = fpn([c3, c4, c5])
    lat3, lat4, lat5 = (_conv(c, m) for c, m in zip((c3, c4, c5), fpn.lateral_convs,
                                                    strict=True))
    m5 = lat5
    m4 = lat4 + _nearest(m5, (7, 5))
    m3 = lat3 + _nearest(m4, (13, 10))
    p3, p4, p5 = (_conv(m, conv) for m, conv in zip((m3, m4, m5), fpn.output_convs,
                                                    strict=True))
    p6 = _conv(p5, fpn.extra_convs[0], stride=2)
    p7 = _conv(F.relu(p6), fpn.extra_convs[1], stride=2)
    assert [tuple(o.shape[-2:]) for o in outs] == [(13, 10), (7, 5), (4, 3), (2, 2), (1, 1)]
    for got, want in zip(outs, (p3, p4, p5, p6, p7), strict=True):
        torch.testing.assert_close(got, want)
    assert (p6 < 0).any()  # so the relu before P7 matters


def test_initialisation_of_fpn_and_head_at_the_recipe_size():
    """FPN convs Xavier-uniform, bias 0; head convs Normal(0, 0.01), bias 0, except conv_cls's
    bias -log((1 - 0.01) / 0.01); scales 1 (SPEC §1)."""
    torch.manual_seed(0)
    fpn = FPN([512, 1024, 2048], 256)
    for name, m in fpn.named_modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            bound = math.sqrt(6 / (fan_in + fan_out))
            assert m.weight.abs().max() <= bound, name
            assert abs(m.weight.std().item() - bound / math.sqrt(3)) < 0.05 * bound, name
            assert m.bias.abs().sum() == 0, name
    head = O2FHead(80)
    convs = {n: m for n, m in head.named_modules() if isinstance(m, nn.Conv2d)}
    assert len(convs) == 4 + 4 + 3 + 3
    for name, m in convs.items():
        assert abs(m.weight.mean().item()) < 1e-3, name
        assert abs(m.weight.std().item() - 0.01) < 0.001, name
        if name != "conv_cls":
            assert m.bias.abs().sum() == 0, name
    torch.testing.assert_close(head.conv_cls.bias, torch.full((80,), -math.log(0.99 / 0.01)))
    assert head.scales.tolist() == [1.0] * 5
