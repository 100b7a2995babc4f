"""Planted one-line bugs in the network and its construction (head, FPN, detector, the parts of
the backbone o2f owns, the config -> module wiring of the builders, the recipe defaults of the
config), each run against the model tests in a fresh copy of the project: every one must make a
test fail.

    python tests/mutants_models.py                       # all, against the model tests
    python tests/mutants_models.py --only 3 8 --tests tests/test_model_pins.py

Runner: ``tests/planted_bugs.py``. Pins closing the holes: ``tests/test_model_pins.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests import planted_bugs  # noqa: E402

HEAD = "o2f/models/head.py"
FPN = "o2f/models/fpn.py"
DET = "o2f/models/detector.py"
BB = "o2f/models/backbone.py"
BLD = "o2f/builders.py"
CFG = "o2f/config.py"
# lines of the head that occur in both heads; with their neighbours they occur once
REG = "            reg_out.append(F.relu(self.scales[level] * self.conv_reg(reg_feat)) * stride)"
CTR = "            ctr_out.append(self.conv_centerness(self.ctr_convs(reg_feat)))"
AUX_CLS = "            cls_out.append(self.conv_cls(self.cls_convs(x)))"

# (file, snippet, replacement)
MUTANTS: list[planted_bugs.Mutant] = [
    # --- head (SPEC §1) ---
    (HEAD, "return [conv, nn.GroupNorm(gn_groups, cout), nn.ReLU(inplace=True)]",
     "return [conv, nn.GroupNorm(cout // gn_groups, cout), nn.ReLU(inplace=True)]"),
    (HEAD, "reg_out.append(F.relu(self.scales[level] * self.conv_reg(reg_feat)) * stride)\n"
           "            ctr_out.append(self.conv_centerness(self.ctr_convs(reg_feat)))",
     "reg_out.append(F.relu(self.scales[level] * self.conv_reg(reg_feat)) * stride)\n"
     "            ctr_out.append(self.conv_centerness(self.ctr_convs(cls_feat)))"),
    (HEAD, REG + "\n" + CTR, REG.replace("F.relu(self.scales[level] * self.conv_reg(reg_feat))",
                                        "self.scales[level] * F.relu(self.conv_reg(reg_feat))")
     + "\n" + CTR),
    (HEAD, "            reg_feats.append(reg_feat)", "            reg_feats.append(cls_feat)"),
    # the aux one-to-many head
    (HEAD, AUX_CLS + "\n" + REG,
     AUX_CLS + "\n" + "            reg_out.append(F.relu(self.conv_reg(reg_feat)) * stride)"),
    (HEAD, "            ctr_out.append(self.conv_centerness(reg_feat))",
     "            ctr_out.append(self.conv_centerness(self.cls_convs(x)))"),
    (HEAD, "            cls_out.append(self.conv_cls(self.cls_convs(x)))",
     "            cls_out.append(self.conv_cls(self.reg_convs(x)))"),
    # --- FPN (SPEC §1) ---
    (FPN, 'laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest"',
     'laterals[i], size=laterals[i - 1].shape[-2:], mode="bilinear"'),
    (FPN, "outs.append(conv(outs[-1] if i == 0 else F.relu(outs[-1])))",
     "outs.append(conv(outs[-1]))"),
    (FPN, "outs.append(conv(outs[-1] if i == 0 else F.relu(outs[-1])))",
     "outs.append(conv(laterals[-1] if i == 0 else F.relu(outs[-1])))"),
    (FPN, "nn.init.xavier_uniform_(m.weight)", "nn.init.kaiming_uniform_(m.weight, a=1)"),
    # --- detector: preprocessing, points, flattening, outputs ---
    (DET, "height = -(-max(h for h, _ in shapes) // d) * d",
     "height = (max(h for h, _ in shapes) // d + 1) * d"),
    (DET, "m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, m.shape[1]) for m in maps], 1)",
     "m.permute(0, 3, 2, 1).reshape(m.shape[0], -1, m.shape[1]) for m in maps], 1)"),
    (DET, "m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, m.shape[1]) for m in maps], 1)",
     "m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, m.shape[1]) for m in maps[::-1]], 1)"),
    (DET, "grids.append(LevelGrid(start, h, w, float(s), 0.5 * s, 0.5 * s))",
     "grids.append(LevelGrid(start, h, w, float(s), 0.0, 0.0))"),
    (DET, "grids.append(LevelGrid(start, h, w, float(s), 0.5 * s, 0.5 * s))",
     "grids.append(LevelGrid(start, w, h, float(s), 0.5 * s, 0.5 * s))"),
    (DET, "            start += n\n", ""),
    # equivalent: with selection "box" select_topk already zeroes every score <= score_thr (both
    # its sparse and its static-shape path), so "> 0" and "> score_thr" keep the same entries
    (DET, 'idx = (scores[b] > (self.score_thr if self.selection == "box" else 0.0)).nonzero()',
     'idx = (scores[b] > 0.0).nonzero()'),
    (DET, "keep = 10**9 if self.nms else self.max_per_img",
     "keep = self.max_per_img"),
    (DET, "for k, v in aux.items()})", "for k, v in aux.items() if k != 'loss_ctr'})"),
    (DET, "pixel_std: Sequence[float] = (58.395, 57.12, 57.375), size_divisor: int = 32,",
     "pixel_std: Sequence[float] = (58.395, 57.12, 57.375), size_divisor: int = 16,"),
    (DET, "return round(height / sy), round(width / sx)",
     "return round(height / sx), round(width / sy)"),
    # --- backbone: frozen stages, norm_eval, levels ---
    (BB, "return stages[: self.frozen_stages + 1] if self.frozen_stages >= 0 else []",
     "return stages[: self.frozen_stages + 1] if self.frozen_stages > 0 else []"),
    (BB, "                stage.eval()\n", "                pass\n"),
    # --- builders: every model.* key reaches its module ---
    (BLD, "        h.num_ctr_convs, m.strides, h.gn_groups, h.prior_prob,",
     "        h.num_ctr_convs, m.strides, h.gn_groups,"),
    (BLD, "        h.num_ctr_convs, m.strides, h.gn_groups, h.prior_prob,",
     "        h.num_ctr_convs, (8, 16, 32, 64, 128), h.gn_groups, h.prior_prob,"),
    (BLD, "backbone, neck, head, build_criterion(cfg, num_classes), pixel_mean=m.pixel_mean,",
     "backbone, neck, head, build_criterion(cfg, num_classes),"),
    (BLD, "pixel_std=m.pixel_std, size_divisor=m.size_divisor, score_thr=t.score_thr,",
     "pixel_std=m.pixel_std, score_thr=t.score_thr,"),
    (BLD, "pixel_std=m.pixel_std, size_divisor=m.size_divisor, score_thr=t.score_thr,",
     "size_divisor=m.size_divisor, score_thr=t.score_thr,"),
    (BLD, "nms_pre=t.nms_pre, max_per_img=t.max_per_img, nms=nms_enabled(cfg), nms_iou=t.nms_iou,",
     "nms_pre=t.nms_pre, max_per_img=t.max_per_img, nms=nms_enabled(cfg),"),
    (BLD, "backbone = ResNetBackbone(b.depth, download, b.frozen_stages, b.norm_eval)",
     "backbone = ResNetBackbone(b.depth, download, b.frozen_stages)"),
    (BLD, "backbone = SwinBackbone(download, b.frozen_stages, b.drop_path)",
     "backbone = SwinBackbone(download, b.frozen_stages)"),
    (BLD, "download = b.pretrained and not b.weights", "download = b.pretrained"),
    (BLD, "m.head.num_convs, m.strides, m.head.gn_groups, m.head.prior_prob),",
     "m.head.num_convs, m.strides, m.head.gn_groups),"),
    (BLD, "num_classes, center_radius=m.assign.center_radius,\n"
          "            regress_ranges=tuple(tuple(r) for r in m.fcos.regress_ranges),\n"
          "            focal_alpha=m.fcos.focal_alpha, focal_gamma=m.fcos.focal_gamma,\n"
          "            bbox_weight=",
     "num_classes,\n"
     "            regress_ranges=tuple(tuple(r) for r in m.fcos.regress_ranges),\n"
     "            focal_alpha=m.fcos.focal_alpha, focal_gamma=m.fcos.focal_gamma,\n"
     "            bbox_weight="),
    (BLD, "feat_stride=m.strides[0], out_stride=k.out_stride, rel_coords=k.rel_coords,",
     "feat_stride=m.strides[0], out_stride=k.out_stride,"),
    (BLD, "num_classes=num_classes if k.sem_weight > 0 else 0, prior_prob=m.head.prior_prob,",
     "num_classes=num_classes if k.sem_weight > 0 else 0,"),
    (BLD, "max_proposals=k.max_proposals, center_from_mask=k.center_from_mask,",
     "max_proposals=k.max_proposals,"),
    (BLD, '"mask_thr": k.mask_thr,', '"mask_thr": 0.5,'),
    # --- config defaults: recipe numbers not set by the shipped YAML files ---
    (CFG, "    focal_alpha: float = 0.25", "    focal_alpha: float = 0.5"),
    (CFG, "[-1.0, 64.0], [64.0, 128.0], [128.0, 256.0], [256.0, 512.0], [512.0, float(\"inf\")]]",
     "[-1.0, 64.0], [64.0, 128.0], [128.0, 256.0], [256.0, 512.0], [512.0, 1024.0]]"),
    (CFG, "    weight: float = 1.0  # multiplies each of its losses",
     "    weight: float = 0.5  # multiplies each of its losses"),
    (CFG, "    dynamic_layers: int = 3", "    dynamic_layers: int = 2"),
    (CFG, "default_factory=lambda: [64.0, 128.0, 256.0, 512.0, 1024.0])",
     "default_factory=lambda: [32.0, 64.0, 128.0, 256.0, 512.0])"),
    (CFG, "    sem_weight: float = 1.0", "    sem_weight: float = 0.0"),
    (CFG, "    ctr_weight: float = 1.0", "    ctr_weight: float = 0.5"),
    # --- added after the first pass ---
    (DET, 'idx = (scores[b] > (self.score_thr if self.selection == "box" else 0.0)).nonzero()',
     "idx = (scores[b] > self.score_thr).nonzero()"),
    (BLD, "num_classes = num_classes or m.num_classes",
     "num_classes = m.num_classes or num_classes"),
    (CFG, "    dynamic_channels: int = 8", "    dynamic_channels: int = 16"),
    (CFG, "    max_proposals: int = -1", "    max_proposals: int = 500"),
]

# the pins first: most mutants die there within seconds (-x)
DEFAULT_TESTS = ["tests/test_model_pins.py", "tests/test_models.py", "tests/test_config.py",
                 "tests/test_criterion_wiring.py", "tests/test_aux_head.py",
                 "tests/test_frozen_bn.py", "tests/test_condinst.py", "tests/test_swin.py",
                 "tests/test_fcos_o2o.py", "tests/test_learning.py",
                 "tests/engine/test_backbone_weights.py", "-m", "not slow"]


def main(argv: list[str] | None = None) -> int:
    return planted_bugs.main(MUTANTS, DEFAULT_TESTS, __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    raise SystemExit(main())
