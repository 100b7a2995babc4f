"""Label assigners: pure functions from predictions and ground truth to training targets."""

from o2f.assigners.o2f import LevelGrid, level_grids, o2f_assign, soft_label_ceiling

__all__ = ["LevelGrid", "level_grids", "o2f_assign", "soft_label_ceiling"]
