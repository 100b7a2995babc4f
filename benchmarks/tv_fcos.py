"""A torchvision FCOS baseline trained from scratch on a COCO-format folder.

    python benchmarks/tv_fcos.py --data DIR [--depth 10] [--fpn-channels 64] [--epochs 12]
        [--min-size 192] [--max-size 192] [--test-size 192] [--json-out FILE]

``DIR`` holds ``annotations/{train,val}.json`` and ``train/``, ``val/`` (the layout of
``benchmarks/custom_data.py`` and ``o2f.data.synthetic``). The model is
``torchvision.models.detection.FCOS`` as torchvision ships it, around a randomly initialised
ResNet (the same constructor o2f uses, ``o2f.models.backbone._build_resnet``: depth 10 is
BasicBlock x [1, 1, 1, 1]) with plain, trained ``nn.BatchNorm2d``; C3-C5 feed torchvision's FPN of
width W with ``LastLevelP6P7(W, W)`` (P6 from P5, as ``fcos_resnet50_fpn``), and ``FCOSHead`` has
``num_convs`` convolutions of width W per tower (torchvision's default: 4).

Labels. torchvision's FCOS indexes its ``num_classes`` sigmoid logits by the target label
directly; background is "matched to no box" (``matched_idxs < 0``), never a logit (see
``FCOSHead.compute_loss``: ``gt_classes_targets[foreground, labels] = 1``). The docstring's
"including the background" is only the COCO convention of an unused label 0. So the C
categories, sorted by id, are labels 0..C-1 with ``num_classes = C``, exactly the logits o2f
has; ``dataset.cat_ids[label]`` maps predictions back to category ids.

Recipe. SGD (momentum 0.9, weight decay 1e-4 on every parameter, as torchvision's reference
scripts) at ``lr`` for ``batch_size`` images; linear warm-up over ``warmup_iters`` from
``warmup_ratio`` x lr and x0.1 decays at ``step_fractions`` of the epochs (the rule of
``o2f.engine.optim.LRSchedule``, which it reuses); horizontal flip (``o2f``'s transform); the
model's own resize: short side drawn from ``min_size`` in training, ``test_size`` at test, long
side capped at ``max_size``. Evaluation on the val split runs twice: with torchvision's class-wise
NMS (``nms_thresh`` 0.6, its default) and without (``nms_thresh = 1.0`` keeps every candidate),
``score_thresh`` 0.05, 100 detections per image, COCO box mAP by pycocotools and the duplicate
rate of ``o2f.evaluation.duplicates`` (``benchmarks.nms_free.detection_metrics``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads libgomp (see run.py)
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

NMS_IOU = 0.6  # torchvision FCOS's default nms_thresh
SCORE_THRESH = 0.05
DETECTIONS_PER_IMG = 100


def build_model(num_classes: int, depth: int = 10, fpn_channels: int = 64, num_convs: int = 4,
                min_size: Sequence[int] = (192,), max_size: int = 192) -> nn.Module:
    """torchvision FCOS on a from-scratch ResNet-``depth`` with a ``fpn_channels``-wide FPN
    (P3-P7) and head; ``min_size`` / ``max_size`` go to its ``GeneralizedRCNNTransform``."""
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.fcos import FCOSHead
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    from o2f.models.backbone import _build_resnet

    resnet = _build_resnet(depth, pretrained=False)  # nn.BatchNorm2d throughout, all trainable
    expansion = 4 if depth >= 50 else 1
    backbone = BackboneWithFPN(
        resnet, return_layers={"layer2": "0", "layer3": "1", "layer4": "2"},
        in_channels_list=[128 * expansion, 256 * expansion, 512 * expansion],
        out_channels=fpn_channels, extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels))
    head = FCOSHead(fpn_channels, 1, num_classes, num_convs=num_convs)
    return FCOS(backbone, num_classes, min_size=tuple(min_size), max_size=max_size, head=head,
                score_thresh=SCORE_THRESH, nms_thresh=NMS_IOU,
                detections_per_img=DETECTIONS_PER_IMG)


def _collate(batch: Sequence[tuple[Tensor, dict]]) -> tuple[list[Tensor], list[dict]]:
    """Images stay a list of (3, h_i, w_i) uint8; targets a list of dicts."""
    return [b[0] for b in batch], [b[1] for b in batch]


def _data_paths(data: str | Path | dict[str, Path]) -> dict[str, Path]:
    if isinstance(data, dict):
        return {k: Path(v) for k, v in data.items()}
    root = Path(data)
    return {"train_ann": root / "annotations" / "train.json", "train_images": root / "train",
            "val_ann": root / "annotations" / "val.json", "val_images": root / "val"}


def decay_epochs(step_fractions: Sequence[float], epochs: int) -> list[int]:
    """1-based epochs at whose start the lr drops x0.1: ``round(f * epochs)`` (at least 1)."""
    return sorted({max(1, round(f * epochs)) for f in step_fractions})


@torch.no_grad()
def predict(model: nn.Module, dataset, device: torch.device) -> list[dict[str, Tensor]]:
    """Detections of every image of ``dataset`` (in ``dataset.ids`` order): ``boxes`` (K, 4)
    x1, y1, x2, y2 in original-image pixels, ``scores`` (K,), ``labels`` (K,) 0..C-1, on the
    CPU."""
    model.eval()
    out = []
    for i in range(len(dataset)):
        image, _ = dataset[i]
        det = model([image.to(device).float().div_(255)])[0]
        out.append({k: v.cpu() for k, v in det.items()})
    return out


def evaluate(model: nn.Module, dataset, device: torch.device, nms: bool) -> dict[str, float]:
    """Box mAP, AP50, duplicate rate and detections per image, with NMS at :data:`NMS_IOU` or
    without (``nms_thresh = 1.0``: no two boxes overlap by more than IoU 1)."""
    from benchmarks.nms_free import detection_metrics

    model.nms_thresh = NMS_IOU if nms else 1.0
    return detection_metrics(predict(model, dataset, device), dataset)


def train_and_evaluate(
    data: str | Path | dict[str, Path], *, depth: int = 10, fpn_channels: int = 64,
    num_convs: int = 4, min_size: Sequence[int] = (192,), max_size: int = 192,
    test_size: int = 192, epochs: int = 12, batch_size: int = 8, lr: float = 0.01,
    momentum: float = 0.9, weight_decay: float = 1e-4, warmup_iters: int = 500,
    warmup_ratio: float = 0.001, step_fractions: Sequence[float] = (0.75, 1.0),
    flip_prob: float = 0.5, workers: int = 0, seed: int = 0, threads: int | None = None,
    max_iters_per_epoch: int = 0, device: str | None = None,
) -> dict[str, Any]:
    """Train torchvision FCOS on ``data`` (a folder or the paths dict of
    ``custom_data.make_family``) and evaluate it on the val split with and without NMS.

    ``min_size`` lists the training short sides (one drawn per batch); ``test_size`` is the test
    short side. ``max_iters_per_epoch`` > 0 caps an epoch (smoke tests).

    Returns:
        ``{"nms": metrics, "no_nms": metrics, "train_s", "iterations", "epochs",
        "decay_epochs", "final_loss", "num_train", "num_val", "device"}``, each ``metrics``
        as :func:`evaluate` gives it.
    """
    from o2f.config import OptimConfig
    from o2f.data import CocoDetection
    from o2f.data.transforms import RandomHorizontalFlip
    from o2f.engine.optim import LRSchedule

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    paths = _data_paths(data)
    train_set = CocoDetection(paths["train_ann"], paths["train_images"],
                              RandomHorizontalFlip(flip_prob), train=True)
    val_set = CocoDetection(paths["val_ann"], paths["val_images"], train=False)
    model = build_model(train_set.num_classes, depth, fpn_channels, num_convs, min_size,
                        max_size).to(dev)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                                weight_decay=weight_decay)
    steps = decay_epochs(step_fractions, epochs)
    schedule = LRSchedule(OptimConfig(lr=lr, warmup_iters=warmup_iters,
                                      warmup_ratio=warmup_ratio, steps=steps, gamma=0.1))
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(train_set, batch_size, shuffle=True, num_workers=workers,
                        collate_fn=_collate, generator=generator)
    amp = dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    iteration, skipped, last = 0, 0, {}
    start = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        for i, (images, targets) in enumerate(loader):
            if max_iters_per_epoch and i >= max_iters_per_epoch:
                break
            schedule.apply(optimizer, iteration, epoch)
            images = [img.to(dev, non_blocking=True).float().div_(255) for img in images]
            targets = [{"boxes": t["boxes"].to(dev), "labels": t["labels"].to(dev)}
                       for t in targets]
            with torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
                losses = model(images, targets)
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            iteration += 1
            if not math.isfinite(float(loss.detach())):
                skipped += 1
                continue
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            last = {k: float(v.detach()) for k, v in losses.items()}
    if dev.type == "cuda":
        torch.cuda.synchronize()
    train_s = time.perf_counter() - start

    model.transform.min_size = (test_size,)
    result: dict[str, Any] = {"nms": evaluate(model, val_set, dev, nms=True),
                              "no_nms": evaluate(model, val_set, dev, nms=False)}
    result.update({"train_s": train_s, "iterations": iteration, "skipped_steps": skipped,
                   "epochs": epochs, "decay_epochs": steps, "final_loss": last,
                   "num_train": len(train_set), "num_val": len(val_set), "device": str(dev)})
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="COCO-format folder (annotations/, train/, val/)")
    p.add_argument("--depth", type=int, default=10)
    p.add_argument("--fpn-channels", type=int, default=64)
    p.add_argument("--num-convs", type=int, default=4)
    p.add_argument("--min-size", type=int, nargs="+", default=[192],
                   help="training short sides (one drawn per batch)")
    p.add_argument("--max-size", type=int, default=192)
    p.add_argument("--test-size", type=int, default=192)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--warmup-iters", type=int, default=500)
    p.add_argument("--step-fractions", type=float, nargs="*", default=[0.75, 1.0])
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--iters-per-epoch", type=int, default=0)
    p.add_argument("--json-out", default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    result = train_and_evaluate(
        a.data, depth=a.depth, fpn_channels=a.fpn_channels, num_convs=a.num_convs,
        min_size=a.min_size, max_size=a.max_size, test_size=a.test_size, epochs=a.epochs,
        batch_size=a.batch_size, lr=a.lr, warmup_iters=a.warmup_iters,
        step_fractions=a.step_fractions, workers=a.workers, seed=a.seed, threads=a.threads,
        max_iters_per_epoch=a.iters_per_epoch)
    text = json.dumps(result, default=float)
    print(text)
    if a.json_out:
        Path(a.json_out).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
