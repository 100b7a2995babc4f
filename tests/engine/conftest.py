import pytest

from o2f.data.synthetic import generate_synthetic_coco


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory):
    """6 training and 3 validation images of 128 x 128 with non-contiguous category ids."""
    root = tmp_path_factory.mktemp("tiny_coco")
    return generate_synthetic_coco(root, 6, 3, image_size=(128, 128), seed=1,
                                   num_objects=(3, 6), size_range=(16, 80))


def tiny_overrides(paths, *extra):
    return [
        "model.backbone.depth=10", "data.batch_size=2", "data.workers=0", "data.max_size=128",
        "data.train_short=[128,128]", "data.test_short=128", "train.log_interval=1",
        f"data.train.ann_file={paths['train_ann']}", f"data.train.img_dir={paths['train_images']}",
        f"data.val.ann_file={paths['val_ann']}", f"data.val.img_dir={paths['val_images']}",
        *extra,
    ]


@pytest.fixture(scope="session")
def tiny_coco_masks(tmp_path_factory):
    """As ``tiny_coco`` with each object's visible pixels as its RLE instance mask."""
    root = tmp_path_factory.mktemp("tiny_coco_masks")
    return generate_synthetic_coco(root, 6, 3, image_size=(128, 128), seed=1,
                                   num_objects=(3, 6), size_range=(16, 80), with_masks=True)
