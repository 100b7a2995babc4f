"""Label assigners: pure functions from predictions and ground truth to training targets."""

from o2f.assigners.fcos import FCOS_REGRESS_RANGES, fcos_assign, fcos_assign_batch
from o2f.assigners.o2f import o2f_assign, o2f_assign_batch, soft_label_ceiling
from o2f.assigners.pairs import LevelGrid, level_grids

__all__ = [
    "FCOS_REGRESS_RANGES",
    "LevelGrid",
    "fcos_assign",
    "fcos_assign_batch",
    "level_grids",
    "o2f_assign",
    "o2f_assign_batch",
    "soft_label_ceiling",
]
