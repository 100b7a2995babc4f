"""``o2f demo``: generate the embedded synthetic dataset, train the CPU config, evaluate without
NMS, and save a picture of predictions."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

# The demo dataset: many crowded images rather than many epochs over few, at a size the CPU config
# trains on in minutes; objects from 12 px to most of the image; each object's visible pixels as
# its instance mask (RLE), for `o2f demo --mask`.
DEMO_DATA = {"num_train": 1600, "num_val": 100, "image_size": (192, 192), "seed": 0,
             "size_range": (12, 150), "with_masks": True}

# What `o2f demo` adds to the `demo` config (the box demo only): the two small-data changes of
# the `small` config, a training-only one-to-many head and a lower soft-label ceiling. On the
# demo's data they gave +2.5 AP and a fifth fewer duplicates for 13% more time
# (benchmarks/NMS_FREE.md, session 6). The `demo` config itself stays the paper's recipe at
# CPU scale (the assigner comparison and the trainer tests use it).
DEMO_RECIPE = ("model.aux.enabled=true", "model.assign.soft_t_start=0.4",
               "model.assign.soft_t_end=0.1")


def ensure_demo_data(data_dir: Path) -> dict[str, Path]:
    """Generate the synthetic dataset into ``data_dir`` unless it is already there."""
    from o2f.data.synthetic import generate_synthetic_coco

    ann = data_dir / "annotations"
    stamp = data_dir / "generator.json"
    wanted = json.dumps(DEMO_DATA, sort_keys=True)
    if (ann / "train.json").is_file() and (ann / "val.json").is_file() and \
            stamp.is_file() and stamp.read_text() == wanted:
        return {"train_ann": ann / "train.json", "val_ann": ann / "val.json",
                "train_images": data_dir / "train", "val_images": data_dir / "val"}
    paths = generate_synthetic_coco(data_dir, **DEMO_DATA)
    stamp.write_text(wanted)
    return paths


def prediction_picture(model, dataset, device, path: Path, count: int = 8,
                       score_thr: float = 0.3) -> None:
    """Draw the model's detections scoring >= ``score_thr`` on the first ``count`` images of
    ``dataset``."""
    from o2f.data import load_rgb_image
    from o2f.visualize import draw_detections, save_grid

    model.eval()
    pictures = []
    with torch.no_grad():
        for index in range(min(count, len(dataset))):
            image, target = dataset[index]
            det = model([image.to(device)], [target])[0]
            info = dataset.image_info(index)
            original = load_rgb_image(Path(dataset.img_dir) / info["file_name"], info["id"])
            original = torch.from_numpy(np.array(original)).permute(2, 0, 1)
            masks = det["masks"].cpu() if "masks" in det else None
            pictures.append(draw_detections(original, det["boxes"].cpu(), det["labels"].cpu(),
                                            det["scores"].cpu(), dataset.class_names,
                                            score_thr=score_thr, masks=masks))
    save_grid(pictures, path)


def operating_point(dataset, detections: dict | None) -> dict[str, float]:
    """The score threshold of the picture: that of the best F1 of the validation
    ``detections`` (image id -> boxes / scores / labels), with that F1 and the duplicate rate
    at it; {"score_thr": 0.3} without detections."""
    from o2f.evaluation.duplicates import duplicate_rate
    from o2f.evaluation.plots import DUP_SCORE_THR, best_f1_threshold

    if not detections:
        return {"score_thr": DUP_SCORE_THR}
    f1, thr = best_f1_threshold(dataset, detections)
    return {"score_thr": thr, "f1": f1, "dup_rate": duplicate_rate(detections, score_thr=thr)}


def cmd_demo(args: argparse.Namespace) -> int:
    from o2f.config import load_config
    from o2f.engine.evaluate import headline_keys
    from o2f.engine.train import Trainer
    from o2f.evaluation.plots import DUP_SCORE_THR

    start = time.perf_counter()
    if args.work_dir is None:
        args.work_dir = "work_dirs/demo_mask" if args.mask else "work_dirs/demo"
    data_dir = Path(args.data_dir)
    paths = ensure_demo_data(data_dir)
    overrides = [
        f"data.train.ann_file={paths['train_ann']}", f"data.train.img_dir={paths['train_images']}",
        f"data.val.ann_file={paths['val_ann']}", f"data.val.img_dir={paths['val_images']}",
        *(() if args.mask else DEMO_RECIPE), *args.overrides,
    ]
    cfg = load_config("demo_mask" if args.mask else "demo", overrides)
    trainer = Trainer(cfg, args.work_dir)
    metrics = trainer.run()
    work_dir = Path(args.work_dir)
    point = operating_point(trainer.val_set, trainer.last_eval.get("detections"))
    prediction_picture(trainer.eval_model(), trainer.val_set, trainer.device,
                       work_dir / "predictions.png", score_thr=point["score_thr"])
    elapsed = time.perf_counter() - start
    print("\n" + " ".join(f"{k}={metrics[k]:.4f}" for k in headline_keys(metrics)))
    if "dup_rate" in metrics:
        print(f"duplicate rate {metrics['dup_rate']:.3f} without NMS: the share of detections "
              f"scoring >= {DUP_SCORE_THR} that overlap a higher-scored one of the same class "
              "at IoU >= 0.7 (what NMS would remove)")
    if "dup_rate" in point:
        print(f"predictions.png shows detections scoring >= {point['score_thr']:.2f}, the "
              f"threshold of the best F1 ({point['f1']:.3f}) on the validation images; "
              f"duplicate rate there {point['dup_rate']:.3f}")
    print(f"demo finished in {elapsed:.0f} s: checkpoint {work_dir / 'last.pth'}, predictions "
          f"{work_dir / 'predictions.png'}, loss curve {work_dir / 'loss_curve.png'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train and evaluate on the embedded synthetic dataset (CPU)")
    p.add_argument("--work-dir", default=None,
                   help="default work_dirs/demo, or work_dirs/demo_mask with --mask")
    p.add_argument("--mask", action="store_true",
                   help="train the instance-segmentation config demo_mask (mask AP too)")
    p.add_argument("--data-dir", default="data/synthetic",
                   help="where the synthetic dataset is generated (reused when present)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, applied after the demo's own (the box demo adds "
                        "model.aux.enabled=true and a soft-label ceiling 0.4 -> 0.1)")
    p.set_defaults(func=cmd_demo)
