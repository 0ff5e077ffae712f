"""Uploaded films read from a ``multipart/form-data`` body into memory, never onto disk.

Starlette's own form parser spools a file part over 1 MB to a temporary file; this one keeps
every part in memory and counts the body's bytes as they arrive, so a request over the limit is
refused before more than the limit is read (and at once when its ``Content-Length`` says so,
once the first part's file name is known, so the message can name it).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

FIELD = "file"  # the name of every film's part
MAX_FILES = 100  # per request
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
HTML_ESCAPES = re.compile("%(22|0[AaDd])")  # how browsers write ", LF and CR in a file name


class UploadError(Exception):
    """A request that cannot be read: ``status`` and a one-line ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass
class Upload:
    """One ``file`` part: the name the client gave and the bytes."""

    filename: str
    data: bytearray = field(default_factory=bytearray)


def clean_name(raw: bytes) -> str:
    """A client's file name as one printable line and as the person named the file: UTF-8
    (undecodable bytes replaced), the ``%22``, ``%0A`` and ``%0D`` a browser writes for ``"``,
    LF and CR in a multipart file name turned back, control characters as ``?``, at most 255
    characters. Nothing else is removed (a ``/`` or ``\\`` stays), so that the page's card, its
    table, its CSV and the API's answer show one name."""
    name = raw.decode("utf-8", errors="replace")
    name = HTML_ESCAPES.sub(lambda match: chr(int(match.group(1), 16)), name)
    return CONTROL.sub("?", name)[:255] or "(unnamed)"


class _Collector:
    """The parser's callbacks: headers and data of the current part, and the finished parts."""

    def __init__(self) -> None:
        self.parts: list[Upload] = []
        self.current: Upload | None = None
        self.header_name = b""
        self.header_value = b""
        self.disposition = b""

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": lambda d, s, e: self._add("header_name", d[s:e]),
            "on_header_value": lambda d, s, e: self._add("header_value", d[s:e]),
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
        }

    def _add(self, attribute: str, data: bytes) -> None:
        setattr(self, attribute, getattr(self, attribute) + data)

    def on_part_begin(self) -> None:
        self.current, self.disposition = None, b""

    def on_header_end(self) -> None:
        if self.header_name.lower() == b"content-disposition":
            self.disposition = self.header_value
        self.header_name = self.header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        if options.get(b"name") != FIELD.encode():
            return  # other fields are ignored
        if b"filename" not in options:
            raise UploadError(422, f"upload: the '{FIELD}' part has no file name (send a file)")
        if len(self.parts) >= MAX_FILES:
            raise UploadError(413, f"upload: more than {MAX_FILES} files in one request")
        self.current = Upload(clean_name(options[b"filename"]))
        self.parts.append(self.current)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.current is not None:
            self.current.data += data[start:end]

    def name(self) -> str:
        return self.parts[-1].filename if self.parts else "upload"


async def read_uploads(
    content_type: str | None,
    content_length: str | None,
    stream: AsyncIterator[bytes],
    max_bytes: int,
) -> list[Upload]:
    """The ``file`` parts of a multipart body; :class:`UploadError` (413, 415 or 422) otherwise."""
    kind, options = parse_options_header(content_type or "")
    if kind != b"multipart/form-data" or b"boundary" not in options:
        raise UploadError(415, f"upload: send multipart/form-data with one '{FIELD}' part per film")
    limit = f"the upload limit of {max_bytes / 1e6:g} MB (cxrlab serve --max-upload-mb)"
    declared = int(content_length) if content_length and content_length.isdigit() else None
    collector = _Collector()
    parser = MultipartParser(options[b"boundary"], collector.callbacks())
    received = 0
    try:
        async for chunk in stream:
            received += len(chunk)
            if received > max_bytes:  # read up to the limit (the part's name), no further
                parser.write(chunk[: max(0, len(chunk) - (received - max_bytes))])
                raise UploadError(413, f"{collector.name()}: over {limit}")
            parser.write(chunk)
            if declared is not None and declared > max_bytes and collector.parts:
                raise UploadError(413, f"{collector.name()}: over {limit}")
        parser.finalize()
    except MultipartParseError as exc:
        if "header size" in str(exc) and collector.header_name.lower() == b"content-disposition":
            raise UploadError(
                422,
                f"upload: a file name is too long (over {parser.max_header_size} bytes with its "
                "part's header); rename the file",
            ) from exc
        raise UploadError(422, f"{collector.name()}: malformed multipart body ({exc})") from exc
    if not collector.parts:
        raise UploadError(422, f"upload: no '{FIELD}' part (send one or more films as '{FIELD}')")
    return collector.parts
