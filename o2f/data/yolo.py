"""Ultralytics YOLO datasets (a ``data.yaml``) read as COCO-format dicts, and written from them.

The ``data.yaml`` (Ultralytics' keys):

* ``path``: the dataset root, absolute or relative to the yaml's folder (then to the working
  directory); absent or not found: the yaml's folder.
* ``train``, ``val`` (and e.g. ``test``): a folder of images (searched recursively), a ``.txt``
  file listing image paths (``./x`` relative to the list's folder, others to the root), or a
  list of these; relative to the root. An entry ``../x`` that does not exist is also looked up
  as ``x`` (the layout Roboflow exports write), as Ultralytics does.
* ``names``: the class names, a list (class ``i`` is ``names[i]``) or a mapping
  ``{index: name}``; ``nc``, when present, must equal their number.

The labels of an image ``.../images/<split>/a.jpg`` are ``.../labels/<split>/a.txt``: the last
``images`` folder of the path replaced by ``labels`` (no ``images`` folder in the path:
``a.txt`` beside the image). One object per line, coordinates normalised to [0, 1] by the
image's width and height: ``class cx cy w h`` (a box) or ``class x1 y1 x2 y2 ...`` (a polygon
of >= 3 points, read as an instance mask). No label file, or an empty one: an image without
objects.

As COCO (what :class:`o2f.data.CocoDetection` and the evaluation read):

* ``categories``: ``id`` = the YOLO class index, ``name`` from ``names``;
* ``images``: ids 1..N in sorted path order, ``file_name`` relative to the returned image root,
  ``width`` / ``height`` from the image file's header (after its EXIF orientation);
* ``annotations``: a box ``cx cy w h`` of a W x H image is ``bbox`` = [(cx - w/2) W,
  (cy - h/2) H, w W, h H] (e.g. ``0 0.5 0.5 0.25 0.5`` of a 64 x 32 image is [24, 8, 16, 16]),
  ``area`` = w W h H; a polygon's ``segmentation`` is its points in pixels, its ``bbox`` their
  extent and its ``area`` the polygon's; ``iscrowd`` 0.

A line that is not a box or a polygon, a value that is not a number, a class not in ``names``
or coordinates outside [0, 1] (beyond rounding) is an error naming the file and line. A box of
zero width or height is dropped with a warning naming them (an error with ``strict``).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path, PurePath
from typing import Any

import yaml

from o2f.data.errors import DataError, report_records

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
_TOLERANCE = 1e-3  # normalised coordinates may exceed [0, 1] by this much (rounding): clipped


def read_data_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping of a ``data.yaml``; a :class:`DataError` naming the file if it is not one."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DataError(f"{path}: cannot read the YOLO data.yaml: "
                        + " ".join(str(e).split())) from e
    if not isinstance(data, dict):
        raise DataError(f"{path}: a YOLO data.yaml must be a mapping with 'names' and the "
                        "split folders ('train', 'val'), got "
                        f"{type(data).__name__}")
    return data


def yolo_categories(data: dict[str, Any], path: str | Path) -> list[dict]:
    """COCO ``categories`` (id = class index, name) of a data.yaml's ``names``."""
    names = data.get("names")
    if isinstance(names, list):
        pairs = list(enumerate(names))
    elif isinstance(names, dict):
        pairs = list(names.items())
    else:
        raise DataError(f"{path}: 'names' must be a list of class names or a mapping "
                        f"{{index: name}}, got {names!r}")
    if not pairs:
        raise DataError(f"{path}: 'names' is empty")
    for index, name in pairs:
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise DataError(f"{path}: names: class index {index!r} is not an integer >= 0")
        if name is None or isinstance(name, dict | list):
            raise DataError(f"{path}: names[{index}]: not a class name: {name!r}")
    nc = data.get("nc")
    if nc is not None and nc != len(pairs):
        raise DataError(f"{path}: nc is {nc!r} but 'names' has {len(pairs)} classes")
    return [{"id": int(i), "name": str(n)} for i, n in sorted(pairs)]


def dataset_root(data: dict[str, Any], path: Path) -> Path:
    """The folder the split entries are relative to (see the module docstring)."""
    here = path.parent
    given = data.get("path")
    if given in (None, ""):
        return here
    root = Path(str(given)).expanduser()
    if root.is_absolute():
        if root.is_dir():
            return root
        logger.warning("%s: path %s is not a folder; reading the splits relative to %s",
                       path, root, here)
        return here
    for candidate in (here / root, Path.cwd() / root):
        if candidate.is_dir():
            return candidate
    return here


def _resolve(entry: str, root: Path) -> Path:
    p = Path(entry).expanduser()
    if p.is_absolute():
        return p
    found = root / p
    if not found.exists() and entry.startswith("../") and (root / entry[3:]).exists():
        return root / entry[3:]
    return found


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS


def split_images(data: dict[str, Any], split: str, path: Path, root: Path,
                 img_dir: Path | None = None) -> list[Path]:
    """The image files of ``split`` of a data.yaml, sorted, without duplicates.

    ``img_dir`` (when a folder) is used if the split's entry does not exist."""
    if data.get(split) in (None, "", []):
        keys = ", ".join(k for k in ("train", "val", "test") if data.get(k))
        raise DataError(f"{path}: no '{split}' split (the data.yaml has: {keys or 'none'})")
    entries = data[split] if isinstance(data[split], list) else [data[split]]
    images: set[Path] = set()
    for entry in entries:
        p = _resolve(str(entry), root)
        if p.is_dir():
            images.update(f for f in p.rglob("*") if _is_image(f) and f.is_file())
        elif p.is_file() and p.suffix.lower() == ".txt":
            images.update(_listed_images(p, root))
        elif p.is_file() and _is_image(p):
            images.add(p)
        elif img_dir is not None and img_dir.is_dir():
            logger.warning("%s: %s: %s does not exist; reading the images of %s instead",
                           path, split, p, img_dir)
            images.update(f for f in img_dir.rglob("*") if _is_image(f) and f.is_file())
        else:
            raise DataError(f"{path}: {split}: {entry} is not an image folder or a .txt list of "
                            f"images (looked for {p})")
    return sorted(images)


def _listed_images(list_file: Path, root: Path) -> list[Path]:
    out = []
    for line in list_file.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("./"):
            out.append(list_file.parent / line[2:])
            continue
        p = Path(line)
        out.append(p if p.is_absolute() or not (root / p).exists() else root / p)
    return out


def label_path(image: Path) -> Path:
    """The label file of an image: the last ``images`` folder of its path replaced by
    ``labels``, suffix ``.txt`` (none: beside the image)."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):  # folders only, not the file name
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def polygon_area(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Area of a simple polygon (shoelace formula)."""
    n = len(xs)
    twice = sum(xs[i] * ys[(i + 1) % n] - xs[(i + 1) % n] * ys[i] for i in range(n))
    return abs(twice) / 2.0


def _parse_line(line: str, where: str, class_ids: set[int]) -> tuple[int, list[float]]:
    fields = line.split()
    n = len(fields)
    if n != 5 and (n < 7 or n % 2 == 0):
        raise DataError(f"{where}: expected 'class cx cy w h' or a polygon 'class x1 y1 x2 y2 "
                        f"x3 y3 ...', got {n} value(s): {line.strip()[:80]!r}")
    try:
        cls_value = float(fields[0])
        values = [float(v) for v in fields[1:]]
    except ValueError as e:
        raise DataError(f"{where}: not a number: {e}") from e
    if not cls_value.is_integer() or int(cls_value) not in class_ids:
        raise DataError(f"{where}: class {fields[0]} is not one of the data.yaml's class "
                        f"indices ({_span(class_ids)})")
    bad = [v for v in values if not math.isfinite(v) or not -_TOLERANCE <= v <= 1 + _TOLERANCE]
    if bad:
        raise DataError(f"{where}: coordinates must be normalised to [0, 1] by the image size, "
                        f"got {bad[0]!r}")
    return int(cls_value), [min(max(v, 0.0), 1.0) for v in values]


def _span(ids: set[int]) -> str:
    s = sorted(ids)
    return f"{s[0]}..{s[-1]}" if s == list(range(s[0], s[-1] + 1)) else ", ".join(map(str, s))


def read_labels(label_file: Path, width: int, height: int, class_ids: set[int],
                shown: str | None = None) -> tuple[list[dict], list[str]]:
    """Annotations (no ids) of one label file of a ``width`` x ``height`` image, and the
    ``file:line: why`` of each box dropped for a zero width or height."""
    shown = shown or str(label_file)
    anns, dropped = [], []
    try:
        text = label_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [], []
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{shown}: cannot read the label file: {e}") from e
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{shown}:{number}"
        cls, v = _parse_line(line, where, class_ids)
        if len(v) == 4:
            cx, cy, w, h = v
            bbox = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
            ann = {"category_id": cls, "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0}
        else:
            xs = [x * width for x in v[0::2]]
            ys = [y * height for y in v[1::2]]
            x0, y0 = min(xs), min(ys)
            bbox = [x0, y0, max(xs) - x0, max(ys) - y0]
            points = [c for xy in zip(xs, ys, strict=True) for c in xy]
            ann = {"category_id": cls, "bbox": bbox, "area": polygon_area(xs, ys),
                   "iscrowd": 0, "segmentation": [points]}
        if bbox[2] <= 0 or bbox[3] <= 0:
            dropped.append(f"{where}: a box of width or height 0")
            continue
        anns.append(ann)
    return anns, dropped


def read_yolo(
    yaml_path: str | Path, split: str = "train", img_dir: str | Path | None = None,
    strict: bool = False,
) -> tuple[dict, Path]:
    """A YOLO dataset's ``split`` as a COCO-format dict (see the module docstring), and the
    folder its ``file_name`` entries are relative to.

    ``img_dir`` is only a fallback, for a split entry of the yaml that does not exist. An image
    whose header cannot be read is left out with a warning (an error with ``strict``).

    Raises:
        DataError: the yaml, a split entry or a label line is bad; the message names the file
            (and the line).
    """
    path = Path(yaml_path)
    data = read_data_yaml(path)
    categories = yolo_categories(data, path)
    root = dataset_root(data, path)
    fallback = Path(img_dir) if img_dir not in (None, "") else None
    files = split_images(data, split, path, root, fallback)
    if not files:
        raise DataError(f"{path}: {split}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
    base = _common_root(root, files)
    from o2f.data.coco import read_image_size

    class_ids = {c["id"] for c in categories}
    images, annotations, dropped, unreadable = [], [], [], []
    for file in files:
        try:
            width, height = read_image_size(file)
        except OSError as e:
            unreadable.append(str(e))
            continue
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": _relative(file, base),
                       "width": width, "height": height})
        labels = label_path(file)
        anns, bad = read_labels(labels, width, height, class_ids)
        dropped += bad
        for ann in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    report_records(f"{path}: {split}", "image(s) whose size cannot be read, left out",
                   unreadable, strict, logger)
    report_records(f"{path}: {split}", "label(s) not used", dropped, strict, logger)
    if not images:
        raise DataError(f"{path}: {split}: none of the {len(files)} images can be read")
    return {"images": images, "annotations": annotations, "categories": categories}, base


def _common_root(root: Path, files: Sequence[Path]) -> Path:
    """``root`` when every file is under it, else the files' common folder."""
    if all(_under(f, root) for f in files):
        return root
    return Path(os.path.commonpath([str(f.parent) for f in files]))


def _under(file: Path, folder: Path) -> bool:
    try:
        file.relative_to(folder)
        return True
    except ValueError:
        return False


def _relative(file: Path, base: Path) -> str:
    return file.relative_to(base).as_posix() if _under(file, base) else str(file)


def _number(v: float) -> str:
    """A normalised coordinate for a label file: 6 decimals, trailing zeros dropped."""
    text = f"{v:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def yolo_lines(anns: Sequence[dict], image: dict, label_of: dict[int, int]
               ) -> tuple[list[str], int]:
    """The label lines of the annotations ``anns`` of one COCO image (boxes, or a polygon for
    an annotation with a one-part polygon ``segmentation``) and the number of crowd / ignore
    annotations left out (YOLO has none)."""
    w, h = image["width"], image["height"]
    lines, skipped = [], 0
    for ann in anns:
        if ann.get("iscrowd", 0):
            skipped += 1
            continue
        cls = label_of[ann["category_id"]]
        segm = ann.get("segmentation")
        if isinstance(segm, list) and len(segm) == 1 and len(segm[0]) >= 6:
            pts = segm[0]
            coords = [min(max(v / (w if i % 2 == 0 else h), 0.0), 1.0)
                      for i, v in enumerate(pts)]
        else:
            x, y, bw, bh = ann["bbox"]
            x1, y1 = max(x, 0.0), max(y, 0.0)
            x2, y2 = min(x + bw, w), min(y + bh, h)
            if x2 <= x1 or y2 <= y1:
                continue
            coords = [(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h]
        lines.append(" ".join([str(cls), *map(_number, coords)]))
    return lines, skipped


def _target_names(file_names: Sequence[str]) -> list[PurePath]:
    """Where each image goes under ``images/<split>/``: its base name when those are unique,
    else its relative path with any ``images`` folder renamed (the label path rule replaces
    the last ``images`` folder)."""
    names = [PurePath(f).name for f in file_names]
    if len(set(names)) == len(names):
        return [PurePath(n) for n in names]
    return [PurePath(*("images_" if part == "images" else part
                       for part in PurePath(f).parts if part not in ("/", "..", ".")))
            for f in file_names]


def write_yolo(
    data: dict, img_dir: str | Path, out_dir: str | Path, split: str = "train",
    copy_images: bool = False,
) -> dict[str, Any]:
    """Write a COCO-format dict as the ``split`` of a YOLO dataset in ``out_dir``:
    ``images/<split>/`` (symbolic links to the images of ``img_dir``, or copies with
    ``copy_images``; by base name when those are unique), ``labels/<split>/*.txt`` and
    ``data.yaml`` (merged into an existing one, so converting train then val makes one
    dataset). Classes are the categories in id order,
    numbered 0..C-1; crowd (ignore, VOC ``difficult``) annotations are left out.

    Returns:
        counts: ``images``, ``labels`` (lines written), ``skipped_crowd``.
    """
    out_dir, img_dir = Path(out_dir), Path(img_dir)
    cats = sorted(data["categories"], key=lambda c: c["id"])
    label_of = {c["id"]: i for i, c in enumerate(cats)}
    names = [str(c["name"]) for c in cats]
    yaml_path = out_dir / "data.yaml"
    spec: dict[str, Any] = read_data_yaml(yaml_path) if yaml_path.is_file() else {}
    if spec.get("names") not in (None, names):
        raise DataError(f"{yaml_path}: its names {spec['names']} are not this dataset's "
                        f"{names}; write to another folder")
    per_image: dict[int, list[dict]] = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        per_image[ann["image_id"]].append(ann)
    counts = {"images": 0, "labels": 0, "skipped_crowd": 0}
    targets = _target_names([img["file_name"] for img in data["images"]])
    for image, name in zip(data["images"], targets, strict=True):
        rel = PurePath(image["file_name"])
        target = out_dir / "images" / split / name
        target.parent.mkdir(parents=True, exist_ok=True)
        source = (img_dir / rel).resolve()
        if target.is_symlink() or target.exists():
            target.unlink()
        if copy_images:
            shutil.copy2(source, target)
        else:
            try:
                target.symlink_to(source)
            except OSError:  # no symbolic links here (e.g. Windows without the privilege)
                shutil.copy2(source, target)
        lines, skipped = yolo_lines(per_image[image["id"]], image, label_of)
        labels = label_path(target)
        labels.parent.mkdir(parents=True, exist_ok=True)
        labels.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        counts["images"] += 1
        counts["labels"] += len(lines)
        counts["skipped_crowd"] += skipped
    spec.update({"path": str(out_dir.resolve()), split: f"images/{split}", "names": names})
    yaml_path.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True),
                         encoding="utf-8")
    return counts
