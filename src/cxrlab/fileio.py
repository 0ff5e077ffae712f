"""Writing output files safely: whole or not at all, and any file name, even undecodable ones.

* :func:`atomic_open` writes into a unique temporary file beside the target and renames it over
  the target only when the ``with`` block finishes without an exception. A kill or an error at
  any moment leaves either the old file or the new one, never a half-written one, and two
  writers never share a temporary name.
* Text is written as UTF-8 with ``surrogateescape``: a file name that is not valid UTF-8 (Python
  holds its undecodable bytes as lone surrogates, PEP 383) is written back as its original bytes,
  so CSV paths round-trip when read with :data:`TEXT_ERRORS` too.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from cxrlab.errors import CxrlabError

ENCODING = "utf-8"
TEXT_ERRORS = "surrogateescape"  # undecodable file-name bytes round-trip (PEP 383)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", *, newline: str | None = None) -> Iterator[IO]:
    """Open a unique temporary file beside ``path``; on success, flush, fsync and rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would make outputs private; give them the usual mode
        text = "b" not in mode
        with os.fdopen(
            fd, mode, **({"encoding": ENCODING, "errors": TEXT_ERRORS, "newline": newline} if text else {})
        ) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8, undecodable name bytes kept)."""
    with atomic_open(path, "w") as handle:
        handle.write(text)
    return Path(path)


def read_text(path: str | Path) -> str:
    """Read a text file written by this module (the counterpart of :func:`atomic_write_text`)."""
    return Path(path).read_text(encoding=ENCODING, errors=TEXT_ERRORS)


@contextmanager
def locked(path: str | Path, *, busy: str | None = None) -> Iterator[None]:
    """Hold an exclusive advisory lock (``flock``) on ``path``, a folder or a lock file (created
    when missing), for the ``with`` block. Another process asking for it waits, or, when ``busy`` is given, gets a
    :class:`CxrlabError` with that message at once. The operating system releases the lock when
    the process dies, so a kill never leaves it stuck."""
    import fcntl

    path = Path(path)
    try:  # a folder is locked as it is; a lock file is created when missing
        fd = os.open(path, os.O_RDONLY if path.is_dir() else os.O_RDONLY | os.O_CREAT, 0o666)
    except OSError as exc:
        raise CxrlabError(f"{path}: cannot take a lock here ({exc.strerror}); is the folder writable?") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if busy else 0))
        except BlockingIOError:
            raise CxrlabError(busy) from None
        yield
    finally:
        os.close(fd)
