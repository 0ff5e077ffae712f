"""Read any chest X-ray file into one 8-bit grayscale array.

Preprocessing convention (written down once, used everywhere):

* JPEG, PNG, BMP, TIFF are decoded with Pillow; EXIF orientation is applied first.
* Colour and palette images become grayscale with Pillow's ITU-R 601-2 luma ("L").
  Alpha is dropped.
* Images with more than 8 bits per sample (16-bit PNG/TIFF, 32-bit integer or float)
  are scaled linearly from their own minimum to maximum onto 0..255.
* DICOM (by extension ``.dcm``/``.dicom`` or the ``DICM`` preamble) goes through pydicom:
  modality LUT (rescale slope/intercept), then the VOI LUT or window in the file,
  then the same min..max scaling; ``MONOCHROME1`` (white = low signal) is inverted so
  that bone is bright, as on every other film. Multi-frame files give their first frame, and
  every frame counts against ``max_pixels`` (frames x rows x columns); a deflated file that
  inflates past :data:`DICOM_BYTES_PER_PIXEL` bytes per pixel of the limit is refused while
  inflating. A window pydicom cannot apply (``WindowWidth`` 0) is a ``corrupt`` file.
* Memory: scaling to 8 bits runs a block of rows at a time (:func:`scale_rows`), never as a
  float64 copy of the whole film, so decoding a film at the limit takes at most 8 bytes per pixel
  of ``max_pixels`` (the decoded file, its samples and the ``uint8`` result).
* The source is a file path, or the file's bytes (an upload, :mod:`cxrlab.serve`) with the name
  to show in errors; both go through the same decoding, so an upload is read as ``predict``
  reads the file.
* A DICOM without pixel data (a structured report, a header only) is refused as ``no_pixels``.
* Files above ``max_pixels`` are refused as possible decompression bombs before decoding, and
  the message always states that limit: Pillow's own guard (a warning above ~89M pixels, an
  error above ~179M) is not the limit cxrlab documents, so its warning is left to cxrlab's
  check and its error reported against ``max_pixels``. (A ``max_pixels`` above Pillow's error
  limit would need ``PIL.Image.MAX_IMAGE_PIXELS`` raised as well.)

The result is a C-contiguous ``uint8`` array of shape ``(height, width)``.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cxrlab.errors import ImageReadError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"})
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*", b"GIF8")
DEFAULT_MAX_PIXELS = 80_000_000  # ~9000 x 9000; the largest real CXR detectors are ~4300 x 4300
DICOM_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
UPLOAD_NAME = "<upload>"  # the name shown for bytes given without one
DEEP_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})  # scaled min..max
SCALE_BLOCK = 1 << 16  # values scaled at once (float64: 512 KB a block)
DICOM_BYTES_PER_PIXEL = (
    2  # a deflated DICOM may inflate to this many bytes per allowed pixel (16 bit)
)
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601-2, as Pillow's "L"

ImageSource = str | Path | bytes | bytearray | memoryview | BinaryIO


@dataclass(frozen=True)
class DecodedImage:
    """Pixels plus what the file said about itself (useful for audits and shortcut checks)."""

    pixels: np.ndarray  # uint8 (H, W)
    file_format: str  # "JPEG", "PNG", "DICOM", ...
    mode: str  # the file's own mode before conversion: "L", "RGB", "I;16", "MONOCHROME2", ...


def is_dicom(path: Path) -> bool:
    """True for a DICOM file, by extension or by the 'DICM' magic at byte 128."""
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return _dicom_magic(head)


def _dicom_magic(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def _row_blocks(height: int, row_size: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` row ranges of about :data:`SCALE_BLOCK` values each."""
    step = max(1, SCALE_BLOCK // max(1, row_size))
    for start in range(0, height, step):
        yield start, min(start + step, height)


def scale_rows(shape: tuple[int, ...], rows: Callable[[int, int], np.ndarray]) -> np.ndarray:
    """Linearly map values min..max onto 0..255 (a constant image becomes all zeros), reading
    them a block of rows at a time: ``rows(start, stop)`` gives rows ``start:stop`` of an array of
    ``shape`` as numbers (any dtype; computed twice, once for the range and once to scale). The
    float64 arithmetic runs on one block at a time, so the memory beyond the ``uint8`` result is
    a few :data:`SCALE_BLOCK`-value blocks, whatever the film's size."""
    height, row_size = shape[0], int(np.prod(shape[1:], dtype=np.int64))
    low, high, row_shape = np.inf, -np.inf, tuple(shape[1:])
    for start, stop in _row_blocks(height, row_size):
        block = rows(start, stop)
        row_shape = block.shape[1:]
        if block.size:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN block
                low = np.fmin(low, np.nanmin(block))
                high = np.fmax(high, np.nanmax(block))
    out = np.zeros((height, *row_shape), dtype=np.uint8)
    if not np.isfinite(low) or not np.isfinite(high) or high <= low:
        return out
    low, factor = float(low), 255.0 / (float(high) - float(low))
    for start, stop in _row_blocks(height, row_size):
        block = np.array(rows(start, stop), dtype=np.float64)  # a copy: the source stays as it is
        block -= low
        block *= factor
        np.rint(block, out=block)
        np.clip(block, 0, 255, out=block)
        np.nan_to_num(block, copy=False, nan=0.0)  # NaN pixels (float images) become 0
        out[start:stop] = block
    return out


def scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Linearly map an array's min..max onto 0..255 (a constant image becomes all zeros), in
    blocks of rows (:func:`scale_rows`): no full-size float64 copy."""
    values = np.asarray(values)
    return scale_rows(values.shape, lambda start, stop: values[start:stop])


def _too_large(
    path: object, max_pixels: int, size: tuple[int, int] | None = None, prefix: str = ""
) -> ImageReadError:
    """The error for a file above ``max_pixels``, with its size (width, height) when known
    (``prefix``: the frames it counts, for a multi-frame DICOM)."""
    what = f"{prefix}{size[0]}x{size[1]} pixels" if size else "the image size"
    detail = f"{what} exceeds the decompression-bomb limit of {max_pixels} pixels"
    return ImageReadError(path, "too_large", detail)


def _inflated_size_within(source: Path | BinaryIO, limit: int) -> bool:
    """False when ``source`` is a deflated DICOM whose body inflates to more than ``limit`` bytes
    (counted while inflating, a block at a time, nothing kept); True otherwise. pydicom inflates
    a deflated file's whole body in memory before reading any of it."""
    import zlib

    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    handle = open(source, "rb") if isinstance(source, Path) else source
    try:
        read_preamble(handle, False)
        meta = _read_file_meta_info(handle)
        if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            return True
        inflater, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
        while chunk := handle.read(1 << 16):
            while chunk:
                total += len(inflater.decompress(chunk, 1 << 20))
                if total > limit:
                    return False
                chunk = inflater.unconsumed_tail
        return True
    finally:
        if isinstance(source, Path):
            handle.close()
        else:
            source.seek(0)


def _read_dicom(path: object, source: Path | BinaryIO, max_pixels: int) -> DecodedImage:
    """``path``: the name in errors; ``source``: the file, or its bytes as a binary stream.

    Every frame counts against ``max_pixels`` (frames x rows x columns), checked on the header
    before any pixel data is read; only the first frame is decoded. A deflated file's body may
    inflate to at most :data:`DICOM_BYTES_PER_PIXEL` bytes per pixel of the limit."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut
    from pydicom.pixels.utils import pixel_array

    def read(**options: Any) -> pydicom.FileDataset:
        if not isinstance(source, Path):
            source.seek(0)
        return pydicom.dcmread(source, **options)

    try:
        if not _inflated_size_within(source, DICOM_BYTES_PER_PIXEL * max_pixels + (1 << 20)):
            raise ImageReadError(
                path,
                "too_large",
                "its deflated data inflates beyond what the decompression-bomb limit of "
                f"{max_pixels} pixels allows",
            )
        header = read(stop_before_pixels=True)
    except ImageReadError:
        raise
    except InvalidDicomError as exc:
        raise ImageReadError(path, "not_image", f"not a valid DICOM file ({exc})") from exc
    except Exception as exc:  # pydicom raises many types on truncated files
        raise ImageReadError(path, "corrupt", f"cannot parse DICOM ({exc})") from exc
    rows, cols = int(getattr(header, "Rows", 0)), int(getattr(header, "Columns", 0))
    frames = max(int(getattr(header, "NumberOfFrames", 1) or 1), 1)
    if frames * rows * cols > max_pixels:
        frames_of = f"{frames} frames of " if frames > 1 else ""
        raise _too_large(path, max_pixels, (cols, rows), prefix=frames_of)
    photometric = str(getattr(header, "PhotometricInterpretation", "MONOCHROME2"))
    try:
        dataset = read()
    except Exception as exc:
        raise ImageReadError(path, "corrupt", f"cannot parse DICOM ({exc})") from exc
    if not any(tag in dataset for tag in DICOM_PIXEL_TAGS):
        raise ImageReadError(path, "no_pixels", "a DICOM file without pixel data")
    try:
        pixels = pixel_array(dataset, index=0) if frames > 1 else dataset.pixel_array
    except Exception as exc:
        raise ImageReadError(path, "corrupt", f"cannot decode DICOM pixel data ({exc})") from exc
    for tag in DICOM_PIXEL_TAGS:  # the encoded bytes are no longer needed
        if tag in dataset:
            delattr(dataset, tag)

    if pixels.ndim == 3:  # colour DICOM (RGB): luma like Pillow's "L"

        def values(start: int, stop: int) -> np.ndarray:
            return pixels[start:stop, :, :3].astype(np.float64) @ LUMA
    else:

        def values(start: int, stop: int) -> np.ndarray:
            return apply_voi_lut(apply_modality_lut(pixels[start:stop], dataset), dataset)

    try:
        gray = scale_rows(pixels.shape[:2], values)
    except Exception as exc:  # a window or LUT the file cannot have (WindowWidth 0, ...)
        raise ImageReadError(
            path, "corrupt", f"cannot apply the DICOM window or LUT ({exc})"
        ) from exc
    if photometric == "MONOCHROME1":
        np.subtract(255, gray, out=gray)
    return DecodedImage(gray, "DICOM", photometric)


def _pil_to_gray(image: Image.Image) -> np.ndarray:
    if image.mode in DEEP_MODES:  # scaled a band of rows at a time, never as a whole
        width, height = image.size
        return scale_rows(
            (height, width), lambda start, stop: np.asarray(image.crop((0, start, width, stop)))
        )
    if image.mode != "L":
        image = image.convert("L")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def _open_source(source: ImageSource, name: str | None) -> tuple[str, int, bool, object]:
    """``(name for errors, size in bytes, is DICOM, what Pillow and pydicom open)`` of a path
    or of bytes."""
    if isinstance(source, str | Path):
        path = Path(source)
        try:
            size = path.stat().st_size
        except OSError as exc:
            why = exc.strerror or str(exc)
            if path.is_symlink():  # dangling, or a loop
                why = f"symbolic link to {os.readlink(path)}: {why}"
            raise ImageReadError(name or path, "unreadable", why) from exc
        if path.is_dir():  # a link to a folder, met among a dataset's files
            link = f"symbolic link to {os.readlink(path)}: " if path.is_symlink() else ""
            raise ImageReadError(name or path, "unreadable", f"{link}a folder, not followed")
        return name or str(path), size, size > 0 and is_dicom(path), path
    data = bytes(source) if isinstance(source, bytes | bytearray | memoryview) else source.read()
    label = name or UPLOAD_NAME
    dicom = Path(label).suffix.lower() in DICOM_EXTENSIONS or _dicom_magic(data[:132])
    return label, len(data), dicom, io.BytesIO(data)


def _head(opened: object) -> bytes:
    """The first 8 bytes of an opened source (a path or a stream)."""
    if isinstance(opened, Path):
        with open(opened, "rb") as handle:
            return handle.read(8)
    opened.seek(0)  # type: ignore[attr-defined]
    return opened.read(8)  # type: ignore[attr-defined]


def decode_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
    name: str | None = None,
) -> DecodedImage:
    """Decode one file (a path, or its bytes); raise :class:`ImageReadError` naming the file
    (``name``, else the path, else ``<upload>``) and the reason.

    ``draft_size`` lets JPEG decoding skip resolution it does not need (DCT scaling),
    keeping at least that many pixels on the shorter side; use it only where the image
    is resized afterwards (the cache), never where exact pixels matter (the audit).
    ``name``'s suffix marks bytes as DICOM (``.dcm``/``.dicom``), as a path's does.
    """
    path, size, dicom, opened = _open_source(source, name)
    if size == 0:
        raise ImageReadError(path, "empty", "zero-byte file")
    if dicom:
        return _read_dicom(path, opened, max_pixels)  # type: ignore[arg-type]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked just below
            with Image.open(opened) as image:  # type: ignore[arg-type]
                width, height = image.size
                if width * height > max_pixels:
                    raise _too_large(path, max_pixels, (width, height))
                file_format, mode = image.format or "unknown", image.mode
                if draft_size and file_format == "JPEG":
                    short = min(width, height)
                    scale = max(short // draft_size, 1)
                    image.draft("L", (max(width // scale, 1), max(height // scale, 1)))
                image.load()
                ImageOps.exif_transpose(image, in_place=True)  # no copy
                pixels = _pil_to_gray(image)
    except ImageReadError:
        raise
    except UnidentifiedImageError as exc:
        if _head(opened).startswith(IMAGE_SIGNATURES):
            raise ImageReadError(path, "corrupt", "image signature but undecodable header") from exc
        raise ImageReadError(path, "not_image", "not a recognised image format") from exc
    except Image.DecompressionBombError as exc:  # Pillow's hard limit (~179M pixels), before ours
        raise _too_large(path, max_pixels) from exc
    except OSError as exc:
        kind = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageReadError(path, kind, str(exc)) from exc
    except (SyntaxError, ValueError, EOFError, IndexError, struct.error) as exc:
        raise ImageReadError(path, "corrupt", str(exc) or type(exc).__name__) from exc
    if pixels.ndim != 2 or pixels.size == 0:
        raise ImageReadError(path, "corrupt", f"unexpected decoded shape {pixels.shape}")
    return DecodedImage(pixels, file_format, mode)


def read_grayscale(path: ImageSource, **kwargs: object) -> np.ndarray:
    """The pixels of :func:`decode_image` alone: ``uint8`` array ``(H, W)``."""
    return decode_image(path, **kwargs).pixels  # type: ignore[arg-type]
