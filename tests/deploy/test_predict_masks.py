"""Masks in Detector.predict, its JSON and pictures (draw_detections / draw_masks)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from o2f.data.coco import decode_segmentation
from o2f.deploy import predict as predict_module
from o2f.deploy.predict import Detector, detections_to_json, format_json
from o2f.visualize import MASK_ALPHA, class_colors, draw_detections, draw_masks
from tests.deploy.conftest import blob_picture


class BoxMaskModel(torch.nn.Module):
    """The tiny detector, plus for each detection a mask: its box (in original pixels) filled,
    the way a mask model returns masks at the original image size."""

    def __init__(self, detector: torch.nn.Module):
        super().__init__()
        self.detector = detector
        self.head = detector.head

    def forward(self, images, targets):
        out = []
        for det, tgt in zip(self.detector(images, targets), targets, strict=True):
            h, w = tgt["orig_size"]
            ys = torch.arange(h, device=det["boxes"].device)[None, :, None] + 0.5
            xs = torch.arange(w, device=det["boxes"].device)[None, None, :] + 0.5
            b = det["boxes"][:, :, None, None]
            masks = (xs >= b[:, 0]) & (xs < b[:, 2]) & (ys >= b[:, 1]) & (ys < b[:, 3])
            out.append({**det, "masks": masks})
        return out


@pytest.fixture(scope="module")
def mask_detector(tiny_checkpoint):
    plain = Detector.from_checkpoint(tiny_checkpoint, device="cpu")
    return Detector(BoxMaskModel(plain.model), plain.cfg, plain.meta, "cpu")


def test_predict_passes_masks_through(mask_detector):
    image = blob_picture()
    out = mask_detector.predict(image, score_thr=0.2)
    k = len(out["scores"])
    assert k > 0 and (out["scores"] > 0.2).all()
    assert out["masks"].dtype == torch.bool and out["masks"].shape == (k, 100, 150)
    ys = torch.arange(100)[None, :, None] + 0.5  # each mask is still its own box, filled
    xs = torch.arange(150)[None, None, :] + 0.5
    b = out["boxes"][:, :, None, None]
    assert torch.equal(out["masks"], (xs >= b[:, 0]) & (xs < b[:, 2]) & (ys >= b[:, 1])
                       & (ys < b[:, 3]))
    assert out["masks"].flatten(1).any(1).sum() >= 1
    data = detections_to_json(out, "x.png", (100, 150))
    json.loads(format_json(data))
    for det, mask in zip(data["detections"], out["masks"], strict=True):
        np.testing.assert_array_equal(decode_segmentation(det["segmentation"], 100, 150),
                                      mask.numpy())
    # box-only results are unchanged: no masks, no segmentation
    plain = Detector(mask_detector.model.detector, mask_detector.cfg, mask_detector.meta, "cpu")
    boxes_only = plain.predict(image, score_thr=0.2)
    assert "masks" not in boxes_only
    torch.testing.assert_close(boxes_only["boxes"], out["boxes"])
    assert "segmentation" not in detections_to_json(boxes_only, "x", (100, 150))["detections"][0]


def test_draw_masks_hand_computed():
    image = torch.full((3, 9, 9), 100, dtype=torch.uint8)
    mask = torch.zeros(1, 9, 9, dtype=torch.bool)
    mask[0, 2:7, 2:7] = True  # 5 x 5: a 16-pixel outline around a 3 x 3 inside
    out = draw_masks(image, mask, [(200, 0, 50)], alpha=0.5, outline=1)
    assert torch.equal(out[:, ~mask[0]], image[:, ~mask[0]])
    inner = torch.zeros(9, 9, dtype=torch.bool)
    inner[3:6, 3:6] = True
    assert out[:, inner].T.tolist() == [[150, 50, 75]] * 9  # (100 + c) / 2
    edge = mask[0] & ~inner
    assert out[:, edge].T.tolist() == [[200, 0, 50]] * 16


def test_drawing_masks_changes_pixels_inside_the_masks_only():
    image = torch.from_numpy(blob_picture(700, 660, 3)).permute(2, 0, 1).contiguous()
    yy, xx = torch.meshgrid(torch.arange(660), torch.arange(700), indexing="ij")
    disc = (xx - 200) ** 2 + (yy - 300) ** 2 < 80**2
    blob = (xx > 400) & (xx < 600) & (yy > 100) & (yy < 250)
    masks = torch.stack([disc, blob])
    boxes = torch.tensor([[120.0, 220, 280, 380], [401, 101, 600, 250]])
    labels, scores = torch.tensor([0, 2]), torch.tensor([0.9, 0.8])
    names = ["a", "b", "c"]
    with_masks = draw_detections(image, boxes, labels, scores, names, masks=masks)
    without = draw_detections(image, boxes, labels, scores, names)
    changed = (with_masks != without).any(0)
    assert changed.any() and not changed[~(disc | blob)].any()
    # deep inside the disc: the class colour at MASK_ALPHA over the picture with boxes drawn
    color = torch.tensor(class_colors(3)[0], dtype=torch.float32)
    expected = (without[:, 300, 200].float() * (1 - MASK_ALPHA) + color * MASK_ALPHA).round()
    assert with_masks[:, 300, 200].tolist() == expected.tolist()
    # a score under the threshold draws neither box nor mask
    low = draw_detections(image, boxes, labels, torch.tensor([0.9, 0.1]), names, masks=masks)
    assert torch.equal(low[:, blob], image[:, blob])


def test_small_pictures_enlarge_masks_too():
    image = torch.full((3, 20, 32), 60, dtype=torch.uint8)  # enlarged k = 20 times
    mask = torch.zeros(1, 20, 32, dtype=torch.bool)
    mask[0, 5:10, 8:16] = True
    out = draw_detections(image, torch.tensor([[8.0, 5, 16, 10]]), torch.tensor([1]),
                          torch.tensor([0.9]), ["a", "b"], masks=mask)
    plain = draw_detections(image, torch.tensor([[8.0, 5, 16, 10]]), torch.tensor([1]),
                            torch.tensor([0.9]), ["a", "b"])
    assert out.shape == (3, 400, 640)
    big = mask[0].repeat_interleave(20, 0).repeat_interleave(20, 1)
    changed = (out != plain).any(0)
    assert not changed[~big].any() and changed[big].float().mean() > 0.9


def test_cli_predict_writes_masks(cli, mask_detector, tmp_path, monkeypatch):
    Image.fromarray(blob_picture()).save(tmp_path / "a.png")
    monkeypatch.setattr(predict_module.Detector, "from_checkpoint",
                        classmethod(lambda cls, *args, **kwargs: mask_detector))
    out = tmp_path / "pred"
    assert cli(["predict", "-", "unused.pth", str(tmp_path / "a.png"), "--out", str(out),
                "--score-thr", "0.2", "--device", "cpu"]) == 0
    data = json.loads((out / "a.json").read_text())
    assert data["detections"] and all("segmentation" in d for d in data["detections"])
    with Image.open(out / "a.png") as picture:
        assert picture.size == (150 * 5, 100 * 5)
