"""``o2f train small`` + ``o2f test`` on a YOLO and a Pascal VOC dataset, and the CLI's one-line
errors (``o2f: error: ...``, exit 2; the traceback with ``--debug`` / ``O2F_DEBUG=1``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from o2f.engine.checkpoint import load_checkpoint
from tests.data.format_samples import make_voc, make_yolo

FAST = ["train.epochs=1", "data.batch_size=2", "data.workers=0", "data.train_short=[64,64]",
        "data.test_short=64", "data.max_size=96", "train.max_iters_per_epoch=1",
        "train.log_interval=1"]


def o2f(*args, env=None, check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "o2f", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _table_names(stdout: str) -> list[str]:
    """The category names of the per-class table ``o2f test`` prints."""
    rows = [line for line in stdout.splitlines() if line.startswith("| ")]
    return [r.split("|")[1].strip() for r in rows[2:]]  # after the header and the ---


@pytest.mark.slow
def test_train_small_and_test_on_a_yolo_data_yaml(tmp_path):
    yaml_path = make_yolo(tmp_path / "yolo")
    work = tmp_path / "work"
    o2f("train", "small", "--work-dir", work, f"data.train.ann_file={yaml_path}",
        f"data.train.img_dir={tmp_path / 'yolo' / 'images' / 'train'}",
        f"data.val.ann_file={yaml_path}", *FAST)
    meta = load_checkpoint(work / "last.pth")["meta"]
    assert meta["class_names"] == ["cat", "dog", "bird"] and meta["cat_ids"] == [0, 1, 2]
    results = tmp_path / "results.json"
    proc = o2f("test", "-", work / "last.pth", "--results-out", results, "test.score_thr=0.0")
    assert _table_names(proc.stdout) == ["cat", "dog", "bird"]
    dets = json.loads(results.read_text())
    assert dets and {d["category_id"] for d in dets} <= {0, 1, 2}  # the YOLO class indices
    assert {d["image_id"] for d in dets} == {1, 2}  # the two val images


@pytest.mark.slow
def test_train_small_and_test_on_pascal_voc_xml(tmp_path):
    ann, img = make_voc(tmp_path / "train", num=4)
    val_ann, _ = make_voc(tmp_path / "val", num=2)
    work = tmp_path / "work"
    # no data.val.img_dir: small's default does not exist, val/JPEGImages is found instead
    o2f("train", "small", "--work-dir", work, f"data.train.ann_file={ann}",
        f"data.train.img_dir={img}", f"data.val.ann_file={val_ann}", *FAST)
    state = load_checkpoint(work / "last.pth")
    assert state["meta"]["class_names"] == ["car", "person"]
    assert state["meta"]["cat_ids"] == [1, 2]
    metrics = tmp_path / "m.json"
    proc = o2f("test", "-", work / "last.pth", "--metrics-out", metrics)
    assert _table_names(proc.stdout) == ["car", "person"]
    assert 0 <= json.loads(metrics.read_text())["bbox_mAP"] <= 1


@pytest.mark.slow
def test_a_typod_key_is_one_error_line_and_exit_2(tmp_path):
    proc = o2f("train", "small", "--work-dir", tmp_path, "data.batchsize=2", check=False)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "o2f: error: unknown config key 'data.batchsize' (did you mean 'data.batch_size'?)"]
    assert "Traceback" not in proc.stderr
    proc = o2f("train", "small", "--work-dir", tmp_path, "data.batchsize=2", "--debug",
               check=False)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "ConfigError: unknown config key" in proc.stderr


def _main(argv, capsys):
    from o2f.cli import main

    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_data_and_checkpoint_errors_are_one_line(tmp_path, capsys, monkeypatch):
    yaml_path = make_yolo(tmp_path / "yolo", num_train=2, num_val=1)
    (tmp_path / "yolo" / "labels" / "train" / "im1.txt").write_text("0 0.5 0.5 0.2 0.2\n7 .5\n")
    code, err = _main(["train", "small", "--work-dir", tmp_path / "w",
                       f"data.train.ann_file={yaml_path}", f"data.val.ann_file={yaml_path}",
                       "data.workers=0"], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("o2f: error:")]
    assert len(lines) == 1 and "im1.txt:2: expected 'class cx cy w h'" in lines[0]
    assert "Traceback" not in err

    code, err = _main(["test", "-", tmp_path / "missing.pth"], capsys)
    assert code == 2 and err.strip() == f"o2f: error: checkpoint {tmp_path / 'missing.pth'} " \
                                        "does not exist"
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pth")
    code, err = _main(["test", "-", tmp_path / "foreign.pth"], capsys)
    assert code == 2 and err.strip() == (f"o2f: error: {tmp_path / 'foreign.pth'} is not an o2f "
                                         "checkpoint (no 'model' entry)")
    code, err = _main(["train", "small", "--work-dir", tmp_path / "w",
                       f"data.train.ann_file={tmp_path / 'none.json'}"], capsys)
    assert code == 2 and err.strip() == (f"o2f: error: data.train.ann_file: "
                                         f"{tmp_path / 'none.json'} does not exist")

    monkeypatch.setenv("O2F_DEBUG", "1")  # the traceback again
    from o2f.engine.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="does not exist"):
        _main(["test", "-", tmp_path / "missing.pth"], capsys)


def test_unexpected_errors_keep_their_traceback(tmp_path, monkeypatch, capsys):
    import o2f.engine.commands as commands

    def broken(*args, **kwargs):
        raise RuntimeError("an internal bug")

    monkeypatch.setattr(commands, "load_config", broken)
    with pytest.raises(RuntimeError, match="an internal bug"):
        _main(["train", "small", "--work-dir", tmp_path], capsys)


def test_error_line_of_a_dataloader_worker_error():
    from o2f.cli import error_line
    from o2f.data import DataError

    wrapped = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback "
                        "(most recent call last):\n  File \"x.py\", line 1, in f\n"
                        "o2f.data.errors.DataError: a.png (image id 3): bad size\n")
    assert error_line(wrapped) == "a.png (image id 3): bad size"
    assert error_line(DataError("a\n  b")) == "a b"
