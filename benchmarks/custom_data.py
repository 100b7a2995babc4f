"""Held-out COCO-format dataset families, unlike the demo data, and a side-by-side runner.

    python benchmarks/custom_data.py make --family NAME --out DIR [--seed S]
        [--num-train N] [--num-val M]
    python benchmarks/custom_data.py run --family NAME [--epochs E] [--config small]
        [--systems o2f fcos tv_fcos] [--set KEY=VALUE ...] [--json-out F] [--work-dir DIR]
        [--data-root DIR] [--data-seed S] [--num-train N] [--num-val M] [--seed S]

Families (``FAMILIES``; none shares a class, a shape or a look with ``o2f.data.synthetic``):

- ``clutter``: a typical user's small set. Images of random size (257-640 px per side), 1-9
  stars, crosses and hexagons (category ids 2, 5, 9) from 14 px to 60% of the short side
  (log-uniform), every object coloured at random from one shared distribution, so only the shape
  tells the classes apart; backgrounds of random gradients, smooth noise, lines and unlabelled
  distractor blobs of the same colours.
- ``cells``: microscopy-like. Images of 250-800 px per side, 1-60 crowded, touching ellipses of
  8-120 px with five internal textures (striped, dotted, solid, ringed, speckled: ids 10..50) in
  one stain colour per image, on a dark noisy background; the whole image is blurred and
  vignetted afterwards. Cells may be cut by the image border.
- ``aerial``: 400 x 400 tiles of grass / soil texture with roads and buildings, 5-40 tree
  crowns (one class, id 3) of 15-75 px with sun shading, leafy texture and a cast shadow,
  many touching; crowns may be cut by the tile border. 65 train / 20 val by default.

Occlusion is exact: objects are painted in order, each over everything before it; a placement
that leaves any object (the new one included, when the border cuts it) less than
``MIN_VISIBLE`` of its pixels visible is rejected and retried. Every box is the extent of the
object's visible pixels, ``area`` their count, ``segmentation`` their compressed RLE. Image ``i``
of a split comes from ``numpy.random.default_rng([family key, seed, split, i])`` alone, so the
same arguments give byte-identical files (JPEG quality 90).

``run`` trains, in this one process and one after the other, three detectors on a family
(generated into ``--data-root/NAME[_sS][-nN][-vM]`` when missing) and evaluates each on its val
split with and without NMS:

- ``o2f``: ``--config`` with ``model.assigner=o2f``, and ``fcos``: the same with
  ``model.assigner=fcos``, both through the library's engine exactly as
  ``benchmarks/nms_free.py`` trains them (``run_assigner``: the assigner's own GIoU weight from
  ``o2f.criterion.RECIPE_BBOX_WEIGHT``, class-wise NMS at ``test.nms_iou``);
- ``tv_fcos``: torchvision's FCOS (``benchmarks/tv_fcos.py``) with the config's backbone depth,
  FPN width, input sizes, batch, warm-up and decay points, SGD at lr 0.01 per 8 images, for
  ``data.repeat`` x the epochs (its loop makes one pass per epoch): the same iterations.

``--epochs E`` sets ``train.epochs`` and moves the config's ``optim.steps`` to the same
fractions of E (unless ``--set optim.steps=...``). It prints one JSON line per (system, nms)
with ``family, system, nms, bbox_mAP, bbox_mAP_50, dup_rate, train_s`` (and more), then a
markdown table.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads libgomp (see run.py)
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import colorsys  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageFilter  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402

MIN_VISIBLE = 0.4  # every object keeps at least this share of its pixels visible
JPEG_QUALITY = 90
MAX_TRIES = 30  # placement attempts per object
SPLITS = ("train", "val")



# --------------------------------------------------------------------------- scene bookkeeping


@dataclass
class Placement:
    """An accepted-to-be placement: the image window ``[y0:y1, x0:x1]`` and the object's mask
    (y1 - y0, x1 - x0) bool inside it (already cropped to the image)."""

    x0: int
    y0: int
    x1: int
    y1: int
    mask: np.ndarray
    lost: np.ndarray  # (K,) pixels each earlier object loses


class Canvas:
    """An image being painted plus the id map that makes occlusion exact.

    ``img`` (H, W, 3) float32 RGB; ``ids`` (H, W) int32, 0 background, k + 1 where object k is
    visible.
    """

    def __init__(self, img: np.ndarray, min_visible: float = MIN_VISIBLE):
        self.img = img
        self.height, self.width = img.shape[:2]
        self.ids = np.zeros((self.height, self.width), dtype=np.int32)
        self.min_visible = min_visible
        self.category_ids: list[int] = []
        self.full: list[int] = []  # full (uncut, unoccluded) pixel count per object
        self.visible: list[int] = []
        self.windows: list[tuple[int, int, int, int]] = []
        self.centres: list[tuple[float, float, float]] = []  # (cx, cy, radius) per object

    def __len__(self) -> int:
        return len(self.category_ids)

    def check(self, mask: np.ndarray, x: int, y: int) -> Placement | None:
        """Placement of ``mask`` (h, w) bool with its top-left at image pixel (x, y), or None
        when the border or the occlusion rule forbids it."""
        h, w = mask.shape
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, self.width), min(y + h, self.height)
        if x1 <= x0 or y1 <= y0:
            return None
        crop = mask[y0 - y : y1 - y, x0 - x : x1 - x]
        vis = int(crop.sum())
        if vis == 0 or vis < self.min_visible * int(mask.sum()):
            return None
        lost = np.bincount(self.ids[y0:y1, x0:x1][crop], minlength=len(self) + 1)[1:]
        left = np.asarray(self.visible, dtype=np.int64) - lost
        if np.any(left < self.min_visible * np.asarray(self.full, dtype=np.int64)):
            return None
        return Placement(x0, y0, x1, y1, crop, lost)

    def paint(self, p: Placement, category_id: int, rgb: np.ndarray, x: int, y: int,
              full: int, radius: float) -> None:
        """Paint an object's colours ``rgb`` (h, w, 3) (its uncropped patch, top-left at (x, y))
        through placement ``p`` and record it."""
        rgb = rgb[p.y0 - y : p.y1 - y, p.x0 - x : p.x1 - x]
        self.visible = [v - int(n) for v, n in zip(self.visible, p.lost)]
        self.ids[p.y0 : p.y1, p.x0 : p.x1][p.mask] = len(self) + 1
        self.img[p.y0 : p.y1, p.x0 : p.x1][p.mask] = rgb[p.mask]
        self.category_ids.append(category_id)
        self.full.append(full)
        self.visible.append(int(p.mask.sum()))
        self.windows.append((p.x0, p.y0, p.x1, p.y1))
        h, w = rgb.shape[:2]
        self.centres.append((x + w / 2, y + h / 2, radius))

    def add(self, category_id: int, mask: np.ndarray, rgb: np.ndarray, x: int, y: int,
            before: Callable[[Placement], None] | None = None) -> bool:
        """Check and paint in one go (``before`` runs between the two); True when placed."""
        p = self.check(mask, x, y)
        if p is None:
            return False
        if before is not None:
            before(p)
        self.paint(p, category_id, rgb, x, y, int(mask.sum()), max(mask.shape) / 2)
        return True

    def annotations(self) -> list[tuple[int, list[float], np.ndarray]]:
        """Per object: (category id, visible box [x, y, w, h], visible mask (H, W) uint8)."""
        out = []
        for k, (x0, y0, x1, y1) in enumerate(self.windows):
            local = self.ids[y0:y1, x0:x1] == k + 1
            rows = np.flatnonzero(local.any(axis=1))
            cols = np.flatnonzero(local.any(axis=0))
            box = [float(x0 + cols[0]), float(y0 + rows[0]),
                   float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]
            full = np.zeros((self.height, self.width), dtype=np.uint8, order="F")
            full[y0:y1, x0:x1] = local
            out.append((self.category_ids[k], box, full))
        return out


def _near(rng: np.random.Generator, canvas: Canvas, radius: float,
          spread: tuple[float, float]) -> tuple[float, float]:
    """Centre for a new object of ``radius`` touching a random earlier one: at a distance of
    ``U(spread) * (r_old + r_new)`` along a random direction."""
    cx, cy, r = canvas.centres[int(rng.integers(len(canvas)))]
    d = rng.uniform(*spread) * (r + radius)
    a = rng.uniform(0, 2 * math.pi)
    return cx + d * math.cos(a), cy + d * math.sin(a)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """(h, w) float32 smooth noise of unit-ish amplitude with blobs about ``cell`` px wide."""
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    small = Image.fromarray(rng.normal(size=(gh, gw)).astype(np.float32))
    return np.asarray(small.resize((w, h), Image.BICUBIC), dtype=np.float32)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(size, size) pixel-centre coordinates relative to the patch centre: (x, y)."""
    c = np.arange(size, dtype=np.float32) - (size - 1) / 2
    return np.meshgrid(c, c)


def _random_colour(rng: np.random.Generator, sat: tuple[float, float] = (0.35, 1.0),
                   val: tuple[float, float] = (0.35, 1.0)) -> np.ndarray:
    """(3,) float RGB in 0..255 of a uniformly random hue."""
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*sat), rng.uniform(*val))
    return np.array([r, g, b]) * 255


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def _finish(img: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """(H, W, 3) float -> uint8 with Gaussian pixel noise of ``sigma``."""
    img = img + rng.normal(0, sigma, size=img.shape).astype(np.float32) + 0.5
    return np.clip(img, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- clutter


def _polygon(pts: np.ndarray, size: int, edge: int) -> np.ndarray:
    """(size, size) uint8 of polygon ``pts`` (N, 2): 0 outside, 1 outline, 2 body."""
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in pts], fill=2, outline=1, width=edge)
    return np.asarray(canvas)


def _clutter_shape(rng: np.random.Generator, name: str, size: int) -> np.ndarray:
    """Shape ``name`` (star, cross, hexagon) in a (size, size) patch, randomly rotated and
    squashed; returns the (size, size) uint8 of :func:`_polygon`."""
    if name == "star":
        inner = rng.uniform(0.38, 0.5)
        ang = np.arange(10) * math.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, 1.0, inner)
    elif name == "cross":
        t = rng.uniform(0.26, 0.38)
        pts = np.array([(t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t), (-t, -t), (-t, -1),
                        (t, -1), (t, -t), (1, -t), (1, t), (t, t)])
        ang, rad = np.arctan2(pts[:, 1], pts[:, 0]), np.hypot(pts[:, 0], pts[:, 1])
        rad = rad / rad.max()
    else:  # hexagon
        ang = np.arange(6) * math.pi / 3
        rad = np.ones(6)
    ang = ang + rng.uniform(0, 2 * math.pi)
    squash = rng.uniform(0.8, 1.0)
    r = size / 2 - 0.5
    pts = np.stack([rad * np.cos(ang), squash * rad * np.sin(ang)], axis=1) * r + size / 2
    return _polygon(pts, size, max(1, round(size / 18)))


def _clutter_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float32: gradient + smooth noise, lines and unlabelled distractor blobs."""
    c0, c1 = _random_colour(rng, (0.0, 0.6), (0.2, 0.9)), _random_colour(rng, (0.0, 0.6))
    a = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = xx * math.cos(a) + yy * math.sin(a)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    amp = rng.uniform(6, 25)
    cell = rng.uniform(15, 80)
    img += np.stack([_smooth_noise(rng, h, w, cell) for _ in range(3)], axis=-1) * amp
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    short = min(h, w)
    for _ in range(int(rng.integers(0, 8))):  # distractor blobs: elongated or lumpy, unlabelled
        r = _log_uniform(rng, 6, 0.25 * short)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        ang = np.linspace(0, 2 * math.pi, 32, endpoint=False)
        if rng.random() < 0.5:
            rad = 1 + sum(rng.uniform(0, 0.25) * np.sin(k * ang + rng.uniform(0, 6.3))
                          for k in (2, 3))
            ry = r
        else:
            rad, ry = np.ones_like(ang), r * rng.uniform(0.2, 0.55)
        rot = rng.uniform(0, math.pi)
        px, py = r * rad * np.cos(ang), ry * rad * np.sin(ang)
        pts = np.stack([cx + px * math.cos(rot) - py * math.sin(rot),
                        cy + px * math.sin(rot) + py * math.cos(rot)], axis=1)
        fill = tuple(int(v) for v in _random_colour(rng))
        draw.polygon([tuple(p) for p in pts], fill=fill)
    for _ in range(int(rng.integers(3, 25))):
        pts = rng.uniform(0, 1, size=(int(rng.integers(2, 5)), 2)) * (w, h)
        fill = tuple(int(v) for v in _random_colour(rng, (0.0, 1.0), (0.1, 1.0)))
        draw.line([tuple(p) for p in pts], fill=fill, width=int(rng.integers(1, 6)))
    return np.asarray(pil, dtype=np.float32).copy()


def _draw_clutter(rng: np.random.Generator, family: Family) -> Canvas:
    h, w = (int(v) for v in rng.integers(257, 641, size=2))
    canvas = Canvas(_clutter_background(rng, h, w))
    hi = family.max_size(h, w)
    target = int(rng.integers(family.num_objects[0], family.num_objects[1] + 1))
    for _ in range(target):
        for _try in range(MAX_TRIES):
            cat_id, name = family.categories[int(rng.integers(len(family.categories)))]
            size = max(4, round(_log_uniform(rng, family.size_range[0], hi)))
            shape = _clutter_shape(rng, name, size)
            colour = _random_colour(rng)
            a = rng.uniform(0, 2 * math.pi)
            xx, yy = _grid(size)
            shade = 1 + rng.uniform(0, 0.25) * (xx * math.cos(a) + yy * math.sin(a)) / size * 2
            rgb = colour * shade[..., None]
            rgb[shape == 1] *= rng.uniform(0.35, 0.7)
            x, y = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
            if canvas.add(cat_id, shape > 0, rgb.astype(np.float32), x, y):
                break
    canvas.img = _finish(canvas.img, rng, rng.uniform(2, 7))
    return canvas


# --------------------------------------------------------------------------- cells

_STAINS = np.array([(0.35, 1.0, 0.45), (1.0, 0.35, 0.9), (0.35, 0.8, 1.0), (1.0, 1.0, 1.0),
                    (1.0, 0.65, 0.25)], dtype=np.float32)


def _cell(rng: np.random.Generator, name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """An irregular ellipse of long side <= ``size`` with texture ``name``.

    Returns mask (size, size) bool and brightness (size, size) float32 in about 0..1.
    """
    a = size / 2
    b = a * rng.uniform(0.55, 1.0)
    phi = rng.uniform(0, math.pi)
    xx, yy = _grid(size)
    u = (xx * math.cos(phi) + yy * math.sin(phi)) / a
    v = (-xx * math.sin(phi) + yy * math.cos(phi)) / b
    rr = np.hypot(u, v)
    amp, k = rng.uniform(0.03, 0.1), int(rng.integers(2, 5))
    edge = (1 + amp * np.sin(k * np.arctan2(v, u) + rng.uniform(0, 6.3))) / (1 + amp)
    mask = rr <= edge
    if not mask.any():
        mask[size // 2, size // 2] = True
    rr = rr / edge
    if name == "striped":
        period, om = rng.uniform(3.5, 7.0), rng.uniform(0, math.pi)
        t = 0.5 + 0.5 * np.sin(2 * math.pi * (xx * math.cos(om) + yy * math.sin(om)) / period
                               + rng.uniform(0, 6.3))
        val = 0.3 + 0.7 * t
    elif name == "dotted":
        val = np.full_like(rr, 0.3)
        sig = max(0.8, 0.1 * a)
        for _ in range(int(rng.integers(2, 4 + int(a / 4)))):
            r, th = rng.uniform(0, 0.75), rng.uniform(0, 2 * math.pi)
            dx, dy = r * a * math.cos(th), r * b * math.sin(th)
            px = dx * math.cos(phi) - dy * math.sin(phi)
            py = dx * math.sin(phi) + dy * math.cos(phi)
            val = np.maximum(val, np.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * sig**2)))
    elif name == "solid":
        val = 0.8 + 0.2 * (1 - rr**2)
    elif name == "ringed":
        val = np.where(rr > rng.uniform(0.68, 0.8), 1.0, 0.18)
        nx, ny = rng.uniform(-0.2, 0.2, size=2)
        val = np.where(np.hypot(u / edge - nx, v / edge - ny) < rng.uniform(0.25, 0.38), 0.8, val)
    else:  # speckled
        val = 0.2 + 0.8 * rng.random(rr.shape) ** 2
    return mask, val.astype(np.float32)


def _cells_background(rng: np.random.Generator, h: int, w: int,
                      stain: np.ndarray) -> np.ndarray:
    """(h, w, 3) float32: dark, tinted, smooth noise, faint unlabelled debris."""
    base = rng.uniform(6, 25)
    img = base + _smooth_noise(rng, h, w, rng.uniform(30, 120)) * rng.uniform(2, 7)
    for _ in range(int(rng.integers(0, 4))):  # out-of-focus haze
        img += np.maximum(_smooth_noise(rng, h, w, rng.uniform(60, 200)), 0) * rng.uniform(4, 12)
    img = img[..., None] * (0.6 + 0.4 * stain)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(0, 40))):  # debris: tiny dim specks
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.7, 2.5)
        tone = tuple(int(v) for v in rng.uniform(25, 70) * stain)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tone)
    return np.asarray(pil, dtype=np.float32).copy()


def _draw_cells(rng: np.random.Generator, family: Family) -> Canvas:
    h, w = (int(v) for v in rng.integers(250, 801, size=2))
    stain = _STAINS[int(rng.integers(len(_STAINS)))]
    canvas = Canvas(_cells_background(rng, h, w, stain))
    target = int(rng.integers(family.num_objects[0], family.num_objects[1] + 1))
    lo, hi = family.size_range
    hi = min(hi, family.max_size(h, w))
    for _ in range(target):
        for _try in range(MAX_TRIES):
            cat_id, name = family.categories[int(rng.integers(len(family.categories)))]
            size = max(4, round(_log_uniform(rng, lo, hi)))
            mask, val = _cell(rng, name, size)
            tint = np.clip(stain + rng.normal(0, 0.08, size=3), 0.1, 1).astype(np.float32)
            rgb = val[..., None] * rng.uniform(110, 240) * tint
            if len(canvas) and rng.random() < 0.7:
                cx, cy = _near(rng, canvas, size / 2, (0.75, 1.05))
            else:
                cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            if canvas.add(cat_id, mask, rgb, round(cx - size / 2), round(cy - size / 2)):
                break
    pil = Image.fromarray(np.clip(canvas.img, 0, 255).astype(np.uint8))
    img = np.asarray(pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.3))), np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / ((w / 2) ** 2 + (h / 2) ** 2)
    img = img * (1 - rng.uniform(0.2, 0.55) * r2)[..., None]
    img = img + np.sqrt(np.maximum(img, 0)) * rng.normal(0, 0.6, size=img.shape)  # shot noise
    canvas.img = _finish(img, rng, rng.uniform(2, 6))
    return canvas


# --------------------------------------------------------------------------- aerial


def _aerial_background(rng: np.random.Generator, h: int, w: int,
                       light: tuple[float, float]) -> np.ndarray:
    """(h, w, 3) float32: grass / soil texture, roads, buildings with shadows."""
    t = _smooth_noise(rng, h, w, rng.uniform(50, 140)) + 0.5 * _smooth_noise(rng, h, w, 20)
    t = 1 / (1 + np.exp(-2.0 * (t + rng.uniform(-1, 1))))
    grass = np.array([rng.uniform(55, 95), rng.uniform(90, 130), rng.uniform(35, 65)])
    soil = np.array([rng.uniform(115, 160), rng.uniform(95, 125), rng.uniform(65, 95)])
    img = grass * (1 - t[..., None]) + soil * t[..., None]
    img *= (1 + 0.08 * _smooth_noise(rng, h, w, 3))[..., None]
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(0, 3))):  # roads
        pts = rng.uniform(-0.1, 1.1, size=(int(rng.integers(2, 4)), 2)) * (w, h)
        tone = rng.uniform(135, 185) + rng.uniform(-10, 10, size=3)
        width = int(rng.integers(8, 24))
        line = [tuple(p) for p in pts]
        draw.line(line, fill=tuple(int(v * 0.8) for v in tone), width=width + 4, joint="curve")
        draw.line(line, fill=tuple(int(v) for v in tone), width=width, joint="curve")
    roofs = ((150, 150, 155), (160, 75, 55), (95, 90, 95), (190, 175, 150))
    for _ in range(int(rng.integers(0, 5))):  # buildings
        bw, bh = rng.uniform(20, 70, size=2)
        cx, cy, rot = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, math.pi)
        corners = np.array([(-bw, -bh), (bw, -bh), (bw, bh), (-bw, bh)]) / 2
        rotm = np.array([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]])
        pts = corners @ rotm.T + (cx, cy)
        shadow = pts - np.array(light) * rng.uniform(6, 14)
        draw.polygon([tuple(p) for p in shadow], fill=(35, 40, 30))
        roof = np.array(roofs[int(rng.integers(len(roofs)))]) + rng.uniform(-15, 15, size=3)
        draw.polygon([tuple(p) for p in pts], fill=tuple(int(v) for v in roof))
        half = np.array([pts[0], pts[1], (pts[1] + pts[2]) / 2, (pts[0] + pts[3]) / 2])
        draw.polygon([tuple(p) for p in half], fill=tuple(int(v * 0.8) for v in roof))
    return np.asarray(pil, dtype=np.float32).copy()


def _crown(rng: np.random.Generator, size: int,
           light: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """A tree crown in a (size, size) patch: mask bool and colours (size, size, 3) float32."""
    xx, yy = _grid(size)
    r = size / 2
    theta = np.arctan2(yy, xx)
    ks = np.arange(3, 9)
    amps, phases = rng.uniform(0, 0.07, size=ks.size), rng.uniform(0, 6.3, size=ks.size)
    grid = np.linspace(-math.pi, math.pi, 256)
    edge_max = float((1 + (amps * np.sin(ks * grid[:, None] + phases)).sum(1)).max())
    edge = (1 + (amps * np.sin(ks * theta[..., None] + phases)).sum(-1)) / edge_max
    rr = np.hypot(xx, yy) / r
    mask = rr <= edge
    if not mask.any():
        mask[size // 2, size // 2] = True
    nx, ny = xx / r, yy / r
    z = np.sqrt(np.clip(1 - (rr / edge) ** 2, 0, 1))
    lum = 0.5 + 0.5 * np.clip((nx * light[0] + ny * light[1]) * 0.8 + 0.6 * z, 0, 1)
    small = rng.normal(size=(max(2, size // 4), max(2, size // 4))).astype(np.float32)
    lumps = np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC))
    lum = lum * (1 + 0.18 * lumps) * (1 + 0.08 * rng.normal(size=lum.shape))
    mix = rng.random() ** 2
    base = (1 - mix) * np.array([40, 85, 30]) + mix * np.array([95, 88, 45])
    base = base * rng.uniform(0.75, 1.25) + rng.uniform(-8, 8, size=3)
    return mask, (lum[..., None] * base).astype(np.float32)


def _cast_shadow(canvas: Canvas, mask: np.ndarray, sx: int, sy: int, _p: Placement) -> None:
    """Darken the background (not earlier crowns) under a crown's shadow: ``mask`` (h, w) bool
    with its top-left at (sx, sy)."""
    h, w = mask.shape
    x0, y0 = max(sx, 0), max(sy, 0)
    x1, y1 = min(sx + w, canvas.width), min(sy + h, canvas.height)
    if x1 <= x0 or y1 <= y0:
        return
    sh = mask[y0 - sy : y1 - sy, x0 - sx : x1 - sx] & (canvas.ids[y0:y1, x0:x1] == 0)
    canvas.img[y0:y1, x0:x1][sh] *= 0.55


def _draw_aerial(rng: np.random.Generator, family: Family) -> Canvas:
    h = w = 400
    a = rng.uniform(0, 2 * math.pi)
    light = (math.cos(a), math.sin(a))  # towards the sun, in the image plane
    canvas = Canvas(_aerial_background(rng, h, w, light))
    target = int(rng.integers(family.num_objects[0], family.num_objects[1] + 1))
    lo, hi = family.size_range
    for _ in range(target):
        for _try in range(MAX_TRIES):
            size = max(4, round(_log_uniform(rng, lo, hi)))
            mask, rgb = _crown(rng, size, light)
            if len(canvas) and rng.random() < 0.6:
                cx, cy = _near(rng, canvas, size / 2, (0.7, 1.0))
            else:
                cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            x, y = round(cx - size / 2), round(cy - size / 2)
            shift = rng.uniform(0.3, 0.55) * size
            sx, sy = round(x - light[0] * shift), round(y - light[1] * shift)

            shadow = functools.partial(_cast_shadow, canvas, mask, sx, sy)
            if canvas.add(family.categories[0][0], mask, rgb, x, y, before=shadow):
                break
    canvas.img = _finish(canvas.img, rng, rng.uniform(2, 5))
    return canvas


# --------------------------------------------------------------------------- families


@dataclass(frozen=True)
class Family:
    """A dataset family: its classes, ranges, default split sizes and scene drawer.

    ``size_range`` is the (min, max) long side of a full object in pixels; with
    ``max_short_frac`` the max is also capped at that share of the image's short side.
    """

    name: str
    key: int  # first element of every image's seed: families never share a random stream
    categories: tuple[tuple[int, str], ...]
    supercategory: str
    num_objects: tuple[int, int]
    size_range: tuple[float, float]
    num_train: int
    num_val: int
    draw: Callable[[np.random.Generator, Family], Canvas]
    max_short_frac: float | None = None

    def max_size(self, height: int, width: int) -> float:
        """Largest long side of an object in an image of ``height`` x ``width``."""
        hi = self.size_range[1]
        if self.max_short_frac is not None:
            hi = min(hi, self.max_short_frac * min(height, width))
        return hi


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("clutter", 101, ((2, "star"), (5, "cross"), (9, "hexagon")), "shape", (1, 9),
               (14, 1e9), 160, 40, _draw_clutter, max_short_frac=0.6),
        Family("cells", 102, ((10, "striped"), (20, "dotted"), (30, "solid"), (40, "ringed"),
                              (50, "speckled")), "cell", (1, 60), (8, 120), 160, 40, _draw_cells),
        Family("aerial", 103, ((3, "tree"),), "vegetation", (5, 40), (15, 75), 65, 20,
               _draw_aerial),
    )
}


def draw_image(family: str | Family, seed: int, split: str,
               index: int) -> tuple[np.ndarray, list[tuple[int, list[float], np.ndarray]]]:
    """Image ``index`` of ``split``: pixels (H, W, 3) uint8 RGB and per object (category id,
    visible box [x, y, w, h], visible mask (H, W) uint8), in drawing order."""
    fam = FAMILIES[family] if isinstance(family, str) else family
    rng = np.random.default_rng([fam.key, seed, SPLITS.index(split), index])
    canvas = fam.draw(rng, fam)
    return canvas.img, canvas.annotations()


def _write_split(fam: Family, root: Path, split: str, num: int, seed: int) -> Path:
    img_dir = root / split
    img_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(num):
        pixels, objects = draw_image(fam, seed, split, i)
        image_id = i + 1
        file_name = f"{image_id:06d}.jpg"
        Image.fromarray(pixels).save(img_dir / file_name, quality=JPEG_QUALITY)
        h, w = pixels.shape[:2]
        images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
        for cat_id, box, mask in objects:
            rle = mask_utils.encode(mask)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": cat_id,
                "bbox": box, "area": float(mask.sum()), "iscrowd": 0,
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode()},
            })
    dataset = {
        "info": {"description": f"o2f held-out family {fam.name} ({split}, seed {seed})",
                 "version": "1"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": n, "supercategory": fam.supercategory}
                       for c, n in fam.categories],
    }
    ann_file = root / "annotations" / f"{split}.json"
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps(dataset, separators=(",", ":")), encoding="utf-8")
    return ann_file


def _paths(root: Path) -> dict[str, Path]:
    ann = root / "annotations"
    return {"root": root, "train_ann": ann / "train.json", "val_ann": ann / "val.json",
            "train_images": root / "train", "val_images": root / "val"}


def make_family(name: str, out_dir: str | Path, seed: int = 0, num_train: int | None = None,
                num_val: int | None = None) -> dict[str, Path]:
    """Write family ``name`` as a COCO-format dataset under ``out_dir``.

    Layout: ``annotations/{train,val}.json``, ``train/*.jpg``, ``val/*.jpg`` and
    ``generator.json`` (the arguments, to tell whether an existing copy matches).
    ``num_train`` / ``num_val`` default to the family's sizes. Returns the paths ``root``,
    ``train_ann``, ``val_ann``, ``train_images``, ``val_images``.
    """
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; choose from {sorted(FAMILIES)}")
    fam = FAMILIES[name]
    root = Path(out_dir)
    counts = {"train": fam.num_train if num_train is None else num_train,
              "val": fam.num_val if num_val is None else num_val}
    for split in SPLITS:
        _write_split(fam, root, split, counts[split], seed)
    (root / "generator.json").write_text(json.dumps(_stamp(name, seed, counts), sort_keys=True))
    return _paths(root)


def _stamp(name: str, seed: int, counts: dict[str, int]) -> dict[str, Any]:
    return {"family": name, "seed": seed, "num_train": counts["train"],
            "num_val": counts["val"], "generator_version": 1}


def ensure_family(name: str, out_dir: str | Path, seed: int = 0, num_train: int | None = None,
                  num_val: int | None = None) -> dict[str, Path]:
    """:func:`make_family` unless ``out_dir`` already holds it with the same arguments."""
    fam = FAMILIES[name]
    root = Path(out_dir)
    counts = {"train": fam.num_train if num_train is None else num_train,
              "val": fam.num_val if num_val is None else num_val}
    stamp = root / "generator.json"
    paths = _paths(root)
    if (stamp.is_file() and paths["train_ann"].is_file() and paths["val_ann"].is_file()
            and json.loads(stamp.read_text()) == _stamp(name, seed, counts)):
        return paths
    return make_family(name, root, seed, counts["train"], counts["val"])


# --------------------------------------------------------------------------- command line


SYSTEMS = ("o2f", "fcos", "tv_fcos")
#: Real data sets ``run`` accepts besides the generated families (``benchmarks/real_data.py``).
REAL_FAMILIES = ("trees",)


def default_config() -> str:
    """``small`` once the library ships it, else ``demo``."""
    from o2f.config import available_configs

    return "small" if "small" in available_configs() else "demo"


def family_dir(data_root: str | Path, name: str, seed: int = 0, num_train: int | None = None,
               num_val: int | None = None) -> Path:
    """Where ``run`` keeps a family: ``NAME``, plus ``_sS`` / ``-nN`` / ``-vM`` when the seed or
    the split sizes differ from the defaults."""
    tag = name + (f"_s{seed}" if seed else "")
    tag += f"-n{num_train}" if num_train is not None else ""
    tag += f"-v{num_val}" if num_val is not None else ""
    return Path(data_root) / tag


def _run_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` plus, with ``--epochs``, ``optim.steps`` at the config's relative points."""
    from o2f.config import load_config

    extra = []
    if args.epochs is not None and not any(s.startswith("optim.steps=") for s in args.set):
        base = load_config(args.config, list(args.set))
        steps = sorted({max(1, round(s * args.epochs / base.train.epochs))
                        for s in base.optim.steps})
        extra.append(f"optim.steps=[{','.join(map(str, steps))}]")
    return extra + list(args.set)


def _row(family: str, system: str, nms: bool, metrics: dict[str, float],
         **extra: Any) -> dict[str, Any]:
    return {"family": family, "system": system, "nms": nms, "bbox_mAP": metrics["bbox_mAP"],
            "bbox_mAP_50": metrics["bbox_mAP_50"], "dup_rate": metrics["dup_rate"],
            "dets_per_img": metrics["dets_per_img"], **extra}


def run_o2f_engine(assigner: str, args: argparse.Namespace,
                   paths: dict[str, Path]) -> list[dict[str, Any]]:
    """``--config`` with ``model.assigner=assigner`` through ``nms_free.run_assigner``; one
    row per NMS setting."""
    from benchmarks.nms_free import run_assigner

    ns = argparse.Namespace(config=args.config, seed=args.seed, epochs=args.epochs,
                            iters_per_epoch=args.iters_per_epoch, set=_run_overrides(args),
                            work_dir=str(Path(args.work_dir)))
    r = run_assigner(assigner, ns, paths)
    rows = []
    for nms, suffix in ((False, "no_nms"), (True, "nms")):
        metrics = {k: r[f"{k}_{suffix}"]
                   for k in ("bbox_mAP", "bbox_mAP_50", "dup_rate", "dets_per_img")}
        rows.append(_row(args.family, assigner, nms, metrics, train_s=r["train_s"],
                         epochs=r["epochs"], iterations=r["iterations"],
                         num_train=r["num_train"], num_val=r["num_val"], config=args.config,
                         device=r["device"]))
    return rows


def run_tv_fcos(args: argparse.Namespace, paths: dict[str, Path]) -> list[dict[str, Any]]:
    """torchvision FCOS with the resolved config's backbone depth, FPN width, sizes, batch,
    warm-up and decay points; one row per NMS setting."""
    from benchmarks import tv_fcos
    from benchmarks.nms_free import overrides_for
    from o2f.config import load_config

    ns = argparse.Namespace(seed=args.seed, epochs=args.epochs,
                            iters_per_epoch=args.iters_per_epoch, set=_run_overrides(args))
    cfg = load_config(args.config, overrides_for("o2f", ns, paths))
    lo, hi = cfg.data.train_short
    # An o2f epoch is data.repeat passes over the images; torchvision's loop makes one pass
    # per epoch, so it runs repeat x the epochs: the same iterations as the o2f systems.
    passes = max(1, cfg.data.repeat)
    cap = cfg.train.max_iters_per_epoch
    r = tv_fcos.train_and_evaluate(
        paths, depth=cfg.model.backbone.depth, fpn_channels=cfg.model.fpn.channels,
        num_convs=args.tv_num_convs, min_size=tuple(range(lo, hi + 1)),
        max_size=cfg.data.max_size, test_size=cfg.data.test_short,
        epochs=cfg.train.epochs * passes,
        batch_size=cfg.data.batch_size, lr=0.01 * cfg.data.batch_size / 8,
        warmup_iters=cfg.optim.warmup_iters, warmup_ratio=cfg.optim.warmup_ratio,
        step_fractions=[s / cfg.train.epochs for s in cfg.optim.steps],
        flip_prob=cfg.data.flip_prob, workers=cfg.data.workers, seed=args.seed,
        max_iters_per_epoch=-(-cap // passes) if cap > 0 else 0)
    return [_row(args.family, "tv_fcos", nms, r["nms" if nms else "no_nms"],
                 train_s=r["train_s"], epochs=r["epochs"], iterations=r["iterations"],
                 num_train=r["num_train"], num_val=r["num_val"], config=args.config,
                 device=r["device"])
            for nms in (False, True)]


def _ap(x: float) -> str:
    return "-" if x != x else f"{100 * x:.1f}"


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table, AP in points (0-100)."""
    header = ["family", "system", "NMS", "mAP", "AP50", "dup rate", "dets/img", "train s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["family"], r["system"], "yes" if r["nms"] else "no", _ap(r["bbox_mAP"]),
                 _ap(r["bbox_mAP_50"]), f"{r['dup_rate']:.3f}", f"{r['dets_per_img']:.1f}",
                 f"{r['train_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The ``run`` subcommand: generate the family if missing, train and evaluate each system."""
    from benchmarks.common import emit, setup_threads

    setup_threads(args.threads)
    args.config = args.config or default_config()
    root = family_dir(args.data_root, args.family, args.data_seed, args.num_train, args.num_val)
    if args.family in REAL_FAMILIES:
        from benchmarks.real_data import make_trees

        paths = make_trees(root, Path(args.data_root) / "cache")
    else:
        paths = ensure_family(args.family, root, args.data_seed, args.num_train, args.num_val)
    args.work_dir = str(Path(args.work_dir or f"work_dirs/custom_data/{root.name}"))
    rows: list[dict[str, Any]] = []
    for system in args.systems:
        new = run_tv_fcos(args, paths) if system == "tv_fcos" else \
            run_o2f_engine(system, args, paths)
        rows += [emit(r) for r in new]
    if args.json_out:
        Path(args.json_out).write_text("".join(json.dumps(r, default=float) + "\n"
                                               for r in rows))
    print()
    print(table(rows))
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    mk = sub.add_parser("make", help="write one family as a COCO-format dataset")
    mk.add_argument("--family", required=True, choices=sorted(FAMILIES))
    mk.add_argument("--out", required=True)
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--num-train", type=int, default=None)
    mk.add_argument("--num-val", type=int, default=None)
    rn = sub.add_parser("run", help="train and evaluate o2f, FCOS and torchvision FCOS on it")
    rn.add_argument("--family", required=True, choices=sorted(FAMILIES) + list(REAL_FAMILIES))
    rn.add_argument("--epochs", type=int, default=None, help="train.epochs (default: config)")
    rn.add_argument("--iters-per-epoch", type=int, default=None,
                    help="train.max_iters_per_epoch, 0 = whole epoch (default: the config)")
    rn.add_argument("--config", default=None, help="o2f config (default: small, else demo)")
    rn.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    rn.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides for every system")
    rn.add_argument("--json-out", default=None, help="also write the rows here (JSON lines)")
    rn.add_argument("--work-dir", default=None,
                    help="default: work_dirs/custom_data/<family folder>")
    rn.add_argument("--data-root", default="data/heldout")
    rn.add_argument("--data-seed", type=int, default=0)
    rn.add_argument("--num-train", type=int, default=None)
    rn.add_argument("--num-val", type=int, default=None)
    rn.add_argument("--seed", type=int, default=0, help="training seed")
    rn.add_argument("--threads", type=int, default=None, help="torch threads (default 2)")
    rn.add_argument("--tv-num-convs", type=int, default=4,
                    help="convs per torchvision FCOSHead tower (torchvision's default: 4)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Any:
    args = parse_args(argv)
    if args.command == "make":
        start = time.perf_counter()
        paths = make_family(args.family, args.out, args.seed, args.num_train, args.num_val)
        print(json.dumps({"family": args.family, "out": str(paths["root"]),
                          "seconds": round(time.perf_counter() - start, 2)}))
        return paths
    return run(args)


if __name__ == "__main__":
    main()
