"""Decode-once cache: every image decoded, resized and stored in one memory-mapped array.

Training reads ``images.npy`` (``uint8``, shape ``(N, S, S)``) through ``numpy.memmap``, so
an epoch costs a memory copy instead of a JPEG decode, and resident memory stays flat as
the dataset grows (the OS pages rows in and out).

Keys: the cache folder is named by the dataset root, the image size, the resize mode and the
reader version, so a changed size gives a new cache. Inside, ``index.json`` keeps each file's
fingerprint (relative path, byte size, modification time); a file that changed, appeared or
vanished is re-decoded on the next build and every unchanged row is copied over.

Resize modes: ``squash`` stretches every image to S x S (the default: most of the Kaggle
data is already squashed to 224 x 224, so squashing the rest gives every class the same
format and removes the aspect-ratio shortcut); ``pad`` keeps the aspect ratio and pads
with black to a square.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cxrlab.data.discover import DatasetIndex
from cxrlab.data.reader import decode_image
from cxrlab.errors import CxrlabError, ImageReadError
from cxrlab.fileio import atomic_write_text, read_text
from cxrlab.progress import track

CACHE_VERSION = 1
RESIZE_MODES = ("squash", "pad")


@dataclass(frozen=True)
class CacheSpec:
    """How images are stored: side length in pixels and resize mode."""

    image_size: int = 224
    resize: str = "squash"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise CxrlabError(f"--resize: '{self.resize}' is not one of {', '.join(RESIZE_MODES)}")
        if not 16 <= self.image_size <= 2048:
            raise CxrlabError(f"--image-size: {self.image_size} is outside 16..2048")


def default_cache_root() -> Path:
    """``$CXRLAB_CACHE``, else ``~/.cache/cxrlab``."""
    return Path(os.environ.get("CXRLAB_CACHE", Path.home() / ".cache" / "cxrlab"))


def resize_square(pixels: np.ndarray, spec: CacheSpec) -> np.ndarray:
    """One ``uint8`` image to ``(S, S)`` by the spec's resize mode (antialiased bilinear)."""
    size = spec.image_size
    image = Image.fromarray(pixels)
    if spec.resize == "squash":
        return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    height, width = pixels.shape
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    canvas = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = np.asarray(
        image.resize((new_w, new_h), Image.Resampling.BILINEAR), dtype=np.uint8
    )
    return canvas


def load_square(path: Path, spec: CacheSpec) -> np.ndarray:
    """One file decoded and resized as the cache stores it; raises :class:`ImageReadError`."""
    return resize_square(decode_image(path, draft_size=spec.image_size).pixels, spec)


def _load_resized(args: tuple[Path, CacheSpec]) -> np.ndarray | str:
    try:
        return load_square(*args)
    except ImageReadError as exc:
        return str(exc)


def fingerprint(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


@dataclass
class ImageCache:
    """An opened cache: ``images[i]`` is the ``(S, S)`` image of ``paths[i]``."""

    folder: Path
    spec: CacheSpec
    paths: list[str]
    labels: np.ndarray
    splits: list[str]
    ok: np.ndarray  # False where the file could not be decoded (its row is black)
    errors: dict[str, str]
    images: np.ndarray  # read-only memmap
    rebuilt: int  # how many rows were decoded in the last build (0 = fully reused)

    def rows(self, split: str, exclude: set[str] | None = None) -> np.ndarray:
        """Indices of decodable rows of ``split``, minus the relative paths in ``exclude``."""
        exclude = exclude or set()
        return np.array(
            [
                i
                for i, (path, name) in enumerate(zip(self.paths, self.splits))
                if name == split and self.ok[i] and path not in exclude
            ],
            dtype=np.int64,
        )


def cache_folder(index: DatasetIndex, spec: CacheSpec, cache_root: Path | None = None) -> Path:
    root_key = hashlib.sha1(os.fsencode(index.root)).hexdigest()[:10]  # even an undecodable name
    name = f"{index.root.name}-{root_key}-{spec.image_size}px-{spec.resize}-v{CACHE_VERSION}"
    return (cache_root or default_cache_root()) / name


def build_cache(
    index: DatasetIndex,
    spec: CacheSpec | None = None,
    *,
    cache_root: Path | None = None,
    workers: int = 2,
    progress: bool = True,
) -> ImageCache:
    """Open the cache of ``index``, decoding only the files that are new or changed."""
    spec = spec or CacheSpec()
    folder = cache_folder(index, spec, cache_root)
    folder.mkdir(parents=True, exist_ok=True)
    index_file, images_file = folder / "index.json", folder / "images.npy"
    paths = [index.relative(s.path) for s in index.samples]
    prints = [list(fingerprint(s.path)) for s in index.samples]

    old_rows: dict[tuple[str, int, int], int] = {}
    old_meta: dict = {}
    if index_file.is_file() and images_file.is_file():
        try:
            old_meta = json.loads(read_text(index_file))
            old_rows = {
                (p, *fp): i
                for i, (p, fp) in enumerate(zip(old_meta["paths"], old_meta["fingerprints"]))
            }
        except (ValueError, KeyError):
            old_meta, old_rows = {}, {}
    sources = [old_rows.get((p, *fp)) for p, fp in zip(paths, prints)]
    unchanged = (
        old_meta.get("paths") == paths and all(s == i for i, s in enumerate(sources))
    )
    if unchanged:
        errors = old_meta.get("errors", {})
        rebuilt = 0
    else:
        old_images = np.load(images_file, mmap_mode="r") if old_rows else None
        old_errors = old_meta.get("errors", {})
        size = spec.image_size
        tmp = folder / "images.tmp.npy"
        images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size))
        errors = {}
        todo = []
        for i, source in enumerate(sources):
            if source is not None and old_images is not None:
                images[i] = old_images[source]
                if paths[i] in old_errors:
                    errors[paths[i]] = old_errors[paths[i]]
            else:
                todo.append(i)
        jobs = [(index.samples[i].path, spec) for i in todo]
        desc = f"Caching {len(todo)} images at {size}px"
        if workers > 1 and len(jobs) >= 64:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                results = track(pool.map(_load_resized, jobs, chunksize=32), total=len(jobs), description=desc, enabled=progress)
                _store(images, todo, results, paths, errors)
        else:
            results = track(map(_load_resized, jobs), total=len(jobs), description=desc, enabled=progress)
            _store(images, todo, results, paths, errors)
        images.flush()
        del images, old_images
        os.replace(tmp, images_file)
        meta = {"spec": asdict(spec), "version": CACHE_VERSION, "paths": paths, "fingerprints": prints, "errors": errors}
        atomic_write_text(index_file, json.dumps(meta))
        rebuilt = len(todo)
    return ImageCache(
        folder=folder,
        spec=spec,
        paths=paths,
        labels=np.array([s.label for s in index.samples], dtype=np.int64),
        splits=[s.split for s in index.samples],
        ok=np.array([p not in errors for p in paths], dtype=bool),
        errors=errors,
        images=np.load(images_file, mmap_mode="r"),
        rebuilt=rebuilt,
    )


def _store(images: np.ndarray, todo: list[int], results, paths: list[str], errors: dict[str, str]) -> None:
    for i, result in zip(todo, results):
        if isinstance(result, str):
            errors[paths[i]] = result
        else:
            images[i] = result
