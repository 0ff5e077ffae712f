"""Decode-once cache: every image decoded, resized and stored in one memory-mapped array.

Training reads the array (``uint8``, shape ``(N, S, S)``) through ``numpy.memmap``, so an
epoch costs a memory copy instead of a JPEG decode, and resident memory stays flat as the
dataset grows (the OS pages rows in and out).

Keys: the cache folder is named by the dataset root, the image size, the resize mode and the
layout version, so a changed size gives a new cache. Each file's fingerprint (relative path,
byte size, modification time) is kept; a file that changed, appeared or vanished is
re-decoded on the next build and every unchanged row is copied over.

On disk, one folder per cache::

    index.json             the committed generation: the array's file name, shape and byte
                           size, and per row the relative path, fingerprint and decode error
    images-<gen>.npy       that generation's array; <gen> is a fresh id on every update
    .lock                  fcntl lock held by every build
    features/              frozen-mode backbone features (cxrlab.training.frozen)

An update writes a new ``images-<gen>.npy`` beside the current one, flushes it to disk, then
commits it by writing ``index.json`` atomically (one rename), and only then deletes the older
arrays. The cache is therefore consistent after a kill at any moment: the index names either
the old array or the new one, both complete. Opening checks the named array against the
index (file present, byte size, shape); a mismatch is rebuilt from scratch, never served.
Concurrent builds of one cache wait on the lock, so the later one finds the earlier one's
result and reuses it.

Resize modes: ``squash`` stretches every image to S x S (the default: most of the Kaggle
data is already squashed to 224 x 224, so squashing the rest gives every class the same
format and removes the aspect-ratio shortcut); ``pad`` keeps the aspect ratio and pads
with black to a square.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cxrlab.data.discover import DatasetIndex
from cxrlab.data.reader import DecodedImage, ImageSource, decode_image
from cxrlab.errors import ConfigError, ImageReadError
from cxrlab.fileio import atomic_write_text, locked, read_text, reserve_space
from cxrlab.progress import track
from cxrlab.records import CROPS, RESIZE_MODES, Crop, ModelMeta, Resize

CACHE_VERSION = 2  # 2: generation arrays images-<gen>.npy named by index.json, .lock
INDEX, LOCK = "index.json", ".lock"


@dataclass(frozen=True)
class CacheSpec:
    """How images are stored: side length in pixels, resize mode, and crop (``lungs``: each film
    cut to its lung box by :func:`cxrlab.lungs.crop_to_lungs` before it is resized)."""

    image_size: int = 224
    resize: Resize = "squash"
    crop: Crop = "none"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ConfigError("resize", f"'{self.resize}' is not one of {', '.join(RESIZE_MODES)}")
        if self.crop not in CROPS:
            raise ConfigError("crop", f"'{self.crop}' is not one of {', '.join(CROPS)}")
        if not 16 <= self.image_size <= 2048:
            raise ConfigError("image_size", f"{self.image_size} is outside 16..2048")

    @classmethod
    def of_model(cls, meta: ModelMeta) -> CacheSpec:
        """The preprocessing a model was trained with, as its checkpoint (or ONNX metadata)
        carries it (the defaults of an older one: see :class:`~cxrlab.records.ModelMeta`)."""
        return cls(meta.image_size, meta.resize, meta.crop)


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


def crop_film(pixels: np.ndarray, spec: CacheSpec) -> np.ndarray:
    """A decoded film cut as the spec says (``lungs``: to its lung box), else as it is."""
    if spec.crop == "lungs":
        from cxrlab.lungs import crop_to_lungs, default_segmenter

        pixels, _ = crop_to_lungs(pixels, default_segmenter())
    return pixels


def draft_size(spec: CacheSpec) -> int:
    """The least side a film is decoded at for ``spec`` (twice the size for a crop)."""
    return spec.image_size * (2 if spec.crop != "none" else 1)


def to_square(pixels: np.ndarray, spec: CacheSpec) -> np.ndarray:
    """A decoded film as the spec stores it: cropped (:func:`crop_film`), then resized
    (:func:`resize_square`). The one preprocessing of every command that reads a film."""
    return resize_square(crop_film(pixels, spec), spec)


def decode_square(source: ImageSource, spec: CacheSpec, *, name: str | None = None) -> DecodedImage:
    """One file (a path, or its bytes with the ``name`` to show) decoded and made square as the
    cache stores it (:func:`to_square`), with the file's own format and mode; raises
    :class:`ImageReadError`."""
    decoded = decode_image(source, draft_size=draft_size(spec), name=name)
    return DecodedImage(to_square(decoded.pixels, spec), decoded.file_format, decoded.mode)


def load_square(source: ImageSource, spec: CacheSpec, *, name: str | None = None) -> np.ndarray:
    """The pixels of :func:`decode_square`: ``uint8 (S, S)``."""
    return decode_square(source, spec, name=name).pixels


def read_squares(
    files: Sequence[Path],
    spec: CacheSpec,
    errors: dict[str, str],
    *,
    description: str = "Reading",
) -> Iterator[tuple[Path, np.ndarray]]:
    """Each readable file with its square (:func:`load_square`), in order, as it is read; a file
    that cannot be decoded is skipped and its reason put in ``errors``."""
    for path in track(files, total=len(files), description=description):
        try:
            square = load_square(path, spec)
        except ImageReadError as exc:
            errors[str(path)] = str(exc)
            continue
        yield path, square


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


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
    generation: str = (
        ""  # changes whenever any row changes: what is derived from the rows is keyed by it
    )

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
    """The cache of a dataset at one size: named by its folder (every source's name and folder,
    for a set of several sources), size, resize mode and layout version."""
    key = os.fsencode(index.root)  # even an undecodable name
    label = index.root.name
    if index.is_multi_source:
        key = b"\0".join(
            os.fsencode(name) + b"=" + os.fsencode(root)
            for name, root in index.source_roots.items()
        )
        label = f"{label}+{len(index.source_roots) - 1}"
    root_key = hashlib.sha1(key).hexdigest()[:10]
    crop = "" if spec.crop == "none" else f"-{spec.crop}-{_segmenter_key()}"
    name = f"{label}-{root_key}-{spec.image_size}px-{spec.resize}{crop}-v{CACHE_VERSION}"
    return (cache_root or default_cache_root()) / name


def _segmenter_key() -> str:
    """A short hash of the lung segmenter's weights file: a new segmenter, a new cropped cache."""
    from cxrlab.lungs import segmenter_file

    return hashlib.sha1(segmenter_file().read_bytes()).hexdigest()[:8]


def build_cache(
    index: DatasetIndex,
    spec: CacheSpec | None = None,
    *,
    cache_root: Path | None = None,
    workers: int = 2,
) -> ImageCache:
    """Open the cache of ``index``, decoding only the files that are new or changed."""
    spec = spec or CacheSpec()
    folder = cache_folder(index, spec, cache_root)
    paths = [index.key(s) for s in index.samples]
    prints = [list(fingerprint(s.path)) for s in index.samples]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            "cache_root",
            f"{folder}: cannot create the cache folder ({exc.strerror}); choose a writable one",
        ) from None
    with locked(folder / LOCK):
        meta = _read_index(folder)
        images = _open_images(folder, meta, spec)
        if images is not None and meta["paths"] == paths and meta["fingerprints"] == prints:
            rebuilt = 0
        else:
            old = (meta, images) if images is not None else None
            meta, images, rebuilt = _write_generation(
                folder, index, spec, paths, prints, old, workers
            )
        _remove_stale(folder, keep=meta["images"])
    errors = meta["errors"]
    return ImageCache(
        folder=folder,
        spec=spec,
        paths=paths,
        labels=np.array([s.label for s in index.samples], dtype=np.int64),
        splits=[s.split for s in index.samples],
        ok=np.array([p not in errors for p in paths], dtype=bool),
        errors=errors,
        images=images,
        rebuilt=rebuilt,
        generation=Path(meta["images"]).stem,
    )


def _read_index(folder: Path) -> dict:
    """The committed index, or ``{}`` when it is missing or unreadable."""
    try:
        meta = json.loads(read_text(folder / INDEX))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _open_images(folder: Path, meta: dict, spec: CacheSpec) -> np.ndarray | None:
    """The array ``meta`` names, read-only memory-mapped, or None unless it is exactly what the
    index says."""
    try:
        shape = [len(meta["paths"]), spec.image_size, spec.image_size]
        images_file = folder / meta["images"]
        if (
            meta["version"] != CACHE_VERSION
            or meta["shape"] != shape
            or len(meta["fingerprints"]) != shape[0]
            or images_file.stat().st_size != meta["bytes"]
        ):
            return None
        images = np.load(images_file, mmap_mode="r")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return images if list(images.shape) == shape and images.dtype == np.uint8 else None


def _write_generation(
    folder: Path,
    index: DatasetIndex,
    spec: CacheSpec,
    paths: list[str],
    prints: list[list[int]],
    old: tuple[dict, np.ndarray] | None,
    workers: int,
) -> tuple[dict, np.ndarray, int]:
    """Write a new generation (rows of ``old`` reused where the fingerprint matches) and commit it
    by writing the index; return the new index, its array (read-only) and how many rows were
    decoded."""
    old_meta, old_images = old or ({"paths": [], "fingerprints": [], "errors": {}}, None)
    old_rows = {
        (p, *fp): i for i, (p, fp) in enumerate(zip(old_meta["paths"], old_meta["fingerprints"]))
    }
    size = spec.image_size
    images_file = folder / f"images-{uuid.uuid4().hex}.npy"
    images = np.lib.format.open_memmap(
        images_file, mode="w+", dtype=np.uint8, shape=(len(paths), size, size)
    )
    try:  # the blocks now: a full disk is one line here, not a SIGBUS while the map writes
        reserve_space(images_file)
    except BaseException:
        del images
        images_file.unlink(missing_ok=True)  # no orphan array
        raise
    errors: dict[str, str] = {}
    todo = []
    for i, (path, fp) in enumerate(zip(paths, prints)):
        source = old_rows.get((path, *fp))
        if source is None:
            todo.append(i)
            continue
        assert old_images is not None  # a row to reuse comes from an old generation
        images[i] = old_images[source]
        if path in old_meta["errors"]:
            errors[path] = old_meta["errors"][path]
    jobs = [(index.samples[i].path, spec) for i in todo]
    desc = f"Caching {len(todo)} images at {size}px"
    if workers > 1 and len(jobs) >= 64:
        # a crop runs the lung segmenter (torch) in the workers: fresh processes with one thread
        # each, never forks of a parent whose torch threads may be running
        cropping = spec.crop != "none"
        pool_options: dict[str, Any] = (
            dict(mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread)
            if cropping
            else {}
        )
        with ProcessPoolExecutor(max_workers=workers, **pool_options) as pool:
            results = track(
                pool.map(_load_resized, jobs, chunksize=32),
                total=len(jobs),
                description=desc,
            )
            _store(images, todo, results, paths, errors)
    else:
        results = track(map(_load_resized, jobs), total=len(jobs), description=desc)
        _store(images, todo, results, paths, errors)
    images.flush()  # msync: on disk before the index names it
    del images
    meta = {
        "version": CACHE_VERSION,
        "spec": asdict(spec),
        "images": images_file.name,
        "shape": [len(paths), size, size],
        "bytes": images_file.stat().st_size,
        "paths": paths,
        "fingerprints": prints,
        "errors": errors,
    }
    atomic_write_text(folder / INDEX, json.dumps(meta))  # the commit: one atomic rename
    return meta, np.load(images_file, mmap_mode="r"), len(todo)


def _remove_stale(folder: Path, keep: str) -> None:
    """Delete arrays other than ``keep``, what was derived from them (``features/<generation>``)
    and index temporaries: older generations and what a killed build left. Called under the
    lock; readers keep their mapping of a deleted array."""
    for stale in [*folder.glob("images-*.npy"), *folder.glob(f".{INDEX}.*.tmp")]:
        if stale.name != keep:
            stale.unlink(missing_ok=True)
    for derived in folder.glob("features/*"):
        if derived.name != Path(keep).stem:
            shutil.rmtree(derived, ignore_errors=True)


def _store(
    images: np.ndarray,
    todo: list[int],
    results: Iterable[np.ndarray | str],
    paths: list[str],
    errors: dict[str, str],
) -> None:
    for i, result in zip(todo, results):
        if isinstance(result, str):
            errors[paths[i]] = result
        else:
            images[i] = result
