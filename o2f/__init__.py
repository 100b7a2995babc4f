"""o2f: end-to-end (NMS-free) dense object detection with one-to-few label assignment.

The Python API mirrors the command line: ``o2f.train``, ``o2f.evaluate``, ``o2f.export``
(:mod:`o2f.api`) and ``o2f.Detector`` for predictions. Each is imported on first use, which
keeps ``import o2f`` light."""

from o2f.version import __version__

__all__ = ["Detector", "__version__", "evaluate", "export", "train"]

_API = ("train", "evaluate", "export")


def __getattr__(name: str):  # imported on first use (keeps `import o2f` light)
    if name == "Detector":
        from o2f.deploy.predict import Detector

        return Detector
    if name in _API:
        from o2f import api

        return getattr(api, name)
    raise AttributeError(f"module 'o2f' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "Detector", *_API])
