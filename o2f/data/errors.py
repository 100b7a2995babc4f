"""The error a bad dataset raises: a message naming the file and the record."""

from __future__ import annotations


class DataError(ValueError):
    """An annotation file, folder or record is malformed or unusable; the message names the
    file and the record (``labels/a.txt:3``, ``Annotations/b.xml: object 2``,
    ``annotations[12].bbox``). A ``ValueError``, so callers that caught that still do."""
