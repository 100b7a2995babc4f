import os
import pickle

import pytest
import torch

from o2f.builders import build_detector, detector_from_checkpoint
from o2f.config import load_config
from o2f.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    save_checkpoint({"model": {"w": torch.ones(2)}}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt  # as if killed mid-write

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"model": {"w": torch.zeros(2)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # no temporary left behind


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_loading_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": Evil()}, f)
    with pytest.raises(CheckpointError, match="could not be read safely"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pth")


def test_restore_and_mismatch_messages(tmp_path):
    cfg = load_config("demo", ["model.backbone.depth=10"])
    torch.manual_seed(0)
    model = build_detector(cfg, 3)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # trained-looking head: spread scores, most above the 0.05 threshold
        for p in model.head.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
        model.head.conv_cls.bias.fill_(1.0)
    meta = {"num_classes": 3, "class_names": ["a", "b", "c"], "cat_ids": [1, 2, 5]}
    save_checkpoint({"model": model.state_dict(), "config": cfg.to_dict(), "meta": meta},
                    tmp_path / "m.pth")
    restored, cfg2, meta2 = detector_from_checkpoint(tmp_path / "m.pth")
    assert meta2 == meta and not restored.training
    x = torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8, generator=gen)
    model.eval()
    with torch.no_grad():
        got, want = restored(x)[0], model(x)[0]
    assert len(want["scores"]) == 100 and want["scores"].std() > 0.01  # detections to compare
    torch.testing.assert_close(got["scores"], want["scores"])
    torch.testing.assert_close(got["boxes"], want["boxes"])
    assert torch.equal(got["labels"], want["labels"])
    # a checkpoint for another class count names the mismatched keys and shapes
    save_checkpoint({"model": model.state_dict(), "config": cfg.to_dict(),
                     "meta": {**meta, "num_classes": 5}}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"head.conv_cls.weight: checkpoint \(3, 64, 3, 3\) "
                       r"vs model \(5, 64, 3, 3\)"):
        detector_from_checkpoint(tmp_path / "bad.pth")


def test_metrics_file_keeps_the_headline_keys_nan_as_zero_and_unreadable_images():
    import math

    from o2f.engine.evaluate import headline_keys, metrics_for_file

    m = {"bbox_mAP": 0.5, "bbox_mAP_50": 0.7, "bbox_mAP_75": 0.4, "bbox_mAP_s": math.nan,
         "bbox_mAP_m": 0.3, "bbox_mAP_l": 0.6, "dup_rate": 0.1, "other": 1.0}
    assert headline_keys(m)[-1] == "dup_rate" and "other" not in headline_keys(m)
    out = metrics_for_file({**m, "unreadable_images": 2})
    assert out["bbox_mAP_s"] == 0.0 and out["dup_rate"] == 0.1 and out["unreadable_images"] == 2
    assert "unreadable_images" not in metrics_for_file(m)
    ch = {"AP": 0.9, "mMR": 0.4, "Recall": 0.95, "JI": 0.8}
    assert set(headline_keys(ch)) >= {"AP", "mMR", "JI"}
