"""The Python API: ``o2f.train``, ``o2f.evaluate`` and ``o2f.export`` do what ``o2f train``,
``o2f test`` and ``o2f export`` do, through the same functions; ``o2f.Detector`` predicts.

Config overrides follow the required arguments in every function (``overrides=``), and come
one of three ways (a later one wins):

- ``overrides={"train.epochs": 1, "data.train.ann_file": "a.json"}``: dotted keys, Python
  values (a string stays a string);
- ``overrides=["train.epochs=1", "data.train.ann_file=a.json"]``: the ``key=value`` strings of
  the command line, the value read as YAML;
- keywords with ``__`` for each dot, after ``overrides``: ``train__epochs=1``.

Everything heavy is imported on the first call, so ``import o2f`` stays light.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from o2f.config import as_overrides  # no torch: the setting below still comes first

# as the ``o2f`` command does (o2f/cli.py): libgomp's spin-waiting slowed small training steps
# up to 8x; this takes effect only when torch is not imported yet and the user has not chosen
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if TYPE_CHECKING:
    from o2f.config import Config

Overrides = Mapping[str, Any] | Sequence[str] | str | None


def train(config: str | Path | Config, work_dir: str | Path, overrides: Overrides = None, *,
          resume: bool = False, **keywords: Any) -> dict[str, Any]:
    """Train a detector, as ``o2f train CONFIG --work-dir WORK_DIR KEY=VALUE ...``.

    Args:
        config: a shipped config name (``"small"``, ``"r50_1x"`` ...), a YAML path, or a
            :class:`~o2f.config.Config`.
        work_dir: folder for the checkpoints (the final one is ``work_dir/last.pth``), logs,
            ``metrics.json``, ``history.json``, plots.
        overrides: config overrides, a ``{"key.path": value}`` mapping or ``key=value`` strings.
        resume: continue from ``work_dir/last.pth`` (starts fresh if there is none).
        **keywords: more overrides, ``__`` for each dot (``train__epochs=1``).

    Returns:
        The last validation metrics (``bbox_mAP`` ... as fractions; empty without validation).

    Example::

        o2f.train("small", "work_dirs/shapes", {"data.train.ann_file": "train.json",
                  "data.train.img_dir": "images/", "train.epochs": 12})
    """
    from o2f.engine.commands import run_train

    return run_train(config, work_dir, as_overrides(overrides, **keywords), resume=resume)


def evaluate(checkpoint: str | Path, overrides: Overrides = None, *,
             config: str | Path | None = None, metrics_out: str | Path | None = None,
             results_out: str | Path | None = None, plots: str | Path | None = None,
             plots_score_thr: float | None = None, verbose: bool = True,
             **keywords: Any) -> dict[str, float]:
    """Evaluate a checkpoint on ``data.val``, as ``o2f test CONFIG CHECKPOINT KEY=VALUE ...``.

    Args:
        checkpoint: a ``.pth`` checkpoint, ``.safetensors`` weights, or an export (``.onnx``
            fp32 or int8, OpenVINO ``.xml``).
        overrides: config overrides, e.g. ``{"data.val.ann_file": "val.json"}``.
        config: a config name or path; None uses the config stored with the checkpoint
            (``o2f test -``).
        metrics_out: also write the metrics here as JSON (``--metrics-out``).
        results_out: write the detections here (``--results-out``).
        plots: write the evaluation plots into this folder (``--plots``).
        plots_score_thr: score threshold of the confusion matrix and worst images.
        verbose: print the per-class table and the headline metrics, as ``o2f test`` does.
        **keywords: more overrides, ``__`` for each dot (``data__val__ann_file=...``).

    Returns:
        The metrics ``--metrics-out`` writes: ``bbox_mAP``, ``bbox_mAP_50``, ``bbox_mAP_75``,
        ``bbox_mAP_s/m/l``, ``dup_rate`` (and ``segm_*`` for a mask model), as fractions.
    """
    from o2f.engine.commands import run_test

    return run_test(checkpoint, config, as_overrides(overrides, **keywords),
                    metrics_out=metrics_out, results_out=results_out, plots=plots,
                    plots_score_thr=plots_score_thr, verbose=verbose)


def export(checkpoint: str | Path | None, output: str | Path, overrides: Overrides = None, *,
           config: str | Path | None = None, format: str | None = None, int8: bool = False,
           calib: str | Path | None = None, calib_images: int = 100,
           calib_method: str = "minmax", opset: int = 18, verbose: bool = True,
           **keywords: Any) -> Path:
    """Export a model, as ``o2f export CONFIG CHECKPOINT --output OUTPUT ...``: an NMS-free
    ONNX graph (input ``images`` uint8 (B, 3, H, W) RGB; outputs ``boxes``, ``scores``,
    ``labels``), an OpenVINO IR, int8 for either, or safetensors weights.

    Args:
        checkpoint: a ``.pth`` checkpoint or ``.safetensors`` weights; an fp32 ``.onnx`` to
            quantize (``int8=True``) or convert (``format="openvino"``); None exports randomly
            initialised weights of ``config`` (it must set ``model.num_classes``).
        output: the ``.onnx``, ``.xml`` (its ``.bin`` beside it) or ``.safetensors`` file.
        overrides: config overrides, e.g. ``{"test.max_per_img": 50}``.
        config: a config name or path; None uses the config stored with the checkpoint;
            with ``checkpoint`` None, the config whose random weights are exported.
        format: ``"onnx"``, ``"openvino"`` or ``"safetensors"``; default: from the suffix of
            ``output`` (``.xml``: openvino, ``.safetensors``), else onnx.
        int8: post-training int8 quantization (ONNX Runtime QDQ for onnx, NNCF for openvino).
        calib: the int8 calibration images, a folder or a COCO-format ``.json`` (default: the
            config's ``data.train.ann_file``).
        calib_images: how many calibration images.
        calib_method: ONNX Runtime's calibration, ``"minmax"``, ``"percentile"`` or
            ``"entropy"``.
        opset: the ONNX opset.
        verbose: print the line ``o2f export`` prints.
        **keywords: more overrides, ``__`` for each dot (``test__max_per_img=50``).

    Returns:
        The path of the written file.
    """
    from o2f.deploy.commands import run_export

    line = run_export(checkpoint, output, config, as_overrides(overrides, **keywords),
                      fmt=format, int8=int8, calib=calib, calib_images=calib_images,
                      calib_method=calib_method, opset=opset)
    if verbose:
        print(line)
    return Path(output)


__all__ = ["evaluate", "export", "train"]
