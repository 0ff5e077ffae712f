"""Output files written safely, and file names shown safely: whole files, any name.

* :func:`atomic_open` writes into a unique temporary file beside the target and renames it over
  the target only when the ``with`` block finishes without an exception. A kill or an error at
  any moment leaves either the old file or the new one, never a half-written one, and two
  writers never share a temporary name. The file gets the usual permissions (``0o666`` less the
  umask), not the private ``0o600`` of a temporary file.
* A write that fails because the disk is full or read-only is one :class:`CxrlabError` naming
  the file (``no space left on device: PATH``); :func:`check_writable` finds either before the
  work, and :func:`reserve_space` before a memory map writes.
* Text is written as UTF-8 with ``surrogateescape``: a file name that is not valid UTF-8 (Python
  holds its undecodable bytes as lone surrogates, PEP 383) is written back as its original bytes,
  so CSV paths round-trip when read with :data:`TEXT_ERRORS` too (:func:`open_text`).
* Where people read a name (Markdown, HTML, the terminal) it goes through :func:`display_name`
  (undecodable bytes shown as ``\\xe9``), and :func:`markdown_escape` or :func:`html_escape`, so
  that a file or class folder named like a tag or a Markdown table stays plain text.
* Every CSV cxrlab writes goes through :func:`csv_writer` or :func:`csv_dict_writer`: a text cell
  that a spreadsheet would run as a formula (one starting with ``=``, ``+``, ``-``, ``@``, a tab
  or a carriage return, and not a number) gets a leading apostrophe, as the page's CSV export
  does (:func:`csv_cell`); :func:`csv_dict_reader` gives the original text back.
"""

from __future__ import annotations

import csv
import errno
import html
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from cxrlab.errors import ConfigError, CxrlabError

ENCODING = "utf-8"
TEXT_ERRORS = "surrogateescape"  # undecodable file-name bytes round-trip (PEP 383)
MARKDOWN_SPECIALS = re.compile(r"([\\`*_\[\]|~])")  # backslash-escaped in Markdown text


def _umask() -> int:
    """The process's umask (reading it means setting it: done once, at import)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # the permissions open() would give a new file


DISK_ERRORS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
}  # write failures named by the file they hit, not by a temporary name
MIN_FREE_BYTES = 1 << 20  # a file system with less free space than this counts as full


def disk_full(folder: Path) -> bool:
    """Whether the file system of ``folder`` has less than :data:`MIN_FREE_BYTES` free."""
    try:
        return shutil.disk_usage(folder).free < MIN_FREE_BYTES
    except OSError:
        return False


def check_writable(path: str | Path, setting: str, value: object = None) -> None:
    """Refuse, in one line naming ``setting`` (and its ``value``), a folder where no file can be
    written or whose file system is full: ``path`` (a folder, or one to be created: its nearest
    existing parent is tried). Called before the work, so that a read-only or full disk is not
    found after it."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return  # not a folder: the caller's own checks say so
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        why = DISK_ERRORS.get(exc.errno or 0, exc.strerror or str(exc))
        raise ConfigError(
            setting, f"cannot write in {folder} ({why.lower()})", value=value
        ) from None
    if disk_full(folder):
        raise ConfigError(setting, f"no space left on device: {folder}", value=value)


def reserve_space(path: Path) -> None:
    """Allocate the disk blocks of ``path`` up to its length now (``posix_fallocate``), so that a
    full disk is a one-line :class:`CxrlabError` here instead of a SIGBUS when a memory map
    writes into a sparse file."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno in DISK_ERRORS:
            size = os.fstat(fd).st_size
            raise CxrlabError(
                f"{DISK_ERRORS[exc.errno]}: {path.parent} ({path.name} needs {size / 1e6:.0f} MB)"
            ) from None
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without it
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", *, newline: str | None = None) -> Iterator[IO]:
    """Open a unique temporary file beside ``path``; on success, flush, fsync and rename it to
    ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(
            fd, FILE_MODE
        )  # mkstemp's 0600 would make outputs private; give them the usual mode
        text = "b" not in mode
        with os.fdopen(
            fd,
            mode,
            **({"encoding": ENCODING, "errors": TEXT_ERRORS, "newline": newline} if text else {}),
        ) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        full = disk_full(path.parent)  # asked before the temporary file's blocks are freed
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in DISK_ERRORS:
            raise CxrlabError(f"{DISK_ERRORS[exc.errno]}: {path}") from exc
        if full and isinstance(exc, Exception) and not isinstance(exc, CxrlabError):
            # (torch.save says "unexpected pos" on a full disk)
            raise CxrlabError(f"no space left on device: {path}") from exc
        raise


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
    when missing), for the ``with`` block. Another process asking for it waits, or, when ``busy``
    is given, gets a :class:`CxrlabError` with that message at once. The operating system releases
    the lock when the process dies, so a kill never leaves it stuck."""
    import fcntl

    path = Path(path)
    try:  # a folder is locked as it is; a lock file is created when missing
        fd = os.open(path, os.O_RDONLY if path.is_dir() else os.O_RDONLY | os.O_CREAT, 0o666)
    except OSError as exc:
        raise CxrlabError(
            f"{path}: cannot take a lock here ({exc.strerror}); is the folder writable?"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if busy else 0))
        except BlockingIOError:
            raise CxrlabError(busy) from None
        yield
    finally:
        os.close(fd)


def open_text(path: str | Path) -> IO[str]:
    """Open a text file written by this module for reading (``newline=""``, as :mod:`csv` needs)."""
    return open(path, encoding=ENCODING, errors=TEXT_ERRORS, newline="")


def display_name(text: str) -> str:
    """``text`` for people: undecodable file-name bytes shown as ``\\xe9``, the rest as it is."""
    return text.encode(ENCODING, TEXT_ERRORS).decode(ENCODING, "backslashreplace")


def html_escape(text: object) -> str:
    """``text`` as inert HTML: :func:`display_name`, then ``<``, ``>``, ``&`` and quotes escaped."""
    return html.escape(display_name(str(text)))


def markdown_escape(text: object) -> str:
    """``text`` as plain Markdown: :func:`display_name`, HTML specials as entities, Markdown
    specials (``\\ ` * _ [ ] | ~``) backslash-escaped, line breaks as spaces (one table cell)."""
    escaped = MARKDOWN_SPECIALS.sub(r"\\\1", html.escape(display_name(str(text)), quote=False))
    return escaped.replace("\r", " ").replace("\n", " ")


def markdown_table(
    header: Sequence[str], rows: Iterable[Sequence[str]], *, align: Sequence[str] | None = None
) -> list[str]:
    """The lines of a Markdown table whose cells are already Markdown (escape names with
    :func:`markdown_escape` first); ``align``: one ``:---``/``---:`` per column, else plain
    ``|---|``. The one table renderer of the audit, the analysis and the reports."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    rule = line(align) if align is not None else "|" + "|".join("---" for _ in header) + "|"
    return [line(header), rule, *(line(row) for row in rows)]


def pct(value: float) -> str:
    """A share as a percentage with sensible precision (0.4%, 3.9%, 93%)."""
    percent = 100.0 * value
    if percent in (0, 100) or 10 <= percent <= 99:
        return f"{percent:.0f}%"
    return f"{percent:.1f}%"


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet may run as a formula
NEUTRAL = "'"  # the prefix that makes such a cell text (the page's export adds it too)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def csv_cell(value: object) -> object:
    """``value`` as a CSV cell a spreadsheet shows as text and never runs: a string starting with
    ``= + - @``, a tab or a carriage return (and not a number, such as ``-0.5``) gets a leading
    apostrophe; so does one already starting with an apostrophe, so that :func:`csv_text` gives
    every string back exactly. Anything else is left as it is."""
    if not isinstance(value, str) or not value:
        return value
    if value[0] == NEUTRAL or (value.startswith(FORMULA_STARTS) and not _is_number(value)):
        return NEUTRAL + value
    return value


def csv_text(cell: str) -> str:
    """The text :func:`csv_cell` was given (its apostrophe removed)."""
    return cell[1:] if cell.startswith(NEUTRAL) else cell


class _NeutralWriter:
    """A :func:`csv.writer` whose cells go through :func:`csv_cell`."""

    def __init__(self, handle: IO[str], **options: Any) -> None:
        self._writer = csv.writer(handle, **options)

    def writerow(self, row: Iterable[object]) -> object:
        return self._writer.writerow([csv_cell(value) for value in row])

    def writerows(self, rows: Iterable[Iterable[object]]) -> None:
        for row in rows:
            self.writerow(row)


class _NeutralDictWriter(csv.DictWriter):
    """A :class:`csv.DictWriter` whose cells (the header too) go through :func:`csv_cell`."""

    def writerow(self, rowdict: dict) -> object:  # type: ignore[override]
        return super().writerow({key: csv_cell(value) for key, value in rowdict.items()})

    def writerows(self, rowdicts: Iterable[dict]) -> None:  # type: ignore[override]
        for row in rowdicts:
            self.writerow(row)


class _NeutralDictReader(csv.DictReader):
    """A :class:`csv.DictReader` giving back the text :func:`csv_cell` was given."""

    @property
    def fieldnames(self) -> list[str] | None:  # type: ignore[override]
        names = super().fieldnames
        return None if names is None else [csv_text(name) for name in names]

    def __next__(self) -> dict:
        row = super().__next__()
        return {key: csv_text(v) if isinstance(v, str) else v for key, v in row.items()}


def csv_writer(handle: IO[str], **options: Any) -> _NeutralWriter:
    """:func:`csv.writer` for a file cxrlab writes: every cell through :func:`csv_cell`."""
    return _NeutralWriter(handle, **options)


def csv_dict_writer(handle: IO[str], fieldnames: Sequence[str], **options: Any) -> csv.DictWriter:
    """:class:`csv.DictWriter` for a file cxrlab writes: every cell through :func:`csv_cell`."""
    return _NeutralDictWriter(handle, fieldnames=fieldnames, **options)


def csv_dict_reader(handle: IO[str]) -> csv.DictReader:
    """:class:`csv.DictReader` for a file cxrlab wrote: cells as they were before
    :func:`csv_cell`."""
    return _NeutralDictReader(handle)
