"""Instance masks in the data pipeline: decoding, dataset targets, transforms, synthetic data."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader

from o2f.data import CocoDetection, collate, generate_synthetic_coco
from o2f.data.coco import decode_segmentation, segmentation_problem
from o2f.data.transforms import Compose, KeepRatioResize, RandomHorizontalFlip, build_transforms

# A 4 x 3 (h x w) mask, column-major runs 1 zero, 2 ones, 2 zeros, 7 ones (uncompressed RLE).
RLE_COUNTS = [1, 2, 2, 7]
RLE_MASK = np.array([[0, 0, 1], [1, 1, 1], [1, 1, 1], [0, 1, 1]], dtype=np.uint8)


def compressed(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def row_polygons(mask: np.ndarray) -> list[list[float]]:
    """A mask as polygons, one rectangle per horizontal run of pixels (exact in pycocotools)."""
    polys = []
    for y in range(mask.shape[0]):
        edges = np.flatnonzero(np.diff(np.concatenate(([0], mask[y].astype(int), [0]))))
        for x0, x1 in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True):
            polys.append([x0, y, x1, y, x1, y + 1, x0, y + 1])
    return polys


# -- decoding ----------------------------------------------------------------------------------
def test_decode_polygons_hand_computed():
    # x 2..5, y 1..3 covers the pixels with columns 2, 3, 4 and rows 1, 2
    expected = np.zeros((5, 6), dtype=np.uint8)
    expected[1:3, 2:5] = 1
    np.testing.assert_array_equal(decode_segmentation([[2, 1, 5, 1, 5, 3, 2, 3]], 5, 6), expected)
    # two parts are merged; a part may overlap another
    both = decode_segmentation([[2, 1, 5, 1, 5, 3, 2, 3], [0, 4, 1, 4, 1, 5, 0, 5]], 5, 6)
    expected[4, 0] = 1
    np.testing.assert_array_equal(both, expected)


def test_decode_uncompressed_and_compressed_rle():
    out = decode_segmentation({"size": [4, 3], "counts": RLE_COUNTS}, 4, 3)
    np.testing.assert_array_equal(out, RLE_MASK)
    assert out.dtype == np.uint8
    rle = compressed(RLE_MASK)
    assert isinstance(rle["counts"], str)
    np.testing.assert_array_equal(decode_segmentation(rle, 4, 3), RLE_MASK)
    as_bytes = {"size": [4, 3], "counts": rle["counts"].encode()}
    np.testing.assert_array_equal(decode_segmentation(as_bytes, 4, 3), RLE_MASK)


@pytest.mark.parametrize(
    "segm, match",
    [
        (None, "no 'segmentation'"),
        ([], "no 'segmentation'"),
        ([[1, 2, 3, 4]], "at least 3 points"),  # pycocotools would read 4 numbers as a box
        ([[1, 2, 3, 4, 5, 6, 7]], "at least 3 points"),
        ({"size": [3, 4], "counts": RLE_COUNTS}, r"RLE size \[3, 4\] but the image is \[4, 3\]"),
        ({"size": [4, 3], "counts": [1, 2]}, "sum to 12"),
        ({"size": [4, 3], "counts": [13, -1]}, "sum to 12"),
        ({"size": [4, 3]}, "'size' and 'counts'"),
        ({"size": [4, 3], "counts": "garbage!!"}, "cannot decode"),
    ],
)
def test_unusable_segmentations_raise(segm, match):
    with pytest.raises(ValueError, match=match):
        decode_segmentation(segm, 4, 3)


def test_segmentation_problem_accepts_all_formats():
    assert segmentation_problem([[0, 0, 2, 0, 2, 2]], 4, 3) is None
    assert segmentation_problem({"size": [4, 3], "counts": RLE_COUNTS}, 4, 3) is None
    assert segmentation_problem(compressed(RLE_MASK), 4, 3) is None


# -- dataset -----------------------------------------------------------------------------------
H, W = 6, 8
BOX_A = np.zeros((H, W), dtype=np.uint8)
BOX_A[1:4, 2:6] = 1  # bbox [2, 1, 4, 3]
BOX_B = np.zeros((H, W), dtype=np.uint8)
BOX_B[0:6, 0:2] = 1  # bbox [0, 0, 2, 6]
BOX_B[5, 2] = 1  # bbox [0, 0, 3, 6]


def _uncompressed(mask: np.ndarray) -> dict:
    flat = mask.flatten(order="F").astype(int)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate(([0], edges, [flat.size]))).tolist()
    return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + runs}


def _dataset(tmp_path, anns, **kwargs) -> CocoDetection:
    img_dir = tmp_path / "images"
    img_dir.mkdir(exist_ok=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (W, H), (9, 9, 9)).save(img_dir / name)
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": W, "height": H},
                   {"id": 2, "file_name": "b.png", "width": W, "height": H}],
        "annotations": anns,
        "categories": [{"id": 3, "name": "x"}, {"id": 5, "name": "y"}],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return CocoDetection(path, img_dir, **kwargs)


def _ann(ann_id, image_id, bbox, segm="absent", **extra):
    ann = {"id": ann_id, "image_id": image_id, "category_id": 3 + 2 * (ann_id % 2),
           "bbox": bbox, "area": 1.0, **extra}
    if segm != "absent":
        ann["segmentation"] = segm
    return ann


MASK_ANNS = [
    _ann(1, 1, [2, 1, 4, 3], row_polygons(BOX_A)),  # polygons
    _ann(2, 1, [0, 0, 8, 6], {"size": [H, W], "counts": [48]}, iscrowd=1),  # crowd: no target
    _ann(3, 1, [0, 0, 3, 6], _uncompressed(BOX_B)),  # uncompressed RLE
    _ann(4, 1, [1, 1, 0.5, 2], row_polygons(BOX_A)),  # w < 1: dropped with its mask
    _ann(5, 2, [0, 0, 3, 6], compressed(BOX_B)),  # compressed RLE
]


def test_dataset_masks_align_with_boxes(tmp_path):
    ds = _dataset(tmp_path, MASK_ANNS, with_masks=True)
    _, t1 = ds[0]
    assert t1["boxes"].tolist() == [[2, 1, 6, 4], [0, 0, 3, 6]]
    assert t1["labels"].tolist() == [1, 1]  # category 5 -> label 1
    assert t1["masks"].dtype == torch.uint8 and t1["masks"].shape == (2, H, W)
    np.testing.assert_array_equal(t1["masks"][0].numpy(), BOX_A)
    np.testing.assert_array_equal(t1["masks"][1].numpy(), BOX_B)
    _, t2 = ds[1]
    np.testing.assert_array_equal(t2["masks"].numpy(), BOX_B[None])
    assert ds.bad_annotations["no_mask"] == []
    # box-only loading neither adds masks nor reads the segmentations
    plain = _dataset(tmp_path, [*MASK_ANNS[:4], _ann(5, 2, [0, 0, 3, 6], {"counts": "?"})])
    assert "masks" not in plain[0][1]


def test_masks_follow_resize_and_flip(tmp_path):
    # x2 resize (6x8 -> 12x16) then a certain flip: mask pixels become 2x2 blocks, mirrored
    tf = build_transforms(True, max_size=16, short_sizes=(12, 12), flip_prob=1.0)
    ds = _dataset(tmp_path, MASK_ANNS, transforms=tf, with_masks=True)
    image, target = ds[0]
    assert target["img_size"] == (12, 16) and target["masks"].shape == (2, 12, 16)
    assert type(target["masks"]) is torch.Tensor and target["masks"].dtype == torch.uint8
    for mask, original in zip(target["masks"], (BOX_A, BOX_B), strict=True):
        expected = np.kron(original, np.ones((2, 2), dtype=np.uint8))[:, ::-1]
        np.testing.assert_array_equal(mask.numpy(), expected)
    assert target["boxes"].tolist() == [[4, 2, 12, 8], [10, 0, 16, 12]]
    images, targets = next(iter(DataLoader(ds, batch_size=2, collate_fn=collate)))
    assert [t["masks"].shape[0] for t in targets] == [2, 1]


def test_annotation_without_mask_is_dropped_or_strict_error(tmp_path, caplog):
    anns = [*MASK_ANNS, _ann(6, 2, [4, 0, 2, 2]), _ann(7, 2, [4, 3, 2, 2], [[1, 2, 3, 4]])]
    with caplog.at_level(logging.WARNING, logger="o2f.data.coco"):
        ds = _dataset(tmp_path, anns, with_masks=True)
    assert ds.bad_annotations["no_mask"] == [6, 7]
    assert "2 of 5 usable box(es) have no usable instance mask" in caplog.text
    assert "annotation id 6: no 'segmentation'" in caplog.text
    _, t2 = ds[1]  # image 2 keeps only annotation 5, with its mask
    assert t2["boxes"].tolist() == [[0, 0, 3, 6]] and t2["masks"].shape == (1, H, W)
    with pytest.raises(ValueError, match=r"ann\.json: 2 of 5 .* annotation id\(s\) 6, 7.*strict"):
        _dataset(tmp_path, anns, with_masks=True, strict=True)
    # box-only data asked for masks: an error whatever data.strict says
    boxes_only = [{k: v for k, v in a.items() if k != "segmentation"} for a in MASK_ANNS]
    with pytest.raises(ValueError, match="model.mask.enabled=true"):
        _dataset(tmp_path, boxes_only, with_masks=True)
    _dataset(tmp_path, boxes_only)  # fine without masks


def test_corrupt_rle_names_annotation_and_file(tmp_path):
    anns = [*MASK_ANNS[:4], _ann(5, 2, [0, 0, 3, 6], {"size": [H, W], "counts": "garbage!!"})]
    ds = _dataset(tmp_path, anns, with_masks=True)  # structure looks fine: found when read
    with pytest.raises(ValueError, match=r"ann\.json: annotation id 5 \(image id 2\)"):
        ds[1]


# -- transforms --------------------------------------------------------------------------------
def test_resize_masks_nearest_exact_hand_computed():
    # 3x3 -> 5x5: output pixel i samples source floor((i + 0.5) * 3 / 5) = 0, 0, 1, 2, 2
    masks = torch.zeros(2, 3, 3, dtype=torch.uint8)
    masks[0, 1, 1] = 1
    masks[1, 0, 2] = 1
    target = {"boxes": torch.zeros(0, 4), "masks": masks}
    _, out = Compose([KeepRatioResize(5, (5, 5))])(torch.zeros(3, 3, 3, dtype=torch.uint8),
                                                   target)
    assert out["masks"].shape == (2, 5, 5)
    assert out["masks"][0].nonzero().tolist() == [[2, 2]]
    assert out["masks"][1].nonzero().tolist() == [[0, 3], [0, 4], [1, 3], [1, 4]]


def test_resized_mask_matches_resized_box():
    # 10x10 -> 15x15: box [3, 2, 8, 6] -> [4.5, 3, 12, 9]; the mask of exactly that box keeps
    # the output pixels whose centre falls in it: columns 4..11, rows 3..8
    mask = torch.zeros(1, 10, 10, dtype=torch.uint8)
    mask[0, 2:6, 3:8] = 1
    target = {"boxes": torch.tensor([[3.0, 2, 8, 6]]), "masks": mask}
    _, out = Compose([KeepRatioResize(15, (15, 15))])(torch.zeros(3, 10, 10, dtype=torch.uint8),
                                                      target)
    assert out["boxes"].tolist() == [[4.5, 3, 12, 9]]
    rows = out["masks"][0].any(1).nonzero().flatten().tolist()
    cols = out["masks"][0].any(0).nonzero().flatten().tolist()
    assert rows == list(range(3, 9)) and cols == list(range(4, 12))
    assert out["masks"][0].sum() == 6 * 8


def test_flip_masks_and_empty_masks():
    masks = torch.zeros(1, 2, 5, dtype=torch.uint8)
    masks[0, 0, 0] = masks[0, 1, 1] = 1
    _, out = Compose([RandomHorizontalFlip(1.0)])(
        torch.zeros(3, 2, 5, dtype=torch.uint8), {"boxes": torch.zeros(0, 4), "masks": masks})
    assert out["masks"][0].nonzero().tolist() == [[0, 4], [1, 3]]
    empty = {"boxes": torch.zeros(0, 4), "masks": torch.zeros(0, 4, 6, dtype=torch.uint8)}
    _, out = build_transforms(True, 12, (8, 8), 1.0)(torch.zeros(3, 4, 6, dtype=torch.uint8),
                                                     empty)
    assert out["masks"].shape == (0, 8, 12) and out["img_size"] == (8, 12)


# -- synthetic data ----------------------------------------------------------------------------
SMALL = {"image_size": (64, 80), "num_objects": (8, 14), "png_fraction": 1.0}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools decode vs numpy 2
def test_synthetic_masks_are_visible_pixels_and_survive_polygon_conversion(tmp_path):
    paths = generate_synthetic_coco(tmp_path, 3, 0, with_masks=True, seed=2, **SMALL)
    ds = CocoDetection(paths["train_ann"], paths["train_images"], with_masks=True)
    data = json.loads(paths["train_ann"].read_text())
    overlapping = 0
    for i in range(len(ds)):
        _, target = ds[i]
        masks = target["masks"].numpy()
        # occlusion: each pixel belongs to at most one object (its visible pixels only) ...
        assert masks.sum(0).max() == 1
        for mask, box in zip(masks, target["boxes"].tolist(), strict=True):
            ys, xs = np.nonzero(mask)  # ... and each box is its mask's extent
            assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == box
        boxes = target["boxes"]
        lt = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
        rb = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
        overlapping += int(((rb - lt).clamp(min=0).prod(-1) > 0).sum() - len(boxes))
    assert overlapping > 0  # boxes overlap while masks do not: occluded pixels were removed

    # the same masks written as polygons (every other annotation) or uncompressed RLE
    for k, ann in enumerate(data["annotations"]):
        mask = decode_segmentation(ann["segmentation"], 64, 80)
        ann["segmentation"] = row_polygons(mask) if k % 2 else _uncompressed(mask)
    converted = tmp_path / "converted.json"
    converted.write_text(json.dumps(data))
    other = CocoDetection(converted, paths["train_images"], with_masks=True)
    for i in range(len(ds)):
        assert torch.equal(other[i][1]["masks"], ds[i][1]["masks"])
