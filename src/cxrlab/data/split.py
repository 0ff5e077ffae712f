"""Validation split, saved split files, class weights and class-balanced sampling.

The validation split is carved from train, stratified by class and seeded; the test split
is never used to choose anything. A split file (CSV: ``path,class,subset``) is written into
each run folder so that the run can be reproduced and audited.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import WeightedRandomSampler

from cxrlab.errors import ConfigError, CxrlabError
from cxrlab.fileio import atomic_open, csv_dict_reader, csv_writer, open_text


def stratified_split(
    labels: np.ndarray,
    val_fraction: float = 0.15,
    seed: int = 0,
    *,
    setting: str = "val_fraction",
    what: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into ``labels``) of the train and validation parts, stratified and seeded
    (``setting``, the fraction's field, and ``what``, e.g. a source's name, say whose split an
    error is about)."""
    labels = np.asarray(labels)
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(setting, f"{val_fraction} must be between 0 and 1")
    counts = np.bincount(labels) if len(labels) else np.zeros(1, np.int64)
    present = counts[counts > 0]
    n_val = int(round(val_fraction * len(labels)))
    if (
        not len(present)
        or present.min() < 2
        or n_val < len(present)
        or len(labels) - n_val < len(present)
    ):
        part = {"val_fraction": "validation", "source_test_fraction": "test"}.get(
            setting, "training"
        )
        raise ConfigError(
            setting,
            f"cannot carve a stratified {val_fraction:.0%} {part} split from "
            f"{len(labels)} {what + ' ' if what else ''}images with class counts "
            f"{counts.tolist()} (need >= 2 per class)",
        )
    positions = np.arange(len(labels))
    train, val = train_test_split(
        positions, test_size=n_val, stratify=labels, random_state=seed, shuffle=True
    )
    return np.sort(train), np.sort(val)


def save_split(
    path: Path,
    rows: dict[str, list[tuple[str, str]]],
    source_of: Callable[[str], str] | None = None,
) -> None:
    """Write ``{subset: [(key, class), ...]}`` as CSV ``path,class,subset,source`` (the key is the
    path in the main data, ``NAME:path`` in an added source; ``source_of`` names a key's source,
    the ``source`` column is left out without it)."""
    with atomic_open(path, newline="") as handle:
        writer = csv_writer(handle)
        writer.writerow(["path", "class", "subset", *(["source"] if source_of else [])])
        for subset, items in rows.items():
            writer.writerows(
                (p, c, subset, *([source_of(p)] if source_of else [])) for p, c in items
            )


def load_split(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Read a split file written by :func:`save_split`."""
    if not path.is_file():
        raise CxrlabError(f"{path}: split file not found")
    subsets: dict[str, list[tuple[str, str]]] = {}
    with open_text(path) as handle:
        for row in csv_dict_reader(handle):
            subsets.setdefault(row["subset"], []).append((row["path"], row["class"]))
    return subsets


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """'Balanced' weights ``n / (k * count_c)`` for a weighted loss (0 for an absent class)."""
    counts = np.bincount(np.asarray(labels), minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


class EpochSeededSampler(WeightedRandomSampler):
    """A weighted sampler whose draws depend on (seed, epoch) alone: Lightning calls
    ``set_epoch`` before each epoch, so a run resumed at epoch k draws what it would have drawn."""

    def __init__(self, weights: torch.Tensor, num_samples: int, seed: int) -> None:
        self.seed = seed
        super().__init__(
            weights,  # pyright: ignore[reportArgumentType]  # torch types it Sequence[float]; a tensor is what it keeps
            num_samples,
            replacement=True,
            generator=torch.Generator().manual_seed(seed),
        )

    def set_epoch(self, epoch: int) -> None:
        assert self.generator is not None  # given in __init__
        self.generator.manual_seed(self.seed + 1_000_003 * epoch)


def balanced_sampler(
    labels: np.ndarray, seed: int = 0, sources: np.ndarray | None = None
) -> EpochSeededSampler:
    """Draw each class equally often per epoch (with replacement), seeded by (seed, epoch); with
    ``sources`` (a source index per film), also each source equally often within a class
    (:func:`source_balance_weights`)."""
    weights = (
        source_balance_weights(labels, sources)
        if sources is not None
        else 1.0 / np.bincount(np.asarray(labels))[np.asarray(labels)]
    )
    return EpochSeededSampler(torch.as_tensor(weights, dtype=torch.double), len(labels), seed)


def source_balance_weights(labels: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """Per-film sampling weights for ``--balance source``: every class present gets the same
    total weight, shared equally by the sources that hold it, and within a (source, class)
    cell every film weighs the same; so 271 films of a small source weigh as much as 1,266 of a
    large one in the same class. The weights sum to 1."""
    labels, sources = np.asarray(labels), np.asarray(sources)
    cells: dict[tuple[int, int], int] = {}
    for label, source in zip(labels.tolist(), sources.tolist()):
        cells[(label, source)] = cells.get((label, source), 0) + 1
    classes = sorted({label for label, _ in cells})
    sources_in = {k: sum(1 for label, _ in cells if label == k) for k in classes}
    share = np.array(
        [
            1.0 / (len(classes) * sources_in[label] * cells[(label, source)])
            for label, source in zip(labels.tolist(), sources.tolist())
        ]
    )
    return share
