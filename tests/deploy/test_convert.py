"""``convert-mmdet``: MMDetection 2.x names -> o2f weights with identical outputs; clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from o2f.builders import build_detector, detector_from_checkpoint
from o2f.config import load_config
from o2f.deploy import COCO_CLASSES, ConversionError, Detector, convert_mmdet_state_dict
from tests.deploy.conftest import CLASS_NAMES, spread_head

_TOWERS = {"cls_convs": "cls_convs", "reg_convs": "reg_convs", "ctr_convs": "centerness_convs"}


def to_mmdet(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """o2f names -> the names of the authors' MMDetection 2.x checkpoints, spelled out by hand
    (mmcv ConvModule: ``conv`` / ``gn``; mmcv Scale: ``scale``; ResNet conv1/bn1)."""
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        if key.startswith("backbone.stem."):
            out[f"backbone.{['conv1', 'bn1'][int(parts[2])]}.{parts[3]}"] = value
        elif key.startswith("backbone."):
            out[key] = value
        elif parts[1] == "lateral_convs":
            out[f"neck.lateral_convs.{parts[2]}.conv.{parts[3]}"] = value
        elif parts[1] == "output_convs":
            out[f"neck.fpn_convs.{parts[2]}.conv.{parts[3]}"] = value
        elif parts[1] == "extra_convs":
            out[f"neck.fpn_convs.{int(parts[2]) + 3}.conv.{parts[3]}"] = value
        elif parts[1] in _TOWERS:
            index = int(parts[2])
            kind = {0: "conv", 1: "gn"}[index % 3]
            out[f"bbox_head.{_TOWERS[parts[1]]}.{index // 3}.{kind}.{parts[3]}"] = value
        elif key == "head.scales":
            for level, scale in enumerate(value):
                out[f"bbox_head.scales.{level}.scale"] = scale.clone()  # 0-dim, like mmcv
        else:
            assert parts[1] in ("conv_cls", "conv_reg", "conv_centerness"), key
            out[f"bbox_head.{parts[1]}.{parts[2]}"] = value
    return out


class NotData:
    """Stands for an arbitrary pickled object that safe loading must refuse."""


@pytest.fixture(scope="module")
def mmdet_sd(tiny_model):
    sd = to_mmdet(tiny_model.state_dict())
    assert "bbox_head.centerness_convs.0.gn.weight" in sd and "neck.fpn_convs.4.conv.bias" in sd
    return sd


def _maps(model, images):
    with torch.no_grad():
        return model.forward_maps(model.preprocess(images)[0])


def _fresh(tiny_config_path, **kw):
    torch.manual_seed(123)
    return build_detector(load_config(str(tiny_config_path)), **kw).eval()


def test_round_trip_gives_identical_outputs(tiny_model, tiny_config_path, mmdet_sd):
    model = _fresh(tiny_config_path)
    converted = convert_mmdet_state_dict(mmdet_sd, model.state_dict().keys())
    model.load_state_dict(converted)
    images = torch.randint(0, 256, (1, 3, 64, 96), dtype=torch.uint8)
    for got, want in zip(_maps(model, images), _maps(tiny_model, images), strict=True):
        for g, w in zip(got, want, strict=True):
            assert torch.equal(g, w)


def test_unmatched_and_missing_keys_are_named(tiny_model, mmdet_sd):
    expected = tiny_model.state_dict().keys()
    extra = {**mmdet_sd, "bbox_head.conv_iou.weight": torch.zeros(1)}
    with pytest.raises(ConversionError, match=r"no o2f counterpart: bbox_head\.conv_iou\.weight"):
        convert_mmdet_state_dict(extra, expected)
    partial = {k: v for k, v in mmdet_sd.items() if not k.startswith("neck.fpn_convs.4.")}
    with pytest.raises(ConversionError, match=r"neck\.extra_convs\.1\.bias, neck\.extra_convs\.1"
                                              r"\.weight"):
        convert_mmdet_state_dict(partial, expected)
    no_counters = {k: v for k, v in mmdet_sd.items() if "num_batches_tracked" not in k}
    assert convert_mmdet_state_dict(no_counters, expected)["backbone.stem.1.num_batches_tracked"] \
        == 0


def test_cli_converts_a_checkpoint_file(cli, tiny_model, tiny_config_path, mmdet_sd, tmp_path):
    src = tmp_path / "r18.pth"
    meta = {"CLASSES": tuple(CLASS_NAMES), "epoch": 12, "mmdet_version": "2.25.0",
            "lr": np.float64(0.01)}  # numpy scalars load safely
    torch.save({"meta": meta, "state_dict": mmdet_sd, "optimizer": {"state": {}}}, src)
    images = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    for dst in (tmp_path / "out.pth", tmp_path / "out.safetensors"):
        assert cli(["convert-mmdet", str(src), str(dst), "--config", str(tiny_config_path)]) == 0
        det = Detector.from_checkpoint(dst, device="cpu")
        assert det.class_names == CLASS_NAMES
        for got, want in zip(_maps(det.model, images), _maps(tiny_model, images), strict=True):
            # Detector runs a BN-folded copy: float rounding differs by ~1e-5 on maps of order 1
            # (a wrong conversion differs by far more)
            for g, w in zip(got, want, strict=True):
                torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


def test_cli_errors(cli, tiny_config_path, mmdet_sd, tmp_path, capsys):
    src = tmp_path / "unsafe.pth"
    torch.save({"meta": {"hook": NotData()}, "state_dict": mmdet_sd}, src)
    assert cli(["convert-mmdet", str(src), str(tmp_path / "o.pth"), "--config",
                str(tiny_config_path)]) == 2
    assert "--trust-pickle" in capsys.readouterr().err
    assert cli(["convert-mmdet", str(src), str(tmp_path / "o.pth"), "--config",
                str(tiny_config_path), "--trust-pickle"]) == 0
    safe = tmp_path / "safe.pth"
    torch.save({"state_dict": mmdet_sd}, safe)
    assert cli(["convert-mmdet", str(safe), str(tmp_path / "o.pth"), "--config", "r50_1x"]) == 2
    assert "ResNet-18 backbone but config 'r50_1x'" in capsys.readouterr().err


def test_coco_names_for_an_80_class_checkpoint(tiny_config_path, tmp_path):
    from o2f.deploy import convert_mmdet_checkpoint

    model = spread_head(_fresh(tiny_config_path, num_classes=80))
    src = tmp_path / "coco.pth"
    torch.save({"meta": {}, "state_dict": to_mmdet(model.state_dict())}, src)
    meta = convert_mmdet_checkpoint(src, tmp_path / "coco_o2f.pth", str(tiny_config_path))
    assert meta["class_names"] == list(COCO_CLASSES) and meta["cat_ids"][-1] == 90
    assert meta["num_classes"] == 80


# -- CondInst-style instance-segmentation checkpoints (the authors' E2ECondInstHead) ----------
MASK_SET = ["model.mask.enabled=true", "model.mask.branch_channels=16",
            "model.mask.branch_convs=2"]


def to_mmdet_condinst(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """o2f mask-model names -> the authors' CondInst checkpoint names, spelled out by hand: the
    mask modules are attributes of ``bbox_head``, the centerness output is ``conv_quality``, the
    semantic head is one Sequential(conv, BN, ReLU, conv, BN, ReLU), and the head holds the
    ``sizes_of_interest`` buffer."""
    out = {"bbox_head.sizes_of_interest": torch.tensor([64, 128, 256, 512, 1024])}
    box = {}
    for key, value in sd.items():
        parts = key.split(".")
        if parts[0] == "controller":
            out[f"bbox_head.controller.{parts[1]}"] = value
        elif parts[:2] == ["mask_branch", "refine"]:
            out["bbox_head.refine." + ".".join(parts[2:])] = value
        elif parts[:2] == ["mask_branch", "tower"]:
            out["bbox_head.mask_tower." + ".".join(parts[2:])] = value
        elif parts[:2] == ["mask_branch", "sem_head"]:
            index = 3 * int(parts[2]) + int(parts[3])
            out[f"bbox_head.seg_head.{index}.{parts[4]}"] = value
        elif parts[:2] == ["mask_branch", "sem_out"]:
            out[f"bbox_head.seg_out.{parts[2]}"] = value
        elif parts[:2] == ["head", "conv_centerness"]:
            out[f"bbox_head.conv_quality.{parts[2]}"] = value
        else:
            box[key] = value
    return {**to_mmdet(box), **out}


class AuthorsCondInstLayout(torch.nn.Module):
    """The modules the authors' ``E2ECondInstHead`` adds to an FCOS head (``condinst_head.py``:
    ``_init_layers`` and ``_init_mask_branch``), with their attribute names and Sequential
    indices, to check the key names of :func:`to_mmdet_condinst` against."""

    def __init__(self, in_ch, feat_ch, ctr_ch, mask_ch, tower_convs, bases, params, classes):
        super().__init__()
        nn = torch.nn

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                    nn.ReLU()]

        self.conv_quality = nn.Conv2d(ctr_ch, 1, 3, padding=1)
        self.controller = nn.Conv2d(feat_ch, params, 3, padding=1)
        self.refine = nn.ModuleList(nn.Sequential(*block(in_ch, mask_ch)) for _ in range(3))
        self.mask_tower = nn.Sequential(
            *(nn.Sequential(*block(mask_ch, mask_ch)) for _ in range(tower_convs)),
            nn.Conv2d(mask_ch, bases, 1))
        self.seg_head = nn.Sequential(*block(in_ch, mask_ch), *block(mask_ch, mask_ch))
        self.seg_out = nn.Conv2d(mask_ch, classes, 1)
        self.register_buffer("sizes_of_interest", torch.tensor([64, 128, 256, 512, 1024]))


def _randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Spread-out head scores, and random mask-branch / controller weights and BN statistics
    (so that a swapped key changes the outputs and the masks are neither empty nor full)."""
    spread_head(model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in [*model.mask_branch.state_dict().items(),
                        *model.controller.state_dict().items()]:
            if t.is_floating_point():
                noise = torch.rand(t.shape, generator=gen) + 0.5 if "running_var" in name \
                    else torch.randn(t.shape, generator=gen) * 0.3
                t.copy_(noise)
    return model


@pytest.fixture(scope="module")
def mask_model(tiny_config_path):
    torch.manual_seed(0)
    return _randomize(build_detector(load_config(str(tiny_config_path), MASK_SET))).eval()


@pytest.fixture(scope="module")
def mask_mmdet_sd(mask_model):
    return to_mmdet_condinst(mask_model.state_dict())


def _mask_outputs(model, images):
    with torch.no_grad():
        batch = model.preprocess(images)[0]
        cls, ltrb, ctr, params, mask_feats, _ = model.forward_mask_maps(batch)
        p3 = model.neck(model.backbone(batch))[0]
        sem = model.mask_branch.sem_out(model.mask_branch.sem_head(p3))
        dets = model(images)
    return [*cls, *ltrb, *ctr, *params, mask_feats, sem], dets


def test_mask_key_names_follow_the_authors_layout(mask_model, mask_mmdet_sd):
    m = mask_model
    authors = AuthorsCondInstLayout(32, 32, 16, 16, 2, 8, m.mask_head.num_params, 3)
    want = {f"bbox_head.{k}": tuple(v.shape) for k, v in authors.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in mask_mmdet_sd.items()
           if k.split(".")[1] in dict(authors.named_children()) or k in want}
    assert got == want


def test_mask_renames_by_hand():
    t = torch.zeros(1)
    sd = {"bbox_head.seg_head.3.weight": t, "bbox_head.seg_head.1.running_var": t,
          "bbox_head.seg_out.bias": t, "bbox_head.mask_tower.2.weight": t,
          "bbox_head.mask_tower.1.1.num_batches_tracked": t, "bbox_head.refine.2.0.weight": t,
          "bbox_head.controller.bias": t, "bbox_head.conv_quality.weight": t,
          "bbox_head.sizes_of_interest": t}
    assert set(convert_mmdet_state_dict(sd)) == {
        "mask_branch.sem_head.1.0.weight", "mask_branch.sem_head.0.1.running_var",
        "mask_branch.sem_out.bias", "mask_branch.tower.2.weight",
        "mask_branch.tower.1.1.num_batches_tracked", "mask_branch.refine.2.0.weight",
        "controller.bias", "head.conv_centerness.weight"}


def test_mask_round_trip_gives_identical_outputs(tiny_config_path, mask_model, mask_mmdet_sd):
    torch.manual_seed(123)
    model = build_detector(load_config(str(tiny_config_path), MASK_SET)).eval()
    converted = convert_mmdet_state_dict(mask_mmdet_sd, model.state_dict().keys())
    model.load_state_dict(converted)
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    got_maps, got = _mask_outputs(model, images)
    want_maps, want = _mask_outputs(mask_model, images)
    assert all(torch.equal(g, w) for g, w in zip(got_maps, want_maps, strict=True))
    masks = torch.cat([d["masks"] for d in want])
    assert masks.shape[0] > 0 and 0 < masks.float().mean() < 1  # not vacuous
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys() == {"boxes", "scores", "labels", "masks"}
        assert all(torch.equal(g[k], w[k]) for k in w)


def test_mask_unmatched_missing_and_clashing_keys_are_named(mask_model, mask_mmdet_sd):
    expected = mask_model.state_dict().keys()
    extra = {**mask_mmdet_sd, "bbox_head.seg_head.2.weight": torch.zeros(1)}  # a ReLU index
    with pytest.raises(ConversionError, match=r"no o2f counterpart: bbox_head\.seg_head\.2\."):
        convert_mmdet_state_dict(extra, expected)
    partial = {k: v for k, v in mask_mmdet_sd.items() if k != "bbox_head.seg_out.bias"}
    with pytest.raises(ConversionError, match=r"missing from the checkpoint \(1\): "
                                              r"mask_branch\.sem_out\.bias"):
        convert_mmdet_state_dict(partial, expected)
    both = {**mask_mmdet_sd, "bbox_head.conv_centerness.bias": torch.zeros(1)}
    with pytest.raises(ConversionError, match=r"same o2f key: bbox_head\.conv_quality\.bias and "
                                              r"bbox_head\.conv_centerness\.bias -> head\."
                                              r"conv_centerness\.bias"):
        convert_mmdet_state_dict(both, expected)


def test_cli_converts_a_mask_checkpoint(cli, mask_model, mask_mmdet_sd, tiny_config_path,
                                        tmp_path, capsys):
    src = tmp_path / "condinst.pth"
    torch.save({"meta": {"CLASSES": tuple(CLASS_NAMES)}, "state_dict": mask_mmdet_sd}, src)
    dst = tmp_path / "out.pth"
    sets = [a for s in MASK_SET for a in ("--set", s)]
    assert cli(["convert-mmdet", str(src), str(dst), "--config", str(tiny_config_path),
                *sets]) == 0
    assert "tiny.yaml, 3 classes, with class names" in capsys.readouterr().out
    det = Detector.from_checkpoint(dst, device="cpu")  # runs a BN-folded copy
    assert det.model.with_masks and det.class_names == CLASS_NAMES
    model, _, _ = detector_from_checkpoint(dst)  # the converted weights as they are
    images = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    got_maps, got = _mask_outputs(model, images)
    want_maps, want = _mask_outputs(mask_model, images)
    assert all(torch.equal(g, w) for g, w in zip(got_maps, want_maps, strict=True))
    assert all(torch.equal(got[0][k], want[0][k]) for k in want[0])


def test_kind_of_checkpoint_picks_or_checks_the_config(cli, mask_mmdet_sd, mmdet_sd,
                                                       tiny_config_path, tmp_path, capsys):
    mask_src, box_src = tmp_path / "condinst.pth", tmp_path / "box.pth"
    torch.save({"state_dict": mask_mmdet_sd}, mask_src)
    torch.save({"state_dict": mmdet_sd}, box_src)
    out = str(tmp_path / "o.pth")
    # no --config: condinst_r50_1x for masks, r50_1x for boxes (both R-50, the tiny model R-18)
    assert cli(["convert-mmdet", str(mask_src), out]) == 2
    assert "ResNet-18 backbone but config 'condinst_r50_1x'" in capsys.readouterr().err
    assert cli(["convert-mmdet", str(box_src), out]) == 2
    assert "ResNet-18 backbone but config 'r50_1x'" in capsys.readouterr().err
    assert cli(["convert-mmdet", str(mask_src), out, "--config", str(tiny_config_path)]) == 2
    assert "instance-segmentation checkpoint" in capsys.readouterr().err
    assert cli(["convert-mmdet", str(box_src), out, "--config", "condinst_r50_1x"]) == 2
    assert "box-only checkpoint" in capsys.readouterr().err
    sets = [a for s in MASK_SET for a in ("--set", s)]
    assert cli(["convert-mmdet", str(mask_src), out, "--config", str(tiny_config_path), *sets,
                "--set", "model.mask.sizes_of_interest=[32,64,128,256,512]"]) == 2
    assert "8 x stride = [64.0, 128.0, 256.0, 512.0, 1024.0]" in capsys.readouterr().err
    assert cli(["convert-mmdet", str(mask_src), out, "--config", str(tiny_config_path), *sets,
                "--set", "model.mask.sem_weight=0"]) == 2
    assert "does not have (14): mask_branch.sem_head.0.0.weight" in capsys.readouterr().err
