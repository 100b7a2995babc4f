"""Pascal VOC XML annotations read as COCO-format dicts.

The annotations are a folder of ``.xml`` files (searched recursively; e.g. ``Annotations/``), or
a VOC image-set list (``ImageSets/Main/train.txt``: one image id per line) whose ids name the
files of the ``Annotations/`` folder of the same VOC root. The images are in ``img_dir``; when
that is not a folder, in ``JPEGImages/`` or ``images/`` beside the annotation folder, or in the
annotation folder itself.

Each file's ``filename`` names its image (an image with the file's own name and a usual
extension is looked for when that one does not exist), ``size/width`` and ``size/height`` its
size (missing or 0: read from the image's header). Each ``object`` has a ``name``, a
``bndbox`` (``xmin ymin xmax ymax``, integers or floats) and optionally ``difficult`` (absent:
0); ``truncated``, ``occluded``, ``pose`` and ``part`` are ignored.

As COCO (what :class:`o2f.data.CocoDetection` and the evaluation read):

* ``categories``: the ``categories`` given (those of the training set, or of a checkpoint) or
  else the object names found, sorted, with ids 1..C;
* ``images``: ids 1..N in the order of the sorted file paths, ``file_name`` relative to the
  image folder;
* ``annotations``: VOC's pixel convention is 1-based and inclusive (a box covering a whole
  W-pixel-wide image is xmin=1, xmax=W), so ``bbox`` = [xmin - 1, ymin - 1, xmax - xmin + 1,
  ymax - ymin + 1] (as detectron2 reads VOC), clipped to the image; ``area`` = its w * h;
  ``difficult`` objects get ``iscrowd`` = 1: not training targets, and ignored by the COCO
  evaluation (a detection matching one neither counts as a true nor as a false positive),
  as crowd regions are.

A file that is not XML, or an object without a ``name`` or a complete numeric ``bndbox``, is an
error naming the file (and line, or the object's index in the file: ``object[2]``). Objects
whose name is not a category, and boxes that are empty once clipped to the image, are left out
with a warning naming them (an error with ``strict``).
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from o2f.data.errors import DataError, report_records

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def voc_files(ann_path: str | Path) -> list[Path]:
    """The ``.xml`` files of a folder (recursively, sorted), or those an image-set list names."""
    path = Path(ann_path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() == ".xml" and p.is_file())
        if not files:
            raise DataError(f"{path}: no .xml files in this folder (Pascal VOC annotations)")
        return files
    if path.is_file() and path.suffix.lower() == ".txt":
        ann_dir = voc_annotation_folder(path)
        if ann_dir is None:
            raise DataError(f"{path}: an image-set list, but no Annotations/ folder in a folder "
                            "above it")
        ids = [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines()
               if line.strip()]
        files = [ann_dir / f"{i}.xml" for i in ids]
        missing = [(n, f) for n, f in enumerate(files, start=1) if not f.is_file()]
        if missing:
            n, f = missing[0]
            raise DataError(f"{path}:{n}: {f} does not exist ({len(missing)} of {len(files)} "
                            "listed ids have no annotation file)")
        if not files:
            raise DataError(f"{path}: lists no image ids")
        return files
    raise DataError(f"{path}: not a folder of Pascal VOC .xml files or an ImageSets .txt list")


def voc_annotation_folder(list_file: Path) -> Path | None:
    """The ``Annotations`` folder of the VOC root above an image-set list, if any."""
    for folder in list_file.resolve().parents:
        if (folder / "Annotations").is_dir():
            return folder / "Annotations"
    return None


def _image_folder(ann_path: Path, img_dir: str | Path | None) -> Path:
    if img_dir not in (None, "") and Path(img_dir).is_dir():
        return Path(img_dir)
    ann_dir = ann_path if ann_path.is_dir() else voc_annotation_folder(ann_path) or ann_path.parent
    for candidate in (ann_dir.parent / "JPEGImages", ann_dir.parent / "images", ann_dir):
        if candidate.is_dir() and any(p.suffix.lower() in IMAGE_EXTENSIONS
                                      for p in candidate.iterdir()):
            if img_dir not in (None, ""):
                logger.warning("%s: the image folder %s does not exist; reading the images "
                               "from %s", ann_path, img_dir, candidate)
            return candidate
    given = f"{img_dir} is not a folder and " if img_dir not in (None, "") else ""
    raise DataError(f"{ann_path}: {given}no JPEGImages/ or images/ folder of images beside the "
                    "annotations: give the image folder (data.*.img_dir)")


def _find_image(img_dir: Path, filename: str, stem: str) -> str:
    """The image's name relative to ``img_dir``: ``filename`` if it exists, else ``filename``
    or ``stem`` with a usual extension; ``filename`` (or ``stem.jpg``) when none exists."""
    extensions = IMAGE_EXTENSIONS + tuple(ext.upper() for ext in IMAGE_EXTENSIONS)
    candidates = [filename] if filename else []
    if filename and not Path(filename).suffix:
        candidates += [filename + ext for ext in extensions]
    candidates += [stem + ext for ext in extensions]
    candidates += [Path(filename).name] if filename and Path(filename).name != filename else []
    for name in candidates:
        if (img_dir / name).is_file():
            return Path(name).as_posix()
    return filename or f"{stem}.jpg"


def _number(obj: ET.Element, tag: str, where: str) -> float:
    text = obj.findtext(tag)
    if text is None or not text.strip():
        raise DataError(f"{where}: no <{tag}> in its <bndbox>")
    try:
        value = float(text)
    except ValueError as e:
        raise DataError(f"{where}: <{tag}> is not a number: {text.strip()!r}") from e
    if not math.isfinite(value):
        raise DataError(f"{where}: <{tag}> is not finite: {text.strip()!r}")
    return value


def _difficult(obj: ET.Element, where: str) -> int:
    text = (obj.findtext("difficult") or "0").strip().lower()
    if text in ("", "0", "false", "no"):
        return 0
    if text in ("1", "true", "yes"):
        return 1
    try:
        return int(float(text) != 0)
    except ValueError as e:
        raise DataError(f"{where}: <difficult> must be 0 or 1, got {text!r}") from e


def _size(root: ET.Element) -> tuple[int, int] | None:
    """(width, height) of ``<size>``, or None when missing, non-numeric or not positive."""
    size = root.find("size")
    if size is None:
        return None
    try:
        w, h = int(float(size.findtext("width", ""))), int(float(size.findtext("height", "")))
    except ValueError:
        return None
    return (w, h) if w > 0 and h > 0 else None


def parse_voc_file(file: Path, shown: str) -> tuple[str, tuple[int, int] | None, list[dict]]:
    """``filename``, ``size`` ((width, height) or None) and the objects of one VOC file, each
    ``{"name", "box": (xmin, ymin, xmax, ymax) as written, "difficult", "where"}``."""
    try:
        root = ET.parse(file).getroot()
    except ET.ParseError as e:
        line = e.position[0] if getattr(e, "position", None) else "?"
        raise DataError(f"{shown}:{line}: not valid XML: {e}") from e
    except OSError as e:
        raise DataError(f"{shown}: cannot read: {e}") from e
    if root.tag.lower() != "annotation":
        raise DataError(f"{shown}: not a Pascal VOC annotation (root element <{root.tag}>, "
                        "expected <annotation>)")
    objects = []
    for i, obj in enumerate(root.findall("object")):
        where = f"{shown}: object[{i}]"
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DataError(f"{where}: no <name>")
        where += f" ({name})"
        box = obj.find("bndbox")
        if box is None:
            raise DataError(f"{where}: no <bndbox>")
        coords = tuple(_number(box, tag, where) for tag in ("xmin", "ymin", "xmax", "ymax"))
        objects.append({"name": name, "box": coords, "difficult": _difficult(obj, where),
                        "where": where})
    return (root.findtext("filename") or "").strip(), _size(root), objects


def read_voc(
    ann_path: str | Path, img_dir: str | Path | None = None,
    categories: Sequence[dict] | None = None, strict: bool = False,
) -> tuple[dict, Path]:
    """Pascal VOC annotations as a COCO-format dict (see the module docstring), and the
    folder of the images.

    Args:
        ann_path: a folder of ``.xml`` files, or an ``ImageSets`` ``.txt`` list.
        img_dir: the images (see the module docstring when it is not a folder).
        categories: ``[{"id", "name"}, ...]`` to use (e.g. the training set's); objects of
            other names are left out. None: the names found, sorted, ids 1..C.
        strict: left-out objects and images are errors rather than warnings.

    Raises:
        DataError: a file or record is bad; the message names the file and the object.
    """
    from o2f.data.coco import read_image_size

    path = Path(ann_path)
    files = voc_files(path)
    images_dir = _image_folder(path, img_dir)
    parsed = []
    for file in files:
        shown = str(file)
        filename, size, objects = parse_voc_file(file, shown)
        parsed.append((file, shown, filename, size, objects))

    if categories is None:
        names = sorted({o["name"] for *_, objects in parsed for o in objects})
        if not names:
            raise DataError(f"{path}: no <object> in any of the {len(files)} .xml files")
        categories = [{"id": i, "name": n} for i, n in enumerate(names, start=1)]
    cat_of = {str(c["name"]): int(c["id"]) for c in categories}

    images, annotations, left_out, no_size = [], [], [], []
    for file, shown, filename, size, objects in parsed:
        name = _find_image(images_dir, filename, file.stem)
        if size is None:
            try:
                size = read_image_size(images_dir / name)
            except OSError as e:
                no_size.append(f"{shown}: no <size> and {e}")
                continue
        width, height = size
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for obj in objects:
            if obj["name"] not in cat_of:
                left_out.append(f"{obj['where']}: not one of the categories")
                continue
            xmin, ymin, xmax, ymax = obj["box"]
            x1, y1 = min(max(xmin - 1, 0.0), width), min(max(ymin - 1, 0.0), height)
            x2, y2 = min(max(xmax, 0.0), width), min(max(ymax, 0.0), height)
            if x2 <= x1 or y2 <= y1:
                left_out.append(f"{obj['where']}: an empty box once in the {width}x{height} "
                                f"image ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g})")
                continue
            w, h = x2 - x1, y2 - y1
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": cat_of[obj["name"]], "bbox": [x1, y1, w, h],
                                "area": w * h, "iscrowd": obj["difficult"]})
    report_records(str(path), "image(s) without a size, left out", no_size, strict, logger)
    report_records(str(path), "object(s) left out", left_out, strict, logger,
                   f" (categories: {', '.join(cat_of)})")
    if not images:
        raise DataError(f"{path}: none of the {len(files)} annotation files has a usable image")
    return {"images": images, "annotations": annotations,
            "categories": [{"id": int(c["id"]), "name": str(c["name"])} for c in categories]
            }, images_dir
