"""Validation split, saved split files, class weights and class-balanced sampling.

The validation split is carved from train, stratified by class and seeded; the test split
is never used to choose anything. A split file (CSV: ``path,class,subset``) is written into
each run folder so that the run can be reproduced and audited.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import WeightedRandomSampler

from cxrlab.errors import CxrlabError
from cxrlab.fileio import atomic_open, csv_dict_reader, csv_writer, open_text


def stratified_split(
    labels: np.ndarray, val_fraction: float = 0.15, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into ``labels``) of the train and validation parts, stratified and seeded."""
    labels = np.asarray(labels)
    if not 0.0 < val_fraction < 1.0:
        raise CxrlabError(f"--val-fraction: {val_fraction} must be between 0 and 1")
    counts = np.bincount(labels)
    present = counts[counts > 0]
    n_val = int(round(val_fraction * len(labels)))
    if present.min() < 2 or n_val < len(present) or len(labels) - n_val < len(present):
        raise CxrlabError(
            f"--val-fraction: cannot carve a stratified {val_fraction:.0%} validation split from "
            f"{len(labels)} images with class counts {counts.tolist()} (need >= 2 per class)"
        )
    positions = np.arange(len(labels))
    train, val = train_test_split(
        positions, test_size=n_val, stratify=labels, random_state=seed, shuffle=True
    )
    return np.sort(train), np.sort(val)


def save_split(path: Path, rows: dict[str, list[tuple[str, str]]]) -> None:
    """Write ``{subset: [(relative path, class), ...]}`` as CSV ``path,class,subset``."""
    with atomic_open(path, newline="") as handle:
        writer = csv_writer(handle)
        writer.writerow(["path", "class", "subset"])
        for subset, items in rows.items():
            writer.writerows((p, c, subset) for p, c in items)


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
            weights, num_samples, replacement=True, generator=torch.Generator().manual_seed(seed)
        )

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed + 1_000_003 * epoch)


def balanced_sampler(labels: np.ndarray, seed: int = 0) -> EpochSeededSampler:
    """Draw each class equally often per epoch (with replacement), seeded by (seed, epoch)."""
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    weights = 1.0 / counts[labels]
    return EpochSeededSampler(torch.as_tensor(weights, dtype=torch.double), len(labels), seed)
