"""Label assigners: pure functions from predictions and ground truth to training targets."""

from o2f.assigners.fcos import FCOS_REGRESS_RANGES, fcos_assign
from o2f.assigners.o2f import o2f_assign, soft_label_ceiling
from o2f.assigners.pairs import LevelGrid, level_grids

__all__ = [
    "FCOS_REGRESS_RANGES",
    "LevelGrid",
    "fcos_assign",
    "level_grids",
    "o2f_assign",
    "soft_label_ceiling",
]
