"""Pictures of detections: labelled boxes drawn with torchvision (instance masks as tinted,
outlined regions), grids saved as PNG."""

from __future__ import annotations

import colorsys
import functools
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, make_grid


def class_colors(num_classes: int) -> list[tuple[int, int, int]]:
    """Well separated colours, one per class (golden-ratio hues)."""
    out = []
    for i in range(num_classes):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.85, 1.0)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


MIN_PICTURE_SIDE = 640  # small images are enlarged so that the labels stay readable


@functools.cache
def _label_font() -> str | None:
    """A TrueType font for labels (matplotlib ships DejaVu Sans); None: PIL's bitmap font."""
    try:
        from matplotlib import font_manager

        return font_manager.findfont("DejaVu Sans", fallback_to_default=True)
    except Exception:  # matplotlib missing or broken: the small default font still works
        return None


MASK_ALPHA = 0.45  # opacity of the mask tint


def draw_masks(image: Tensor, masks: Tensor, colors: Sequence[tuple[int, int, int]],
               alpha: float = MASK_ALPHA, outline: int = 1) -> Tensor:
    """Instance masks on a uint8 (3, H, W) image -> uint8 (3, H, W): each mask (K, H, W) bool
    is tinted with its colour at opacity ``alpha`` and outlined ``outline`` px wide (inside
    the mask) in that colour; later masks are drawn over earlier ones. Pixels outside every
    mask are unchanged."""
    out = image.clone()
    if masks.numel() == 0:
        return out
    masks = masks.to(device=image.device, dtype=torch.bool)
    size = 2 * outline + 1
    # the pixels of a mask with a pixel outside it (or the image edge) within `outline`
    outside = F.pad((~masks).float()[:, None], (outline,) * 4, value=1.0)
    edges = masks & (F.max_pool2d(outside, size, stride=1)[:, 0] > 0)
    for mask, edge, color in zip(masks, edges, colors, strict=True):
        c = torch.tensor(color, dtype=torch.float32, device=image.device)[:, None]
        region = out[:, mask].float()
        out[:, mask] = (region * (1 - alpha) + c * alpha).round().to(torch.uint8)
        out[:, edge] = c.to(torch.uint8)
    return out


def draw_detections(
    image: Tensor, boxes: Tensor, labels: Tensor, scores: Tensor, names: Sequence[str],
    score_thr: float = 0.3, masks: Tensor | None = None,
) -> Tensor:
    """Boxes with "name score" labels on a uint8 (3, H, W) image -> uint8 (3, kH, kW).

    Only detections with score >= ``score_thr`` are drawn, the most confident on top. An image
    whose long side is under ``MIN_PICTURE_SIDE`` is enlarged by an integer factor k first.
    ``masks`` (K, H, W) bool, aligned with the boxes, are drawn under the boxes as tinted
    regions with an outline in the class colour (:func:`draw_masks`).
    """
    k = max(1, math.ceil(MIN_PICTURE_SIDE / max(image.shape[-2:])))
    keep = (scores >= score_thr).nonzero().squeeze(1).flip(0)
    if k > 1:
        image = image.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)
        boxes = boxes * k
    if keep.numel() == 0:
        return image.clone()
    colors = class_colors(len(names))
    lab = labels[keep].tolist()
    if masks is not None:
        kept = masks[keep.to(masks.device)]
        if k > 1:
            kept = kept.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)
        image = draw_masks(image, kept, [colors[c] for c in lab],
                           outline=max(1, round(max(image.shape[-2:]) / 640)))
    text = [f"{names[c]} {s:.2f}" for c, s in zip(lab, scores[keep].tolist(), strict=True)]
    side = max(image.shape[-2:])
    font = _label_font()
    return draw_bounding_boxes(image, boxes[keep].float(), text, [colors[c] for c in lab],
                               width=max(2, round(side / 320)), font=font,
                               font_size=max(11, round(side / 55)) if font else None)


def save_image(image: Tensor, path: str | Path) -> None:
    """Write a uint8 (3, H, W) tensor as an image file (format from the suffix)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).save(path)


def save_grid(images: Sequence[Tensor], path: str | Path, nrow: int = 4) -> None:
    """Several uint8 (3, H_i, W_i) images padded to one size and tiled into one PNG."""
    h = max(i.shape[1] for i in images)
    w = max(i.shape[2] for i in images)
    padded = [torch.nn.functional.pad(i, (0, w - i.shape[2], 0, h - i.shape[1]), value=255)
              for i in images]
    save_image(make_grid(torch.stack(padded), nrow=nrow, padding=4, pad_value=255), path)
