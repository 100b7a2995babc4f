"""Network parts: backbone, FPN, head and the detector that joins them."""

from o2f.models.backbone import PretrainedWeightsUnavailable, ResNetBackbone
from o2f.models.detector import O2FDetector
from o2f.models.fpn import FPN
from o2f.models.head import O2FHead
from o2f.models.swin import SwinBackbone

__all__ = ["FPN", "O2FDetector", "O2FHead", "PretrainedWeightsUnavailable", "ResNetBackbone",
           "SwinBackbone"]
