"""Decode every file once and measure what the audit and the analysis need.

One pass over the dataset gives, per file: whether it decodes (and why not), its size,
format and mode, intensity statistics, the dark border around the film, a hash of the
decoded pixels (exact duplicates) and two small thumbnails (near duplicates).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from cxrlab.data.discover import DatasetIndex, Sample
from cxrlab.data.reader import DEFAULT_MAX_PIXELS, decode_image
from cxrlab.errors import ImageReadError
from cxrlab.progress import track

THUMB_SIZES = (16, 64)  # coarse search, fine verification
HIST_BINS = 64
DARK_LEVEL = 10  # a border row/column darker than this (mean, 0..255) counts as black border


@dataclass
class ImageRecord:
    """What one pass learns about one file. ``status`` is ``ok`` or the reader's error kind."""

    path: str  # the film's key (its path in its source's folder; NAME: for an added source)
    split: str
    label: int
    file_size: int
    source: str = ""
    status: str = "ok"
    error: str = ""
    file_format: str = ""
    mode: str = ""
    width: int = 0
    height: int = 0
    mean: float = float("nan")
    std: float = float("nan")
    border_fraction: float = float("nan")
    pixel_hash: str = ""
    histogram: np.ndarray | None = field(default=None, repr=False)
    thumbs: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def aspect(self) -> float:
        return self.width / self.height if self.height else float("nan")

    def row(self) -> dict[str, object]:
        """The scalar fields, for tables and CSV files."""
        data = asdict(self)
        data.pop("histogram")
        data.pop("thumbs")
        return data


def border_fraction(pixels: np.ndarray, level: int = DARK_LEVEL) -> float:
    """Share of the image area in dark rows/columns running in from the four edges."""
    height, width = pixels.shape
    rows, cols = pixels.mean(axis=1), pixels.mean(axis=0)

    def run(values: np.ndarray) -> int:
        dark = values < level
        return int(np.argmin(dark)) if not dark.all() else len(values)

    top, bottom = run(rows), run(rows[::-1])
    left, right = run(cols), run(cols[::-1])
    inner_h = max(height - top - bottom, 0)
    inner_w = max(width - left - right, 0)
    return 1.0 - (inner_h * inner_w) / float(height * width)


def thumbnail(pixels: np.ndarray, size: int) -> np.ndarray:
    """Square ``uint8`` thumbnail (aspect ratio not kept, so squashed copies still match)."""
    image = Image.fromarray(pixels)
    return np.asarray(image.resize((size, size), Image.Resampling.BOX), dtype=np.uint8)


def pixel_hash(pixels: np.ndarray) -> str:
    """Hash of the decoded pixels and their shape: equal for byte-different exact copies."""
    digest = hashlib.sha1(f"{pixels.shape}".encode())
    digest.update(np.ascontiguousarray(pixels).data)  # the buffer itself, not a copy
    return digest.hexdigest()


def scan_file(sample: Sample, key: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageRecord:
    """Measure one file (known by ``key``); never raises for a bad image (the record says what is
    wrong)."""
    path = sample.path
    try:
        size = path.stat().st_size
    except OSError:
        size = -1
    record = ImageRecord(
        path=key,
        split=sample.split,
        label=sample.label,
        file_size=size,
        source=sample.source,
    )
    try:
        decoded = decode_image(path, max_pixels=max_pixels)
    except ImageReadError as exc:
        record.status, record.error = exc.kind, exc.detail
        return record
    pixels = decoded.pixels
    record.file_format, record.mode = decoded.file_format, decoded.mode
    record.height, record.width = pixels.shape
    # From the 256 grey-level counts, not per-pixel float64 copies (8 bytes a pixel each)
    counts = np.asarray(Image.fromarray(pixels).histogram(), dtype=np.float64)
    levels = np.arange(256.0)
    mean = float(counts @ levels / counts.sum())
    record.mean, record.std = mean, float(np.sqrt(counts @ (levels - mean) ** 2 / counts.sum()))
    record.border_fraction = border_fraction(pixels)
    record.pixel_hash = pixel_hash(pixels)
    histogram = counts.reshape(HIST_BINS, -1).sum(axis=1).astype(np.float32)
    histogram /= histogram.sum()
    record.histogram = histogram
    record.thumbs = {size: thumbnail(pixels, size) for size in THUMB_SIZES}
    return record


def _scan_one(args: tuple[Sample, str, int]) -> ImageRecord:
    return scan_file(*args)


def scan_dataset(
    index: DatasetIndex,
    *,
    workers: int = 2,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    description: str = "Scanning images",
) -> list[ImageRecord]:
    """Scan every file of ``index`` (in order) with a progress bar and ``workers`` processes."""
    jobs = [(sample, index.key(sample), max_pixels) for sample in index.samples]
    if workers <= 1 or len(jobs) < 64:
        results = map(_scan_one, jobs)
        return list(track(results, total=len(jobs), description=description))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = pool.map(_scan_one, jobs, chunksize=64)
        return list(track(results, total=len(jobs), description=description))


def most_common_size(sizes: Counter[tuple[int, int]]) -> tuple[tuple[int, int], int]:
    """The most frequent (width, height) in a non-empty count, and how often; ties: larger area."""
    return max(sizes.items(), key=lambda item: (item[1], item[0][0] * item[0][1], item[0]))
