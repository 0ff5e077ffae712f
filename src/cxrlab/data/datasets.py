"""From a discovered dataset to training subsets and PyTorch datasets over the cache."""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    test_fraction: float = 0.2,
    test_seed: int = 0,
    train_fraction: float = 1.0,
) -> Subsets:
    """``{"train", "val", "test"}`` lists of ``(key, class)``, source by source (the main data
    first).

    Files the manifest excludes, and files that are not images by extension, are left out.
    An existing ``val`` split is used as is; otherwise validation is carved from train,
    stratified and seeded. A test split is passed through untouched. An added source without
    its own test split gets one: ``test_fraction`` of each class held out, drawn with
    ``test_seed`` (fixed, so runs of every seed test on the same films); the main data keeps
    what it has. ``train_fraction`` < 1 keeps that share of each added source's remaining films
    (stratified, drawn with ``seed``) for training and validation: a learning curve over the
    added films, on a fixed test part (0: the source is only tested on).
    """
    skip = excluded_paths(manifest)
    subsets: Subsets = {"train": [], "val": []}
    tests: list[tuple[str, str]] = []
    for source in index.source_roots:

        def usable(split: str, source: str = source) -> list[tuple[str, str]]:
            return [
                (key, index.classes[s.label])
                for s in index.split(split)
                if (s.source or index.main_source) == source
                and s.path.suffix.lower() in IMAGE_EXTENSIONS
                and (key := index.key(s)) not in skip
            ]

        splits = {s.split for s in index.samples if (s.source or index.main_source) == source}
        train = usable("train")
        if "test" in splits:
            tests += usable("test")
        elif source != index.main_source:
            train, held = _carve(train, index.classes, test_fraction, test_seed, source, "test")
            tests += held
        if source != index.main_source and train_fraction < 1:
            train = (
                _carve(train, index.classes, train_fraction, seed, source, "train")[1]
                if train_fraction > 0
                else []
            )
        if not train:
            continue
        if "val" in splits:
            subsets["train"] += train
            subsets["val"] += usable("val")
        else:
            train, val = _carve(train, index.classes, val_fraction, seed, source, "val")
            subsets["train"] += train
            subsets["val"] += val
    if tests or "test" in index.splits:
        subsets["test"] = tests
    return subsets


def _carve(
    items: list[tuple[str, str]],
    classes: list[str],
    fraction: float,
    seed: int,
    source: str,
    part: str,
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``items`` split into (rest, a stratified seeded ``fraction``) for one source's ``part``."""
    setting = {"val": "val_fraction", "test": "source_test_fraction"}.get(
        part, "source_train_fraction"
    )
    labels = np.array([classes.index(c) for _, c in items])
    rest, held = stratified_split(labels, fraction, seed, setting=setting, what=f"{source}'s")
    return [items[i] for i in rest], [items[i] for i in held]


class CachedImageDataset(Dataset):
    """Images of a cache, by row, as ``float32`` tensors ``(1, S, S)`` in 0..1 with their label."""

    def __init__(
        self,
        cache: ImageCache,
        rows: np.ndarray | Sequence[int],
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
