"""Planted one-line bugs in the data path (reading COCO / YOLO / VOC / CrowdHuman annotations,
targets, transforms, batching, per-item seeds, the dataset summary), each run against the tests
in a fresh copy of the project: every one must make a test fail.

    python tests/data/mutants_data.py                    # all, against the data tests
    python tests/data/mutants_data.py --only 3 8 --tests tests/data/test_coco.py

Runner: ``tests/planted_bugs.py``. Results: docs/testing.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests import planted_bugs  # noqa: E402

COCO = "o2f/data/coco.py"
TF = "o2f/data/transforms.py"

# (file, snippet, replacement)
MUTANTS: list[planted_bugs.Mutant] = [
    # --- COCO targets (coco.py) ---
    (COCO, "keep = ~crowd & (xywh[:, 2] >= 1) & (xywh[:, 3] >= 1)",
     "keep = ~crowd & (xywh[:, 2] > 1) & (xywh[:, 3] >= 1)"),
    (COCO, "keep = ~crowd & (xywh[:, 2] >= 1)", "keep = (xywh[:, 2] >= 1)"),
    (COCO, "x2 = np.clip(xywh[:, 0] + xywh[:, 2], 0, w_img)", "x2 = np.clip(xywh[:, 2], 0, w_img)"),
    (COCO, "y1 = np.clip(xywh[:, 1], 0, h_img)", "y1 = np.clip(xywh[:, 1], 0, w_img)"),
    (COCO, "y2 = np.clip(xywh[:, 1] + xywh[:, 3], 0, h_img)",
     "y2 = np.clip(xywh[:, 1] + xywh[:, 3], 0, w_img)"),
    (COCO, "& (x2 > x1) & (y2 > y1)", "& (x2 > x1)"),
    (COCO, 'order = np.argsort(pos[keep], kind="stable")', 'order = np.arange(int(keep.sum()))'),
    (COCO, "outside = ~crowd & ~non_positive & ((x2 <= x1) | (y2 <= y1))",
     "outside = ~crowd & ((x2 <= x1) | (y2 <= y1))"),
    (COCO, 'cats = sorted(data["categories"], key=lambda c: c["id"])',
     'cats = list(data["categories"])'),
    (COCO, 'records = sorted(data["images"], key=lambda img: img["id"])',
     'records = list(data["images"])'),
    (COCO, "if (counts[i] > 0 or not train) and all_ids[i] not in missing]",
     "if (counts[i] >= 0 or not train) and all_ids[i] not in missing]"),
    (COCO, "missing = set(self.missing_ids) if train else set()", "missing = set()"),
    (COCO, "self.num_skipped = int((counts == 0).sum()) if train else 0",
     "self.num_skipped = int((counts == 0).sum())"),
    (COCO, "index = (index + 1) % len(self)", "index = (index - 1) % len(self)"),
    (COCO, "lo, hi = self._offsets[pos], self._offsets[pos + 1]",
     "lo, hi = self._offsets[index], self._offsets[index + 1]"),
    (COCO, '"orig_size": (h, w),', '"orig_size": (w, h),'),
    (COCO, "if img.size != (info[\"width\"], info[\"height\"]):",
     "if img.size != (info[\"height\"], info[\"width\"]):"),
    (COCO, "            img = ImageOps.exif_transpose(img)\n", ""),
    (COCO, "if img.getexif().get(0x0112) in _TRANSPOSING_ORIENTATIONS:",
     "if img.getexif().get(0x0112) in (6, 8):"),
    (COCO, "len(poly) < 6 or len(poly) % 2", "len(poly) < 4 or len(poly) % 2"),
    (COCO, "rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))",
     "rle = mask_utils.frPyObjects(segm, height, width)[0]"),
    (COCO, "keep = ~np.isin(self._rows, np.array(list(problems), dtype=np.int64))",
     "keep = np.ones(len(self._rows), dtype=bool)"),
    (COCO, "kept = items >= 0", "kept = items > 0"),
    (COCO, "return table[labels.long()]", "return labels.long()"),
    (COCO, "return self.dataset[index % len(self.dataset)]",
     "return self.dataset[index // self.times]"),
    (COCO, "if ann.get(\"iscrowd\", 0) not in (0, 1):",
     "if ann.get(\"iscrowd\", 0) not in (0, 1, 2):"),
    # --- transforms ---
    (TF, "return min(max_long / max(w, h), max_short / min(w, h))",
     "return min(max_long / max(w, h), max_short / max(w, h))"),
    (TF, "return int(w * scale + 0.5), int(h * scale + 0.5)",
     "return int(w * scale), int(h * scale)"),
    (TF, "return int(torch.randint(lo, hi + 1, ()).item())",
     "return int(torch.randint(lo, hi, ()).item())"),
    (TF, "target[\"scale_factor\"] = (sx * new_w / int(w), sy * new_h / int(h))",
     "target[\"scale_factor\"] = (new_w / int(w), new_h / int(h))"),
    (TF, "interpolation=InterpolationMode.NEAREST_EXACT)",
     "interpolation=InterpolationMode.BILINEAR)"),
    (TF, 'target["flipped"] = not target.get("flipped", False)', 'target["flipped"] = True'),
    (TF, "            target[\"masks\"] = F.horizontal_flip(target[\"masks\"])\n", ""),
    (TF, "return int(ty * (h - ch + 1)), int(tx * (w - cw + 1)), ch, cw",
     "return int(tx * (w - cw + 1)), int(ty * (h - ch + 1)), ch, cw"),
    (TF, 'target["labels"] = target["labels"][keep]',
     'target["labels"] = target["labels"][:int(keep.sum())]'),
    (TF, "target[\"masks\"].as_subclass(Tensor)[keep][:, top:top + ch, left:left + cw])",
     "target[\"masks\"].as_subclass(Tensor)[keep][:, left:left + cw, top:top + ch])"),
    (TF, "    steps.append(KeepRatioResize(max_size, short_sizes))\n    if flip_prob > 0:",
     "    steps.insert(0, KeepRatioResize(max_size, short_sizes))\n    if flip_prob > 0:"),
    (TF, "hue=min(0.5, strength / 10))", "hue=min(0.5, strength))"),
    (TF, "        return Compose([KeepRatioResize(max_size, short_sizes)])\n",
     "        return Compose([KeepRatioResize(max_size, short_sizes), "
     "RandomHorizontalFlip(0.5)])\n"),
    # --- engine's data wiring (train.py) ---
    ("o2f/engine/train.py",
     "train_tf = build_transforms(True, d.max_size, tuple(d.train_short), d.flip_prob,\n"
     "                                d.crop_prob, d.crop_min_scale, d.color_jitter)",
     "train_tf = build_transforms(True, d.max_size, tuple(d.train_short), d.flip_prob,\n"
     "                                d.crop_prob, d.crop_min_scale, 0.0)"),
    ("o2f/engine/train.py",
     "tf = build_transforms(False, d.max_size, (d.test_short, d.test_short), 0.0)",
     "tf = build_transforms(False, d.max_size, (d.train_short[1], d.train_short[1]), 0.0)"),
    # --- batching and seeds ---
    ("o2f/data/sampler.py", "bucket = buckets[0 if self.landscape[index] else 1]",
     "bucket = buckets[0]"),
    ("o2f/data/sampler.py", "        rest = buckets[0] + buckets[1]\n",
     "        rest = buckets[0]\n"),
    ("o2f/data/sampler.py", "return -(-len(self.sampler) // self.batch_size)",
     "return len(self.sampler) // self.batch_size"),
    ("o2f/data/seeded.py", "yield [(i, sample_seed(self.seed, self.epoch, i)) for i in batch]",
     "yield [(i, sample_seed(self.seed, self.epoch, 0)) for i in batch]"),
    ("o2f/data/seeded.py", "with torch.random.fork_rng(devices=[]):",
     "with torch.random.fork_rng(devices=[], enabled=False):"),
    # --- other formats ---
    ("o2f/data/yolo.py",
     "bbox = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]",
     "bbox = [cx * width, cy * height, w * width, h * height]"),
    ("o2f/data/yolo.py",
     "bbox = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]",
     "bbox = [(cx - w / 2) * width, (cy - h / 2) * width, w * width, h * height]"),
    ("o2f/data/yolo.py", "ys = [y * height for y in v[1::2]]",
     "ys = [y * height for y in v[0::2]]"),
    ("o2f/data/yolo.py",
     "coords = [(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h]",
     "coords = [x1 / w, y1 / h, (x2 - x1) / w, (y2 - y1) / h]"),
    ("o2f/data/yolo.py", "return [{\"id\": int(i), \"name\": str(n)} for i, n in sorted(pairs)]",
     "return [{\"id\": int(i) + 1, \"name\": str(n)} for i, n in sorted(pairs)]"),
    ("o2f/data/voc.py", "x1, y1 = min(max(xmin - 1, 0.0), width), min(max(ymin - 1, 0.0), height)",
     "x1, y1 = min(max(xmin, 0.0), width), min(max(ymin, 0.0), height)"),
    ("o2f/data/voc.py", '"area": w * h, "iscrowd": obj["difficult"]})',
     '"area": w * h, "iscrowd": 0})'),
    ("o2f/data/crowdhuman.py", 'return box.get("tag") != "person" or ignored',
     'return box.get("tag") != "person"'),
    ("o2f/data/crowdhuman.py",
     '{"box": [x1, y1, x2 - x1, y2 - y1], "score": s, "tag": 1}',
     '{"box": [x1, y1, x2, y2], "score": s, "tag": 1}'),
    # --- dataset summary ---
    ("o2f/data/summary.py", "sizes = np.sqrt(wh[:, 0] * wh[:, 1]) * scales[items]",
     "sizes = np.sqrt(wh[:, 0] * wh[:, 1])"),
    ("o2f/data/summary.py",
     '"below_finest_stride": round(float((sizes < finest_stride).mean()), 4)',
     '"below_finest_stride": round(float((sizes <= finest_stride).mean()), 4)'),
]

DEFAULT_TESTS = ["tests/data", "tests/evaluation", "tests/test_custom_data.py",
                 "tests/engine/test_dataset_summary.py", "-m", "not slow"]


def main(argv: list[str] | None = None) -> int:
    return planted_bugs.main(MUTANTS, DEFAULT_TESTS, __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    raise SystemExit(main())
