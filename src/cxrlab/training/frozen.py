"""Frozen mode, fast path: compute the pretrained backbone's features once, train the head on them.

The backbone is unchanged, so its output for an image never changes: features are computed
in one pass over the cache (no augmentation, eval mode) and stored beside the image cache,
keyed by the model key and the image rows. Training the new linear head on a feature matrix
then takes seconds for every model, instead of a forward pass through the CNN per epoch.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from cxrlab.data.cache import ImageCache
from cxrlab.data.datasets import CachedImageDataset
from cxrlab.evaluation.metrics import macro_f1
from cxrlab.models.registry import CxrClassifier
from cxrlab.progress import track


@torch.no_grad()
def extract_features(
    model: CxrClassifier,
    dataset: CachedImageDataset,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> np.ndarray:
    """The inputs of ``model.head`` for every image of ``dataset``: ``float32 (n, d)``."""
    model = model.to(device).eval()
    captured: list[torch.Tensor] = []
    hook = model.head.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0].detach().cpu()))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    try:
        for images, _ in track(loader, total=len(loader), description=f"Features {model.arch}", enabled=progress):
            model(images.to(device))
    finally:
        hook.remove()
    return torch.cat(captured).numpy().astype(np.float32) if captured else np.zeros((0, 0), np.float32)


def cached_features(
    model: CxrClassifier,
    cache: ImageCache,
    rows: np.ndarray,
    model_key: str,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> np.ndarray:
    """:func:`extract_features` for cache ``rows``, memoised in the cache folder."""
    digest = hashlib.sha1(model_key.encode() + b"|" + np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()[:16]
    path = cache.folder / "features" / f"{digest}.npy"
    if path.is_file():
        return np.load(path)
    features = extract_features(
        model, CachedImageDataset(cache, rows), batch_size=batch_size, device=device, progress=progress
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, features)
    tmp.replace(path)
    return features


@dataclass
class HeadResult:
    """Per-epoch history and the epoch chosen on validation macro-F1."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_val_macro_f1: float = -1.0


def _epoch_stats(head: nn.Linear, x: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module) -> tuple[float, float, float]:
    with torch.no_grad():
        logits = head(x)
        pred = logits.argmax(1)
        loss = float(loss_fn(logits, y))
    return loss, float((pred == y).float().mean()), macro_f1(y.numpy(), pred.numpy(), head.out_features)


def train_head(
    head: nn.Linear,
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    *,
    epochs: int = 100,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    class_weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    patience: int = 20,
    seed: int = 0,
) -> HeadResult:
    """Train ``head`` in place on feature matrices (AdamW, weighted cross-entropy, minibatches);
    keep the weights of the epoch with the best validation macro-F1, stop after ``patience``
    epochs without improvement."""
    generator = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(train_x).float(), torch.from_numpy(np.asarray(train_y)).long()
    xv, yv = torch.from_numpy(val_x).float(), torch.from_numpy(np.asarray(val_y)).long()
    loss_fn = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing)
    eval_loss = nn.CrossEntropyLoss(weight=class_weights)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    result, best_state, since_best = HeadResult(), copy.deepcopy(head.state_dict()), 0
    for epoch in range(epochs):
        head.train()
        for batch in torch.randperm(len(xt), generator=generator).split(batch_size):
            optimizer.zero_grad()
            loss_fn(head(xt[batch]), yt[batch]).backward()
            optimizer.step()
        head.eval()
        train_loss, train_acc, _ = _epoch_stats(head, xt, yt, eval_loss)
        val_loss, val_acc, val_f1 = _epoch_stats(head, xv, yv, eval_loss)
        result.history.append(
            {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc, "val_macro_f1": val_f1}
        )
        if val_f1 > result.best_val_macro_f1:
            result.best_epoch, result.best_val_macro_f1 = epoch, val_f1
            best_state, since_best = copy.deepcopy(head.state_dict()), 0
        else:
            since_best += 1
            if since_best >= patience:
                break
    head.load_state_dict(best_state)
    return result
