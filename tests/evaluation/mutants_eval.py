"""Planted one-line bugs in the evaluation code (``o2f/evaluation/*.py``, the numeric parts of
``plots.py``, ``o2f/engine/evaluate.py``), each run against the tests in a fresh copy of the
project: every one must make a test fail.

    python tests/evaluation/mutants_eval.py                # all, against DEFAULT_TESTS
    python tests/evaluation/mutants_eval.py --only 3 8 --tests tests/evaluation/test_coco.py
    python tests/evaluation/mutants_eval.py --check        # every snippet occurs once

The runner (one exact snippet replaced per mutant, timeouts counted as killed, ``--check``):
``tests/planted_bugs.py``. First pass (without ``tests/evaluation/test_eval_pins.py``): 39 of
53 killed; the 14 survivors (4, 8, 12, 19, 21, 22, 24, 25, 26, 27, 29, 30, 32, 48) were holes,
not equivalent mutants, and each is killed by a hand-computed test of ``test_eval_pins.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests import planted_bugs  # noqa: E402

COCO = "o2f/evaluation/coco.py"
CH = "o2f/evaluation/crowdhuman.py"
MATCH = "o2f/evaluation/matching.py"
DUP = "o2f/evaluation/duplicates.py"
PLOTS = "o2f/evaluation/plots.py"
EVAL = "o2f/engine/evaluate.py"

# (file, snippet, replacement)
MUTANTS: list[planted_bugs.Mutant] = [
    # -- coco.py: results records, metric names, per-class AP
    (COCO,  # 0: COCO results are xywh, not xyxy
     '"bbox": [x1, y1, x2 - x1, y2 - y1],',
     '"bbox": [x1, y1, x2, y2],'),
    (COCO,  # 1: x and y swapped
     '"bbox": [x1, y1, x2 - x1, y2 - y1],',
     '"bbox": [y1, x1, y2 - y1, x2 - x1],'),
    (COCO,  # 2: contiguous label written as the category id
     '"category_id": int(cat_ids[int(label)]),',
     '"category_id": int(label),'),
    (COCO,  # 3: off-by-one in the label -> category id map (1-based labels assumed)
     '"category_id": int(cat_ids[int(label)]),',
     '"category_id": int(cat_ids[int(label) - 1]),'),
    (COCO,  # 4: image ids paired with detections in sorted, not given, order
     'for det, image_id in zip(detections, image_ids, strict=True):',
     'for det, image_id in zip(detections, sorted(image_ids), strict=True):'),
    (COCO,  # 5: scores and labels swapped
     'for i, ((x1, y1, x2, y2), score, label) in enumerate(zip(boxes, scores, labels)):',
     'for i, ((x1, y1, x2, y2), label, score) in enumerate(zip(boxes, scores, labels)):'),
    (COCO,  # 6: AP 0 read as undefined
     'return float(value) if value > -1 else math.nan',
     'return float(value) if value > 0 else math.nan'),
    (COCO,  # 7: stats names out of order (50 / 75)
     '_STAT_NAMES = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")',
     '_STAT_NAMES = ("mAP", "mAP_75", "mAP_50", "mAP_s", "mAP_m", "mAP_l")'),
    (COCO,  # 8: per-class AP at maxDets 1 instead of 100
     'p = precision[:, :, k, 0, -1]',
     'p = precision[:, :, k, 0, 0]'),
    (COCO,  # 9: per-class AP over area "small" instead of "all"
     'p = precision[:, :, k, 0, -1]',
     'p = precision[:, :, k, 1, -1]'),
    (COCO,  # 10: undefined (-1) precision entries averaged in
     'p = p[p > -1]',
     'p = p[p >= -1]'),
    (COCO,  # 11: the image subset is not applied
     '        coco_eval.params.imgIds = img_ids\n',
     ''),
    (COCO,  # 12: mask AP areas from the boxes
     '            ann.pop("bbox", None)\n',
     '            pass\n'),
    (COCO,  # 13: the segm AP goes to the wrong row key
     'row["segm_AP"] = segm_row["AP"]',
     'row["segm_AP"] = row["AP"]'),
    # -- duplicates.py
    (DUP,  # 14: score threshold strict
     'keep = scores >= score_thr',
     'keep = scores > score_thr'),
    (DUP,  # 15: IoU threshold strict
     'overlaps = (box_iou(boxes, boxes) >= iou_thr)',
     'overlaps = (box_iou(boxes, boxes) > iou_thr)'),
    (DUP,  # 16: class ignored
     'overlaps = (box_iou(boxes, boxes) >= iou_thr) & (labels[:, None] == labels[None, :])',
     'overlaps = box_iou(boxes, boxes) >= iou_thr'),
    (DUP,  # 17: score order reversed: duplicates of lower-scored ones
     'order = torch.argsort(scores, descending=True, stable=True)',
     'order = torch.argsort(scores, descending=False, stable=True)'),
    (DUP,  # 18: a lone confident detection is not counted in the denominator
     'return 0, num',
     'return 0, 0'),
    # -- plots.py: matching, F1, best threshold, PR values
    (PLOTS,  # 19: matching IoU strict
     'if free[j] >= iou_thr:',
     'if free[j] > iou_thr:'),
    (PLOTS,  # 20: crowd regions matchable as targets
     'taken = ign.copy()  # ignored regions are never matched as targets',
     'taken = np.zeros(g, bool)'),
    (PLOTS,  # 21: crowd regions counted as targets
     'num_gt += np.bincount(gt["labels"][~gt["ignore"]].numpy(), minlength=num_classes)',
     'num_gt += np.bincount(gt["labels"].numpy(), minlength=num_classes)'),
    (PLOTS,  # 22: F1 threshold strict
     'above = s[None, :] >= THRESHOLDS[:, None]  # (N, D)',
     'above = s[None, :] > THRESHOLDS[:, None]  # (N, D)'),
    (PLOTS,  # 23: lowest, not highest, threshold among equal F1
     'best = int(np.flatnonzero(table["f1"] == table["f1"].max())[-1])',
     'best = int(np.flatnonzero(table["f1"] == table["f1"].max())[0])'),
    (PLOTS,  # 24: crowd flag dropped from the ground truth
     '"ignore": torch.tensor([bool(a.get("iscrowd", 0)) for a in anns], dtype=torch.bool),',
     '"ignore": torch.zeros(len(anns), dtype=torch.bool),'),
    (PLOTS,  # 25: duplicate curve threshold strict
     '    above = s[None, :] >= THRESHOLDS[:, None]\n    n = above.sum(1)',
     '    above = s[None, :] > THRESHOLDS[:, None]\n    n = above.sum(1)'),
    (PLOTS,  # 26: PR curves at maxDets 1
     'prec = np.asarray(details["precision"])[:, :, :, 0, -1]',
     'prec = np.asarray(details["precision"])[:, :, :, 0, 0]'),
    (PLOTS,  # 27: the "IoU 0.5" curve at IoU 0.75
     't50 = int(np.argmin(np.abs(np.asarray(details["iou_thrs"]) - 0.5)))',
     't50 = int(np.argmin(np.abs(np.asarray(details["iou_thrs"]) - 0.75)))'),
    # -- crowdhuman.py
    (CH,  # 28: xywh read as xyxy
     '    out[:, 2:4] += out[:, :2]\n',
     ''),
    (CH,  # 29: y2 clipped to the width
     'out[:, 3] = np.maximum(np.minimum(out[:, 3], height), 0)',
     'out[:, 3] = np.maximum(np.minimum(out[:, 3], width), 0)'),
    (CH,  # 30: image size returned (width, height)
     '    return height, width\n',
     '    return width, height\n'),
    (CH,  # 31: x1 clipped to w rather than w - 1
     'out[:, 0] = np.minimum(np.maximum(out[:, 0], 0), width - 1)',
     'out[:, 0] = np.minimum(np.maximum(out[:, 0], 0), width)'),
    (CH,  # 32: 'background'-tagged gt left out of the gt count (reference counts it)
     'num_gt = int(sum((image.gt_tag != IGNORE).sum() for image in images))',
     'num_gt = int(sum((image.gt_tag == PERSON).sum() for image in images))'),
    (CH,  # 33: equal IoU goes to the later gt
     'if cols[k] not in matched and vals[k] > best_iou:',
     'if cols[k] not in matched and vals[k] >= best_iou:'),
    (CH,  # 34: FPPI per gt instead of per image
     'fppi = fp / len(images)',
     'fppi = fp / num_gt'),
    (CH,  # 35: an FPPI point reached only when exceeded
     'reached = fppi[None, :] >= np.asarray(MR_FPPI_POINTS)[:, None]',
     'reached = fppi[None, :] > np.asarray(MR_FPPI_POINTS)[:, None]'),
    (CH,  # 36: arithmetic instead of log-average miss rate
     'mmr = float(np.exp(np.log(1.0 - recall[index]).mean()))',
     'mmr = float((1.0 - recall[index]).mean())'),
    (CH,  # 37: AP by right rectangles instead of trapezoids
     'areas = (recall[1:] - recall[:-1]) * ((precision[:-1] + precision[1:]) / 2)',
     'areas = (recall[1:] - recall[:-1]) * precision[1:]'),
    (CH,  # 38: JI score threshold inclusive
     'keep = image.score > threshold',
     'keep = image.score >= threshold'),
    (CH,  # 39: matched detections inside a region dropped from n too
     'n = int(keep.sum()) - int((keep & ~dt_matched & dt_in_region).sum())',
     'n = int(keep.sum()) - int((keep & dt_in_region).sum())'),
    (CH,  # 40: matched gt inside a region dropped from m too
     'm = len(gt) - int((~gt_matched & gt_in_region).sum())',
     'm = len(gt) - int(gt_in_region.sum())'),
    (CH,  # 41: images with detections but no gt do not count
     'counts[t] = m != 0 or n != 0',
     'counts[t] = m != 0'),
    (CH,  # 42: negative overlaps not clamped
     'return np.maximum(0, iw) * np.maximum(0, ih)',
     'return iw * ih'),
    (CH,  # 43: the unmatched detection ignore test against all gt
     'label = np.where(_any_ioa_above(dt, image.gt[~positive], clamp_area=False), -1, 0)',
     'label = np.where(_any_ioa_above(dt, image.gt, clamp_area=False), -1, 0)'),
    # -- matching.py
    (MATCH,  # 44: non-edges kept as matches
     'keep = sub[r, c] > 0',
     'keep = sub[r, c] >= 0'),
    (MATCH,  # 45: the component cache never refreshed
     'if self._cache[c][0] != len(kept):',
     'if self._cache[c][0] == -1:'),
    # -- engine/evaluate.py
    (EVAL,  # 46: dup_rate not a headline metric
     'return keys + ("dup_rate",) if "dup_rate" in metrics else keys',
     'return keys'),
    (EVAL,  # 47: detections in inference order, image ids in dataset order
     'records = detections_to_coco_results([dets[i] for i in image_ids], image_ids,',
     'records = detections_to_coco_results(list(dets.values()), image_ids,'),
    (EVAL,  # 48: odgt records with (width, height)
     '[(im["height"], im["width"]) for im in imgs])',
     '[(im["width"], im["height"]) for im in imgs])'),
    (EVAL,  # 49: an undefined (NaN) size range written as 1, not 0
     'out = {k: (0.0 if math.isnan(metrics[k]) else float(metrics[k]))',
     'out = {k: (1.0 if math.isnan(metrics[k]) else float(metrics[k]))'),
    (EVAL,  # 50: the mask model ranked by box AP
     'return "segm_mAP" if "segm_mAP" in metrics else "bbox_mAP"',
     'return "bbox_mAP"'),
    (EVAL,  # 51: portrait / landscape order inverted (ratio w / h)
     'wh[:, 1] / wh[:, 0]', 'wh[:, 0] / wh[:, 1]'),
    # -- data/crowdhuman.py: the detections as odgt records
    ('o2f/data/crowdhuman.py',  # 52: odgt boxes are xywh
     '{"box": [x1, y1, x2 - x1, y2 - y1], "score": s, "tag": 1}',
     '{"box": [x1, y1, x2, y2], "score": s, "tag": 1}'),
]

DEFAULT_TESTS = [
    "tests/evaluation",
    "tests/engine/test_batched_eval.py",
    "tests/engine/test_test_plots.py",
    "tests/data/test_crowdhuman.py",
    "tests/engine/test_checkpoint.py::"
    "test_metrics_file_keeps_the_headline_keys_nan_as_zero_and_unreadable_images",
    "tests/engine/test_train_hooks.py::test_the_ranking_metric_follows_the_task",
    "tests/test_fcos_o2o.py::test_duplicate_rate_hand_computed",
    "tests/test_fcos_o2o.py::test_duplicate_rate_edge_cases",
    "tests/test_fcos_o2o.py::test_duplicate_thresholds_are_inclusive",
    "tests/engine/test_demo.py::"
    "test_the_picture_threshold_is_that_of_the_best_f1_with_its_duplicate_rate",
    "tests/data/test_compact_index.py::test_inference_order_uses_the_compact_sizes",
    "-m", "not slow",
]


def main(argv: list[str] | None = None) -> int:
    return planted_bugs.main(MUTANTS, DEFAULT_TESTS, __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    raise SystemExit(main())
