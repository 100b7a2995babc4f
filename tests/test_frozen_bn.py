"""ConvFrozenBN (training with frozen BatchNorm statistics) and fuse_conv_bn (inference)."""

import copy
from collections import Counter

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from o2f.models import ResNetBackbone
from o2f.models.backbone import ConvFrozenBN, conv_frozen_bn
from o2f.models.fuse import for_inference, fuse_conv_bn


def randomise_bn(model: nn.Module, seed: int = 0, gammas=None) -> nn.Module:
    """Random BatchNorm statistics and affine parameters (defaults make every fold trivial)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen))
                m.running_var.copy_(torch.rand(n, generator=gen) * 2 + 0.1)
                m.weight.copy_(torch.randn(n, generator=gen) if gammas is None else gammas(n))
                m.bias.copy_(torch.randn(n, generator=gen) * 0.5)
    return model


def reference(conv, bn, x, relu):
    y = bn(conv(x))
    return torch.relu(y) if relu else y


def test_hand_computed_case():
    """1x1 conv of weight 2 into BN(mean 1, var 3, eps 1, gamma 4, beta 1): y = 4 x - 1;
    dgamma = sum(g * (2 x - 1) / 2), dbeta = sum(g), dW = 2 * sum(g * x), dx = 4 g, and the
    ReLU stops the gradient where 4 x - 1 <= 0."""
    conv = nn.Conv2d(1, 1, 1, bias=False)
    bn = nn.BatchNorm2d(1, eps=1.0).eval()
    with torch.no_grad():
        conv.weight.fill_(2.0)
        bn.running_mean.fill_(1.0)
        bn.running_var.fill_(3.0)
        bn.weight.fill_(4.0)
        bn.bias.fill_(1.0)
    x = torch.tensor([0.0, 0.5, 1.0, 2.0]).view(1, 1, 2, 2).requires_grad_()
    y = conv_frozen_bn(conv, bn, x, relu=True)
    torch.testing.assert_close(y.detach().flatten(), torch.tensor([0.0, 1.0, 3.0, 7.0]))
    y.sum().backward()  # g = 1 where 4 x - 1 > 0 (x = 0.5, 1, 2)
    torch.testing.assert_close(x.grad.flatten(), torch.tensor([0.0, 4.0, 4.0, 4.0]))
    torch.testing.assert_close(bn.bias.grad, torch.tensor([3.0]))
    torch.testing.assert_close(bn.weight.grad, torch.tensor([(0.0 + 1.0 + 3.0) / 2]))
    torch.testing.assert_close(conv.weight.grad.flatten(), torch.tensor([2.0 * 3.5]))


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("layout", ["3x3", "strided_bias_groups"])
def test_gradients_equal_batchnorm_eval_in_float64(relu, layout):
    """Outputs and every gradient equal nn.Conv2d -> nn.BatchNorm2d (eval) [-> ReLU], with
    some gammas exactly 0 or tiny (the method never divides by gamma)."""
    torch.manual_seed(0)
    if layout == "3x3":
        conv = nn.Conv2d(6, 8, 3, padding=1, bias=False)
    else:
        conv = nn.Conv2d(6, 8, 3, stride=2, padding=2, dilation=2, groups=2, bias=True)
    bn = nn.BatchNorm2d(8, eps=1e-5)
    gammas = torch.tensor([0.0, 1e-12, -1e-9, 1.0, -2.0, 0.3, 1e-30, 5.0], dtype=torch.float64)
    randomise_bn(bn, gammas=lambda n: gammas)
    with torch.no_grad():
        bn.bias[:2] = 0.7  # gamma 0 and 1e-12 channels pass the ReLU: their gradients flow
    conv, bn = conv.double(), bn.double().eval()
    lean_conv, lean_bn = copy.deepcopy(conv), copy.deepcopy(bn)
    x = torch.randn(3, 6, 9, 11, dtype=torch.float64)
    x_ref, x_lean = x.clone().requires_grad_(), x.clone().requires_grad_()
    upstream = torch.randn_like(reference(conv, bn, x, relu))
    (reference(conv, bn, x_ref, relu) * upstream).sum().backward()
    y = conv_frozen_bn(lean_conv, lean_bn, x_lean, relu)
    assert y.grad_fn is not None and "ConvFrozenBN" in type(y.grad_fn).__name__
    (y * upstream).sum().backward()
    torch.testing.assert_close(y, reference(conv, bn, x, relu), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x_lean.grad, x_ref.grad, rtol=1e-10, atol=1e-12)
    for a, b in ((lean_conv, conv), (lean_bn, bn)):
        for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=name)
    assert bn.weight.grad[0] != 0  # gamma = 0 still gets its gradient


def test_autograd_gradcheck():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    cb = torch.randn(4, dtype=torch.float64, requires_grad=True)
    gamma = torch.tensor([0.0, 0.5, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
    beta = torch.randn(4, dtype=torch.float64, requires_grad=True)
    mean, var = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5

    def fn(x, w, cb, gamma, beta):
        return ConvFrozenBN.apply(x, w, cb, gamma, beta, mean, var, 1e-5, (1, 1), (1, 1),
                                  (1, 1), 1, False)

    assert torch.autograd.gradcheck(fn, (x, w, cb, gamma, beta))


def graph_nodes(t: torch.Tensor) -> Counter:
    """Counts of the autograd node types behind ``t``."""
    seen, todo, counts = set(), [t.grad_fn], Counter()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        counts[type(node).__name__] += 1
        todo += [n for n, _ in node.next_functions]
    return counts


def backbone_pair(depth: int, frozen_stages: int = 1):
    torch.manual_seed(0)
    lean = randomise_bn(ResNetBackbone(depth, frozen_stages=frozen_stages, norm_eval=True))
    plain = ResNetBackbone(depth, frozen_stages=frozen_stages, norm_eval=False)
    plain.load_state_dict(lean.state_dict())
    plain.train()
    for m in plain.modules():  # plain modules with frozen statistics: the reference
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    return lean.train(), plain


@pytest.mark.parametrize("depth", [18, 50])
def test_backbone_training_matches_plain_batchnorm_in_float64(depth):
    lean, plain = backbone_pair(depth, frozen_stages=0)
    lean.double(), plain.double()
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    outs = [m(x) for m in (lean, plain)]
    assert graph_nodes(outs[0][0])["ConvFrozenBNBackward"] == (9 if depth == 18 else 23)
    assert graph_nodes(outs[1][0])["ConvFrozenBNBackward"] == 0
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    gen = torch.Generator().manual_seed(3)
    for out in outs:
        sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in out
            ).backward()
        gen.manual_seed(3)
    lean_params, plain_params = dict(lean.named_parameters()), dict(plain.named_parameters())
    assert lean_params.keys() == plain_params.keys()
    assert list(lean.state_dict()) == list(plain.state_dict())
    for name, p in lean_params.items():
        q = plain_params[name]
        assert (p.grad is None) == (q.grad is None) == (not p.requires_grad), name
        if p.grad is not None:
            scale = float(q.grad.abs().max())  # deep random nets: compare to the largest
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-10 * scale, msg=name)


def saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd keeps for backward over one forward, other than
    the model's parameters and buffers."""
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    storages: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in own:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    return sum(storages.values())


def test_backbone_saves_no_more_than_frozen_batchnorm():
    """Training with norm_eval keeps what torchvision's FrozenBatchNorm2d model keeps (plus
    nothing per BatchNorm), where nn.BatchNorm2d in eval mode keeps every input of it."""
    lean, plain = backbone_pair(50)
    frozen = ResNetBackbone(50, frozen_stages=1, norm_eval=True)
    frozen.load_state_dict(lean.state_dict())
    for m in list(frozen.modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                fbn = FrozenBatchNorm2d(child.num_features, child.eps)
                fbn.load_state_dict(child.state_dict(), strict=False)
                setattr(m, child_name, fbn)
    frozen.norm_eval = False  # plain forward; FrozenBatchNorm2d has nothing to put in eval
    frozen.train()
    x = torch.randn(1, 3, 128, 160)
    lean_b, plain_b, frozen_b = (saved_bytes(m, x) for m in (lean, plain, frozen))
    assert lean_b <= frozen_b * 1.001 < plain_b * 0.8, (lean_b, frozen_b, plain_b)


def test_cpu_autocast_runs_in_bfloat16_as_accurately_as_plain_autocast():
    """Under autocast the lean path computes in bfloat16 like F.conv2d; its gradients are as
    close to the float32 ones as those of the plain modules under the same autocast."""
    lean, plain = backbone_pair(18, frozen_stages=-1)
    ref = copy.deepcopy(plain)
    x = torch.randn(1, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = [lean(x), plain(x)]
    assert outs[0][-1].dtype == torch.bfloat16
    for out in [*outs, ref(x)]:
        sum(o.float().sum() for o in out).backward()
    for (name, p), q, r in zip(lean.named_parameters(), plain.parameters(), ref.parameters(),
                               strict=True):
        assert p.grad.dtype == torch.float32
        scale = r.grad.abs().max()
        lean_err = float((p.grad - r.grad).abs().max() / scale)
        plain_err = float((q.grad - r.grad).abs().max() / scale)
        assert lean_err <= 3 * max(plain_err, 0.02), (name, lean_err, plain_err)


# --------------------------------------------------------------------------- fuse_conv_bn


def test_fuse_hand_computed_case():
    """conv 1x1 weight 2 -> BN(mean 1, var 3, eps 1, gamma 4, beta 1) is conv weight 4, bias -1."""
    net = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.BatchNorm2d(1, eps=1.0), nn.ReLU())
    with torch.no_grad():
        net[0].weight.fill_(2.0)
        net[1].running_mean.fill_(1.0)
        net[1].running_var.fill_(3.0)
        net[1].weight.fill_(4.0)
        net[1].bias.fill_(1.0)
    fused = fuse_conv_bn(net)
    assert isinstance(fused[1], nn.Identity) and isinstance(net[1], nn.BatchNorm2d)
    assert float(fused[0].weight) == 4.0 and float(fused[0].bias) == -1.0


def test_fused_detector_equals_the_original(tmp_path):
    from o2f.builders import build_detector
    from o2f.config import load_config

    cfg = load_config(None, ["model.backbone.depth=50", "model.backbone.pretrained=false",
                             "model.fpn.channels=32", "model.head.feat_channels=32",
                             "model.head.num_convs=1", "model.head.ctr_channels=16",
                             "model.head.num_ctr_convs=1", "model.head.gn_groups=8"])
    torch.manual_seed(0)
    model = randomise_bn(build_detector(cfg, 3)).eval()
    with torch.no_grad():
        model.head.conv_cls.bias.fill_(-1.0)  # scores above the threshold
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse_conv_bn(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 53
    for k, v in model.state_dict().items():  # the original is untouched
        assert torch.equal(v, state[k]), k
    images = torch.randint(0, 256, (2, 3, 70, 90), dtype=torch.uint8)
    with torch.no_grad():
        batch, _ = model.preprocess(images)
        maps, fused_maps = model.forward_maps(batch), fused.forward_maps(batch)
        for a, b in zip(maps, fused_maps, strict=True):
            for x, y in zip(a, b, strict=True):
                torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-5)
        want, got = model(images), fused(images)
        cl = for_inference(model)  # also channels-last on the CPU
        assert cl.backbone.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
        got_cl = cl(images)
    for w, g, c in zip(want, got, got_cl, strict=True):
        assert len(w["scores"]) > 10
        for out in (g, c):
            torch.testing.assert_close(out["scores"], w["scores"], rtol=0, atol=1e-5)
            assert torch.equal(out["labels"], w["labels"])
            torch.testing.assert_close(out["boxes"], w["boxes"], rtol=0, atol=1e-3)
    fused.train()
    with pytest.raises(RuntimeError, match="cannot be trained"):
        fused(images)
