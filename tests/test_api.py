"""The Python API (``o2f.train``, ``o2f.evaluate``, ``o2f.export``) does what the CLI does."""

import json
import os
import subprocess
import sys

import pytest

import o2f
from o2f.config import ConfigError, as_overrides, load_config
from tests.engine.conftest import tiny_overrides


def _as_dict(overrides):
    """The ``key=value`` strings of ``tiny_overrides`` as a ``{key: python value}`` mapping."""
    import yaml

    return {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in overrides)}


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    """As tests/engine/conftest.py's: 6 training and 3 validation images of 128 x 128."""
    from o2f.data.synthetic import generate_synthetic_coco

    return generate_synthetic_coco(tmp_path_factory.mktemp("tiny_coco"), 6, 3,
                                   image_size=(128, 128), seed=1, num_objects=(3, 6),
                                   size_range=(16, 80))


@pytest.fixture(scope="module")
def trained(tiny_coco, tmp_path_factory):
    """One training iteration of ``small`` through ``o2f.train``: (work dir, returned metrics)."""
    work = tmp_path_factory.mktemp("api") / "run"
    overrides = _as_dict(tiny_overrides(tiny_coco, "train.precision=fp32"))
    metrics = o2f.train("small", work, overrides, train__epochs=1,
                        train__max_iters_per_epoch=1, train__loggers=[])
    return work, metrics


def test_train_runs_one_iteration_into_the_work_dir(trained):
    from o2f.engine.checkpoint import load_checkpoint

    work, metrics = trained
    state = load_checkpoint(work / "last.pth")
    assert state["epoch"] == 1 and state["iteration"] == 1
    assert state["meta"]["cat_ids"] == [1, 3, 7, 12]
    assert state["config"]["train"]["max_iters_per_epoch"] == 1  # the keyword override
    assert state["config"]["model"]["backbone"]["depth"] == 10  # the mapping override
    assert 0 <= metrics["bbox_mAP"] <= 1


def test_evaluate_returns_what_o2f_test_writes(trained, tmp_path, capsys):
    work, _ = trained
    checkpoint = work / "last.pth"
    cli_metrics, cli_results = tmp_path / "cli.json", tmp_path / "cli_results.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "o2f", "test", "-", str(checkpoint),
                           "--metrics-out", str(cli_metrics), "--results-out", str(cli_results),
                           "test.score_thr=0.0"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    api_results = tmp_path / "api_results.json"
    metrics = o2f.evaluate(checkpoint, overrides=["test.score_thr=0.0"],
                           results_out=api_results, verbose=False)
    assert capsys.readouterr().out == ""  # verbose=False prints nothing
    expected = json.loads(cli_metrics.read_text())
    assert set(metrics) == set(expected) and "bbox_mAP" in metrics
    assert metrics == pytest.approx(expected, rel=1e-6, abs=1e-9)
    # the same detections, too (so the equal metrics are not two empty evaluations)
    api, cli = json.loads(api_results.read_text()), json.loads(cli_results.read_text())
    assert len(api) == len(cli) > 0
    assert [r["category_id"] for r in api] == [r["category_id"] for r in cli]
    flat = [[v for r in results for v in (*r["bbox"], r["score"])] for results in (api, cli)]
    assert flat[0] == pytest.approx(flat[1], abs=1e-3)


@pytest.mark.slow
def test_export_writes_an_nms_free_onnx_file(trained, tmp_path):
    onnx = pytest.importorskip("onnx")
    work, _ = trained
    out = o2f.export(work / "last.pth", tmp_path / "model.onnx", test__max_per_img=20,
                     verbose=False)
    assert out == tmp_path / "model.onnx" and out.stat().st_size > 0
    graph = onnx.load(str(out)).graph
    assert [o.name for o in graph.output] == ["boxes", "scores", "labels"]
    assert [i.name for i in graph.input] == ["images"]
    assert graph.output[0].type.tensor_type.shape.dim[1].dim_value == 20  # the override


def test_overrides_three_ways():
    got = as_overrides({"data.train.ann_file": "true", "optim.lr": 1e-5,
                        "data.train_short": (96, 128)},
                       train__epochs=2)
    cfg = load_config("small", got)
    assert cfg.data.train.ann_file == "true"  # a Python string stays a string
    assert cfg.optim.lr == 1e-5 and cfg.data.train_short == [96, 128] and cfg.train.epochs == 2
    assert as_overrides(["train.epochs=3"]) == as_overrides("train.epochs=3") == [
        "train.epochs=3"]
    with pytest.raises(ConfigError, match="not of the form"):
        as_overrides(["train.epochs"])


def test_a_typo_is_a_config_error_before_training(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'train.epochs'"):
        o2f.train("small", tmp_path / "run", {"train.epoch": 1})
    assert not (tmp_path / "run").exists()


def test_import_o2f_stays_light():
    probe = ("import sys, o2f; o2f.train, o2f.evaluate, o2f.export; "
             "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"
