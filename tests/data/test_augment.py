"""Training augmentations for small data: random crop, colour jitter, repeats, aspect batches."""

import pytest
import torch
from torch.utils.data import Dataset

from o2f.data import Repeated, build_transforms
from o2f.data.sampler import AspectGroupedBatchSampler
from o2f.data.transforms import RandomCropBoxes, color_jitter


class _FixedWindow(RandomCropBoxes):
    """A crop whose window is given (to check the box arithmetic by hand)."""

    def __init__(self, window, **kw):
        super().__init__(p=1.0, **kw)
        self.window = window

    def _window(self, h, w):
        return self.window


def _sample(w=100, h=80):
    image = torch.arange(3 * h * w, dtype=torch.int64).reshape(3, h, w).remainder(256)
    boxes = torch.tensor([[10.0, 10.0, 30.0, 30.0],   # inside the window
                          [50.0, 20.0, 90.0, 40.0],   # half outside on the right: 50% kept
                          [80.0, 60.0, 99.0, 79.0]])  # outside the window
    masks = torch.zeros(3, h, w, dtype=torch.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
        masks[i, y1:y2, x1:x2] = 1
    return image.to(torch.uint8), {"boxes": boxes, "labels": torch.tensor([0, 1, 2]),
                                    "masks": masks, "image_id": 1}


def test_crop_clips_shifts_and_drops_boxes_by_visible_area():
    image, target = _sample()
    crop = build_transforms(True, 1000, (1, 1000), 0.0).__class__([  # Compose
        _FixedWindow((5, 0, 50, 70), min_visible=0.4)])  # top 5, left 0, 50 x 70
    out_img, out = crop(image, target)
    assert out_img.shape == (3, 50, 70)
    assert torch.equal(out_img, image[:, 5:55, 0:70])
    # box 0 shifted by (0, -5); box 1 clipped at x = 70: 20 of 40 px wide -> 50% >= 40% kept;
    # box 2 lies outside -> dropped with its label and mask.
    assert torch.allclose(out["boxes"], torch.tensor([[10.0, 5.0, 30.0, 25.0],
                                                      [50.0, 15.0, 70.0, 35.0]]))
    assert out["labels"].tolist() == [0, 1]
    assert out["masks"].shape == (2, 50, 70)
    assert out["masks"][1].sum() == 20 * 20  # the visible part of box 1's mask


def test_crop_clips_on_all_four_sides_and_keeps_the_min_visible_boundary():
    # window top 15, left 20, 40 x 50 (rows 15..55, columns 20..70) of a 100 x 80 image
    image, target = _sample()
    target["boxes"] = torch.tensor([[10.0, 10, 40, 30],    # cut on the left and top: 50% left
                                    [60.0, 20, 85, 30],    # 10 of 25 px wide: exactly 40%
                                    [60.0, 40, 80, 70],    # cut on the right and bottom: 25%
                                    [30.0, 30, 40, 40]])   # inside
    target["labels"] = torch.tensor([0, 1, 2, 3])
    del target["masks"]
    crop = _FixedWindow((15, 20, 40, 50), min_visible=0.4)
    out_img, out = crop(image, target)
    assert out_img.shape == (3, 40, 50)
    assert torch.equal(out_img, image[:, 15:55, 20:70])
    assert out["labels"].tolist() == [0, 1, 3]
    assert torch.equal(out["boxes"], torch.tensor([[0.0, 0, 20, 15], [40.0, 5, 50, 15],
                                                   [10.0, 15, 20, 25]]))
    assert tuple(out["boxes"].canvas_size) == (40, 50)


def test_crop_keeps_a_box_one_pixel_wide_and_drops_a_thinner_one():
    image, target = _sample()
    target["boxes"] = torch.tensor([[69.0, 20, 75, 40],    # 1 px visible at the right edge
                                    [10.0, 44.5, 30, 60]])  # 0.5 px visible at the bottom
    target["labels"] = torch.tensor([0, 1])
    del target["masks"]
    _, out = _FixedWindow((0, 0, 45, 70), min_visible=0.0)(image, target)
    assert out["labels"].tolist() == [0]
    assert torch.equal(out["boxes"], torch.tensor([[69.0, 20, 70, 40]]))


def test_random_crops_of_a_wide_image_stay_inside_it():
    # 40 x 120 (h x w): every window and every kept box lies inside the image
    h, w = 40, 120
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    crop = RandomCropBoxes(p=1.0, min_scale=0.3, min_visible=0.0)
    for seed in range(30):
        torch.manual_seed(seed)
        target = {"boxes": torch.tensor([[5.0, 5, 115, 35]]), "labels": torch.tensor([0])}
        out_img, out = crop(image, target)
        ch, cw = out_img.shape[-2:]
        assert (ch, cw) != (h, w)  # cropped: the window kept part of the box
        assert ch <= h and cw <= w and ch >= 0.3 * h - 1 and cw >= 0.3 * w - 1
        b = out["boxes"]
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
        assert (b[:, 2] <= cw).all() and (b[:, 3] <= ch).all()


def test_crop_min_visible_drops_mostly_cut_boxes():
    image, target = _sample()
    crop = build_transforms(True, 1000, (1, 1000), 0.0).__class__([
        _FixedWindow((5, 0, 50, 70), min_visible=0.6)])
    _, out = crop(image, target)
    assert out["labels"].tolist() == [0]  # box 1 keeps only 50% < 60%


def test_crop_window_sides_within_scale_range_and_reproducible():
    crop = RandomCropBoxes(p=1.0, min_scale=0.5)
    torch.manual_seed(3)
    wins = [crop._window(80, 100) for _ in range(200)]
    for top, left, ch, cw in wins:
        assert 40 <= ch <= 80 and 50 <= cw <= 100
        assert 0 <= top <= 80 - ch and 0 <= left <= 100 - cw
    torch.manual_seed(3)
    assert wins == [crop._window(80, 100) for _ in range(200)]


def test_crop_probability_zero_is_identity_and_pipeline_order():
    image, target = _sample()
    img2, out = RandomCropBoxes(p=0.0)(image, target)
    assert img2 is image and out is target
    names = [type(t).__name__ for t in
             build_transforms(True, 512, (288, 384), 0.5, 0.5, 0.5, 0.3).transforms]
    assert names == ["RandomCropBoxes", "KeepRatioResize", "RandomHorizontalFlip", "ColorJitter"]
    assert [type(t).__name__ for t in build_transforms(True, 512, (288, 384)).transforms] == [
        "KeepRatioResize", "RandomHorizontalFlip"]


def test_color_jitter_changes_pixels_not_boxes():
    image, target = _sample()
    torch.manual_seed(0)
    pipeline = build_transforms(True, 1000, (80, 80), 0.0, color_strength=0.4)
    out_img, out = pipeline(image, target)
    assert out_img.dtype == torch.uint8 and not torch.equal(out_img, image)
    assert torch.equal(out["boxes"], target["boxes"])
    jitter = color_jitter(0.4)
    assert jitter.brightness == (0.6, 1.4) and jitter.hue == (-0.04, 0.04)


class _Sizes(Dataset):
    def __init__(self, sizes):
        self.sizes = sizes

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, i):
        return i

    def image_info(self, i):
        w, h = self.sizes[i]
        return {"width": w, "height": h}


def test_repeated_dataset_cycles_items_and_infos():
    base = _Sizes([(10, 5), (5, 10), (7, 7)])
    rep = Repeated(base, 3)
    assert len(rep) == 9
    assert [rep[i] for i in range(9)] == [0, 1, 2] * 3
    assert rep.image_info(4) == {"width": 5, "height": 10}


def test_aspect_grouped_batches_are_pure_complete_and_counted():
    landscape = [True, False, True, True, False, True, False]
    order = [0, 1, 2, 3, 4, 5, 6]
    batches = list(AspectGroupedBatchSampler(order, landscape, 2))
    # Landscape 0, 2 fill first; portrait 1, 4; landscape 3, 5; leftovers: portrait 6.
    assert batches == [[0, 2], [1, 4], [3, 5], [6]]
    assert len(AspectGroupedBatchSampler(order, landscape, 2)) == 4
    batches = list(AspectGroupedBatchSampler(order, landscape, 3))
    # Landscape [0, 2, 3] fills at index 3, portrait [1, 4, 6] at index 6; [5] is left over.
    assert batches == [[0, 2, 3], [1, 4, 6], [5]]
    assert sorted(i for b in batches for i in b) == order
    batches = list(AspectGroupedBatchSampler([0, 1, 2, 4], landscape, 3))
    assert batches == [[0, 2, 1], [4]]  # leftovers: landscape first, then portrait


def test_color_jitter_strength_reaches_each_factor():
    cj = color_jitter(0.3)
    for factor in (cj.brightness, cj.contrast, cj.saturation):
        assert factor == pytest.approx((0.7, 1.3))
    assert cj.hue == pytest.approx((-0.03, 0.03))
    assert color_jitter(10.0).hue == pytest.approx((-0.5, 0.5))  # torchvision's limit


def test_build_transforms_hands_every_setting_to_its_step():
    crop, resize, flip, jitter = build_transforms(True, 600, (300, 400), 0.25, 0.3, 0.7,
                                                  0.2).transforms
    assert (crop.p, crop.min_scale) == (0.3, 0.7)
    assert (resize.max_size, resize.short_sizes) == (600, (300, 400))
    assert flip.p == 0.25 and jitter.brightness == pytest.approx((0.8, 1.2))
    assert [type(t).__name__ for t in build_transforms(True, 600, (300, 400), 0.0).transforms] \
        == ["KeepRatioResize"]
    (test_resize,) = build_transforms(False, 600, (350, 350), 0.5, 0.5).transforms
    assert (test_resize.max_size, test_resize.short_sizes) == (600, (350, 350))


def test_crop_keeps_a_box_one_pixel_high_and_drops_a_thinner_one():
    image, target = _sample()
    target["boxes"] = torch.tensor([[10.0, 44, 30, 60], [40.0, 44.5, 60, 60]])  # 1 / 0.5 px
    target["labels"] = torch.tensor([0, 1])
    del target["masks"]
    _, out = _FixedWindow((0, 0, 45, 70), min_visible=0.0)(image, target)
    assert out["labels"].tolist() == [0]
