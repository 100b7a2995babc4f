"""Device-agnostic code without a GPU: the criteria and the static-shape selection run on the
``meta`` device, where any tensor made on the CPU by mistake (a missing ``device=``) meets a
meta tensor and raises, as it would meet a CUDA tensor on a GPU."""

from __future__ import annotations

import pytest
import torch

from o2f.assigners import level_grids
from o2f.boxes import level_points
from o2f.criterion import FCOSCriterion, O2FCriterion, O2OCriterion
from o2f.postprocess import select_topk

META = torch.device("meta")
SHAPES = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
STRIDES = [8, 16, 32, 64, 128]


def test_a_cpu_tensor_does_not_mix_with_a_meta_tensor():
    with pytest.raises(RuntimeError):
        _ = torch.zeros(3) + torch.zeros(3, device=META)


def inputs(batch: int = 2, classes: int = 3):
    points, strides = level_points(SHAPES, STRIDES)
    grids = level_grids(points, strides)  # plain numbers, made once on the host
    n = points.shape[0]
    g = torch.Generator().manual_seed(0)
    cls = torch.randn(batch, n, classes, generator=g)
    ltrb = torch.rand(batch, n, 4, generator=g) * 20 + 1
    ctr = torch.randn(batch, n, generator=g)
    targets = [{"boxes": torch.tensor([[4.0, 4, 40, 30], [30, 30, 60, 62]]),
                "labels": torch.tensor([0, 2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    return cls, ltrb, ctr, points, strides, grids, targets[:batch]


@pytest.mark.parametrize("criterion", [O2FCriterion(3), O2OCriterion(3), FCOSCriterion(3)],
                         ids=["o2f", "o2o", "fcos"])
def test_criteria_run_on_the_meta_device(criterion):
    cls, ltrb, ctr, points, strides, grids, targets = inputs()
    meta_targets = [{k: v.to(META) for k, v in t.items()} for t in targets]
    losses = criterion(cls.to(META), ltrb.to(META), ctr.to(META), points.to(META),
                       strides.to(META), grids, meta_targets)
    assert losses and all(v.device == META and v.shape == () for v in losses.values())
    # the same call on the CPU gives finite numbers under the same names
    cpu = criterion(cls, ltrb, ctr, points, strides, grids, targets)
    assert list(cpu) == list(losses) and all(torch.isfinite(v) for v in cpu.values())


@pytest.mark.parametrize("selection", ["box", "authors"])
def test_static_shape_selection_runs_on_the_meta_device(selection):
    points, _ = level_points(SHAPES, STRIDES)
    per_level = list(points.split([h * w for h, w in SHAPES]))
    g = torch.Generator().manual_seed(1)
    cls = [torch.randn(2, 3, h, w, generator=g).to(META) for h, w in SHAPES]
    reg = [torch.rand(2, 4, h, w, generator=g).to(META) for h, w in SHAPES]
    ctr = [torch.randn(2, 1, h, w, generator=g).to(META) for h, w in SHAPES]
    out = select_topk(cls, reg, ctr, [p.to(META) for p in per_level],
                      torch.tensor([[60, 60], [64, 50]]).to(META), static_shapes=True,
                      selection=selection, max_per_img=20)
    boxes, scores, labels, idx = out
    assert boxes.shape == (2, 20, 4) and scores.shape == labels.shape == idx.shape == (2, 20)
    assert all(t.device == META for t in out)
