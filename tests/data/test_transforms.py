import pytest
import torch
from torchvision.transforms import v2

from o2f.data.transforms import (
    Compose,
    KeepRatioResize,
    RandomHorizontalFlip,
    build_transforms,
    resize_scale,
    resized_size,
)


def _sample(w: int, h: int, boxes: list[list[float]]):
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.arange(len(boxes), dtype=torch.int64),
        "image_id": 5,
    }
    return image, target


def test_resize_scale_hand_computed():
    assert resize_scale(640, 480, 1333, 800) == pytest.approx(1.6667, abs=1e-4)
    assert resized_size(640, 480, 1333, 800) == (1067, 800)
    assert resized_size(480, 640, 1333, 800) == (800, 1067)
    # Long side binds: 2000x500 -> scale 1333/2000 = 0.6665 -> 1333 x int(333.25 + 0.5).
    assert resize_scale(2000, 500, 1333, 800) == pytest.approx(0.6665)
    assert resized_size(2000, 500, 1333, 800) == (1333, 333)
    assert resized_size(1333, 800, 1333, 800) == (1333, 800)


def test_resize_moves_boxes_with_actual_factors():
    image, target = _sample(640, 480, [[64, 48, 320, 240], [0, 0, 640, 480]])
    out, t = Compose([KeepRatioResize(1333, (800, 800))])(image, target)
    assert out.shape == (3, 800, 1067) and out.dtype == torch.uint8
    assert type(out) is torch.Tensor and type(t["boxes"]) is torch.Tensor
    sx, sy = 1067 / 640, 800 / 480
    expected = torch.tensor([[64 * sx, 48 * sy, 320 * sx, 240 * sy], [0, 0, 1067, 800]])
    torch.testing.assert_close(t["boxes"], expected)
    assert t["boxes"].dtype == torch.float32
    assert t["scale_factor"] == pytest.approx((sx, sy))
    assert t["orig_size"] == (480, 640) and t["img_size"] == (800, 1067)
    assert t["flipped"] is False and t["image_id"] == 5
    torch.testing.assert_close(t["labels"], torch.tensor([0, 1]))


def test_flip_mirrors_image_and_boxes():
    image, target = _sample(20, 10, [[2, 1, 5, 9], [0, 0, 20, 10]])
    out, t = Compose([RandomHorizontalFlip(p=1.0)])(image, target)
    torch.testing.assert_close(out, image.flip(-1))
    # x1' = w - x2, x2' = w - x1
    torch.testing.assert_close(t["boxes"], torch.tensor([[15.0, 1, 18, 9], [0, 0, 20, 10]]))
    assert t["flipped"] is True and t["scale_factor"] == (1.0, 1.0)

    out, t = Compose([RandomHorizontalFlip(p=0.0)])(image, target)
    torch.testing.assert_close(out, image)
    torch.testing.assert_close(t["boxes"], target["boxes"])
    assert t["flipped"] is False


def test_multiscale_short_side_in_range_and_long_cap():
    resize = KeepRatioResize(max_size=1333, short_sizes=(64, 80))
    shorts = {resize.draw_short() for _ in range(300)}
    assert shorts <= set(range(64, 81)) and {64, 80} <= shorts and len(shorts) > 10

    tiny = Compose([KeepRatioResize(max_size=100, short_sizes=(40, 60))])
    for _ in range(20):
        out, t = tiny(*_sample(12, 10, [[1, 1, 11, 9]]))
        h, w = out.shape[-2:]
        assert 40 <= min(h, w) <= 60 and max(h, w) <= 100
        assert t["img_size"] == (h, w)
    # A very wide image: the long-side cap binds whatever short side is drawn.
    out, _ = tiny(*_sample(50, 10, [[1, 1, 11, 9]]))
    assert tuple(out.shape[-2:]) == (20, 100)


def test_random_draws_follow_torch_seed():
    pipeline = build_transforms(True, max_size=100, short_sizes=(30, 60), flip_prob=0.5)

    def run():
        torch.manual_seed(123)
        return [
            (t["img_size"], t["flipped"])
            for t in (pipeline(*_sample(16, 12, [[1, 1, 5, 5]]))[1] for _ in range(10))
        ]

    first = run()
    assert first == run()
    assert len({size for size, _ in first}) > 1 and len({f for _, f in first}) == 2


def test_test_pipeline_is_single_scale_without_flip():
    pipeline = build_transforms(False, max_size=100, short_sizes=(50, 50), flip_prob=1.0)
    assert not any(isinstance(t, RandomHorizontalFlip) for t in pipeline.transforms)
    image, target = _sample(40, 20, [[0, 0, 10, 10]])
    out, t = pipeline(image, target)
    assert tuple(out.shape) == (3, 50, 100) and t["flipped"] is False
    torch.testing.assert_close(t["boxes"], torch.tensor([[0.0, 0, 25, 25]]))
    with pytest.raises(ValueError, match="single scale"):
        build_transforms(False, short_sizes=(640, 800))
    with pytest.raises(ValueError):
        KeepRatioResize(1333, (800, 640))


def test_empty_boxes_and_v2_interop():
    out, t = build_transforms(True, 64, (32, 32), flip_prob=1.0)(*_sample(16, 8, []))
    assert tuple(out.shape) == (3, 32, 64) and t["boxes"].shape == (0, 4)
    assert t["labels"].shape == (0,)
    # A stock torchvision v2 transform in the chain moves the boxes with the image.
    pipeline = Compose([KeepRatioResize(40, (20, 20)), v2.RandomHorizontalFlip(p=1.0)])
    out, t = pipeline(*_sample(20, 10, [[0, 0, 5, 10]]))
    torch.testing.assert_close(t["boxes"], torch.tensor([[30.0, 0, 40, 20]]))
    assert type(t["boxes"]) is torch.Tensor


def test_steps_work_on_plain_tensors_outside_compose():
    image, target = _sample(10, 5, [[1, 1, 3, 4]])
    out, t = KeepRatioResize(40, (10, 10))(image, target)
    assert tuple(out.shape) == (3, 10, 20)
    torch.testing.assert_close(t["boxes"], torch.tensor([[2.0, 2, 6, 8]]))
    out, t = RandomHorizontalFlip(1.0)(image, target)
    torch.testing.assert_close(t["boxes"], torch.tensor([[7.0, 1, 9, 4]]))
    out, t = KeepRatioResize(10, (5, 5))(image, target)  # already the right size
    torch.testing.assert_close(out, image)
    assert t["scale_factor"] == (1.0, 1.0)


def test_scale_factors_of_two_resizes_compose():
    # 200 x 100 -> short 50 (100 x 50): 0.5; then -> short 25 (50 x 25): 0.25 of the original,
    # which is what maps the detections back to the original image
    image, target = _sample(200, 100, [[20, 10, 60, 30]])
    out, t = Compose([KeepRatioResize(1000, (50, 50)), KeepRatioResize(1000, (25, 25))])(
        image, target)
    assert out.shape[-2:] == (25, 50) and t["scale_factor"] == (0.25, 0.25)
    torch.testing.assert_close(t["boxes"], torch.tensor([[5.0, 2.5, 15.0, 7.5]]))
