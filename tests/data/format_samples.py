"""Small hand-made YOLO and Pascal VOC datasets (tiny PNGs) for the format tests."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = [(230, 40, 40), (40, 200, 60), (50, 80, 230)]


def write_png(path: Path, size: tuple[int, int], boxes=()) -> Path:
    """A ``size`` (w, h) PNG with each (x1, y1, x2, y2, class) box drawn filled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, (128, 128, 128))
    draw = ImageDraw.Draw(image)
    for x1, y1, x2, y2, cls in boxes:
        draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=COLOURS[cls % len(COLOURS)])
    image.save(path)
    return path


def make_yolo(root: Path, names=("cat", "dog", "bird"), num_train: int = 4,
              num_val: int = 2, size: tuple[int, int] = (96, 64)) -> Path:
    """A YOLO dataset in ``root`` (images/{train,val}, labels/{train,val}, data.yaml with a
    relative ``path``): two boxes per image, each class in turn. Returns the data.yaml."""
    w, h = size
    for split, count in (("train", num_train), ("val", num_val)):
        for i in range(count):
            boxes = [(8 + 4 * i, 8, 40 + 4 * i, 40, i % len(names)),
                     (50, 20, 90, 60, (i + 1) % len(names))]
            write_png(root / "images" / split / f"im{i}.png", size, boxes)
            lines = [f"{c} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} "
                     f"{(y2 - y1) / h:.6f}" for x1, y1, x2, y2, c in boxes]
            label = root / "labels" / split / f"im{i}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("\n".join(lines) + "\n")
    yaml_path = root / "data.yaml"
    yaml_path.write_text("path: .\ntrain: images/train\nval: images/val\nnames:\n"
                         + "".join(f"  {i}: {n}\n" for i, n in enumerate(names)))
    return yaml_path


def voc_xml(filename: str, size: tuple[int, int] | None, objects) -> str:
    """A Pascal VOC annotation; ``objects`` are (name, (xmin, ymin, xmax, ymax), difficult or
    None for no <difficult>) as written."""
    parts = ["<annotation>", "  <folder>VOC2007</folder>", f"  <filename>{filename}</filename>",
             "  <source><database>The VOC2007 Database</database></source>"]
    if size is not None:
        parts.append(f"  <size><width>{size[0]}</width><height>{size[1]}</height>"
                     "<depth>3</depth></size>")
    parts.append("  <segmented>0</segmented>")
    for name, (x1, y1, x2, y2), difficult in objects:
        parts += ["  <object>", f"    <name>{name}</name>", "    <pose>Unspecified</pose>",
                  "    <truncated>0</truncated>"]
        if difficult is not None:
            parts.append(f"    <difficult>{difficult}</difficult>")
        parts += [f"    <bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax>"
                  f"<ymax>{y2}</ymax></bndbox>", "  </object>"]
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def make_voc(root: Path, num: int = 4, size: tuple[int, int] = (96, 64),
             names=("car", "person")) -> tuple[Path, Path]:
    """A VOC split in ``root`` (Annotations/*.xml, JPEGImages/*.png): two objects per image
    (1-based inclusive pixel boxes); image 1's second object is ``difficult``. Returns
    (annotation folder, image folder)."""
    ann, img = root / "Annotations", root / "JPEGImages"
    ann.mkdir(parents=True, exist_ok=True)
    for i in range(num):
        boxes = [(8 + 4 * i, 8, 40 + 4 * i, 40, i % len(names)),
                 (50, 20, 90, 60, (i + 1) % len(names))]
        write_png(img / f"{i:06d}.png", size, boxes)
        objects = [(names[c], (x1 + 1, y1 + 1, x2, y2), 1 if (i == 1 and k == 1) else 0)
                   for k, (x1, y1, x2, y2, c) in enumerate(boxes)]
        (ann / f"{i:06d}.xml").write_text(voc_xml(f"{i:06d}.png", size, objects))
    return ann, img
