"""torchvision ResNet returning C3, C4, C5, with frozen stages and frozen BatchNorm statistics.

With frozen statistics (``norm_eval``) a BatchNorm is the per-channel affine map
y = gamma * (x - mean) / sqrt(var + eps) + beta whose gamma and beta still train. ``nn.BatchNorm2d``
then keeps its input x (every convolution output of layer2..layer4) for the gradient of gamma,
which made training take 1.46x the memory of torchvision's FrozenBatchNorm2d model. In training
with ``norm_eval`` the backbone therefore runs each conv -> BatchNorm (-> ReLU) as one autograd
function (:class:`ConvFrozenBN`) that saves only what the convolution and the ReLU keep anyway:

- forward: one convolution with the folded weight W * a and bias beta - mean * a, where
  a = gamma / sqrt(var + eps) (no separate BatchNorm pass);
- backward: g = dL/dy (masked by the ReLU's output where there is one) gives, from one
  ``convolution_backward`` with the folded weight, the input gradient and G = the weight
  gradient of the *unfolded* convolution for output gradient g. Then dL/dW = a * G,
  dL/dbeta = sum(g) and, since a convolution without bias is linear in W, the sum over
  positions of g * conv(x, W) is <W, G> per channel, so
  dL/dgamma = sum(g * (conv(x, W) - mean)) / sqrt(var + eps)
            = (<W, G> - mean * sum(g)) / sqrt(var + eps)   (plus bias * sum(g) with a conv bias).

This is exact (the same gradients as nn.Conv2d + nn.BatchNorm2d in eval mode + ReLU, up to float
rounding) and never divides by gamma, so it holds for any gamma including 0. Parameters and
state_dict keys are the torchvision ones. In eval mode, or without ``norm_eval``, the plain
modules run.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

_RESNETS = {
    10: ("resnet10", None),  # BasicBlock x [1, 1, 1, 1]: a light CPU variant, no ImageNet weights
    18: ("resnet18", "ResNet18_Weights"),
    34: ("resnet34", "ResNet34_Weights"),
    50: ("resnet50", "ResNet50_Weights"),
    101: ("resnet101", "ResNet101_Weights"),
}


class PretrainedWeightsUnavailable(RuntimeError):
    """The ImageNet weights could not be downloaded or read."""


def _build_resnet(depth: int, pretrained: bool) -> nn.Module:
    if depth not in _RESNETS:
        raise ValueError(f"model.backbone.depth={depth} is not one of {sorted(_RESNETS)}")
    fn_name, weights_name = _RESNETS[depth]
    if weights_name is None:
        if pretrained:
            raise ValueError(f"model.backbone.depth={depth} has no ImageNet weights; set "
                             "model.backbone.pretrained=false")
        return torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1] * 4)
    weights = getattr(torchvision.models, weights_name).IMAGENET1K_V1 if pretrained else None
    try:
        return getattr(torchvision.models, fn_name)(weights=weights)
    except (OSError, RuntimeError) as err:  # URLError is an OSError
        raise PretrainedWeightsUnavailable(
            f"could not load the ImageNet weights {weights_name}.IMAGENET1K_V1 ({err}). "
            f"Either put the file {weights.url.rsplit('/', 1)[-1]} in "
            f"{torch.hub.get_dir()}/checkpoints/ (from {weights.url}), "
            "or train from scratch with model.backbone.pretrained=false "
            "model.backbone.frozen_stages=-1 model.backbone.norm_eval=false"
        ) from err


class ConvFrozenBN(torch.autograd.Function):
    """conv2d -> BatchNorm with frozen statistics (affine trainable) -> optional ReLU, saving
    only the convolution's input and, with the ReLU, its output (see the module doc).

    ``apply(x, weight, conv_bias, bn_weight, bn_bias, running_mean, running_var, eps, stride,
    padding, dilation, groups, relu)``: x (B, C_in, H, W), weight (C_out, C_in / groups, kh,
    kw), conv_bias / bn_weight / bn_bias / running_mean / running_var (C_out,) (conv_bias may
    be None) -> (B, C_out, H', W'). Under autocast the convolution runs in the autocast dtype,
    as ``F.conv2d`` would.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, conv_bias: Tensor | None, bn_weight: Tensor,
                bn_bias: Tensor, mean: Tensor, var: Tensor, eps: float, stride, padding,
                dilation, groups: int, relu: bool) -> Tensor:
        inv_std = torch.rsqrt(var + eps)
        scale = bn_weight * inv_std
        shift = bn_bias - mean * scale
        if conv_bias is not None:
            shift = shift + conv_bias * scale
        folded = weight * scale.view(-1, 1, 1, 1)
        device = x.device.type
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            x, folded, shift = x.to(dtype), folded.to(dtype), shift.to(dtype)
        with torch.autocast(device, enabled=False):
            y = F.conv2d(x, folded, shift, stride, padding, dilation, groups)
        if relu:
            y = y.relu_()
        ctx.conv = (stride, padding, dilation, groups, eps)
        ctx.has_conv_bias = conv_bias is not None
        # only tensors that exist anyway: no per-layer memory beyond the conv's own input
        ctx.save_for_backward(x, weight, conv_bias, bn_weight, mean, var, y if relu else None)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, conv_bias, bn_weight, mean, var, y = ctx.saved_tensors
        stride, padding, dilation, groups, eps = ctx.conv
        inv_std = torch.rsqrt(var + eps)
        scale = bn_weight * inv_std
        if y is not None:  # ReLU: the gradient passes where the output is positive
            grad = torch.ops.aten.threshold_backward(grad, y, 0)
        need_x, need_w, need_cb, need_g, need_b = ctx.needs_input_grad[:5]
        g_w = g_cb = g_gamma = g_beta = None
        acc = torch.promote_types(scale.dtype, torch.float32)  # accumulate in >= float32
        folded = (weight * scale.view(-1, 1, 1, 1)).to(x.dtype)
        g_x, unfolded_w_grad, _ = torch.ops.aten.convolution_backward(
            grad, x, folded, None, stride, padding, dilation, False, [0, 0], groups,
            [need_x, need_w or need_g, False])
        if need_cb or need_g or need_b:
            grad_sum = grad.sum((0, 2, 3), dtype=acc)
        if need_w:
            g_w = (unfolded_w_grad.to(acc) * scale.view(-1, 1, 1, 1)).to(weight.dtype)
        if need_g:
            dot = (weight.to(acc) * unfolded_w_grad.to(acc)).sum((1, 2, 3))
            if ctx.has_conv_bias:
                dot = dot + conv_bias.to(acc) * grad_sum
            g_gamma = ((dot - mean * grad_sum) * inv_std).to(scale.dtype)
        if need_b:
            g_beta = grad_sum.to(scale.dtype)
        if need_cb:
            g_cb = (grad_sum * scale).to(conv_bias.dtype)
        return (g_x, g_w, g_cb, g_gamma, g_beta) + (None,) * 8


def _frozen_bn_fusable(conv: nn.Module, bn: nn.Module) -> bool:
    """conv -> bn can run as :class:`ConvFrozenBN` (bn uses its running statistics)."""
    return (type(conv) is nn.Conv2d and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str) and isinstance(bn, nn.BatchNorm2d)
            and not bn.training and bn.affine and bn.running_mean is not None)


def conv_frozen_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: Tensor, relu: bool) -> Tensor:
    """``relu(bn(conv(x)))`` (or ``bn(conv(x))``) for a BatchNorm in eval mode, through
    :class:`ConvFrozenBN`; the plain modules when it does not apply."""
    if not _frozen_bn_fusable(conv, bn):
        y = bn(conv(x))
        return F.relu(y) if relu else y
    return ConvFrozenBN.apply(x, conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean,
                              bn.running_var, bn.eps, conv.stride, conv.padding, conv.dilation,
                              conv.groups, relu)


def _lean_block(block: nn.Module, x: Tensor) -> Tensor:
    """A torchvision BasicBlock / Bottleneck (any other module: its own forward) with every
    conv -> BatchNorm through :func:`conv_frozen_bn`."""
    if type(block) is Bottleneck:
        out = conv_frozen_bn(block.conv1, block.bn1, x, relu=True)
        out = conv_frozen_bn(block.conv2, block.bn2, out, relu=True)
        out = conv_frozen_bn(block.conv3, block.bn3, out, relu=False)
    elif type(block) is BasicBlock:
        out = conv_frozen_bn(block.conv1, block.bn1, x, relu=True)
        out = conv_frozen_bn(block.conv2, block.bn2, out, relu=False)
    else:
        return block(x)
    identity = x
    down = block.downsample
    if down is not None:
        if isinstance(down, nn.Sequential) and len(down) == 2:
            identity = conv_frozen_bn(down[0], down[1], x, relu=False)
        else:
            identity = down(x)
    out += identity
    return F.relu(out, inplace=True)


def load_torchvision_weights(backbone: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Copy a torchvision classifier's state dict (e.g. ``resnet50().state_dict()``) into
    ``backbone``, which maps its own keys to torchvision's with ``torchvision_key`` (None: a
    layer of its own, not in the file) and names the classifier keys to ignore in
    ``classifier_prefixes``. A missing ``num_batches_tracked`` keeps the backbone's.

    Raises:
        ValueError: missing, unexpected or mis-shaped keys; one line naming the first ones
            (torchvision's names).
    """
    own = backbone.state_dict()
    wanted = {name: key for key in own if (name := backbone.torchvision_key(key)) is not None}
    given = {k: v for k, v in state.items()
             if not k.startswith(backbone.classifier_prefixes)}
    missing = [k for k in wanted if k not in given and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in given if k not in wanted]
    shapes = [f"{k} {tuple(v.shape)} (expected {tuple(own[wanted[k]].shape)})"
              for k, v in given.items() if k in wanted and v.shape != own[wanted[k]].shape]
    problems = [f"{what} ({len(keys)}): {', '.join(keys[:5])}" for what, keys in
                (("unexpected keys", unexpected), ("missing keys", missing),
                 ("shape mismatches", shapes)) if keys]
    if problems:
        raise ValueError("; ".join(problems))
    backbone.load_state_dict({**own, **{wanted[k]: v for k, v in given.items()}})


class ResNetBackbone(nn.Module):
    """ResNet ("pytorch" style: stride in the 3x3 conv) giving C3, C4, C5 (strides 8, 16, 32).

    Args:
        depth: 10 (BasicBlock x [1, 1, 1, 1], random init only), 18, 34, 50 or 101.
        pretrained: load torchvision's IMAGENET1K_V1 weights.
        frozen_stages: -1 freezes nothing, 0 the stem, k >= 1 the stem and layer1..layer_k
            (no gradient, always in eval mode).
        norm_eval: keep every BatchNorm in eval mode in training (running statistics frozen);
            their affine parameters still train outside the frozen stages. Training then runs
            each conv -> BatchNorm (-> ReLU) as one :class:`ConvFrozenBN` (module doc).
    """

    def __init__(
        self, depth: int = 50, pretrained: bool = False, frozen_stages: int = 1,
        norm_eval: bool = True,
    ) -> None:
        super().__init__()
        net = _build_resnet(depth, pretrained)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2 = net.layer1, net.layer2
        self.layer3, self.layer4 = net.layer3, net.layer4
        expansion = 4 if depth >= 50 else 1
        self.out_channels = [128 * expansion, 256 * expansion, 512 * expansion]
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        for stage in self._frozen():
            for p in stage.parameters():
                p.requires_grad_(False)

    classifier_prefixes = ("fc.",)  # torchvision keys not used by the backbone

    @staticmethod
    def torchvision_key(key: str) -> str:
        """torchvision ResNet's name of a state-dict key (the stem is conv1, bn1)."""
        for own, theirs in (("stem.0.", "conv1."), ("stem.1.", "bn1.")):
            if key.startswith(own):
                return theirs + key[len(own):]
        return key

    def _frozen(self) -> list[nn.Module]:
        stages = [self.stem, self.layer1, self.layer2, self.layer3, self.layer4]
        return stages[: self.frozen_stages + 1] if self.frozen_stages >= 0 else []

    def train(self, mode: bool = True) -> ResNetBackbone:
        super().train(mode)
        if mode:
            for stage in self._frozen():
                stage.eval()
            if self.norm_eval:
                for m in self.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        """x (B, 3, H, W) -> [C3 (B, c3, H/8, W/8), C4 (.., H/16, ..), C5 (.., H/32, ..)]."""
        if not (self.training and self.norm_eval):
            x = self.layer1(self.stem(x))
            c3 = self.layer2(x)
            c4 = self.layer3(c3)
            c5 = self.layer4(c4)
            return [c3, c4, c5]
        conv, bn, _, pool = self.stem
        x = pool(conv_frozen_bn(conv, bn, x, relu=True))
        feats = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                x = _lean_block(block, x)
            feats.append(x)
        return feats[1:]
