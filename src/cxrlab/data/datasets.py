"""From a discovered dataset to training subsets and PyTorch datasets over the cache."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cxrlab.data.audit import read_manifest
from cxrlab.data.cache import ImageCache
from cxrlab.data.discover import DatasetIndex
from cxrlab.data.reader import IMAGE_EXTENSIONS
from cxrlab.data.split import stratified_split

Subsets = dict[str, list[tuple[str, str]]]


def excluded_paths(manifest: str | Path | None) -> set[str]:
    """Relative paths the audit marked ``excluded`` (empty without a manifest)."""
    if manifest is None:
        return set()
    return {path for path, status in read_manifest(manifest).items() if status == "excluded"}


def make_split(
    index: DatasetIndex,
    *,
    val_fraction: float = 0.15,
    seed: int = 0,
    manifest: str | Path | None = None,
) -> Subsets:
    """``{"train", "val", "test"}`` lists of ``(relative path, class)``.

    Files the manifest excludes, and files that are not images by extension, are left out.
    An existing ``val`` split is used as is; otherwise validation is carved from train,
    stratified and seeded. The test split is passed through untouched.
    """
    skip = excluded_paths(manifest)

    def usable(split: str) -> list[tuple[str, str]]:
        return [
            (index.relative(s.path), index.classes[s.label])
            for s in index.split(split)
            if s.path.suffix.lower() in IMAGE_EXTENSIONS and index.relative(s.path) not in skip
        ]

    train = usable("train")
    subsets: Subsets = {}
    if "val" in index.splits:
        subsets["train"], subsets["val"] = train, usable("val")
    else:
        labels = np.array([index.classes.index(c) for _, c in train])
        train_pos, val_pos = stratified_split(labels, val_fraction, seed)
        subsets["train"] = [train[i] for i in train_pos]
        subsets["val"] = [train[i] for i in val_pos]
    if "test" in index.splits:
        subsets["test"] = usable("test")
    return subsets


class CachedImageDataset(Dataset):
    """Images of a cache, by row, as ``float32`` tensors ``(1, S, S)`` in 0..1 with their label."""

    def __init__(
        self,
        cache: ImageCache,
        rows: np.ndarray,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.cache = cache
        self.rows = np.asarray(rows, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def labels(self) -> np.ndarray:
        return self.cache.labels[self.rows]

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int]:
        row = self.rows[item]
        image = torch.from_numpy(np.array(self.cache.images[row])).unsqueeze(0).float().div_(255.0)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.cache.labels[row])


def rows_for(cache: ImageCache, items: list[tuple[str, str]]) -> np.ndarray:
    """Cache rows of the given ``(relative path, class)`` items, skipping undecodable ones."""
    position = {path: i for i, path in enumerate(cache.paths)}
    return np.array(
        [position[p] for p, _ in items if p in position and cache.ok[position[p]]], dtype=np.int64
    )
