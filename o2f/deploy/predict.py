"""Detections on single images: the :class:`Detector` API behind ``o2f predict``.

>>> det = Detector.from_checkpoint("work_dirs/r50_1x/last.pth")
>>> out = det.predict("street.jpg")        # or a PIL image, or an H x W x 3 uint8 RGB array
>>> out["boxes"], out["scores"], out["labels"], out["names"]
>>> out["masks"]                            # a mask model (model.mask.enabled) only

Each image is resized as at test time (short side ``data.test_short``, long side at most
``data.max_size``, the evaluation transform itself), run through the model without NMS, and
its boxes (and masks) are mapped back to the original image's pixels.
``predict(image, tile=640, overlap=0.2)`` runs a large image in tiles instead (sliced
inference, merged without NMS: :mod:`o2f.deploy.tiling`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from o2f.config import Config
from o2f.data import build_transforms, load_rgb_image
from o2f.models.fuse import for_inference

ImageInput = str | Path | Image.Image | np.ndarray | Tensor


def image_to_tensor(image: ImageInput) -> Tensor:
    """A path, PIL image, H x W x 3 uint8 RGB array or (3, H, W) uint8 tensor -> uint8 (3, H, W).

    Paths are opened with their EXIF orientation applied (as in the datasets).
    """
    if isinstance(image, str | Path):
        image = load_rgb_image(image)
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError("an image array must be H x W x 3 uint8 RGB, got "
                             f"shape {image.shape} dtype {image.dtype}")
        image = np.ascontiguousarray(image)
        if not image.flags.writeable:  # e.g. np.asarray(PIL image); torch wants writable
            image = image.copy()
        return torch.from_numpy(image).permute(2, 0, 1)
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
            raise ValueError("an image tensor must be (3, H, W) uint8 RGB, got "
                             f"shape {tuple(image.shape)} dtype {image.dtype}")
        return image
    raise TypeError(f"cannot read an image from a {type(image).__name__}")


class Detector:
    """A detector ready for inference on single images.

    Args:
        model: an O2FDetector (put in eval mode on ``device``), or an exported model
            (:class:`o2f.deploy.backends.ExportedModel`: ONNX Runtime / OpenVINO, CPU).
        cfg: its config (test-time resize and selection).
        meta: checkpoint meta; ``class_names`` give the ``names`` of detections.
        device: where to run (default: CUDA when available, else CPU).
    """

    def __init__(self, model: torch.nn.Module, cfg: Config, meta: dict[str, Any] | None = None,
                 device: str | torch.device | None = None) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        exported = not isinstance(model, torch.nn.Module)
        if exported:
            self.device = torch.device("cpu")
        # eval-only copy, BatchNorm folded; an export runs as it is
        self.model = model if exported else for_inference(model.to(self.device))
        self.cfg = cfg
        self.meta = dict(meta or {})
        num_classes = model.num_classes if exported else self.model.head.num_classes
        names = self.meta.get("class_names") or [str(i) for i in range(num_classes)]
        if len(names) != num_classes:
            raise ValueError(f"{len(names)} class names for a model of {num_classes} classes")
        self.class_names: list[str] = [str(n) for n in names]
        short = cfg.data.test_short
        self.transform = build_transforms(False, cfg.data.max_size, (short, short))

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, config: str | None = None,
        overrides: Sequence[str] = (), device: str | torch.device | None = None,
    ) -> Detector:
        """Load a ``.pth`` checkpoint or a ``.safetensors`` weights file (safe loading), or
        an export: ``.onnx`` (fp32 or int8) or an OpenVINO ``.xml`` (boxes only, on the CPU).

        Args:
            path: the weights or the export.
            config: a config name or path; None (or "-") uses the config stored with the
                weights.
            overrides: key=value config overrides, e.g. ``["test.score_thr=0.3"]``.
            device: where to run.
        """
        from o2f.builders import detector_from_checkpoint
        from o2f.deploy.backends import is_exported_model, load_exported

        config = None if config in (None, "-") else config
        load = load_exported if is_exported_model(path) else detector_from_checkpoint
        model, cfg, meta = load(path, config, tuple(overrides))
        return cls(model, cfg, meta, device)

    @torch.no_grad()
    def predict(self, image: ImageInput, score_thr: float | None = None,
                tile: int | None = None, overlap: float = 0.2,
                tile_batch: int = 8) -> dict[str, Any]:
        """Detect objects in one image, whole or in tiles (sliced inference, for images much
        larger than the model's test size).

        Args:
            image: a path, a PIL image, an H x W x 3 uint8 RGB array or a (3, H, W) uint8
                tensor.
            score_thr: keep detections scoring above this (default: ``test.score_thr``;
                a lower value than that has no effect).
            tile: None: the whole image, resized once. Else the side in ORIGINAL-image pixels
                of square tiles cut from it (:mod:`o2f.deploy.tiling`); each tile is resized
                by the model's test resize exactly as a whole image would be (short side
                ``data.test_short``, long side at most ``data.max_size``: a 400 px tile at
                test_short 800 is enlarged 2x), run without NMS, and each detection is kept
                only from the tile whose core (the tile less half the overlap on each inner
                side) holds its box centre. Each tile contributes up to
                ``test.max_per_img`` detections.
            overlap: the share of ``tile`` that adjacent tiles have in common, in [0, 1).
            tile_batch: tiles run through the model per batch.

        Returns:
            ``boxes`` float32 (K, 4) x1, y1, x2, y2 in the original image's pixels, ``scores``
            (K,), ``labels`` int64 (K,) (CPU tensors) and ``names`` (K category names),
            highest score first; from a mask model also ``masks`` bool (K, H, W) at the
            original image's size.
        """
        original = image_to_tensor(image)
        if tile is None:
            resized, target = self.transform(original, {})
            det = self.model([resized.to(self.device)], [target])[0]
        else:
            det = self._predict_tiles(original, tile, overlap, tile_batch)
        scores = det["scores"]
        order = scores.argsort(descending=True, stable=True)  # already sorted; made explicit
        if score_thr is not None:
            order = order[scores[order] > score_thr]
        keys = ("boxes", "scores", "labels", "masks")
        out: dict[str, Any] = {k: det[k][order].cpu() for k in keys if k in det}
        if "masks" in out:
            out["masks"] = out["masks"].bool()
        out["names"] = [self.class_names[i] for i in out["labels"].tolist()]
        return out

    def _predict_tiles(self, image: Tensor, tile: int, overlap: float,
                       batch: int) -> dict[str, Tensor]:
        """Detections of a uint8 (3, H, W) image in tiles, merged by core ownership."""
        from o2f.deploy.tiling import merge_tiles, tile_grid

        height, width = image.shape[-2:]
        tiles, cores = tile_grid(height, width, tile, overlap)
        per_tile: list[dict[str, Tensor]] = []
        for i in range(0, len(tiles), max(1, batch)):
            inputs, targets = [], []
            for x0, y0, x1, y1 in tiles[i : i + batch].tolist():
                resized, target = self.transform(image[:, y0:y1, x0:x1], {})
                inputs.append(resized.to(self.device))
                targets.append({**target, "orig_size": (y1 - y0, x1 - x0)})
            per_tile += self.model(inputs, targets)
        return merge_tiles(per_tile, tiles, cores, height, width)

    def draw(self, image: ImageInput, result: dict[str, Any]) -> Tensor:
        """The image (uint8 (3, H, W)) with ``result``'s boxes drawn, labelled "name score",
        one colour per class, over its masks (if any)."""
        from o2f.visualize import draw_detections

        return draw_detections(image_to_tensor(image), result["boxes"], result["labels"],
                               result["scores"], self.class_names, score_thr=0.0,
                               masks=result.get("masks"))


def detections_to_json(result: dict[str, Any], image: str, size: tuple[int, int]) -> dict:
    """A :meth:`Detector.predict` result as plain JSON data (``size`` is (height, width)).

    With masks each detection also has ``segmentation``, its mask as a compressed COCO RLE
    ``{"size": [height, width], "counts": str}`` (``pycocotools.mask.decode`` reads it).
    """
    dets = [
        {"box": [round(float(v), 2) for v in box], "score": round(float(score), 4),
         "label": int(label), "name": name}
        for box, score, label, name in zip(result["boxes"].tolist(), result["scores"].tolist(),
                                           result["labels"].tolist(), result["names"],
                                           strict=True)
    ]
    if "masks" in result:
        from o2f.evaluation.coco import encode_masks

        for det, rle in zip(dets, encode_masks(result["masks"]), strict=True):
            det["segmentation"] = rle
    return {"image": image, "height": int(size[0]), "width": int(size[1]), "detections": dets}


def format_json(data: dict) -> str:
    """:func:`detections_to_json` output as text with one detection per line."""
    head = json.dumps({k: v for k, v in data.items() if k != "detections"})[:-1]
    dets = ",\n  ".join(json.dumps(d) for d in data["detections"])
    return f'{head}, "detections": [' + (f"\n  {dets}\n" if dets else "") + "]}\n"


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def find_images(inputs: Sequence[str | Path]) -> list[tuple[Path, Path]]:
    """Image files named by ``inputs`` (files, or folders searched recursively for
    jpg/jpeg/png/bmp/webp, sorted), each with a distinct output stem: the file name for a
    file, the path relative to the folder for a folder's images, without the suffix. Names
    that would clash keep their suffix (``a_jpg``, ``a_png``), then get a counter (``a_png_2``).

    Raises:
        FileNotFoundError: an input that does not exist.
    """
    found: list[tuple[Path, Path]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files = sorted(p for p in item.rglob("*")
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            found += [(p, p.relative_to(item)) for p in files]
        elif item.is_file():
            found.append((item, Path(item.name)))
        else:
            raise FileNotFoundError(f"no such image file or folder: {item}")
    stems = [rel.with_suffix("") for _, rel in found]
    clashes = {s for s, n in Counter(stems).items() if n > 1}
    stems = [s.with_name(f"{s.name}_{rel.suffix.lstrip('.').lower()}") if s in clashes else s
             for s, (_, rel) in zip(stems, found, strict=True)]
    seen: Counter = Counter()
    unique = []
    for s in stems:
        seen[s] += 1
        unique.append(s if seen[s] == 1 else s.with_name(f"{s.name}_{seen[s]}"))
    return [(path, s) for (path, _), s in zip(found, unique, strict=True)]
