"""o2f: end-to-end (NMS-free) dense object detection with one-to-few label assignment."""

from o2f.version import __version__

__all__ = ["__version__"]


def __getattr__(name: str):  # o2f.Detector, imported on first use (keeps `import o2f` light)
    if name == "Detector":
        from o2f.deploy.predict import Detector

        return Detector
    raise AttributeError(f"module 'o2f' has no attribute {name!r}")
