"""torchvision Swin-T returning the stage outputs at strides 8, 16, 32 for the FPN.

It follows MMDetection's ``SwinTransformer`` as the O2F authors' Swin configs use it
(``frozen_stages=1``, ``drop_path_rate=0.2``, the FPN on stages 2..4):

- layout of torchvision's ``features`` (names kept, so torchvision weights load unchanged)::

      features[0]  patch embedding (conv 4x4/4 + LayerNorm)   stride 4,   96 ch
      features[1]  stage 1 (2 blocks)                          stride 4,   96 ch
      features[2]  patch merging                               stride 8,  192 ch
      features[3]  stage 2 (2 blocks)  -> C3                   stride 8,  192 ch
      features[4]  patch merging                               stride 16, 384 ch
      features[5]  stage 3 (6 blocks)  -> C4                   stride 16, 384 ch
      features[6]  patch merging                               stride 32, 768 ch
      features[7]  stage 4 (2 blocks)  -> C5                   stride 32, 768 ch

- each returned stage goes through its own new LayerNorm (``out_norms``, weight 1, bias 0), as
  MMDetection's ``norm{i}`` per output index; the classifier's final ``norm`` and ``head`` are
  dropped.
- ``frozen_stages=k`` freezes ``features[0 : 2k + 1]``: the patch embedding and stages 1..k,
  each with the patch merging that follows it (MMDetection counts that merging as part of the
  stage), plus the output norms of those stages. Frozen parts have no gradient and stay in eval
  mode (no stochastic depth there).
- sizes: the input is padded right/bottom with zeros to a multiple of the patch size (4);
  every block pads its map to a multiple of the window (7) and crops back (torchvision's
  ``shifted_window_attention``), and every patch merging pads an odd side by one. An input of
  H x W thus gives maps of ceil(H / s) x ceil(W / s) for s = 8, 16, 32 (MMDetection's
  ``padding='corner'`` behaviour). The detector pads its input to a multiple of 32 anyway.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.swin_transformer import SwinTransformer

from o2f.models.backbone import PretrainedWeightsUnavailable

# The Swin-T architecture (torchvision's ``swin_t``); ``stochastic_depth_prob`` is set apart.
_SWIN_T = dict(patch_size=[4, 4], embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
               window_size=[7, 7])
_OUT_FEATURES = (3, 5, 7)  # indices in ``features`` of stages 2, 3, 4 (strides 8, 16, 32)


def _build_swin_t(pretrained: bool, drop_path: float) -> SwinTransformer:
    net = SwinTransformer(**_SWIN_T, stochastic_depth_prob=drop_path)
    if not pretrained:
        return net
    weights = torchvision.models.Swin_T_Weights.IMAGENET1K_V1
    try:
        state = weights.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a bad file a RuntimeError
        raise PretrainedWeightsUnavailable(
            f"could not load the ImageNet weights Swin_T_Weights.IMAGENET1K_V1 ({err}). "
            f"Either put the file {weights.url.rsplit('/', 1)[-1]} in "
            f"{torch.hub.get_dir()}/checkpoints/ (from {weights.url}), "
            "or train from scratch with model.backbone.pretrained=false "
            "model.backbone.frozen_stages=-1"
        ) from err
    net.load_state_dict(state)
    return net


class SwinBackbone(nn.Module):
    """Swin-T giving C3, C4, C5 (strides 8, 16, 32; 192, 384, 768 channels).

    Args:
        pretrained: load torchvision's ``Swin_T_Weights.IMAGENET1K_V1``.
        frozen_stages: -1 freezes nothing, 0 the patch embedding, k >= 1 the patch embedding
            and stages 1..k with their patch mergings (see the module docstring).
        drop_path: stochastic depth rate, rising linearly from 0 at the first block to this
            value at the last of the 12 blocks.
    """

    patch_size = 4

    def __init__(
        self, pretrained: bool = False, frozen_stages: int = 1, drop_path: float = 0.2
    ) -> None:
        super().__init__()
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"model.backbone.frozen_stages={frozen_stages} must be in -1..4")
        self.features = _build_swin_t(pretrained, drop_path).features
        self.out_channels = [_SWIN_T["embed_dim"] * 2**i for i in (1, 2, 3)]
        self.out_norms = nn.ModuleList(nn.LayerNorm(c) for c in self.out_channels)
        self.frozen_stages = frozen_stages
        for module in self._frozen():
            for p in module.parameters():
                p.requires_grad_(False)

    classifier_prefixes = ("norm.", "head.")  # torchvision keys not used by the backbone

    @staticmethod
    def torchvision_key(key: str) -> str | None:
        """torchvision Swin-T's name of a state-dict key (None: the new output norms)."""
        return None if key.startswith("out_norms.") else key

    def _frozen(self) -> list[nn.Module]:
        k = self.frozen_stages
        if k < 0:
            return []
        # out_norms[j] belongs to stage j + 2
        return [*self.features[: 2 * k + 1], *self.out_norms[: max(0, k - 1)]]

    def train(self, mode: bool = True) -> SwinBackbone:
        super().train(mode)
        if mode:
            for module in self._frozen():
                module.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        """x (B, 3, H, W) -> [C3 (B, 192, ceil(H/8), ceil(W/8)), C4 (B, 384, ceil(H/16), ..),
        C5 (B, 768, ceil(H/32), ..)], channels first."""
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (-w) % self.patch_size, 0, (-h) % self.patch_size))
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)  # (B, H_i, W_i, C_i): torchvision's blocks are channels last
            if i in _OUT_FEATURES:
                norm = self.out_norms[_OUT_FEATURES.index(i)]
                outs.append(norm(x).permute(0, 3, 1, 2).contiguous())
        return outs
