"""One exception type for every failure a user can fix.

The CLI prints a :class:`CxrlabError` as one line (no traceback unless ``--debug``);
every message names the file or the option at fault.
"""

from __future__ import annotations


class CxrlabError(Exception):
    """A user-facing error: bad input, a missing folder, a wrong option."""


class ImageReadError(CxrlabError):
    """An image file that cannot be decoded; ``kind`` says why (empty, not_image, corrupt, ...)."""

    def __init__(self, path: object, kind: str, detail: str) -> None:
        self.path = str(path)
        self.kind = kind
        self.detail = detail
        super().__init__(f"{self.path}: {kind.replace('_', ' ')}: {detail}")
