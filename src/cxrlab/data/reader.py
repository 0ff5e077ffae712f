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
  that bone is bright, as on every other film. Multi-frame files give their first frame.
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
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cxrlab.errors import ImageReadError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"})
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*", b"GIF8")
DEFAULT_MAX_PIXELS = 80_000_000  # ~9000 x 9000; the largest real CXR detectors are ~4300 x 4300
DICOM_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
UPLOAD_NAME = "<upload>"  # the name shown for bytes given without one

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


def scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Linearly map an array's min..max onto 0..255 (a constant image becomes all zeros)."""
    values = np.asarray(values, dtype=np.float64)
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    if not np.isfinite(low) or not np.isfinite(high) or high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - low) * (255.0 / (high - low))
    return np.ascontiguousarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def _too_large(
    path: object, max_pixels: int, size: tuple[int, int] | None = None
) -> ImageReadError:
    """The error for a file above ``max_pixels``, with its size (width, height) when known."""
    what = f"{size[0]}x{size[1]} pixels" if size else "the image size"
    detail = f"{what} exceeds the decompression-bomb limit of {max_pixels} pixels"
    return ImageReadError(path, "too_large", detail)


def _read_dicom(path: object, source: Path | BinaryIO, max_pixels: int) -> DecodedImage:
    """``path``: the name in errors; ``source``: the file, or its bytes as a binary stream."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        dataset = pydicom.dcmread(source)
    except InvalidDicomError as exc:
        raise ImageReadError(path, "not_image", f"not a valid DICOM file ({exc})") from exc
    except Exception as exc:  # pydicom raises many types on truncated files
        raise ImageReadError(path, "corrupt", f"cannot parse DICOM ({exc})") from exc
    rows, cols = int(getattr(dataset, "Rows", 0)), int(getattr(dataset, "Columns", 0))
    if rows * cols > max_pixels:
        raise _too_large(path, max_pixels, (cols, rows))
    if not any(tag in dataset for tag in DICOM_PIXEL_TAGS):
        raise ImageReadError(path, "no_pixels", "a DICOM file without pixel data")
    try:
        pixels = dataset.pixel_array
    except Exception as exc:
        raise ImageReadError(path, "corrupt", f"cannot decode DICOM pixel data ({exc})") from exc
    if int(getattr(dataset, "NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    photometric = str(getattr(dataset, "PhotometricInterpretation", "MONOCHROME2"))
    if pixels.ndim == 3:  # colour DICOM (RGB): luma like Pillow's "L"
        pixels = pixels[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    else:
        pixels = apply_voi_lut(apply_modality_lut(pixels, dataset), dataset)
    gray = scale_to_uint8(pixels)
    if photometric == "MONOCHROME1":
        gray = 255 - gray
    return DecodedImage(np.ascontiguousarray(gray), "DICOM", photometric)


def _pil_to_gray(image: Image.Image) -> np.ndarray:
    if image.mode in {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}:
        return scale_to_uint8(np.asarray(image))
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
            raise ImageReadError(name or path, "unreadable", exc.strerror or str(exc)) from exc
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
                image = ImageOps.exif_transpose(image)
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
