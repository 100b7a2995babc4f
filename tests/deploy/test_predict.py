"""Detector.predict and ``o2f predict``: boxes in original pixels, any input kind, pictures."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from o2f.data import resized_size
from o2f.deploy.predict import Detector, find_images
from o2f.visualize import MIN_PICTURE_SIDE
from tests.deploy.conftest import CLASS_NAMES, blob_picture


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    Image.fromarray(blob_picture(150, 100, 0)).save(root / "a.png")
    Image.fromarray(blob_picture(90, 140, 1)).save(root / "sub" / "b.jpg", quality=95)
    Image.fromarray(blob_picture(60, 60, 2)).save(root / "sub" / "a.png")  # same stem, other dir
    (root / "broken.jpg").write_bytes(b"this is not a JPEG")
    (root / "notes.txt").write_text("ignored")
    return root


@pytest.fixture(scope="module")
def detector(tiny_checkpoint):
    return Detector.from_checkpoint(tiny_checkpoint, device="cpu")


def test_boxes_are_in_original_pixels(detector, tiny_model, image_folder):
    """predict == the model run by hand on the test-resized image, boxes scaled back."""
    array = np.array(Image.open(image_folder / "a.png"))
    h, w = array.shape[:2]
    out = detector.predict(array)
    new_w, new_h = resized_size(w, h, 128, 96)  # tiny config: max_size 128, test_short 96
    assert (new_w, new_h) == (128, 85)
    resized = F.resize(torch.from_numpy(array).permute(2, 0, 1), [new_h, new_w], antialias=True)
    with torch.no_grad():
        ref = tiny_model([resized])[0]
    scale = torch.tensor([new_w / w, new_h / h] * 2)
    assert len(out["scores"]) == len(ref["scores"]) > 0
    # the Detector folds BatchNorm into the convolutions: equal up to float rounding
    torch.testing.assert_close(out["boxes"], ref["boxes"] / scale, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out["scores"], ref["scores"], rtol=0, atol=1e-5)
    assert torch.equal(out["labels"], ref["labels"])
    assert out["names"] == [CLASS_NAMES[i] for i in out["labels"].tolist()]
    assert (out["scores"][:-1] >= out["scores"][1:]).all()
    assert (out["boxes"] >= 0).all() and (out["boxes"][:, 0::2] <= w + 1e-3).all()
    assert (out["boxes"][:, 1::2] <= h + 1e-3).all()
    assert out["boxes"].dtype == torch.float32 and out["labels"].dtype == torch.int64


def test_path_pil_array_and_tensor_inputs_agree(detector, image_folder):
    path = image_folder / "a.png"
    pil = Image.open(path)
    results = [detector.predict(x) for x in (path, str(path), pil, np.asarray(pil),
                                               torch.from_numpy(np.array(pil)).permute(2, 0, 1))]
    for r in results[1:]:
        torch.testing.assert_close(r["boxes"], results[0]["boxes"])
        assert r["names"] == results[0]["names"]
    high = detector.predict(path, score_thr=0.5)
    assert (high["scores"] > 0.5).all() and len(high["scores"]) < len(results[0]["scores"])
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        detector.predict(np.zeros((10, 10), np.uint8))


def test_find_images(image_folder):
    found = find_images([image_folder])
    assert [(p.relative_to(image_folder).as_posix(), s.as_posix()) for p, s in found] == [
        ("a.png", "a"), ("broken.jpg", "broken"), ("sub/a.png", "sub/a"), ("sub/b.jpg", "sub/b")]
    (image_folder / "a.jpg").write_bytes((image_folder / "sub" / "b.jpg").read_bytes())
    try:
        files = [image_folder / "a.png", image_folder / "a.jpg", image_folder / "sub" / "a.png"]
        assert [s.as_posix() for _, s in find_images(files)] == ["a_png", "a_jpg", "a_png_2"]
    finally:
        (image_folder / "a.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="nope"):
        find_images([image_folder / "nope"])


def test_cli_predict_folder(cli, tiny_checkpoint, image_folder, tmp_path, capsys):
    out = tmp_path / "pred"
    code = cli(["predict", "-", str(tiny_checkpoint), str(image_folder), "--out", str(out),
                "--score-thr", "0.2"])
    err = capsys.readouterr().err
    assert code == 1  # one unreadable image
    assert "broken.jpg" in err and "1 of 4 image(s) could not be read" in err
    for stem, (w, h) in {"a": (150, 100), "sub/b": (90, 140), "sub/a": (60, 60)}.items():
        data = json.loads((out / f"{stem}.json").read_text())
        assert (data["width"], data["height"]) == (w, h)
        scores = [d["score"] for d in data["detections"]]
        assert scores == sorted(scores, reverse=True) and all(s > 0.2 for s in scores)
        assert all(d["name"] in CLASS_NAMES for d in data["detections"])
        assert all(0 <= d["box"][0] <= d["box"][2] <= w for d in data["detections"])
        with Image.open(out / f"{stem}.png") as picture:  # small images are enlarged k times
            k = math.ceil(MIN_PICTURE_SIDE / max(w, h))
            assert picture.size == (k * w, k * h) and picture.mode == "RGB"
    assert not (out / "broken.json").exists()
