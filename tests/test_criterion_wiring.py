"""Each criterion's defaults are the recipe of SPEC §2-3, and `build_criterion` hands every
`model.*` key to the criterion it builds: a changed default or a dropped keyword fails here."""

from __future__ import annotations

import math

import pytest
import torch

from o2f.assigners import FCOS_REGRESS_RANGES
from o2f.builders import build_criterion
from o2f.config import ConfigError, load_config
from o2f.criterion import FCOSCriterion, O2FCriterion, O2OCriterion

INF = math.inf


def o2f_values(c: O2FCriterion) -> tuple:
    return (c.num_classes, c.topk, c.alpha, c.center_radius, c.soft_weight, c.soft_t_start,
            c.soft_t_end, c.soft_t, c.cls_weight, c.bbox_weight)


def fcos_values(c: FCOSCriterion) -> tuple:
    return (c.num_classes, c.center_radius, c.regress_ranges, c.focal_alpha, c.focal_gamma,
            c.cls_weight, c.bbox_weight, c.ctr_weight)


FCOS_RANGES = ((-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, INF))


def test_defaults_are_the_paper_recipe():
    # SPEC §2: k = 7, alpha 0.8, radius 1.5, soft weight 0.4, t from 0.6 to 0.2; §3: GIoU x 2.
    assert o2f_values(O2FCriterion(3)) == (3, 7, 0.8, 1.5, 0.4, 0.6, 0.2, 0.6, 1.0, 2.0)
    # o2o: k = 1 and nothing of the soft-label schedule.
    assert o2f_values(O2OCriterion(3)) == (3, 1, 0.8, 1.5, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0)
    # FCOS: centre sampling 1.5, the FCOS ranges, focal 0.25 / 2, every weight 1.
    assert FCOS_REGRESS_RANGES == FCOS_RANGES
    assert fcos_values(FCOSCriterion(3)) == (3, 1.5, FCOS_RANGES, 0.25, 2.0, 1.0, 1.0, 1.0)


def test_o2o_keeps_no_schedule():
    c = O2OCriterion(2)
    c.set_epoch(5, 12)
    assert c.soft_t == 0.0


OVERRIDES = ["model.assign.topk=5", "model.assign.alpha=0.7", "model.assign.center_radius=2.5",
             "model.assign.soft_weight=0.3", "model.assign.soft_t_start=0.5",
             "model.assign.soft_t_end=0.1", "model.loss.cls_weight=1.5",
             "model.loss.bbox_weight=3.0", "model.loss.ctr_weight=0.5",
             "model.fcos.focal_alpha=0.3", "model.fcos.focal_gamma=1.5",
             "model.fcos.regress_ranges=[[-1,32],[32,64],[64,128],[128,256],[256,100000000.0]]"]


def test_build_criterion_passes_every_key_to_o2f():
    c = build_criterion(load_config(None, OVERRIDES), 4)
    assert type(c) is O2FCriterion
    assert o2f_values(c) == (4, 5, 0.7, 2.5, 0.3, 0.5, 0.1, 0.5, 1.5, 3.0)


def test_build_criterion_passes_every_key_to_o2o():
    c = build_criterion(load_config(None, OVERRIDES + ["model.assigner=o2o"]), 4)
    assert type(c) is O2OCriterion
    assert o2f_values(c) == (4, 1, 0.7, 2.5, 0.0, 0.0, 0.0, 0.0, 1.5, 3.0)


def test_build_criterion_passes_every_key_to_fcos():
    c = build_criterion(load_config(None, OVERRIDES + ["model.assigner=fcos"]), 4)
    assert type(c) is FCOSCriterion
    ranges = ((-1.0, 32.0), (32.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 1e8))
    assert fcos_values(c) == (4, 2.5, ranges, 0.3, 1.5, 1.5, 3.0, 0.5)


@pytest.mark.parametrize("assigner, weight", [("o2f", 2.0), ("o2o", 2.0), ("fcos", 1.0)])
def test_unset_bbox_weight_takes_each_assigners_recipe(assigner, weight):
    c = build_criterion(load_config(None, [f"model.assigner={assigner}",
                                           "model.loss.bbox_weight=null"]), 2)
    assert c.bbox_weight == weight


def test_unknown_assigner_names_the_key():
    cfg = load_config(None)
    cfg.model.assigner = "atss"
    with pytest.raises(ConfigError, match="model.assigner='atss'"):
        build_criterion(cfg, 2)


def test_pad_targets_moves_pads_and_keeps_centres_only_when_every_image_has_them():
    from o2f.criterion import pad_targets

    meta = torch.device("meta")
    one = {"boxes": torch.tensor([[0.0, 0, 4, 4]], dtype=torch.float64),
           "labels": torch.tensor([2], dtype=torch.int32), "centers": torch.tensor([[1.0, 2]])}
    two = {"boxes": torch.tensor([[0.0, 0, 2, 2], [1, 1, 3, 3]]), "labels": torch.tensor([0, 1]),
           "centers": torch.tensor([[1.0, 1], [2, 2]])}
    boxes, labels, valid, centers = pad_targets([one, two], torch.device("cpu"), torch.float32)
    assert boxes.dtype == torch.float32 and labels.dtype == torch.long
    assert boxes.shape == (2, 2, 4) and valid.tolist() == [[True, False], [True, True]]
    assert labels.tolist() == [[2, 0], [0, 1]] and boxes[0, 1].tolist() == [0, 0, 0, 0]
    assert centers.dtype == torch.float32 and centers[0].tolist() == [[1, 2], [0, 0]]
    without = {k: v for k, v in two.items() if k != "centers"}
    assert pad_targets([one, without], torch.device("cpu"), torch.float32)[3] is None
    on_meta = pad_targets([one, two], meta, torch.float32)
    assert all(t.device == meta for t in on_meta)
