from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cxrlab.data.cache import CacheSpec, build_cache
from cxrlab.data.discover import discover
from cxrlab.data.synthetic import make_demo_dataset
from cxrlab.models import create_model
from cxrlab.data.datasets import CachedImageDataset
from cxrlab.training.frozen import cached_features, extract_features, train_head


def test_features_are_the_head_inputs_and_are_memoised(tmp_path: Path) -> None:
    root = make_demo_dataset(tmp_path / "d", train_per_class=4, test_per_class=2, size=64, defects=False)
    cache = build_cache(discover(root), CacheSpec(32), cache_root=tmp_path / "c", workers=1, progress=False)
    model = create_model("resnet18", 3, pretrained=False).eval()
    rows = cache.rows("train")
    features = extract_features(model, CachedImageDataset(cache, rows), batch_size=5, progress=False)
    assert features.shape == (12, 512)
    with torch.no_grad():
        logits = model(CachedImageDataset(cache, rows)[0][0].unsqueeze(0))
    assert torch.allclose(model.head(torch.from_numpy(features[:1])), logits, atol=1e-5)
    first = cached_features(model, cache, rows, "resnet18|scratch", progress=False)
    assert np.allclose(first, features, atol=1e-6)
    assert len(list((cache.folder / "features").glob("*.npy"))) == 1
    again = cached_features(model, cache, rows, "resnet18|scratch", progress=False)
    assert np.array_equal(first, again)


def test_train_head_learns_separable_features_and_keeps_best_epoch() -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 16)) * 3
    y = rng.integers(0, 3, 300)
    x = (centers[y] + rng.normal(size=(300, 16))).astype(np.float32)
    head = torch.nn.Linear(16, 3)
    torch.manual_seed(0)
    result = train_head(head, x[:200], y[:200], x[200:], y[200:], epochs=60, lr=1e-2, seed=0)
    assert result.best_val_macro_f1 > 0.9
    assert result.history[0]["train_loss"] > result.history[-1]["train_loss"]
    with torch.no_grad():
        pred = head(torch.from_numpy(x[200:])).argmax(1).numpy()
    from sklearn.metrics import f1_score

    assert f1_score(y[200:], pred, average="macro") == result.best_val_macro_f1
    torch.manual_seed(0)
    head3 = torch.nn.Linear(16, 3)
    torch.manual_seed(0)
    head4 = torch.nn.Linear(16, 3)
    r3 = train_head(head3, x[:200], y[:200], x[200:], y[200:], epochs=5, seed=1)
    r4 = train_head(head4, x[:200], y[:200], x[200:], y[200:], epochs=5, seed=1)
    assert r3.history == r4.history  # deterministic
