"""Evaluation plots (``o2f test --plots DIR``, and ``WORK_DIR/plots/`` at the end of training).

Written to the folder:

- ``pr_curves.png``: precision against recall per class at IoU 0.5 and averaged over IoU
  0.5:0.95, with the mean over classes; read from the COCO evaluator's accumulated
  ``eval["precision"]`` (area "all", 100 detections), not recomputed.
- ``f1_curve.png``: F1 against the score threshold, per class and over all detections
  (micro), the best threshold marked (the highest threshold reaching the best F1).
  Detections are matched to ground truth of their class greedily by score at IoU >= 0.5
  (:func:`match_detections`).
- ``confusion_matrix.png``: ground-truth class (rows, plus ``background``: detections of
  nothing) against predicted class (columns, plus ``background``: missed objects) at one score
  threshold (the best-F1 one unless given), matched class-agnostically, greedily by score at
  IoU >= 0.5.
- ``duplicates.png``: the duplicate rate (:mod:`o2f.evaluation.duplicates`, what NMS would
  remove; the NMS-free metric) against the score threshold.
- ``worst_images.png``: the images with the most errors (false positives + missed objects) at
  that threshold, ground truth in white, detections in class colours.
- ``summary.json``: the numbers behind them (best F1 and its threshold, precision and recall
  there, the duplicate rate, the worst images).

Crowd regions (``iscrowd``, VOC ``difficult``) are no targets: a detection on one is neither
right nor wrong.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

from o2f.evaluation.duplicates import duplicate_rate

IOU_THR = 0.5  # matching for the F1 curve, the confusion matrix and the worst images
THRESHOLDS = np.linspace(0.0, 1.0, 101)  # score thresholds of the F1 and duplicate curves
DUP_SCORE_THR = 0.3  # the score threshold of the reported duplicate rate (as o2f test)


def match_detections(
    boxes: Tensor, scores: Tensor, labels: Tensor, gt_boxes: Tensor, gt_labels: Tensor,
    gt_ignore: Tensor | None = None, iou_thr: float = IOU_THR, class_aware: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching of one image's detections to its ground truth, highest score first:
    each detection takes the unmatched target (of its class when ``class_aware``) it overlaps
    most at IoU >= ``iou_thr``; one matching no target but an ignored region (crowd) at that
    IoU is ignored.

    Args:
        boxes: (K, 4) x1, y1, x2, y2; scores: (K,); labels: (K,).
        gt_boxes: (G, 4); gt_labels: (G,); gt_ignore: bool (G,) crowd regions (default none).

    Returns:
        ``match`` int64 (K,): the index of each detection's target, -1 for none, and
        ``ignored`` bool (K,), both in the input order.
    """
    k, g = len(scores), len(gt_labels)
    match = np.full(k, -1, dtype=np.int64)
    ignored = np.zeros(k, dtype=bool)
    if k == 0 or g == 0:
        return match, ignored
    iou = box_iou(boxes.float(), gt_boxes.float()).numpy()
    ign = np.zeros(g, bool) if gt_ignore is None else gt_ignore.numpy().astype(bool)
    if class_aware:
        iou = np.where(labels.numpy()[:, None] == gt_labels.numpy()[None, :], iou, 0.0)
    taken = ign.copy()  # ignored regions are never matched as targets
    for i in np.argsort(-scores.numpy(), kind="stable"):
        free = np.where(taken, -1.0, iou[i])
        j = int(free.argmax())
        if free[j] >= iou_thr:
            match[i], taken[j] = j, True
        elif (iou[i][ign] >= iou_thr).any():
            ignored[i] = True
    return match, ignored


def _ground_truth(dataset: Any) -> dict[int, dict[str, Tensor]]:
    """Image id -> ``boxes`` (G, 4) x1, y1, x2, y2, ``labels`` (G,), ``ignore`` bool (G,) of a
    :class:`o2f.data.CocoDetection` (its ``coco`` index)."""
    label_of = {int(c): i for i, c in enumerate(dataset.cat_ids)}
    coco = dataset.coco
    out = {}
    for image_id in dataset.ids:
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
                if int(a["category_id"]) in label_of]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        out[int(image_id)] = {
            "boxes": torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),
            "labels": torch.tensor([label_of[int(a["category_id"])] for a in anns],
                                   dtype=torch.int64),
            "ignore": torch.tensor([bool(a.get("iscrowd", 0)) for a in anns], dtype=torch.bool),
        }
    return out


def f1_table(detections: Mapping[int, Mapping[str, Tensor]],
             gts: Mapping[int, Mapping[str, Tensor]], num_classes: int) -> dict[str, np.ndarray]:
    """Precision, recall and F1 at each of :data:`THRESHOLDS`, overall (micro) and per class.

    Greedy matching by score is the same at every threshold for the detections above it, so
    one matching of all detections gives every threshold.

    Returns:
        ``precision``, ``recall``, ``f1`` (N,) over all classes and ``class_f1`` (C, N), for
        N thresholds; ``num_gt`` (C,) targets per class.
    """
    scores, tps, labels = [], [], []
    num_gt = np.zeros(num_classes, dtype=np.int64)
    for image_id, gt in gts.items():
        det = detections[image_id]
        num_gt += np.bincount(gt["labels"][~gt["ignore"]].numpy(), minlength=num_classes)
        match, ignored = match_detections(det["boxes"], det["scores"], det["labels"],
                                          gt["boxes"], gt["labels"], gt["ignore"])
        keep = ~ignored
        scores.append(det["scores"].numpy()[keep])
        tps.append(match[keep] >= 0)
        labels.append(det["labels"].numpy()[keep])
    s, tp, lab = (np.concatenate(x) if x else np.zeros(0) for x in (scores, tps, labels))
    tp, lab = tp.astype(bool), lab.astype(np.int64)
    above = s[None, :] >= THRESHOLDS[:, None]  # (N, D)

    def prf(mask: np.ndarray, n_gt: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n_det = (above & mask).sum(1)
        n_tp = (above & mask & tp).sum(1)
        p = np.divide(n_tp, n_det, out=np.zeros(len(THRESHOLDS)), where=n_det > 0)
        r = n_tp / n_gt if n_gt else np.zeros(len(THRESHOLDS))
        f = np.divide(2 * p * r, p + r, out=np.zeros(len(THRESHOLDS)), where=(p + r) > 0)
        return p, r, f

    p, r, f = prf(np.ones_like(tp), int(num_gt.sum()))
    class_f1 = np.stack([prf(lab == c, int(num_gt[c]))[2] for c in range(num_classes)])
    return {"precision": p, "recall": r, "f1": f, "class_f1": class_f1, "num_gt": num_gt}


def best_f1_of(table: Mapping[str, np.ndarray]) -> tuple[float, float]:
    """(best F1, its score threshold) of an :func:`f1_table`; among equal F1 the highest
    threshold."""
    best = int(np.flatnonzero(table["f1"] == table["f1"].max())[-1])
    return float(table["f1"][best]), float(THRESHOLDS[best])


def best_f1_threshold(dataset: Any,
                      detections: Mapping[int, Mapping[str, Tensor]]) -> tuple[float, float]:
    """(best F1, its score threshold) of ``detections`` (image id -> ``boxes``, ``scores``,
    ``labels``, as ``o2f.engine.evaluate.run_inference`` gives them) against ``dataset``'s
    ground truth: the operating point a deployment would pick."""
    gts = _ground_truth(dataset)
    table = f1_table({i: detections[i] for i in gts}, gts, len(dataset.class_names))
    return best_f1_of(table)


def confusion_matrix(detections: Mapping[int, Mapping[str, Tensor]],
                     gts: Mapping[int, Mapping[str, Tensor]], num_classes: int,
                     score_thr: float) -> np.ndarray:
    """Counts int64 (C + 1, C + 1): ``[true, predicted]``, the last row detections of no object
    (background), the last column objects no detection found. Detections with score >=
    ``score_thr`` are matched class-agnostically (:func:`match_detections`)."""
    cm = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    bg = num_classes
    for image_id, gt in gts.items():
        det = detections[image_id]
        keep = det["scores"] >= score_thr
        labels = det["labels"][keep].numpy()
        match, ignored = match_detections(det["boxes"][keep], det["scores"][keep],
                                          det["labels"][keep], gt["boxes"], gt["labels"],
                                          gt["ignore"], class_aware=False)
        gl = gt["labels"].numpy()
        for pred, j in zip(labels[~ignored], match[~ignored], strict=True):
            cm[gl[j] if j >= 0 else bg, pred] += 1
        found = np.zeros(len(gl), bool)
        found[match[match >= 0]] = True
        for c in gl[~found & ~gt["ignore"].numpy()]:
            cm[c, bg] += 1
    return cm


def image_errors(detections: Mapping[int, Mapping[str, Tensor]],
                 gts: Mapping[int, Mapping[str, Tensor]], score_thr: float) -> dict[int, tuple]:
    """Image id -> (false positives, missed objects) at ``score_thr`` (class-aware matching)."""
    out = {}
    for image_id, gt in gts.items():
        det = detections[image_id]
        keep = det["scores"] >= score_thr
        match, ignored = match_detections(det["boxes"][keep], det["scores"][keep],
                                          det["labels"][keep], gt["boxes"], gt["labels"],
                                          gt["ignore"])
        fp = int(((match < 0) & ~ignored).sum())
        missed = int((~gt["ignore"]).sum()) - int((match >= 0).sum())
        out[int(image_id)] = (fp, missed)
    return out


def duplicate_curve(detections: Mapping[int, Mapping[str, Tensor]],
                    iou_thr: float = 0.7) -> np.ndarray:
    """The duplicate rate (:func:`o2f.evaluation.duplicates.duplicate_rate`) at each of
    :data:`THRESHOLDS` -> (N,). A detection is a duplicate at threshold t when it scores >= t
    and overlaps a higher-scored one of its class at IoU >= ``iou_thr`` (which then scores
    >= t too), so one pass per image gives every t."""
    scores, dup = [], []
    for det in detections.values():
        order = det["scores"].argsort(descending=True, stable=True)
        boxes, labels = det["boxes"][order].float(), det["labels"][order]
        same = (box_iou(boxes, boxes) >= iou_thr) & (labels[:, None] == labels[None, :])
        scores.append(det["scores"][order].numpy())
        dup.append(same.tril(-1).any(1).numpy())
    s, d = (np.concatenate(x) if x else np.zeros(0) for x in (scores, dup))
    above = s[None, :] >= THRESHOLDS[:, None]
    n = above.sum(1)
    return np.divide((above & d.astype(bool)).sum(1), n, out=np.zeros(len(THRESHOLDS)),
                     where=n > 0)


# -- pictures ---------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


MAX_LEGEND = 12  # classes named in a legend; more are drawn unnamed


def plot_pr_curves(details: Mapping[str, Any], class_names: Sequence[str], path: Path) -> dict:
    """Precision against recall per class at IoU 0.5 and over 0.5:0.95 (``details``: the
    ``precision`` array (T, R, K, A, M) with ``iou_thrs`` (T,), ``rec_thrs`` (R,) of
    :func:`o2f.evaluation.coco.evaluate_coco`). Returns the AP per class ``{name: (ap50,
    ap)}`` of the classes with ground truth."""
    plt = _pyplot()
    prec = np.asarray(details["precision"])[:, :, :, 0, -1]  # (T, R, K): area all, 100 dets
    rec = np.asarray(details["rec_thrs"])
    t50 = int(np.argmin(np.abs(np.asarray(details["iou_thrs"]) - 0.5)))
    curves = {"IoU 0.5": prec[t50], "IoU 0.5:0.95": np.where(
        (prec > -1).all(0), np.where(prec > -1, prec, 0).mean(0), -1)}
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2), dpi=110)
    aps: dict[str, list[float]] = {}
    for ax, (title, p) in zip(axes, curves.items(), strict=True):
        valid = [k for k in range(p.shape[1]) if (p[:, k] > -1).all()]
        for k in valid:
            ap = float(p[:, k].mean())
            aps.setdefault(class_names[k], []).append(ap)
            label = f"{class_names[k]} {ap:.3f}" if len(valid) <= MAX_LEGEND else None
            ax.plot(rec, p[:, k], lw=1, alpha=0.8 if len(valid) <= MAX_LEGEND else 0.35,
                    label=label, color=None if len(valid) <= MAX_LEGEND else "grey")
        if valid:
            mean = p[:, valid].mean(1)
            ax.plot(rec, mean, lw=3, color="navy", label=f"all classes {mean.mean():.3f} mAP")
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
               title=f"precision-recall, {title}")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return {k: tuple(v) for k, v in aps.items()}


def plot_f1_curve(table: Mapping[str, np.ndarray], class_names: Sequence[str], path: Path,
                  best: tuple[float, float]) -> None:
    """F1 against the score threshold per class (classes with targets) and over all."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    named = int((table["num_gt"] > 0).sum()) <= MAX_LEGEND
    for c, f in enumerate(table["class_f1"]):
        if table["num_gt"][c]:
            ax.plot(THRESHOLDS, f, lw=1, alpha=0.8 if named else 0.35,
                    color=None if named else "grey", label=class_names[c] if named else None)
    f1, thr = best
    ax.plot(THRESHOLDS, table["f1"], lw=3, color="navy", label=f"all classes {f1:.3f} at {thr:.2f}")
    ax.axvline(thr, color="navy", ls="--", lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="score threshold", ylabel="F1",
           title=f"F1 against score (IoU {IOU_THR}): best {f1:.3f} at score {thr:.2f}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], path: Path,
                          score_thr: float) -> None:
    """The (C + 1, C + 1) counts of :func:`confusion_matrix`, coloured by the share of each
    row (true class), counts written in the cells when C <= 30."""
    plt = _pyplot()
    names = [*class_names, "background"]
    n = len(names)
    rows = cm.sum(1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    side = min(20.0, 3 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(side + 1.5, side), dpi=110)
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ticks = np.arange(n)
    ax.set_xticks(ticks, names, rotation=90 if n > 8 else 45, ha="right" if n <= 8 else "center",
                  fontsize=8)
    ax.set_yticks(ticks, names, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true",
           title=f"confusion matrix at score >= {score_thr:.2f}, IoU >= {IOU_THR}")
    if n <= 31:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_duplicates(curve: np.ndarray, path: Path, rate: float) -> None:
    """The duplicate rate against the score threshold, the reported one marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(THRESHOLDS, curve, lw=2, color="firebrick")
    ax.axvline(DUP_SCORE_THR, color="grey", ls="--", lw=1)
    ax.set(xlim=(0, 1), ylim=(0, max(0.05, float(curve.max()) * 1.1)), xlabel="score threshold",
           ylabel="duplicate rate",
           title=f"duplicates (what NMS would remove): {rate:.4f} at score {DUP_SCORE_THR}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


WORST_SIDE = 640  # long side of each picture of the worst images


def draw_worst_images(dataset: Any, detections: Mapping[int, Mapping[str, Tensor]],
                      gts: Mapping[int, Mapping[str, Tensor]], image_ids: Sequence[int],
                      score_thr: float, path: Path) -> None:
    """The images ``image_ids`` side by side (long side :data:`WORST_SIDE`): ground truth in
    white, detections with score >= ``score_thr`` labelled in class colours."""
    import torch.nn.functional as F
    from torchvision.utils import draw_bounding_boxes

    from o2f.data import load_rgb_image
    from o2f.visualize import draw_detections, save_grid

    index = {int(image_id): i for i, image_id in enumerate(dataset.ids)}
    pictures = []
    for image_id in image_ids:
        info = dataset.image_info(index[int(image_id)])
        try:
            array = np.asarray(load_rgb_image(Path(dataset.img_dir) / info["file_name"]))
        except OSError:
            continue
        image = torch.from_numpy(array.copy()).permute(2, 0, 1)
        scale = WORST_SIDE / max(image.shape[-2:])
        size = [max(1, round(image.shape[1] * scale)), max(1, round(image.shape[2] * scale))]
        image = F.interpolate(image[None].float(), size=size, mode="bilinear",
                              antialias=True)[0].round().clamp(0, 255).to(torch.uint8)
        gt, det = gts[int(image_id)], detections[int(image_id)]
        if len(gt["boxes"]):
            image = draw_bounding_boxes(image, gt["boxes"] * scale, colors="white", width=1)
        image = draw_detections(image, det["boxes"] * scale, det["labels"], det["scores"],
                                list(dataset.class_names), score_thr=score_thr)
        pictures.append(image)
    if pictures:
        save_grid(pictures, path, nrow=min(4, len(pictures)))


def write_evaluation_plots(
    out_dir: str | Path, dataset: Any, detections: Mapping[int, Mapping[str, Tensor]],
    details: Mapping[str, Any] | None = None, score_thr: float | None = None,
    num_worst: int = 8,
) -> dict[str, Any]:
    """Write the plots of the module docstring for one evaluation.

    Args:
        out_dir: the folder (created).
        dataset: the evaluated :class:`o2f.data.CocoDetection` (ground truth, class names,
            images).
        detections: image id -> ``boxes`` (K, 4) x1, y1, x2, y2 in original pixels,
            ``scores`` (K,), ``labels`` (K,) (CPU), as ``o2f.engine.evaluate.run_inference``
            gives them.
        details: the box evaluator's ``precision`` (T, R, K, A, M), ``iou_thrs``, ``rec_thrs``
            (:func:`o2f.evaluation.coco.evaluate_coco`); None or without ``precision``: no PR
            curves.
        score_thr: the threshold of the confusion matrix and the worst images (default: the
            one of the best F1).
        num_worst: how many worst images to draw.

    Returns:
        the content of ``summary.json``: ``best_f1``, ``best_f1_score_thr``, ``score_thr``,
        ``precision`` and ``recall`` there, ``dup_rate`` (score >= 0.3, IoU 0.7),
        ``worst_images`` and ``files``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(dataset.class_names)
    gts = _ground_truth(dataset)
    dets = {i: detections[i] for i in gts}
    files = []
    ap = {}
    if details is not None and "precision" in details:
        ap = plot_pr_curves(details, names, out / "pr_curves.png")
        files.append("pr_curves.png")
    table = f1_table(dets, gts, len(names))
    best_f1, best_thr = best_f1_of(table)
    plot_f1_curve(table, names, out / "f1_curve.png", (best_f1, best_thr))
    thr = best_thr if score_thr is None else float(score_thr)
    plot_confusion_matrix(confusion_matrix(dets, gts, len(names), thr), names,
                          out / "confusion_matrix.png", thr)
    rate = duplicate_rate(dets, score_thr=DUP_SCORE_THR)
    plot_duplicates(duplicate_curve(dets), out / "duplicates.png", rate)
    files += ["f1_curve.png", "confusion_matrix.png", "duplicates.png"]
    errors = image_errors(dets, gts, thr)
    worst = sorted((i for i in errors if sum(errors[i])), key=lambda i: (-sum(errors[i]), i))
    worst = worst[:num_worst]
    if worst:
        draw_worst_images(dataset, dets, gts, worst, thr, out / "worst_images.png")
        if (out / "worst_images.png").is_file():
            files.append("worst_images.png")
    at = int(np.argmin(np.abs(THRESHOLDS - thr)))
    summary = {
        "best_f1": best_f1, "best_f1_score_thr": best_thr, "score_thr": thr,
        "precision": float(table["precision"][at]), "recall": float(table["recall"][at]),
        "dup_rate": rate,
        "ap_per_class": {k: {"AP50": v[0], "AP": v[1]} for k, v in ap.items() if len(v) == 2},
        "worst_images": [{"image_id": i, "false_positives": errors[i][0],
                          "missed": errors[i][1]} for i in worst],
        "files": files,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
