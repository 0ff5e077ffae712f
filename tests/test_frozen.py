from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cxrlab.data.cache import CacheSpec, build_cache
from cxrlab.data.datasets import CachedImageDataset
from cxrlab.data.discover import discover
from cxrlab.data.synthetic import make_demo_dataset
from cxrlab.models import create_model
from cxrlab.training.frozen import cached_features, extract_features


def test_features_are_the_head_inputs_and_are_memoised(tmp_path: Path) -> None:
    root = make_demo_dataset(
        tmp_path / "d", train_per_class=4, test_per_class=2, size=64, defects=False
    )
    cache = build_cache(discover(root), CacheSpec(32), cache_root=tmp_path / "c", workers=1)
    model = create_model("resnet18", 3, pretrained=False).eval()
    rows = cache.rows("train")
    features = extract_features(model, CachedImageDataset(cache, rows), batch_size=5)
    assert features.shape == (12, 512)
    with torch.no_grad():
        logits = model(CachedImageDataset(cache, rows)[0][0].unsqueeze(0))
    assert torch.allclose(model.head(torch.from_numpy(features[:1])), logits, atol=1e-5)
    first = cached_features(model, cache, rows, "resnet18|scratch")
    assert np.allclose(first, features, atol=1e-6)
    assert len(list((cache.folder / "features").glob("*/*.npy"))) == 1
    again = cached_features(model, cache, rows, "resnet18|scratch")
    assert np.array_equal(first, again)


def test_memoised_features_never_outlive_the_pixels(tmp_path: Path) -> None:
    """A changed film gives the cache a new generation: its rows' features are computed anew."""
    root = make_demo_dataset(
        tmp_path / "d", train_per_class=4, test_per_class=2, size=64, defects=False
    )

    def build():
        return build_cache(discover(root), CacheSpec(32), cache_root=tmp_path / "c", workers=1)

    model = create_model("resnet18", 3, pretrained=False).eval()
    cache = build()
    rows = cache.rows("train")
    before = cached_features(model, cache, rows, "resnet18|scratch")
    changed = root / cache.paths[int(rows[0])]
    changed.write_bytes(
        (root / cache.paths[int(rows[-1])]).read_bytes()
    )  # the same name, another film
    cache = build()
    assert cache.rebuilt == 1 and np.array_equal(cache.rows("train"), rows)
    after = cached_features(model, cache, rows, "resnet18|scratch")
    assert np.allclose(after[0], before[-1], atol=1e-6) and not np.allclose(
        after[0], before[0], atol=1e-6
    )
    assert (
        len(list((cache.folder / "features").glob("*/*.npy"))) == 1
    )  # the stale generation's are gone
