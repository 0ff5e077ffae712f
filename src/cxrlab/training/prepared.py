"""A dataset opened for a run: cached, split, its unreadable files set aside; and a model's
logits on one of its subsets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn

from cxrlab.config import RunConfig
from cxrlab.data.cache import CacheSpec, ImageCache, build_cache
from cxrlab.data.datasets import CachedImageDataset, make_split, rows_for
from cxrlab.data.discover import DatasetIndex, discover_sources
from cxrlab.data.split import load_split
from cxrlab.errors import CxrlabError
from cxrlab.evaluation.predict import (
    predict_logits,
)
from cxrlab.models.registry import CxrClassifier


@dataclass
class PreparedData:
    """A dataset opened for training: its cache, subsets and cache rows per subset."""

    index: DatasetIndex
    cache: ImageCache
    subsets: dict[str, list[tuple[str, str]]]
    rows: dict[str, np.ndarray]
    skipped: dict[str, str] = field(
        default_factory=dict
    )  # files of the split that could not be decoded: why

    @property
    def classes(self) -> list[str]:
        return list(self.index.classes)

    def labels(self, subset: str) -> np.ndarray:
        return self.cache.labels[self.rows[subset]]

    def keys(self, subset: str) -> list[str]:
        """The films of a subset by key, in row order."""
        return [self.cache.paths[r] for r in self.rows[subset]]

    def sources(self, subset: str) -> list[str]:
        """The source of each film of a subset, in row order."""
        return [self.index.source_of(key) for key in self.keys(subset)]

    def source_counts(self) -> dict[str, dict[str, dict[str, int]]]:
        """``{source: {subset: {class: films}}}``: what each source gave to each subset."""
        table: dict[str, dict[str, dict[str, int]]] = {name: {} for name in self.index.source_roots}
        for subset in self.rows:
            for source, label in zip(self.sources(subset), self.labels(subset).tolist()):
                row = table[source].setdefault(subset, dict.fromkeys(self.classes, 0))
                row[self.classes[label]] += 1
        return table

    def source_ids(self, subset: str) -> np.ndarray:
        """The source of each film of a subset as an index into ``index.source_roots``."""
        names = list(self.index.source_roots)
        return np.array([names.index(s) for s in self.sources(subset)], dtype=np.int64)


def prepare_data(
    data: Path,
    config: RunConfig,
    *,
    split_file: Path | None = None,
    cache_root: Path | None = None,
    workers: int = 2,
) -> PreparedData:
    """Discover, cache and split ``data``; reuse ``split_file`` when it exists.

    Files that cannot be decoded are taken out of the subsets (and so out of ``split.csv``) and
    listed in ``skipped`` with the reason, so the saved split and every count agree.
    """
    index = discover_sources(data, config.sources, source_name=config.source_name)
    index.require("train")
    cache = build_cache(
        index,
        CacheSpec(config.image_size, config.resize, config.crop),
        cache_root=cache_root,
        workers=workers,
    )
    if split_file is not None and split_file.is_file():
        subsets = load_split(split_file)
    else:
        subsets = make_split(
            index,
            val_fraction=config.val_fraction,
            seed=config.seed,
            manifest=config.manifest,
            test_fraction=config.source_test_fraction,
            test_seed=config.source_split_seed,
            train_fraction=config.source_train_fraction,
        )
    usable = {path for path, ok in zip(cache.paths, cache.ok) if ok}
    skipped = {
        path: cache.errors.get(path, f"{path}: no longer in the dataset")
        for items in subsets.values()
        for path, _ in items
        if path not in usable
    }
    subsets = {
        name: [item for item in items if item[0] in usable] for name, items in subsets.items()
    }
    rows = {name: rows_for(cache, items) for name, items in subsets.items()}
    for name in ("train", "val"):
        present = set(cache.labels[rows.get(name, np.zeros(0, np.int64))].tolist())
        missing = [c for k, c in enumerate(index.classes) if k not in present]
        if missing:
            raise CxrlabError(
                f"{data}: the {name} subset has no usable images of class {', '.join(missing)}"
            )
    return PreparedData(index, cache, subsets, rows, skipped)


def prepare_run_data(
    data: Path,
    config: RunConfig,
    split_file: Path,
    classes: list[str],
    *,
    cache_root: Path | None = None,
    workers: int = 2,
) -> PreparedData:
    """A finished run's data again, for a step after training (calibrate, the OOD statistics):
    ``data`` cached at the run's size, split by the run's own ``split_file``; an error when its
    classes are not the run's ``classes``."""
    prepared = prepare_data(
        data,
        config,
        split_file=split_file,
        cache_root=cache_root,
        workers=workers,
    )
    if prepared.classes != list(classes):
        raise CxrlabError(
            f"{data}: classes {prepared.classes} are not the run's {list(classes)} "
            "(is this the run's dataset?)"
        )
    return prepared


def subset_logits(
    model: CxrClassifier | torch.nn.Module,
    prepared: PreparedData,
    name: str,
    *,
    feats: dict[str, np.ndarray] | None,
    device: torch.device,
    batch_size: int,
) -> np.ndarray:
    """The model's logits for the films of one subset (frozen mode: its head on the cached
    features; otherwise ``model`` may be wrapped, e.g. for test-time augmentation)."""
    if feats is not None:
        with torch.no_grad():
            head = cast(nn.Module, model.head)
            return head(torch.from_numpy(feats[name])).double().numpy()
    dataset = CachedImageDataset(prepared.cache, prepared.rows[name])
    return predict_logits(
        model,
        dataset,
        batch_size=batch_size,
        device=device,
        description=f"Predicting {name}",
    )
