"""CrowdHuman AP / mMR / Recall / JI on hand-built cases worked out by hand."""

import math
import random
import warnings

import pytest

from o2f.data.crowdhuman import write_odgt
from o2f.evaluation.crowdhuman import EPS, JI_SCORE_THRESHOLDS, MR_FPPI_POINTS, evaluate_odgt
from tests.evaluation import literal_crowdhuman as literal


def person(x, y, w, h, ignore=None):
    box = {"tag": "person", "fbox": [x, y, w, h]}
    if ignore is not None:
        box["extra"] = {"ignore": ignore}
    return box


def mask(x, y, w, h):
    return {"tag": "mask", "fbox": [x, y, w, h], "extra": {"ignore": 1}}


def det(x, y, w, h, score):
    return {"box": [x, y, w, h], "score": score, "tag": 1}


def gt_image(image_id, boxes, size=100):
    return {"ID": image_id, "gtboxes": boxes, "height": size, "width": size}


def mmr_of(miss_rates):
    return math.exp(sum(math.log(m) for m in miss_rates) / len(miss_rates))


def test_reference_constants():
    assert MR_FPPI_POINTS == (0.01, 0.0178, 0.0316, 0.0562, 0.1, 0.1778, 0.3162, 0.5623, 1.0)
    assert JI_SCORE_THRESHOLDS[3] == 0.30000000000000004  # 1e-1 * 3, as the reference
    assert len(JI_SCORE_THRESHOLDS) == 10 and JI_SCORE_THRESHOLDS[-1] == 0.9


def basic_case():
    # Image A: persons P1, P2 and an ignore region M; image B: one person, no detections.
    gt = [
        gt_image("A", [person(0, 0, 10, 10), person(50, 50, 10, 10, 0), mask(20, 20, 20, 20)]),
        gt_image("B", [person(0, 0, 20, 20)]),
    ]
    dt = [
        {
            "ID": "A",
            "dtboxes": [
                det(80, 80, 10, 10, 0.5),  # d5: nothing there -> FP
                det(0, 0, 10, 10, 0.9),  # d1: P1, IoU 1 -> TP
                det(0, 0, 10, 10, 0.8),  # d2: duplicate of d1, P1 taken -> FP
                det(22, 22, 10, 10, 0.7),  # d3: inside M (IoA 1) -> ignored, counts nowhere
                det(50, 50, 10, 10, 0.6),  # d4: P2 -> TP
            ],
        }
    ]  # no record for B: it has no detections but still counts as an image
    return gt, dt


def test_basic_ap_mmr_recall():
    gt, dt = basic_case()
    out = evaluate_odgt(gt, dt)
    # n_gt = 3 (P1, P2, P3), 2 images. Counted, by score: d1 TP, d2 FP, d4 TP, d5 FP
    #   recall    1/3, 1/3, 2/3, 2/3
    #   precision 1,   1/2, 2/3, 1/2
    #   fppi      0,   1/2, 1/2, 1
    # AP = 0 + (2/3 - 1/3) * (1/2 + 2/3) / 2 + 0 = 7/36
    assert out["AP"] == pytest.approx(7 / 36, abs=1e-12)
    assert out["Recall"] == pytest.approx(2 / 3, abs=1e-12)
    # FPPI points 0.01 .. 0.3162 (7 of them) are first reached at d2 (fppi 1/2): miss 2/3;
    # 0.5623 and 1.0 at d5 (fppi 1): miss 1/3.
    assert out["mMR"] == pytest.approx(mmr_of([2 / 3] * 7 + [1 / 3] * 2), abs=1e-12)


def test_basic_ji():
    gt, dt = basic_case()
    # Image A, thresholds 0.0-0.4 (all kept): k = 2 (P1 with d1 or d2, P2 with d4);
    #   unmatched d2/d1, d3, d5, of which d3 lies in M -> n = 5 - 1 = 4; m = 2;
    #   ratio 2 / (2 + 4 - 2) = 1/2. Image B: k = 0, n = 0, m = 1: ratio 0 (but it counts).
    #   -> (1/2 + 0) / 2 = 1/4
    # threshold 0.5: d5 (0.5) is not > 0.5: n = 3, ratio 2/3 -> 1/3   <- the best
    # threshold 0.6000000000000001: d4 (0.6) dropped: k = 1, n = 2 (d3 ignored), ratio 1/3 -> 1/6
    # threshold 0.7000000000000001: d3 dropped: k = 1, n = 2, ratio 1/3 -> 1/6
    # threshold 0.8: d2 dropped: k = 1, n = 1, m = 2: ratio 1/2 -> 1/4
    # threshold 0.9: nothing kept: 0
    expected = (2 / (2 + 3 - 2 + EPS) + 0 / (1 + EPS)) / 2
    assert evaluate_odgt(gt, dt)["JI"] == pytest.approx(expected, abs=1e-12)


def test_files_and_records_agree(tmp_path):
    gt, dt = basic_case()
    write_odgt(gt, tmp_path / "gt.odgt")
    write_odgt(dt, tmp_path / "dt.odgt")
    assert evaluate_odgt(tmp_path / "gt.odgt", str(tmp_path / "dt.odgt")) == evaluate_odgt(gt, dt)


def test_clipping_to_the_image():
    gt = [
        gt_image(
            "A",
            [
                person(80, 0, 40, 10),  # x 80..120 -> clipped to 80..100 (area 200)
                mask(90, 20, 10, 10),  # ignore region x 90..100, y 20..30
            ],
        )
    ]
    dt = [
        {
            "ID": "A",
            "dtboxes": [
                # x 85..100: IoU 150/200 = 0.75 with the clipped person (0.375 unclipped) -> TP
                det(85, 0, 15, 10, 0.9),
                # wholly right of the image: x1 -> min(150, w - 1) = 99, x2 -> 100: a 1-px strip
                # at y 25..27 inside the ignore region (IoA 1) -> ignored
                det(150, 25, 20, 2, 0.8),
                # wholly left: x1 -> 0, x2 -> max(min(-10, 100), 0) = 0: zero area -> FP
                det(-30, 50, 20, 20, 0.7),
            ],
        }
    ]
    out = evaluate_odgt(gt, dt)
    # counted: TP then FP. recall 1, 1; precision 1, 1/2; fppi 0, 1
    # AP = (1 - 1) * ... = 0: the curve starts at the first detection's point, so a single
    # recall level has no area.
    assert out["Recall"] == 1.0
    assert out["AP"] == 0.0
    # Every FPPI point is first reached at the FP (fppi 1) where the miss rate is 0: mMR 0.
    assert out["mMR"] == 0.0


def test_ap_is_trapezoid_from_first_detection():
    gt = [gt_image("A", [person(0, 0, 10, 10), person(50, 0, 10, 10)])]
    dt = [{"ID": "A", "dtboxes": [det(0, 0, 10, 10, 0.9), det(50, 0, 10, 10, 0.8)]}]
    # points (1/2, 1) and (1, 1): AP = 1/2 * 1 = 1/2 (nothing before recall 1/2)
    out = evaluate_odgt(gt, dt)
    assert out["AP"] == pytest.approx(0.5, abs=1e-12)
    assert out["Recall"] == 1.0
    # no false positive at all: every point falls back to the last detection, miss 0
    assert out["mMR"] == 0.0
    assert out["JI"] == pytest.approx(2 / (2 + 2 - 2 + EPS), abs=1e-12)


def test_score_ties_across_images_follow_gt_file_order():
    # X has a FP at 0.5, Y a TP at 0.5. Stable global sort: X first (gt-file order),
    # whatever the order of the detection file.
    gt = [gt_image("X", [person(0, 0, 10, 10)]), gt_image("Y", [person(0, 0, 10, 10)])]
    dt = [
        {"ID": "Y", "dtboxes": [det(0, 0, 10, 10, 0.5)]},
        {"ID": "X", "dtboxes": [det(60, 60, 10, 10, 0.5)]},
    ]
    # n_gt = 2. X-FP then Y-TP: recall 0, 1/2; precision 0, 1/2;
    # AP = (1/2 - 0) * (0 + 1/2) / 2 = 1/8   (Y first would give recall 1/2, 1/2 -> AP 0)
    out = evaluate_odgt(gt, dt)
    assert out["AP"] == pytest.approx(1 / 8, abs=1e-12)
    # fppi 1/2, 1/2: points <= 0.3162 hit the first (miss 1), 0.5623 and 1 fall back to the
    # last (miss 1/2)
    assert out["mMR"] == pytest.approx(mmr_of([1] * 7 + [0.5] * 2), abs=1e-12)
    gt_swapped = gt[::-1]  # Y first: TP then FP -> recall 1/2, 1/2: AP 0
    assert evaluate_odgt(gt_swapped, dt)["AP"] == 0.0


@pytest.mark.parametrize("g1_first", [True, False])
def test_equal_iou_goes_to_the_first_gt_in_the_file(g1_first):
    g1, g2 = person(0, 0, 10, 10), person(2, 0, 10, 10)
    dt = [
        {
            "ID": "A",
            "dtboxes": [
                det(1, 0, 10, 10, 0.9),  # IoU 90/110 with both g1 and g2: takes the first listed
                det(-2, 0, 10, 10, 0.8),  # IoU 80/120 with g1, 60/140 with g2
            ],
        }
    ]
    out = evaluate_odgt([gt_image("A", [g1, g2] if g1_first else [g2, g1])], dt)
    # g1 first: d1 takes g1, d2 has no free gt above 0.5 -> FP: recall 1/2.
    # g2 first: d1 takes g2, d2 takes g1: recall 1.
    assert out["Recall"] == (0.5 if g1_first else 1.0)


def test_ignore_flags_and_matched_gt_overlapping_a_region():
    gt = [
        gt_image(
            "A",
            [
                person(0, 0, 10, 10),  # no 'extra': not ignored
                person(30, 0, 10, 10, 1),  # person with extra.ignore = 1: ignore region
                {"tag": "mask", "fbox": [60, 0, 10, 10]},  # tag mask, no extra: ignore region
            ],
        )
    ]
    dt = [
        {
            "ID": "A",
            "dtboxes": [
                det(0, 0, 10, 10, 0.9),  # TP
                det(0, 0, 10, 10, 0.85),  # duplicate, no region -> FP
                det(30, 0, 10, 10, 0.8),  # ignored (inside the ignored person)
                det(31, 0, 10, 10, 0.7),  # ignored too: a region absorbs any number
                det(62, 0, 10, 10, 0.6),  # IoA 80/100 with the mask region -> ignored
                det(66, 0, 10, 10, 0.5),  # IoA 40/100 -> FP
            ],
        }
    ]
    out = evaluate_odgt(gt, dt)
    # n_gt = 1. Counted: TP (recall 1, prec 1), FP (1, 1/2), FP (1, 1/3): AP 0, Recall 1
    assert out["Recall"] == 1.0 and out["AP"] == 0.0
    # JI, m = 1 throughout:
    #   0.0-0.4: all 6 kept, k = 1 (the TP or its identical duplicate), 3 unmatched ones lie in
    #            regions -> n = 3: 1 / (1 + 3 - 1) = 1/3
    #   0.5:     the 0.5 FP is not > 0.5 -> n = 2: 1/2
    #   0.6000000000000001, 0.7000000000000001, 0.8: the 0.6, 0.7, 0.8 ones go (all ignored
    #            anyway): n = 2: 1/2
    #   0.9:     0.9 > 0.9 is false: nothing kept: 0.   Best: 1/2
    assert out["JI"] == pytest.approx(1 / (1 + 2 - 1 + EPS), abs=1e-12)


def test_ji_uses_maximum_weight_matching_not_greedy_or_cardinality():
    # Boxes 100 x 10 at x = 20 + 30 * i: IoU(shift 30) = 70/130 = 0.538, IoU(shift 60) = 0.25.
    # d1 = 20, g1 = d2 = 50, g2 = d3 = 80, g3 = 110. Edges (IoU > 0.5):
    #   d1-g1 .538, d2-g1 1, d2-g2 .538, d3-g1 .538, d3-g2 1, d3-g3 .538
    # Maximum weight: {d2-g1, d3-g2} = 2.0 beats {d1-g1, d2-g2, d3-g3} = 1.615, so k = 2
    # although 3 pairs could be matched.
    gt = [gt_image("A", [person(x, 0, 100, 10) for x in (50, 80, 110)], size=400)]
    dt = [
        {
            "ID": "A",
            "dtboxes": [det(x, 0, 100, 10, s) for x, s in [(20, 0.97), (50, 0.96), (80, 0.95)]],
        }
    ]
    out = evaluate_odgt(gt, dt)
    # k = 2, n = 3, m = 3: 2 / (3 + 3 - 2) at every threshold (all scores > 0.9)
    assert out["JI"] == pytest.approx(2 / (4 + EPS), abs=1e-12)
    # The Caltech matcher is greedy by score: d1-g1, then d2-g2 (g1 taken), then d3-g3.
    assert out["Recall"] == 1.0
    # AP: points (1/3, 1), (2/3, 1), (1, 1) -> 2/3; no FP: mMR falls back to the last, miss 0
    assert out["AP"] == pytest.approx(2 / 3, abs=1e-12)
    assert out["mMR"] == 0.0


def test_ji_drops_unmatched_gt_inside_an_ignore_region():
    gt = [
        gt_image("A", [person(0, 0, 10, 10), mask(0, 0, 20, 20)]),  # person inside the region
        gt_image("B", [person(0, 0, 10, 10)]),
    ]
    dt = [{"ID": "B", "dtboxes": [det(0, 0, 10, 10, 0.95)]}]
    # A: no detections; its person is unmatched and inside the region: m = 0, n = 0 -> A does
    # not count. B: 1 / (1 + 1 - 1) = 1. JI = 1 (the AP side still counts A's person).
    out = evaluate_odgt(gt, dt)
    assert out["JI"] == pytest.approx(1 / (1 + EPS), abs=1e-12)
    assert out["Recall"] == 0.5


def test_image_size_from_detection_record_and_missing_size():
    gt = [{"ID": "A", "gtboxes": [person(80, 0, 40, 10)]}]
    dt = [{"ID": "A", "height": 100, "width": 100, "dtboxes": [det(85, 0, 15, 10, 0.9)]}]
    assert evaluate_odgt(gt, dt)["Recall"] == 1.0  # TP only after clipping to width 100
    with pytest.raises(ValueError, match="'A'"):
        evaluate_odgt(gt, [{"ID": "A", "dtboxes": []}])


def test_unknown_detection_ids_are_skipped_with_a_warning():
    gt, dt = basic_case()
    dt = dt + [{"ID": "Z", "height": 10, "width": 10, "dtboxes": [det(0, 0, 5, 5, 0.99)]}]
    with pytest.warns(UserWarning, match="no gt record"):
        out = evaluate_odgt(gt, dt)
    assert out == evaluate_odgt(*basic_case())


def test_degenerate_inputs_give_nan_not_errors():
    gt = [gt_image("A", [person(0, 0, 10, 10)])]
    out = evaluate_odgt(gt, [])  # no detection at all: nothing to average for mMR
    assert out["AP"] == 0.0 and out["Recall"] == 0.0 and math.isnan(out["mMR"])
    assert out["JI"] == 0.0
    out = evaluate_odgt([gt_image("A", [mask(0, 0, 10, 10)])], [])  # no gt and no detection
    assert out["AP"] == 0.0 and math.isnan(out["Recall"]) and math.isnan(out["JI"])


def random_case(seed):
    rng = random.Random(seed)
    gt, dt = [], []
    for i in range(rng.randint(1, 4)):
        size = rng.randint(40, 120)
        boxes = []
        for _ in range(rng.randint(1, 4)):
            box = person(
                rng.uniform(-10, size), rng.uniform(-10, size), *rng.sample(range(8, 40), 2)
            )
            if rng.random() < 0.2:
                box = {**box, "tag": "mask"}
            elif rng.random() < 0.2:
                box["extra"] = {"ignore": 1}
            boxes.append(box)
        dets = []
        for _ in range(rng.randint(0, 6)):
            if rng.random() < 0.7:
                x, y, w, h = rng.choice(boxes)["fbox"]
                j = rng.uniform(0, 8)
                box = [x + rng.uniform(-j, j), y + rng.uniform(-j, j), w, h]
            else:
                box = [rng.uniform(-20, size + 10), rng.uniform(-20, size + 10), 15, 25]
            dets.append(det(*box, round(rng.random(), 1)))  # rounded: score ties
        gt.append(gt_image(f"im{i}", boxes, size))
        dt.append({"ID": f"im{i}", "dtboxes": dets})
    return gt, dt


@pytest.mark.parametrize("seed", range(40))
def test_matches_a_literal_implementation(seed):
    gt, dt = random_case(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = evaluate_odgt(gt, dt)
    try:
        ap, mmr, recall = literal.ap_mmr_recall(gt, dt)
    except (ZeroDivisionError, IndexError):  # no gt or no counted detection: undefined
        ap = mmr = recall = None
    if ap is not None:
        assert out["AP"] == pytest.approx(ap, abs=1e-9)
        assert out["mMR"] == pytest.approx(mmr, abs=1e-9)
        assert out["Recall"] == pytest.approx(recall, abs=1e-9)
    ji = literal.jaccard_index(gt, dt)
    assert out["JI"] == pytest.approx(ji, abs=1e-9, nan_ok=True)
