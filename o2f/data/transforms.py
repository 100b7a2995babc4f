"""Joint image + box transforms for detection (keep-ratio resize, flip, crop, colour jitter).

A sample is ``(image, target)``: ``image`` a uint8 (3, H, W) RGB tensor, ``target`` a dict with

- ``boxes``        float32 (G, 4) x1, y1, x2, y2 in current-image pixels
- ``labels``       int64 (G,) contiguous class indices
- ``image_id``     int
- ``orig_size``    (H, W) of the image as loaded from disk
- ``img_size``     (h, w) of the current image
- ``scale_factor`` (sx, sy) = (w / W, h / H)
- ``flipped``      bool
- ``masks``        optional uint8 (G, h, w) instance masks, row i that of box i (resized with
  nearest-neighbour sampling of pixel centres, flipped with the image)

:class:`Compose` wraps the image, boxes and masks as ``tv_tensors`` so the steps (and any
``torchvision.transforms.v2`` transform placed between them) move image and boxes together,
then unwraps them to plain tensors. Images stay uint8 and unpadded: normalisation and padding to
a multiple of 32 belong to the model. Random draws use torch's global RNG, so seeding it (as the
DataLoader does per worker) makes augmentation reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms.v2 import ColorJitter, InterpolationMode
from torchvision.transforms.v2 import functional as F

Target = dict[str, Any]
Transform = Callable[[Tensor, Target], tuple[Tensor, Target]]


def resize_scale(w: int, h: int, max_long: int, max_short: int) -> float:
    """Scale that makes a w x h image fit: long side <= max_long and short side <= max_short.

    Returns min(max_long / long, max_short / short); the resized size is
    :func:`resized_size` (int(w * scale + 0.5), int(h * scale + 0.5)).
    """
    return min(max_long / max(w, h), max_short / min(w, h))


def resized_size(w: int, h: int, max_long: int, max_short: int) -> tuple[int, int]:
    """(new_w, new_h) of a w x h image resized by :func:`resize_scale`."""
    scale = resize_scale(w, h, max_long, max_short)
    return int(w * scale + 0.5), int(h * scale + 0.5)


def _wrap_boxes(target: Target, h: int, w: int) -> tv_tensors.BoundingBoxes:
    """``target["boxes"]`` as XYXY BoundingBoxes on an h x w canvas (a plain (G, 4) tensor would
    otherwise be treated as an image by the v2 functionals)."""
    boxes = target.get("boxes", torch.zeros(0, 4))
    if isinstance(boxes, tv_tensors.BoundingBoxes):
        return boxes
    return tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w), dtype=torch.float32)


def _wrap_masks(target: Target) -> None:
    """Wrap ``target["masks"]`` (if any) as a tv_tensors.Mask, in place."""
    masks = target.get("masks")
    if masks is not None and not isinstance(masks, tv_tensors.Mask):
        target["masks"] = tv_tensors.Mask(masks)


class Compose:
    """Run transforms on ``(image, target)`` with image and boxes wrapped as tv_tensors.

    Accepts this module's transforms and ``torchvision.transforms.v2`` transforms alike.
    Missing metadata keys are filled in (``orig_size`` from the input image, ``scale_factor``
    (1.0, 1.0), ``flipped`` False); ``img_size`` is set from the output image.
    """

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        h, w = image.shape[-2:]
        target = dict(target)
        target.setdefault("orig_size", (int(h), int(w)))
        target.setdefault("scale_factor", (1.0, 1.0))
        target.setdefault("flipped", False)
        image = tv_tensors.Image(image)
        target["boxes"] = _wrap_boxes(target, int(h), int(w))
        _wrap_masks(target)
        for t in self.transforms:
            image, target = t(image, target)
        image = image.as_subclass(Tensor)
        target["boxes"] = target["boxes"].as_subclass(Tensor)
        if "masks" in target:
            target["masks"] = target["masks"].as_subclass(Tensor)
        target["img_size"] = (int(image.shape[-2]), int(image.shape[-1]))
        return image, target

    def __repr__(self) -> str:
        body = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"{type(self).__name__}([{body}\n])"


class KeepRatioResize:
    """Resize keeping the aspect ratio (SPEC §5): fit long side <= max_size, short <= short side.

    The short-side limit is drawn uniformly from the integers ``short_sizes[0] ..
    short_sizes[1]`` (inclusive) per call; equal bounds give single-scale resizing.
    Boxes are scaled by the actual per-axis factors (new_w / w, new_h / h); masks take the
    value of the source pixel under each output pixel's centre (nearest-exact).
    """

    def __init__(self, max_size: int = 1333, short_sizes: tuple[int, int] = (800, 800)):
        lo, hi = short_sizes
        if not 0 < lo <= hi:
            raise ValueError(f"short_sizes must satisfy 0 < lo <= hi, got {short_sizes}")
        if max_size <= 0:
            raise ValueError(f"max_size must be positive, got {max_size}")
        self.max_size = max_size
        self.short_sizes = (int(lo), int(hi))

    def draw_short(self) -> int:
        lo, hi = self.short_sizes
        if lo == hi:
            return lo
        return int(torch.randint(lo, hi + 1, ()).item())

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        h, w = image.shape[-2:]
        new_w, new_h = resized_size(int(w), int(h), self.max_size, self.draw_short())
        target = dict(target)
        boxes = _wrap_boxes(target, int(h), int(w))
        if (new_w, new_h) != (w, h):
            image = F.resize(image, [new_h, new_w], antialias=True)
            boxes = F.resize(boxes, [new_h, new_w])
            if "masks" in target:
                target["masks"] = F.resize(target["masks"], [new_h, new_w],
                                           interpolation=InterpolationMode.NEAREST_EXACT)
        target["boxes"] = boxes
        sx, sy = target.get("scale_factor", (1.0, 1.0))
        target["scale_factor"] = (sx * new_w / int(w), sy * new_h / int(h))
        return image, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_size={self.max_size}, short_sizes={self.short_sizes})"


class RandomHorizontalFlip:
    """Flip image, boxes (x1' = w - x2, x2' = w - x1) and masks left-right with probability p."""

    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        # One draw per call whatever p is, so the RNG stream does not depend on p.
        if torch.rand(()).item() >= self.p:
            return image, target
        target = dict(target)
        boxes = _wrap_boxes(target, int(image.shape[-2]), int(image.shape[-1]))
        image = F.horizontal_flip(image)
        target["boxes"] = F.horizontal_flip(boxes) + 0.0  # + 0.0 turns -0.0 into 0.0
        if "masks" in target:
            target["masks"] = F.horizontal_flip(target["masks"])
        target["flipped"] = not target.get("flipped", False)
        return image, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


class RandomCropBoxes:
    """Crop a random window of the image with probability p (before resizing: the crop is then
    resized like any image, which zooms in on the objects it keeps).

    Each side of the window is a fraction of the image side drawn uniformly from
    ``[min_scale, 1]``, the window placed uniformly. Boxes are clipped to the window; a box
    keeps less than ``min_visible`` of its area, or less than 1 px per side, is dropped (with
    its label and mask). Up to ``tries`` windows are drawn until one keeps at least one box;
    if none does the image is left uncropped.
    """

    def __init__(self, p: float = 0.5, min_scale: float = 0.5, min_visible: float = 0.4,
                 tries: int = 10):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"crop probability must be in [0, 1], got {p}")
        if not 0.0 < min_scale <= 1.0:
            raise ValueError(f"crop min_scale must be in (0, 1], got {min_scale}")
        self.p, self.min_scale, self.min_visible, self.tries = p, min_scale, min_visible, tries

    def _window(self, h: int, w: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) of one random window."""
        fh, fw, ty, tx = torch.rand(4).tolist()
        ch = max(1, round(h * (self.min_scale + (1 - self.min_scale) * fh)))
        cw = max(1, round(w * (self.min_scale + (1 - self.min_scale) * fw)))
        return int(ty * (h - ch + 1)), int(tx * (w - cw + 1)), ch, cw

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        if torch.rand(()).item() >= self.p:
            return image, target
        h, w = int(image.shape[-2]), int(image.shape[-1])
        boxes = _wrap_boxes(target, h, w)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        for _ in range(self.tries):
            top, left, ch, cw = self._window(h, w)
            shifted = boxes.as_subclass(Tensor) - torch.tensor([left, top, left, top],
                                                               dtype=boxes.dtype)
            clipped = torch.stack((shifted[:, 0].clamp(0, cw), shifted[:, 1].clamp(0, ch),
                                   shifted[:, 2].clamp(0, cw), shifted[:, 3].clamp(0, ch)), 1)
            cw_, ch_ = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
            keep = (cw_ >= 1) & (ch_ >= 1) & (cw_ * ch_ >= self.min_visible * area)
            if keep.any():
                break
        else:
            return image, target
        target = dict(target)
        image = F.crop(image, top, left, ch, cw)
        target["boxes"] = tv_tensors.BoundingBoxes(clipped[keep], format="XYXY",
                                                   canvas_size=(ch, cw))
        target["labels"] = target["labels"][keep]
        if "masks" in target:
            target["masks"] = tv_tensors.Mask(
                target["masks"].as_subclass(Tensor)[keep][:, top:top + ch, left:left + cw])
        return image, target

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(p={self.p}, min_scale={self.min_scale}, "
                f"min_visible={self.min_visible})")


def color_jitter(strength: float) -> ColorJitter:
    """torchvision's ColorJitter with brightness, contrast and saturation factors drawn from
    [1 - strength, 1 + strength] and hue shifts up to strength / 10 (image only; boxes and
    masks pass through)."""
    return ColorJitter(brightness=strength, contrast=strength, saturation=strength,
                       hue=min(0.5, strength / 10))


def build_transforms(
    train: bool,
    max_size: int = 1333,
    short_sizes: tuple[int, int] = (800, 800),
    flip_prob: float = 0.5,
    crop_prob: float = 0.0,
    crop_min_scale: float = 0.5,
    color_strength: float = 0.0,
) -> Compose:
    """The SPEC §5 pipeline: keep-ratio resize, then (train only) horizontal flip; optionally
    (train only) a random crop before the resize and colour jitter after the flip.

    Args:
        train: training pipeline (multi-scale and flip allowed) or test pipeline.
        max_size: long-side cap (1333 COCO, 1400 CrowdHuman).
        short_sizes: (lo, hi) short-side range; lo == hi is single scale. Testing is single
            scale, so at test lo must equal hi (test sizes differ from the multi-scale train
            range, e.g. CrowdHuman trains at 480..960 and tests at 800).
        flip_prob: horizontal flip probability (train only; test never flips).
        crop_prob, crop_min_scale: :class:`RandomCropBoxes` probability and smallest side
            fraction (0: no crop).
        color_strength: :func:`color_jitter` strength (0: none).
    """
    if not train:
        if short_sizes[0] != short_sizes[1]:
            raise ValueError(f"test transforms are single scale; got short_sizes={short_sizes}")
        return Compose([KeepRatioResize(max_size, short_sizes)])
    steps: list[Transform] = []
    if crop_prob > 0:
        steps.append(RandomCropBoxes(crop_prob, crop_min_scale))
    steps.append(KeepRatioResize(max_size, short_sizes))
    if flip_prob > 0:
        steps.append(RandomHorizontalFlip(flip_prob))
    if color_strength > 0:
        steps.append(color_jitter(color_strength))
    return Compose(steps)
