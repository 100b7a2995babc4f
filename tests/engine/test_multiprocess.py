"""The trainer's multi-process paths with two real Gloo processes on the CPU.

- 2 processes x 2 images train to the same weights (and log the same losses: the mean over
  ranks) as 1 process x 4 images;
- a 2-process checkpoint resumed in 1 process trains at the 1-process learning rate, warm-up
  and cosine included, as a 1-process run would at that epoch (bias groups keep their lr_mult);
- a rank that cannot read the checkpoint stops every rank with an error naming it.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import traceback

import pytest
import torch
import torch.multiprocessing as mp

from o2f.config import load_config
from o2f.engine.checkpoint import load_checkpoint
from o2f.engine.train import Trainer
from tests.conftest import free_port
from tests.engine.conftest import tiny_overrides

# deterministic data (no flip, one size), frozen BatchNorm statistics (else BatchNorm's batch
# statistics differ between 2 x 2 and 1 x 4 images), SGD, 12 items per epoch (6 images x 2)
COMMON = ("train.val_interval=0", "train.deterministic=true", "data.flip_prob=0",
          "data.repeat=2", "model.backbone.norm_eval=true", "optim.name=sgd", "optim.lr=0.02",
          "optim.schedule=cosine", "optim.warmup_iters=2", "optim.bias_lr_mult=2",
          "train.precision=fp32")


def _worker(rank: int, world: int, port: int, overrides: list[str], work_dirs: list[str],
            resume: bool, errors) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from o2f.engine.distributed_setup import cleanup_distributed

    try:
        trainer = Trainer(load_config("demo", overrides), work_dirs[rank], resume=resume)
        ddp = trainer.ddp
        assert ddp.gradient_as_bucket_view and not ddp.broadcast_buffers, "DDP flags"
        trainer.run()
    except Exception:
        errors.put(f"rank {rank}: {traceback.format_exc()}")
    finally:
        cleanup_distributed()


def spawn_train(overrides: list[str], work_dirs: list, resume: bool = False) -> list[str]:
    """Train in 2 Gloo processes (rank r in work_dirs[r]); the ranks' error reports."""
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    mp.start_processes(_worker, args=(2, free_port(), overrides, [str(w) for w in work_dirs],
                                      resume, errors), nprocs=2, join=True, start_method="spawn")
    found = []
    while not errors.empty():
        found.append(errors.get())
    return found


def train_here(overrides: list[str], work, resume: bool = False) -> dict:
    Trainer(load_config("demo", overrides), work, resume=resume).run()
    return load_checkpoint(work / "last.pth")


def logged_lrs(log_file, epoch: int) -> list[float]:
    """The ``lr`` of every ``epoch E iter i/n lr X`` line of ``epoch`` in a train.log."""
    pattern = re.compile(rf"epoch {epoch} iter \d+/\d+ lr (\S+)")
    return [float(m.group(1)) for m in pattern.finditer(log_file.read_text())]


@pytest.fixture(scope="module")
def runs(tiny_coco, tmp_path_factory):
    """Epoch 1 in 2 processes x 2 images (``two``) and in 1 process x 4 images (``one``)."""
    root = tmp_path_factory.mktemp("multiprocess")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        errors = spawn_train(tiny_overrides(tiny_coco, "train.epochs=1", *COMMON),
                             [root / "two", root / "two"])
        assert not errors, "\n".join(errors)
        one_overrides = tiny_overrides(tiny_coco, "train.epochs=1", "data.batch_size=4", *COMMON)
        init = Trainer(load_config("demo", one_overrides), root / "init").model.state_dict()
        one = train_here(one_overrides, root / "one")
    finally:
        torch.set_num_threads(before)
    return {"root": root, "two": load_checkpoint(root / "two" / "last.pth"), "one": one,
            "init": init}


@pytest.mark.slow
def test_two_processes_train_as_one_with_the_same_total_batch(runs):
    two, one = runs["two"], runs["one"]
    assert two["iteration"] == one["iteration"] == 3
    assert (two["world_size"], two["total_batch"]) == (2, 4)
    assert (one["world_size"], one["total_batch"]) == (1, 4)
    floats = [k for k, v in one["model"].items() if v.is_floating_point()]
    for key in floats:
        assert (two["model"][key] - one["model"][key]).abs().max() <= 1e-5, key
    # the weights did move: the tolerance is far below what 3 steps changed
    moved = max((one["model"][k] - runs["init"][k]).abs().max().item() for k in floats)
    assert moved > 1e-3
    # logged losses are the mean over the two ranks: the whole batch's loss, as in one process
    for a, b in zip(two["curve"], one["curve"], strict=True):
        assert a["iteration"] == b["iteration"]
        for k in ("loss_cls", "loss_bbox", "loss"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), (a["iteration"], k)


def test_resume_in_one_process_follows_the_one_process_schedule(runs, tiny_coco):
    root = runs["root"]
    straight = train_here(tiny_overrides(tiny_coco, "train.epochs=2", *COMMON),
                          root / "straight1")
    work = root / "resumed"
    shutil.copytree(root / "two", work)
    resumed = train_here(tiny_overrides(tiny_coco, "train.epochs=2", *COMMON), work,
                         resume=True)
    log = (work / "train.log").read_text()
    assert "resume: world size 2 -> 1, total batch 4 -> 2" in log
    assert "iteration 3 -> 6" in log and "base lr 0.01 -> 0.005" in log
    # epoch 2 runs at the 1-process lr, warm-up and cosine of a 1-process run (6 iterations
    # per epoch, 12 in all), not at the 2-process lr of the checkpoint's optimizer state
    lrs = logged_lrs(work / "train.log", 2)
    assert len(lrs) == 6
    assert lrs == pytest.approx(logged_lrs(root / "straight1" / "train.log", 2), rel=1e-3)
    # iteration 6 of 12 of a cosine to 0.05 x lr 0.02 x 2 / 8 (the 2-process state would give
    # iteration 3 at lr 0.01: 0.0086)
    assert lrs[0] == pytest.approx(0.005 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi / 2))),
                                   rel=1e-3)
    assert resumed["iteration"] == straight["iteration"] == 12
    groups = [(g["lr"], g["initial_lr"], g.get("lr_mult", 1.0))
              for g in resumed["optimizer"]["param_groups"]]
    assert len(groups) == 3 and groups[2][2] == 2.0  # the bias group keeps its multiplier
    assert groups == [(g["lr"], g["initial_lr"], g.get("lr_mult", 1.0))
                      for g in straight["optimizer"]["param_groups"]]
    # one x axis: the 2-process iterations 1..3 in 1-process iterations, then epoch 2
    assert [c["iteration"] for c in resumed["curve"]] == [2, 4, 6, 7, 8, 9, 10, 11, 12]


def test_a_rank_that_cannot_read_the_checkpoint_stops_every_rank(runs, tiny_coco, tmp_path):
    """Rank 1 on a node without the work dir's files (no shared filesystem)."""
    shutil.copytree(runs["root"] / "two", tmp_path / "node0")
    (tmp_path / "node1").mkdir()
    errors = spawn_train(tiny_overrides(tiny_coco, "train.epochs=2", *COMMON),
                         [tmp_path / "node0", tmp_path / "node1"], resume=True)
    assert len(errors) == 2, errors  # both ranks stop, neither trains on alone
    for err in errors:
        assert "CheckpointError" in err and "every rank must resume from the same" in err
        assert re.search(r"rank 1 \(host [^)]+\): \S+node1/last.pth does not exist", err), err
        assert "rank 0 (host" not in err
    assert load_checkpoint(tmp_path / "node0" / "last.pth")["epoch"] == 1  # nothing trained
