"""Frozen mode, fast path: compute the pretrained backbone's features once, train the head on them.

The backbone is unchanged, so its output for an image never changes: features are computed
in one pass over the cache (no augmentation, eval mode) and stored beside the image cache,
in the folder of the cache's generation (a new one whenever any cached image changes, so
features never outlive the pixels they came from), keyed by the model, one row per cached
image: every run of one model on one cache (any split, seed or share of a source) reads them.
The new linear head is then trained on the feature matrix by the same Lightning loop as every
other run (:mod:`cxrlab.training.run`), which takes seconds instead of a forward pass through
the CNN per epoch.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch.utils.data import DataLoader

from cxrlab.data.cache import ImageCache
from cxrlab.data.datasets import CachedImageDataset
from cxrlab.fileio import atomic_open
from cxrlab.models.registry import CxrClassifier, head_inputs
from cxrlab.progress import track


@torch.no_grad()
def extract_features(
    model: CxrClassifier,
    dataset: CachedImageDataset,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """The inputs of ``model.head`` for every image of ``dataset``: ``float32 (n, d)``."""
    model = model.to(device).eval()
    # a generator of its own: the loader's seed is drawn from it, not from torch's, so that a run
    # that computes the features trains as one that reads them from the cache
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator())
    with head_inputs(model) as captured:
        for images, _ in track(loader, total=len(loader), description=f"Features {model.arch}"):
            model(images.to(device))
    return (
        torch.cat(captured).numpy().astype(np.float32) if captured else np.zeros((0, 0), np.float32)
    )


def cached_features(
    model: CxrClassifier,
    cache: ImageCache,
    rows: np.ndarray,
    model_key: str,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """:func:`extract_features` for cache ``rows``, memoised in the cache folder: the features of
    every decodable row of the cache are computed once per model and cache generation, so runs
    that differ in their split, seed or share of a source reuse them."""
    digest = hashlib.sha1(model_key.encode() + b"|all-rows").hexdigest()[:16]
    path = cache.folder / "features" / cache.generation / f"{digest}.npy"
    rows = np.asarray(rows, dtype=np.int64)
    if path.is_file():
        return np.load(path, mmap_mode="r")[rows].copy()
    usable = np.flatnonzero(cache.ok)
    features = extract_features(
        model,
        CachedImageDataset(cache, usable),
        batch_size=batch_size,
        device=device,
    )
    every = np.zeros((len(cache.paths), features.shape[1]), dtype=np.float32)
    every[usable] = features
    with atomic_open(path, "wb") as handle:
        np.save(handle, every)
    return every[rows].copy()
