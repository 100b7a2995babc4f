"""torchvision ResNet returning C3, C4, C5, with frozen stages and frozen BatchNorm statistics."""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor, nn

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


class ResNetBackbone(nn.Module):
    """ResNet ("pytorch" style: stride in the 3x3 conv) giving C3, C4, C5 (strides 8, 16, 32).

    Args:
        depth: 10 (BasicBlock x [1, 1, 1, 1], random init only), 18, 34, 50 or 101.
        pretrained: load torchvision's IMAGENET1K_V1 weights.
        frozen_stages: -1 freezes nothing, 0 the stem, k >= 1 the stem and layer1..layer_k
            (no gradient, always in eval mode).
        norm_eval: keep every BatchNorm in eval mode in training (running statistics frozen);
            their affine parameters still train outside the frozen stages.
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
        x = self.layer1(self.stem(x))
        c3 = self.layer2(x)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]
