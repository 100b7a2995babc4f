"""An interrupted-and-resumed run ends with the same weights as an uninterrupted one."""

import torch

from o2f.config import load_config
from o2f.engine.checkpoint import load_checkpoint
from o2f.engine.train import Trainer
from tests.engine.conftest import tiny_overrides


def run(paths, work, epochs, resume=False, *extra):
    cfg = load_config("demo", tiny_overrides(
        paths, f"train.epochs={epochs}", "train.max_iters_per_epoch=2", "train.val_interval=0",
        "train.deterministic=true", "data.train_short=[96,128]", "optim.warmup_iters=3",
        "optim.steps=[2]", *extra))
    Trainer(cfg, work, resume=resume).run()
    return load_checkpoint(work / "last.pth")


def test_resume_reproduces_the_uninterrupted_run(tiny_coco, tmp_path):
    straight = run(tiny_coco, tmp_path / "straight", 2)
    run(tiny_coco, tmp_path / "resumed", 1)  # "killed" after the first epoch's checkpoint
    resumed = run(tiny_coco, tmp_path / "resumed", 2, True)
    assert resumed["iteration"] == straight["iteration"] == 4
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    lr = [g["lr"] for g in resumed["optimizer"]["param_groups"]]
    assert lr == [g["lr"] for g in straight["optimizer"]["param_groups"]]
    assert [h["soft_t"] for h in resumed["history"]] == [h["soft_t"] for h in straight["history"]]


def test_resume_with_ema_reproduces_the_uninterrupted_run(tiny_coco, tmp_path):
    ema = ("train.ema=true", "train.ema_decay=0.9", "train.ema_warmup=1")
    straight = run(tiny_coco, tmp_path / "straight", 2, False, *ema)
    run(tiny_coco, tmp_path / "resumed", 1, False, *ema)
    resumed = run(tiny_coco, tmp_path / "resumed", 2, True, *ema)
    assert resumed["ema"]["updates"] == straight["ema"]["updates"] == 4
    for part in ("model", "model_raw"):  # the EMA weights and the trained ones
        for key, value in straight[part].items():
            assert torch.equal(value, resumed[part][key]), (part, key)
    assert any(not torch.equal(v, straight["model_raw"][k])
               for k, v in straight["model"].items() if v.is_floating_point())


def test_resume_with_persistent_workers_reproduces_the_uninterrupted_run(tiny_coco, tmp_path):
    """A persistent loader worker's random state runs on from epoch 1 to 2 in one go, while
    a resumed run starts a fresh worker at epoch 2: the per-item seeds (o2f.data.seeded) make
    both draw the same random sizes and flips."""
    extra = ("data.workers=1", "data.flip_prob=0.5")
    straight = run(tiny_coco, tmp_path / "straight", 2, False, *extra)
    run(tiny_coco, tmp_path / "resumed", 1, False, *extra)
    resumed = run(tiny_coco, tmp_path / "resumed", 2, True, *extra)
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key


def test_resume_reseeds_the_random_draws_of_each_epoch(tiny_coco_masks, tmp_path):
    """The mask loss samples its points at random (model.mask.max_proposals): each epoch
    seeds torch's generator from (seed, rank, epoch), so a resumed run draws what the
    uninterrupted run drew and ends with the same weights."""
    masks = ("model.mask.enabled=true", "model.mask.max_proposals=3")
    straight = run(tiny_coco_masks, tmp_path / "straight", 2, False, *masks)
    run(tiny_coco_masks, tmp_path / "resumed", 1, False, *masks)
    resumed = run(tiny_coco_masks, tmp_path / "resumed", 2, True, *masks)
    assert resumed["iteration"] == straight["iteration"] == 4
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
