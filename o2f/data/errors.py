"""The error a bad dataset raises: a message naming the file and the record."""

from __future__ import annotations

import logging


class DataError(ValueError):
    """An annotation file, folder or record is malformed or unusable; the message names the
    file and the record (``labels/a.txt:3``, ``Annotations/b.xml: object 2``,
    ``annotations[12].bbox``). A ``ValueError``, so callers that caught that still do."""


def report_records(where: str, what: str, items: list[str], strict: bool,
                   logger: logging.Logger, extra: str = "") -> None:
    """Name the records of a dataset left out: one warning ``WHERE: N WHAT: a; b; ... and K
    more EXTRA`` (the first five shown), or under ``data.strict`` a :class:`DataError` with
    that message. Nothing when ``items`` is empty."""
    if not items:
        return
    shown = "; ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")
    msg = f"{where}: {len(items)} {what}: {shown}{extra}"
    if strict:
        raise DataError(msg + " (data.strict=true)")
    logger.warning(msg)
