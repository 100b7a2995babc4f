"""Models, inputs and step functions shared by the benchmarks (ours and torchvision's FCOS).

Fairness choices (see benchmarks/README.md):
- Both detectors have C = 80 classes and random weights; nothing is downloaded.
- Images are already at the test / train size (800x1333 for R-50), so neither model resizes
  anything substantial (torchvision's transform still runs its bilinear resize at scale 1.0,
  about 0.2% of its forward); both pad to 800x1344.
- Training R-50: ours is the recipe (stem + layer1 frozen, BatchNorm statistics frozen, BN affine
  trainable). torchvision's FCOS is built the way ``fcos_resnet50_fpn`` builds it for training
  from an ImageNet backbone (FrozenBatchNorm2d, 3 trainable stages), without the download.
  Inference R-50 uses ``fcos_resnet50_fpn(weights=None, weights_backbone=None)`` as is (eval BN).
- Small config: ours is the ``demo`` config (a ResNet-10 or -18, 64-channel FPN / towers, 2
  convs per tower); torchvision's FCOS gets the same ResNet (trainable BatchNorm, every stage
  trainable), a 64-channel FPN with P6/P7 from P5 and ``FCOSHead(64, 1, C, num_convs=2)``.
- Same optimiser on both sides (SGD momentum 0.9, wd 1e-4 for R-50; AdamW for the demo config,
  as its recipe says), same images, same targets.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
from torchvision.models.detection.fcos import FCOSHead
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from o2f.builders import build_detector
from o2f.config import Config, load_config
from o2f.models.fuse import for_inference

NUM_CLASSES = 80
SMALL_OVERRIDES = [
    "model.backbone.depth=18", "model.backbone.pretrained=false",
    "model.backbone.frozen_stages=-1", "model.backbone.norm_eval=false", "model.fpn.channels=64",
    "model.head.feat_channels=64", "model.head.num_convs=2", "model.head.ctr_channels=32",
    "model.head.num_ctr_convs=1", "model.head.gn_groups=16",
]


def r50_config() -> Config:
    return load_config("r50_1x", ["model.backbone.pretrained=false"])


def small_config() -> tuple[Config, str]:
    """The ``demo`` config when shipped, else the same model by overrides; and its name."""
    try:
        return load_config("demo", ["model.backbone.pretrained=false"]), "demo"
    except Exception:  # noqa: BLE001 - any failure means the shipped config is not usable yet
        return load_config(None, SMALL_OVERRIDES), "overrides"


def small_input(cfg: Config) -> tuple[int, int, int]:
    """(batch, height, width) of a training batch of the small config (square images of the
    configured short side, capped by max_size)."""
    side = min(cfg.data.train_short[1], cfg.data.max_size)
    return cfg.data.batch_size, side, side


def build_ours(cfg: Config, train: bool) -> nn.Module:
    torch.manual_seed(0)
    model = build_detector(cfg, NUM_CLASSES)
    return model.train(train)


def tv_fcos_r50(train: bool) -> nn.Module:
    """torchvision FCOS R-50: eval as ``fcos_resnet50_fpn(weights=None)``; train as it is built
    for fine-tuning from ImageNet weights (FrozenBatchNorm2d, 3 trainable stages)."""
    torch.manual_seed(0)
    if not train:
        return torchvision.models.detection.fcos_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=NUM_CLASSES).eval()
    body = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(body, 3, returned_layers=[2, 3, 4],
                                     extra_blocks=LastLevelP6P7(256, 256))
    return FCOS(backbone, NUM_CLASSES).train()


def _resnet(depth: int) -> nn.Module:
    """Random-init torchvision ResNet of ``depth`` (10: BasicBlock x [1, 1, 1, 1], as o2f's)."""
    fn = getattr(torchvision.models, f"resnet{depth}", None)
    if fn is not None:
        return fn(weights=None)
    blocks = {10: [1, 1, 1, 1]}[depth]
    return torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, blocks)


def tv_fcos_small(cfg: Config, train: bool) -> nn.Module:
    """torchvision FCOS with the small config's widths (see module doc)."""
    torch.manual_seed(0)
    c = cfg.model.fpn.channels
    depth = cfg.model.backbone.depth
    body = _resnet(depth)
    expansion = 4 if depth >= 50 else 1
    backbone = BackboneWithFPN(
        body, {"layer2": "0", "layer3": "1", "layer4": "2"},
        [128 * expansion, 256 * expansion, 512 * expansion], c,
        extra_blocks=LastLevelP6P7(c, c))
    head = FCOSHead(c, 1, NUM_CLASSES, num_convs=cfg.model.head.num_convs)
    side = min(cfg.data.train_short[1], cfg.data.max_size)
    model = FCOS(backbone, NUM_CLASSES, min_size=side, max_size=cfg.data.max_size, head=head)
    return model.train(train)


def make_images(batch: int, height: int, width: int, seed: int = 0) -> list[Tensor]:
    """Random uint8 RGB images (3, height, width)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=gen)
            for _ in range(batch)]


def make_targets(batch: int, height: int, width: int, num_gt: int, seed: int = 0,
                 min_size: float = 16.0) -> list[dict[str, Tensor]]:
    """Per image ``num_gt`` boxes (sizes log-uniform ``min_size``..0.6 of the short side, in
    clusters) and labels in [0, 80)."""
    gen = torch.Generator().manual_seed(seed + 1)
    out = []
    for _ in range(batch):
        clusters = torch.rand(max(1, num_gt // 6), 2, generator=gen) * torch.tensor([width, height])
        pick = torch.randint(0, clusters.shape[0], (num_gt,), generator=gen)
        c = clusters[pick] + torch.randn(num_gt, 2, generator=gen) * 0.04 * min(height, width)
        hi = math.log(0.6 * min(height, width))
        size = torch.exp(torch.empty(num_gt).uniform_(math.log(min_size), hi, generator=gen))
        aspect = torch.exp(torch.empty(num_gt).uniform_(-0.9, 0.9, generator=gen))
        wh = torch.stack((size * aspect.sqrt(), size / aspect.sqrt()), 1)
        boxes = torch.cat((c - wh / 2, c + wh / 2), 1)
        limit = torch.tensor([width, height, width, height], dtype=torch.float32)
        boxes = torch.minimum(boxes.clamp(min=0), limit)
        keep = ((boxes[:, 2:] - boxes[:, :2]) >= 4).all(1)
        out.append({"boxes": boxes[keep],
                    "labels": torch.randint(0, NUM_CLASSES, (num_gt,), generator=gen)[keep]})
    return out


def to_float01(images: list[Tensor]) -> list[Tensor]:
    """torchvision's detectors take float images in [0, 1] and normalise them themselves."""
    return [img.float().div_(255) for img in images]


def _optimizer(params: list[nn.Parameter], name: str) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)
    return torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=1e-4)


def trainer(model: nn.Module, optimizer: str = "sgd") -> Callable[[list, list], float]:
    """``step(images, targets)``: forward (+ assignment + losses) + backward + optimiser step,
    returning the loss."""
    opt = _optimizer([p for p in model.parameters() if p.requires_grad], optimizer)

    def step(images: list[Tensor], targets: list[dict[str, Tensor]]) -> float:
        opt.zero_grad(set_to_none=True)
        losses = model(images, targets)
        loss = sum(losses.values())
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def train_step_fn(model: nn.Module, images: list[Tensor], targets: list[dict[str, Tensor]],
                  optimizer: str = "sgd") -> Callable[[], float]:
    """A training step on a fixed batch (see :func:`trainer`)."""
    step = trainer(model, optimizer)
    return lambda: step(images, targets)


def train_workload(side: str, variant: str, height: int | None = None, width: int | None = None,
                   batch: int | None = None, num_gt: int = 15) -> dict[str, Any]:
    """Model and step of a training benchmark. variant: ``r50`` or ``small``."""
    if variant == "r50":
        cfg, opt = r50_config(), "sgd"
        batch, height, width = batch or 2, height or 800, width or 1333
    else:
        cfg, _ = small_config()
        opt = cfg.optim.name
        b, h, w = small_input(cfg)
        batch, height, width = batch or b, height or h, width or w
    images = make_images(batch, height, width)
    targets = make_targets(batch, height, width, num_gt, min_size=16 if variant == "r50" else 8)
    if side == "ours":
        model = build_ours(cfg, train=True)
        step = train_step_fn(model, images, targets, opt)
    else:
        model = tv_fcos_r50(train=True) if variant == "r50" else tv_fcos_small(cfg, train=True)
        if variant == "r50":
            model.transform.min_size, model.transform.max_size = (height,), max(height, width)
        step = train_step_fn(model, to_float01(images), targets, opt)
    return {"model": model, "step": step, "batch": batch, "height": height, "width": width}


def train_step(side: str, variant: str, height: int | None = None, width: int | None = None,
               batch: int | None = None) -> Callable[[], float]:
    """Zero-argument training step (for the peak-memory child process)."""
    return train_workload(side, variant, height, width, batch)["step"]


def infer_workload(side: str, height: int = 800, width: int = 1333,
                   fused: bool = True) -> Callable[[], Any]:
    """Whole-model inference of one image with ours or torchvision's FCOS R-50 (eval). Ours is
    run as ``Detector`` and ``o2f test`` run it (:func:`o2f.models.fuse.for_inference`:
    BatchNorm folded into the convolutions, channels-last on the CPU), unless ``fused`` is
    False (the model as built)."""
    images = make_images(1, height, width)
    if side == "ours":
        model = build_ours(r50_config(), train=False)
        if fused:
            model = for_inference(model)
    else:
        model = tv_fcos_r50(train=False)
        model.transform.min_size, model.transform.max_size = (height,), max(height, width)
        images = to_float01(images)

    def run() -> Any:
        with torch.inference_mode():
            return model(images)

    return run
