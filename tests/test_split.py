from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxrlab.data.datasets import make_split
from cxrlab.data.discover import discover
from cxrlab.data.split import (
    balanced_sampler,
    class_weights,
    load_split,
    save_split,
    stratified_split,
)
from cxrlab.errors import CxrlabError

LABELS = np.array([0] * 20 + [1] * 100 + [2] * 280)


def test_stratified_split_keeps_class_shares() -> None:
    train, val = stratified_split(LABELS, 0.15, seed=0)
    assert len(val) == 60 and len(train) == 340
    assert set(train).isdisjoint(val) and len(set(train) | set(val)) == len(LABELS)
    assert np.bincount(LABELS[val]).tolist() == [3, 15, 42]


def test_split_is_reproducible_and_seed_dependent() -> None:
    a = stratified_split(LABELS, 0.15, seed=1)[1]
    b = stratified_split(LABELS, 0.15, seed=1)[1]
    c = stratified_split(LABELS, 0.15, seed=2)[1]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize(("labels", "fraction"), [([0, 0, 1, 1, 2], 0.4), ([0, 1] * 10, 1.5)])
def test_split_refuses_impossible_requests(labels: list[int], fraction: float) -> None:
    with pytest.raises(CxrlabError, match="val_fraction"):
        stratified_split(np.array(labels), fraction)


def test_class_weights_by_hand() -> None:
    weights = class_weights(np.array([0, 1, 1, 1]), 3)
    # n / (k * count): 4/(3*1), 4/(3*3), absent class -> 0
    assert np.allclose(weights.numpy(), [4 / 3, 4 / 9, 0.0])


def test_balanced_sampler_draws_classes_equally() -> None:
    drawn = LABELS[list(balanced_sampler(LABELS, seed=0))]
    shares = np.bincount(drawn, minlength=3) / len(drawn)
    assert np.allclose(shares, 1 / 3, atol=0.06)
    assert list(balanced_sampler(LABELS, seed=0)) == list(balanced_sampler(LABELS, seed=0))


def test_make_split_uses_manifest_and_saves(kaggle_tree: Path, tmp_path: Path) -> None:
    index = discover(kaggle_tree)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,status\nData/train/A/A(0).png,excluded\nData/train/A/A(1).png,ok\n")
    subsets = make_split(index, val_fraction=0.25, seed=0, manifest=manifest)
    paths = {p for items in subsets.values() for p, _ in items}
    assert "Data/train/A/A(0).png" not in paths and len(subsets["test"]) == 6
    assert len(subsets["train"]) + len(subsets["val"]) == 11
    save_split(tmp_path / "split.csv", subsets)
    assert load_split(tmp_path / "split.csv") == subsets


def test_bad_manifest_is_named(kaggle_tree: Path, tmp_path: Path) -> None:
    bad = tmp_path / "m.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(CxrlabError, match="not a cxrlab manifest"):
        make_split(discover(kaggle_tree), manifest=bad)
