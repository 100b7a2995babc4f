"""Fault injection as a user would meet it: kill -9 mid-training and mid-save, corrupt images,
a failing rank. Nothing already written may be lost and every message must name the culprit."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from o2f.engine.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import free_port
from tests.engine.conftest import tiny_overrides
from tests.engine.test_cli_e2e import o2f

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
RUN = ("train.val_interval=0", "train.deterministic=true", "optim.warmup_iters=3",
       "optim.steps=[3]", "train.max_iters_per_epoch=3")


def _copy_dataset(paths: dict, dest: Path) -> dict:
    """A private copy of the tiny dataset that a test may damage."""
    root = Path(os.path.commonpath([str(v) for v in paths.values()]))
    shutil.copytree(root, dest)
    return {k: str(dest / Path(v).relative_to(root)) for k, v in paths.items()}


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, "the run ended before the fault could be injected"
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.02)


# ``o2f`` whose training forward pass number ``argv[2]`` (1-based) writes the file ``argv[1]``
# and then waits forever: the test kills the run at a known point, whatever the machine's speed.
_PAUSING_O2F = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from o2f.cli import main  # first: it sets the OpenMP wait policy before torch loads
    from o2f.models.detector import O2FDetector
    marker, pause_at = Path(sys.argv[1]), int(sys.argv[2])
    forward, calls = O2FDetector.forward, [0]
    def pausing_forward(self, *args, **kwargs):
        if self.training:
            calls[0] += 1
            if calls[0] == pause_at:
                marker.write_text(str(calls[0]))
                while True:
                    time.sleep(1)
        return forward(self, *args, **kwargs)
    O2FDetector.forward = pausing_forward
    sys.exit(main(sys.argv[3:]))
""")


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_ends_with_the_uninterrupted_weights(tiny_coco, tmp_path):
    args = ("train", "demo", *tiny_overrides(tiny_coco, "train.epochs=3", *RUN))
    o2f(*args, "--work-dir", tmp_path / "straight")

    work = tmp_path / "killed"
    marker = tmp_path / "paused"
    with open(tmp_path / "killed.err", "w") as err:
        # Paused before the second iteration of the second epoch (forward pass 5 of 3 x 3):
        # epoch 1's checkpoint is written, one step of epoch 2 is taken and not saved.
        proc = subprocess.Popen([sys.executable, "-c", _PAUSING_O2F, str(marker), "5", *args,
                                 "--work-dir", str(work)],
                                stdout=subprocess.DEVNULL, stderr=err, env=ENV)
        _wait_for(marker.is_file, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    log = (work / "train.log").read_text()
    assert "epoch 2 iter 1/3" in log and "epoch 2 iter 2/3" not in log
    assert load_checkpoint(work / "last.pth")["epoch"] == 1

    o2f(*args, "--work-dir", work, "--resume")
    straight = load_checkpoint(tmp_path / "straight" / "last.pth")
    resumed = load_checkpoint(work / "last.pth")
    assert resumed["iteration"] == straight["iteration"] == 9
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for a, b in zip(straight["optimizer"]["param_groups"], resumed["optimizer"]["param_groups"],
                    strict=True):
        assert a["lr"] == b["lr"]
    assert [h["soft_t"] for h in resumed["history"]] == [h["soft_t"] for h in straight["history"]]


_SAVER = textwrap.dedent("""
    import sys, torch
    from o2f.engine.checkpoint import save_checkpoint
    state = {"model": {"w": torch.full((32, 1024, 1024), 2.0)}, "epoch": 2}  # 128 MiB
    print("ready", flush=True)
    while True:
        save_checkpoint(state, sys.argv[1])
""")


@pytest.mark.slow
def test_kill_9_during_checkpoint_saves_never_breaks_the_latest(tmp_path):
    path = tmp_path / "last.pth"
    save_checkpoint({"model": {"w": torch.ones(3)}, "epoch": 1}, path)
    epochs_seen, interrupted = set(), 0
    for delay in (0.0, 0.1, 0.3, 0.6):
        proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(path)],
                                stdout=subprocess.PIPE, text=True, env=ENV)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        interrupted += any(tmp_path.glob(".last.pth.*.tmp"))  # killed mid-write
        state = load_checkpoint(path)  # never a partial file: the old or a complete new one
        epochs_seen.add(state["epoch"])
        expected = 1.0 if state["epoch"] == 1 else 2.0
        assert bool((state["model"]["w"] == expected).all())
    assert epochs_seen <= {1, 2} and interrupted >= 1  # at least one kill hit a write
    # The next save sweeps the temporary files the killed writers left behind.
    save_checkpoint({"model": {"w": torch.zeros(1)}, "epoch": 3}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]


def _corrupt(path: str) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 3])  # a truncated JPEG


def _first_image(ann_file: str, img_dir: str) -> tuple[int, str]:
    img = json.loads(Path(ann_file).read_text())["images"][0]
    return img["id"], str(Path(img_dir) / img["file_name"])


@pytest.mark.slow
def test_corrupt_images_are_counted_in_training_and_evaluation_or_fail_in_strict_mode(
        tiny_coco, tmp_path):
    paths = _copy_dataset(tiny_coco, tmp_path / "data")
    train_id, train_file = _first_image(paths["train_ann"], paths["train_images"])
    val_id, val_file = _first_image(paths["val_ann"], paths["val_images"])
    _corrupt(train_file)
    _corrupt(val_file)
    work = tmp_path / "run"
    args = ("train", "demo", *tiny_overrides(paths, "train.epochs=1", "train.val_interval=1",
                                              "train.max_iters_per_epoch=0"))
    proc = o2f(*args, "--work-dir", work)
    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics["replaced_images"] == 1 and metrics["unreadable_images"] == 1
    log = (work / "train.log").read_text()
    assert f"image id {train_id}" in log and "using the next image" in log
    assert f"image id {val_id}" in log and "count with no detections" in log
    assert "1 unreadable training image(s) were replaced" in proc.stderr

    strict = o2f_failing(*args, "--work-dir", tmp_path / "strict", "data.strict=true")
    assert Path(train_file).name in strict and f"image id {train_id}" in strict
    assert not (tmp_path / "strict" / "last.pth").exists()


def o2f_failing(*args, launcher=(sys.executable, "-m", "o2f"), timeout: float = 300) -> str:
    """Run the CLI expecting failure; returns its stderr."""
    proc = subprocess.run([*launcher, *map(str, args)], capture_output=True, text=True, env=ENV,
                          timeout=timeout)
    assert proc.returncode != 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stderr


@pytest.mark.slow
def test_a_failing_rank_stops_the_whole_torchrun_job_with_its_error(tiny_coco, tmp_path):
    paths = _copy_dataset(tiny_coco, tmp_path / "data")
    _, train_file = _first_image(paths["train_ann"], paths["train_images"])
    _corrupt(train_file)  # whichever rank draws it raises; the other waits in all-reduce
    launcher = (sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
                f"--master-port={free_port()}", "-m", "o2f")
    start = time.monotonic()
    err = o2f_failing("train", "demo", "--work-dir", tmp_path / "ddp",
                      *tiny_overrides(paths, "train.epochs=1", "train.val_interval=0",
                                      "data.strict=true"),
                      launcher=launcher, timeout=240)
    assert time.monotonic() - start < 240
    assert "cannot read image" in err and Path(train_file).name in err
