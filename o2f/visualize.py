"""Pictures of detections: labelled boxes drawn with torchvision, grids saved as PNG."""

from __future__ import annotations

import colorsys
import functools
import math
from collections.abc import Sequence
from pathlib import Path

import torch
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


def draw_detections(
    image: Tensor, boxes: Tensor, labels: Tensor, scores: Tensor, names: Sequence[str],
    score_thr: float = 0.3,
) -> Tensor:
    """Boxes with "name score" labels on a uint8 (3, H, W) image -> uint8 (3, kH, kW).

    Only detections with score >= ``score_thr`` are drawn, the most confident on top. An image
    whose long side is under ``MIN_PICTURE_SIDE`` is enlarged by an integer factor k first.
    """
    k = max(1, math.ceil(MIN_PICTURE_SIDE / max(image.shape[-2:])))
    if k > 1:
        image = image.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)
        boxes = boxes * k
    keep = (scores >= score_thr).nonzero().squeeze(1).flip(0)
    if keep.numel() == 0:
        return image.clone()
    colors = class_colors(len(names))
    lab = labels[keep].tolist()
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
