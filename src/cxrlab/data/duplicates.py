"""Exact and near-duplicate images, within and across splits.

* Exact duplicates share a hash of their *decoded* pixels, so a PNG copy of a JPEG is found.
* Near duplicates survive re-encoding, resizing and squashing: images are compared by the
  normalised cross-correlation (NCC, Pearson correlation of pixels) of square thumbnails.
  A coarse 16x16 pass finds candidates (NCC >= ``COARSE_THRESHOLD``), a 64x64 pass confirms
  them (NCC >= ``threshold``, default 0.98).

Why not a perceptual hash: at 8x8 most chest films look alike (a dHash flags thousands of
pairs of different patients). On the real Kaggle data the 64x64 NCC of different films
reaches 0.97 at its 99.999th percentile while re-encoded or resized copies stay above 0.99;
``benchmarks/data_audit.py`` measures recall on synthetic copies and the false-positive rate.

The audit groups the pairs into :class:`~cxrlab.data.audit_records.DuplicateGroup` records
(what ``audit.json`` holds), where ``DEFAULT_THRESHOLD`` is defined too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxrlab.data.audit_records import DEFAULT_THRESHOLD
from cxrlab.data.scan import ImageRecord

COARSE_SIZE, FINE_SIZE = 16, 64
COARSE_THRESHOLD = 0.95  # real copies score >= 0.998 at 16x16 on the Kaggle data


@dataclass(frozen=True)
class DuplicatePair:
    """Two records (indices into the record list) that are copies of one image."""

    first: int
    second: int
    similarity: float  # 64x64 NCC; 1.0 for exact copies
    exact: bool


def normalised(thumbs: np.ndarray) -> np.ndarray:
    """Rows of zero mean and unit norm, so that a dot product is the NCC."""
    rows = thumbs.reshape(len(thumbs), -1).astype(np.float32)
    rows -= rows.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-6)


def exact_pairs(records: list[ImageRecord]) -> list[DuplicatePair]:
    """Pairs of readable records with identical decoded pixels (each member paired with the
    first)."""
    first_seen: dict[str, int] = {}
    pairs = []
    for i, record in enumerate(records):
        if not record.ok:
            continue
        j = first_seen.setdefault(record.pixel_hash, i)
        if j != i:
            pairs.append(DuplicatePair(j, i, 1.0, True))
    return pairs


def near_pairs(
    records: list[ImageRecord], threshold: float = DEFAULT_THRESHOLD, block: int = 2048
) -> list[DuplicatePair]:
    """Pairs of readable, not pixel-identical records whose 64x64 NCC is at least ``threshold``."""
    ok = [i for i, record in enumerate(records) if record.ok]
    if len(ok) < 2:
        return []
    coarse = normalised(np.stack([records[i].thumbs[COARSE_SIZE] for i in ok]))
    fine = normalised(np.stack([records[i].thumbs[FINE_SIZE] for i in ok]))
    pairs = []
    for start in range(0, len(ok), block):
        sims = coarse[start : start + block] @ coarse.T
        rows, cols = np.nonzero(sims >= COARSE_THRESHOLD)
        rows = rows + start
        keep = cols > rows
        rows, cols = rows[keep], cols[keep]
        if not len(rows):
            continue
        fine_sims = np.concatenate(
            [
                np.einsum("ij,ij->i", fine[rows[k : k + 4096]], fine[cols[k : k + 4096]])
                for k in range(0, len(rows), 4096)
            ]
        )
        confirmed = fine_sims >= threshold
        for a, b, sim in zip(rows[confirmed], cols[confirmed], fine_sims[confirmed]):
            i, j = ok[a], ok[b]
            if records[i].pixel_hash == records[j].pixel_hash:
                continue
            pairs.append(DuplicatePair(i, j, float(sim), False))
    return pairs


def group_pairs(n: int, pairs: list[DuplicatePair]) -> list[list[int]]:
    """Connected components (union-find) of the pairs: each group sorted, groups by first member."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for pair in pairs:
        a, b = find(pair.first), find(pair.second)
        if a != b:
            parent[max(a, b)] = min(a, b)
    members: dict[int, list[int]] = {}
    for pair in pairs:
        for i in (pair.first, pair.second):
            members.setdefault(find(i), [])
    for i in range(n):
        root = find(i)
        if root in members:
            members[root].append(i)
    return sorted((sorted(set(group)) for group in members.values()), key=lambda g: g[0])
