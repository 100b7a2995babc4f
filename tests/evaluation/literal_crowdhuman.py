"""A slow, literal CrowdHuman evaluator written from the conventions, to test the fast one.

Plain Python loops over boxes; the JI matching is an exhaustive search, so keep inputs tiny.
"""

from __future__ import annotations

import math

THR = 0.5
EPS = 1e-6
FPPI_POINTS = [0.0100, 0.0178, 0.03160, 0.0562, 0.1000, 0.1778, 0.3162, 0.5623, 1.000]


def _clip(box, h, w):
    x, y, bw, bh = box
    x1, y1, x2, y2 = x, y, x + bw, y + bh
    return (min(max(x1, 0), w - 1), min(max(y1, 0), h - 1), max(min(x2, w), 0), max(min(y2, h), 0))


def _inter(a, b):
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    return max(0, iw) * max(0, ih)


def _area(a, clamp=False):
    w, h = a[2] - a[0], a[3] - a[1]
    return max(w, 0) * max(h, 0) if clamp else w * h


def iou(a, b):
    i = _inter(a, b)
    return i / (_area(a) + _area(b) - i + EPS)


def ioa(a, b, clamp=False):
    return _inter(a, b) / (_area(a, clamp) + EPS)


def _images(gt_records, dt_records):
    dts = {r["ID"]: r for r in dt_records}
    out = []
    for g in gt_records:
        d = dts.get(g["ID"], {"dtboxes": []})
        h, w = g["height"], g["width"]
        gts = []
        for b in g["gtboxes"]:
            ignore = b["tag"] != "person" or b.get("extra", {}).get("ignore", 0) != 0
            gts.append((_clip(b["fbox"], h, w), ignore))
        dets = [(_clip(b["box"], h, w), b["score"]) for b in d["dtboxes"]]
        out.append((gts, dets))
    return out


def ap_mmr_recall(gt_records, dt_records):
    images = _images(gt_records, dt_records)
    counted = []  # (score, image index, rank in image, is_tp)
    n_gt = 0
    for index, (gts, dets) in enumerate(images):
        n_gt += sum(1 for _, ign in gts if not ign)
        order = sorted(range(len(dets)), key=lambda i: -dets[i][1])
        used = [False] * len(gts)
        for rank, i in enumerate(order):
            box, score = dets[i]
            best, best_iou = None, THR
            for j, (g, ign) in enumerate(gts):
                if not ign and not used[j] and iou(box, g) > best_iou:
                    best, best_iou = j, iou(box, g)
            if best is not None:
                used[best] = True
                counted.append((score, index, rank, True))
            elif any(ign and ioa(box, g) > THR for g, ign in gts):
                continue
            else:
                counted.append((score, index, rank, False))
    counted.sort(key=lambda c: (-c[0], c[1], c[2]))
    tp = fp = 0
    rec, prec, fppi = [], [], []
    for *_, is_tp in counted:
        tp, fp = tp + is_tp, fp + (not is_tp)
        rec.append(tp / n_gt)
        prec.append(tp / (tp + fp))
        fppi.append(fp / len(images))
    ap = sum((rec[i] - rec[i - 1]) * (prec[i] + prec[i - 1]) / 2 for i in range(1, len(rec)))
    logs = []
    for point in FPPI_POINTS:
        idx = next((i for i, f in enumerate(fppi) if f >= point), len(fppi) - 1)
        miss = 1 - rec[idx]
        logs.append(math.log(miss) if miss > 0 else -math.inf)
    return ap, math.exp(sum(logs) / len(logs)), rec[-1]


def _best_matching(dets, gts):
    """Exhaustive maximum-weight matching: list of (det, gt) pairs."""
    best = (0.0, [])

    def search(i, used, total, pairs):
        nonlocal best
        if total > best[0]:
            best = (total, list(pairs))
        if i == len(dets):
            return
        search(i + 1, used, total, pairs)
        for j, g in enumerate(gts):
            w = iou(dets[i], g)
            if j not in used and w > THR:
                pairs.append((i, j))
                search(i + 1, used | {j}, total + w, pairs)
                pairs.pop()

    search(0, frozenset(), 0.0, [])
    return best[1]


def jaccard_index(gt_records, dt_records):
    images = _images(gt_records, dt_records)
    scores = []
    for t in range(10):
        threshold = 0.1 * t
        total, counted = 0.0, 0
        for gts, dets in images:
            regions = [g for g, ign in gts if ign]
            persons = [g for g, ign in gts if not ign]
            kept = [b for b, s in dets if s > threshold]
            pairs = _best_matching(kept, persons)
            k = len(pairs)
            free_dt = [b for i, b in enumerate(kept) if i not in {p[0] for p in pairs}]
            free_gt = [g for j, g in enumerate(persons) if j not in {p[1] for p in pairs}]
            n = len(kept) - sum(any(ioa(b, r, True) > THR for r in regions) for b in free_dt)
            m = len(persons) - sum(any(ioa(g, r, True) > THR for r in regions) for g in free_gt)
            total += k / (m + n - k + EPS)
            counted += m != 0 or n != 0
        scores.append(total / counted if counted else math.nan)
    return max(scores)
