"""Deterministic synthetic COCO-format detection data: crowded shapes on cluttered backgrounds.

Each image holds many filled shapes of a few visually distinct classes (red circles, green
squares, blue triangles, yellow rings), from about 10 px to most of the image, on a mildly
textured background with line clutter. Objects often overlap: about half of them are placed
next to an earlier object (often of the same class) at a box IoU drawn from 0.3..0.7, which makes
duplicate suppression matter. Occlusion is exact: every box is the visible extent of its shape
after everything drawn over it, and a placement that would leave any object less than
``min_visible`` visible is rejected, so every visible shape fragment belongs to a labelled
object.

Category ids are deliberately non-contiguous (1, 3, 7, 12). Everything is drawn from numpy
generators seeded by (seed, split, image index): the same arguments give byte-identical files.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils


@dataclass(frozen=True)
class ShapeClass:
    category_id: int
    name: str
    color: tuple[int, int, int]


SHAPE_CLASSES: tuple[ShapeClass, ...] = (
    ShapeClass(1, "circle", (220, 50, 50)),
    ShapeClass(3, "square", (40, 170, 60)),
    ShapeClass(7, "triangle", (50, 90, 225)),
    ShapeClass(12, "ring", (235, 195, 30)),
)

_SPLITS = ("train", "val")
_EDGE, _BODY = 128, 255  # values in a rendered shape: darker outline, body


@dataclass
class SceneObject:
    """One drawn object.

    ``mask`` (h, w) bool marks its visible pixels within the window of its full (unoccluded)
    shape, whose top-left image pixel is (x, y); ``area`` is the full shape's pixel count.
    """

    category_id: int
    x: int
    y: int
    mask: np.ndarray
    area: int

    def visible_bbox(self) -> tuple[int, int, int, int] | None:
        """Visible extent as COCO (x, y, w, h) in image pixels, or None if nothing is visible."""
        rows = np.flatnonzero(self.mask.any(axis=1))
        cols = np.flatnonzero(self.mask.any(axis=0))
        if rows.size == 0:
            return None
        x0, y0 = self.x + int(cols[0]), self.y + int(rows[0])
        return x0, y0, int(cols[-1] - cols[0]) + 1, int(rows[-1] - rows[0]) + 1


def _render_shape(rng: np.random.Generator, name: str, w: int, h: int) -> np.ndarray:
    """Shape ``name`` fitting a w x h box (polygons randomly rotated, which may enlarge it).

    Returns (h', w') uint8 with 0 outside, _EDGE on the outline, _BODY inside.
    """
    edge = max(1, round(min(w, h) / 20))
    if name in ("circle", "ring"):
        canvas = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(canvas)
        draw.ellipse((0, 0, w - 1, h - 1), fill=_EDGE)
        draw.ellipse((edge, edge, w - 1 - edge, h - 1 - edge), fill=_BODY)
        if name == "ring":
            t = max(2, round(0.22 * min(w, h)))
            if w - 2 * t > 2 and h - 2 * t > 2:
                draw.ellipse((t, t, w - 1 - t, h - 1 - t), fill=_EDGE)
                draw.ellipse((t + edge, t + edge, w - 1 - t - edge, h - 1 - t - edge), fill=0)
        return np.asarray(canvas)

    if name == "square":
        pts = np.array([(0, 0), (w, 0), (w, h), (0, h)], dtype=np.float64)
        angle = rng.uniform(-20, 20)
    else:  # triangle
        pts = np.array([(0, h), (w / 2, 0), (w, h)], dtype=np.float64)
        angle = rng.uniform(0, 360)
    a = math.radians(angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    pts = (pts - pts.mean(axis=0)) @ rot.T
    pts -= pts.min(axis=0)
    size = np.ceil(pts.max(axis=0)).astype(int) + 1
    canvas = Image.new("L", (int(size[0]), int(size[1])), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in pts], fill=_BODY, outline=_EDGE, width=edge)
    return np.asarray(canvas)


def _box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """IoU of two (x, y, w, h) boxes."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(iw, 0.0) * max(ih, 0.0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _offset_for_iou(
    partner: tuple[float, ...], w: float, h: float, target: float, angle: float
) -> tuple[float, float]:
    """Top-left of a w x h box whose centre moves from the partner's centre along ``angle``
    until its IoU with the partner falls to ``target`` (bisection; IoU decreases with distance).
    """
    cx, cy = partner[0] + partner[2] / 2, partner[1] + partner[3] / 2
    dx, dy = math.cos(angle), math.sin(angle)

    def at(d: float) -> tuple[float, float, float, float]:
        return (cx + d * dx - w / 2, cy + d * dy - h / 2, w, h)

    lo, hi = 0.0, float(partner[2] + partner[3] + w + h)
    for _ in range(24):
        mid = (lo + hi) / 2
        if _box_iou(partner, at(mid)) > target:
            lo = mid
        else:
            hi = mid
    x, y, _, _ = at(lo)
    return x, y


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float32: a muted base colour, smooth low-frequency blotches, line clutter."""
    base = rng.uniform(85, 170) + rng.uniform(-20, 20, size=3)
    coarse = base + rng.normal(0, 16, size=(height // 40 + 2, width // 40 + 2, 3))
    coarse_img = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8))
    img = coarse_img.resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(8, 20))):
        tone = tuple(int(v) for v in np.clip(base + rng.uniform(-60, 60), 0, 255))
        pts = rng.uniform(0, 1, size=(int(rng.integers(2, 5)), 2)) * (width, height)
        draw.line([tuple(p) for p in pts], fill=tone, width=int(rng.integers(1, 4)))
    return np.asarray(img, dtype=np.float32).copy()


def draw_scene(
    rng: np.random.Generator,
    image_size: tuple[int, int] = (320, 320),
    num_objects: tuple[int, int] = (8, 24),
    size_range: tuple[int, int] | None = None,
    min_visible: float = 0.5,
    overlap_prob: float = 0.5,
    same_class_prob: float = 0.5,
    num_classes: int = 4,
    max_tries: int = 20,
) -> tuple[np.ndarray, list[SceneObject]]:
    """Draw one synthetic image.

    Args:
        rng: numpy generator (the only source of randomness).
        image_size: (H, W).
        num_objects: inclusive range of the number of objects attempted (placements that
            keep failing the occlusion rule are dropped, so a few images may have fewer).
        size_range: (min, max) long side of a shape in pixels, drawn log-uniformly;
            default (10, 0.7 * min(H, W)).
        min_visible: every object keeps at least this fraction of its pixels visible.
        overlap_prob: chance that an object is placed next to an earlier one at a box IoU
            drawn from U(0.3, 0.7).
        same_class_prob: chance that such an overlapping object has its partner's class.
        num_classes: use the first ``num_classes`` entries of :data:`SHAPE_CLASSES`.
        max_tries: placement attempts per object.

    Returns:
        image (H, W, 3) uint8 RGB and the objects in drawing order (all with visible pixels).
    """
    height, width = image_size
    if not 1 <= num_classes <= len(SHAPE_CLASSES):
        raise ValueError(f"num_classes must be in 1..{len(SHAPE_CLASSES)}, got {num_classes}")
    lo_size, hi_size = size_range or (10, int(0.7 * min(height, width)))
    if not 4 <= lo_size <= hi_size <= min(height, width):
        raise ValueError(f"size_range {size_range} must satisfy 4 <= min <= max <= image side")
    classes = SHAPE_CLASSES[:num_classes]

    img = _background(rng, height, width)
    ids = np.zeros((height, width), dtype=np.int32)  # 0 background, k + 1 object k
    objects: list[SceneObject] = []
    boxes: list[tuple[int, int, int, int]] = []  # full-shape (x, y, w, h) per object
    visible: list[int] = []  # visible pixel count per object
    target = int(rng.integers(num_objects[0], num_objects[1] + 1))

    for _ in range(target):
        for _try in range(max_tries):
            partner = None
            if objects and rng.random() < overlap_prob:
                partner = int(rng.integers(len(objects)))
            if partner is not None and rng.random() < same_class_prob:
                cls = next(c for c in classes if c.category_id == objects[partner].category_id)
            else:
                cls = classes[int(rng.integers(len(classes)))]

            if partner is not None:
                long_side = max(boxes[partner][2:]) * rng.uniform(0.8, 1.25)
            else:
                long_side = math.exp(rng.uniform(math.log(lo_size), math.log(hi_size)))
            long_side = min(max(long_side, lo_size), hi_size)
            short_side = long_side * rng.uniform(0.75, 1.0)
            w, h = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
            shape = _render_shape(rng, cls.name, max(2, round(w)), max(2, round(h)))
            sh, sw = shape.shape
            if sw > width or sh > height:
                continue

            if partner is not None:
                x, y = _offset_for_iou(
                    boxes[partner], sw, sh, rng.uniform(0.3, 0.7), rng.uniform(0, 2 * math.pi)
                )
            else:
                x, y = rng.uniform(0, width - sw), rng.uniform(0, height - sh)
            x = min(max(round(x), 0), width - sw)
            y = min(max(round(y), 0), height - sh)

            mask = shape > 0
            region = ids[y : y + sh, x : x + sw]
            area = int(mask.sum())
            under = region[mask]
            # Front: painted over everything, must not bury any earlier object.
            # Behind: only fills background pixels, must itself stay visible enough.
            lost = np.bincount(under, minlength=len(objects) + 1)[1:]
            full = np.array([o.area for o in objects], dtype=np.int64)
            front_ok = bool(np.all(np.array(visible, dtype=np.int64) - lost >= min_visible * full))
            behind_ok = int((under == 0).sum()) >= min_visible * area
            if front_ok and (not behind_ok or rng.random() < 0.5):
                paint = mask
                visible = [v - int(n) for v, n in zip(visible, lost, strict=True)]
            elif behind_ok:
                paint = mask & (region == 0)
            else:
                continue

            k = len(objects)
            region[paint] = k + 1
            color = np.clip(np.array(cls.color) + rng.uniform(-25, 25, size=3), 0, 255)
            patch = img[y : y + sh, x : x + sw]
            patch[paint & (shape == _BODY)] = color
            patch[paint & (shape == _EDGE)] = color * 0.55
            objects.append(SceneObject(cls.category_id, x, y, np.zeros(0), area))
            boxes.append((x, y, sw, sh))
            visible.append(int(paint.sum()))
            break

    for k, (obj, (x, y, sw, sh)) in enumerate(zip(objects, boxes, strict=True)):
        obj.mask = ids[y : y + sh, x : x + sw] == k + 1

    img += rng.integers(-7, 8, size=img.shape, dtype=np.int16)  # pixel noise everywhere
    img += 0.5
    return np.clip(img, 0, 255, out=img).astype(np.uint8), objects


def _write_split(
    out_dir: Path,
    split: str,
    num_images: int,
    seed: int,
    image_size: tuple[int, int],
    png_fraction: float,
    jpeg_quality: int,
    with_masks: bool,
    num_classes: int,
    scene_kwargs: dict,
) -> tuple[Path, Path]:
    img_dir = out_dir / split
    img_dir.mkdir(parents=True, exist_ok=True)
    height, width = image_size
    images, annotations = [], []
    for i in range(num_images):
        rng = np.random.default_rng([seed, _SPLITS.index(split), i])
        use_png = rng.random() < png_fraction
        pixels, objects = draw_scene(rng, image_size, num_classes=num_classes, **scene_kwargs)
        image_id = i + 1
        file_name = f"{image_id:06d}.{'png' if use_png else 'jpg'}"
        if use_png:
            Image.fromarray(pixels).save(img_dir / file_name, compress_level=1)
        else:
            Image.fromarray(pixels).save(img_dir / file_name, quality=jpeg_quality)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for obj in objects:
            bbox = obj.visible_bbox()
            if bbox is None:
                continue
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": obj.category_id,
                "bbox": [float(v) for v in bbox],
                "area": float(obj.mask.sum()),
                "iscrowd": 0,
            }
            if with_masks:
                full = np.zeros((height, width), dtype=np.uint8, order="F")
                sh, sw = obj.mask.shape
                full[obj.y : obj.y + sh, obj.x : obj.x + sw] = obj.mask
                rle = mask_utils.encode(full)
                ann["segmentation"] = {"size": [height, width], "counts": rle["counts"].decode()}
            annotations.append(ann)

    categories = [
        {"id": c.category_id, "name": c.name, "supercategory": "shape"}
        for c in SHAPE_CLASSES[:num_classes]
    ]
    dataset = {
        "info": {"description": f"o2f synthetic shapes ({split}, seed {seed})", "version": "1"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    ann_file = out_dir / "annotations" / f"{split}.json"
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps(dataset, separators=(",", ":")), encoding="utf-8")
    return img_dir, ann_file


def generate_synthetic_coco(
    out_dir: str | Path,
    num_train: int,
    num_val: int,
    image_size: tuple[int, int] = (320, 320),
    seed: int = 0,
    *,
    num_objects: tuple[int, int] = (8, 24),
    size_range: tuple[int, int] | None = None,
    min_visible: float = 0.5,
    overlap_prob: float = 0.5,
    same_class_prob: float = 0.5,
    num_classes: int = 4,
    png_fraction: float = 0.25,
    jpeg_quality: int = 92,
    with_masks: bool = False,
) -> dict[str, Path]:
    """Write a synthetic COCO-format dataset.

    Layout: ``out_dir/train/*.jpg|png``, ``out_dir/val/...``, ``out_dir/annotations/train.json``
    and ``val.json``. Boxes are COCO (x, y, w, h) of each object's visible pixels; ``area`` is
    the visible pixel count; ``iscrowd`` is 0. With ``with_masks`` each annotation also carries
    its visible mask as a compressed COCO RLE ``segmentation``.

    Args:
        out_dir: output root (created if needed).
        num_train, num_val: number of images per split.
        image_size: (H, W) of every image.
        seed: base seed; image i of a split depends only on (seed, split, i).
        png_fraction: share of images saved as PNG (the rest JPEG at ``jpeg_quality``).
        num_objects, size_range, min_visible, overlap_prob, same_class_prob, num_classes:
            see :func:`draw_scene`.

    Returns:
        paths: ``root``, ``train_images``, ``val_images``, ``train_ann``, ``val_ann``.
    """
    root = Path(out_dir)
    scene_kwargs = {
        "num_objects": num_objects,
        "size_range": size_range,
        "min_visible": min_visible,
        "overlap_prob": overlap_prob,
        "same_class_prob": same_class_prob,
    }
    paths: dict[str, Path] = {"root": root}
    for split, n in zip(_SPLITS, (num_train, num_val), strict=True):
        img_dir, ann_file = _write_split(
            root,
            split,
            n,
            seed,
            image_size,
            png_fraction,
            jpeg_quality,
            with_masks,
            num_classes,
            scene_kwargs,
        )
        paths[f"{split}_images"] = img_dir
        paths[f"{split}_ann"] = ann_file
    return paths
