"""o2f: end-to-end (NMS-free) dense object detection with one-to-few label assignment."""

from o2f.version import __version__

__all__ = ["__version__"]
