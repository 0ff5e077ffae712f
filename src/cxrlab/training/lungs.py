"""Training the lung segmenter (:mod:`cxrlab.lungs`) on the paired masks of
:mod:`cxrlab.data.lung_masks`.

The recipe (:class:`SegmenterRecipe`): films and masks squashed to ``input_size``; each
training film gets a random affine transform (rotation up to 10 degrees, shift up to 8%, scale
0.7-1.15, applied to film and mask alike; zooming out mimics the wide framing of children's
films, which have no masks here), a random gamma (0.6-1.6) and contrast, and sometimes a blur
or noise; AdamW with a cosine schedule; loss = binary cross-entropy + soft Dice. The encoder's
BatchNorm statistics stay as loaded. The epoch with the best mean validation Dice is kept.

Dice is measured on cleaned masks (:func:`cxrlab.lungs.segment.clean_mask`) at
:data:`DICE_SIZE` pixels: the segmenter's mask of the film squashed to that size against the
drawn mask at that size.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2

from cxrlab.data.lung_masks import MaskedFilm, film_counts
from cxrlab.lungs.network import SegmenterMeta, SourceDice, build_network, load_encoder_weights
from cxrlab.lungs.segment import LungSegmenter, dice, normalised
from cxrlab.progress import track
from cxrlab.training.module import freeze_batchnorm_statistics

DICE_SIZE = 256


@dataclass(frozen=True)
class SegmenterRecipe:
    """How the segmenter is trained."""

    input_size: int = 192
    epochs: int = 40
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0


def _augment() -> v2.Transform:
    return v2.RandomAffine(
        degrees=10,  # pyright: ignore[reportArgumentType]  # an int is a number
        translate=(0.08, 0.08),
        scale=(0.7, 1.15),
    )


def _intensity(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random gamma and contrast per film, sometimes blur or noise; ``batch`` in [0, 1]."""
    n = batch.shape[0]
    gamma = torch.exp(
        torch.empty(n, 1, 1, 1).uniform_(np.log(0.6), np.log(1.6), generator=generator)
    )
    batch = batch.clamp(1e-4, 1).pow(gamma)
    contrast = torch.empty(n, 1, 1, 1).uniform_(0.75, 1.25, generator=generator)
    mean = batch.mean(dim=(2, 3), keepdim=True)
    batch = (batch - mean) * contrast + mean
    blur = torch.rand(n, generator=generator) < 0.2
    if blur.any():
        batch[blur] = v2.functional.gaussian_blur(
            batch[blur],
            kernel_size=5,  # pyright: ignore[reportArgumentType]  # one size for both sides
            sigma=1.2,  # pyright: ignore[reportArgumentType]  # likewise
        )
    noisy = torch.rand(n, generator=generator) < 0.2
    if noisy.any():
        batch[noisy] += 0.03 * torch.randn(batch[noisy].shape, generator=generator)
    return batch.clamp(0, 1)


def _soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum(dim=(1, 2, 3))
    return (1 - (2 * inter + 1) / (prob.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) + 1)).mean()


def evaluate_dice(segmenter: LungSegmenter, films: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Dice of each film's cleaned mask against its drawn mask, at :data:`DICE_SIZE` px."""
    from PIL import Image

    def at(size_image: np.ndarray, resample: Image.Resampling) -> np.ndarray:
        return np.asarray(Image.fromarray(size_image).resize((DICE_SIZE, DICE_SIZE), resample))

    squares = np.stack([at(f, Image.Resampling.BILINEAR) for f in films])
    truth = np.stack([at(m.astype(np.uint8) * 255, Image.Resampling.NEAREST) > 127 for m in masks])
    found, _ = segmenter.masks(squares)
    return np.array([dice(a, b) for a, b in zip(found, truth)])


def train_segmenter(
    items: list[MaskedFilm],
    films: np.ndarray,
    masks: np.ndarray,
    recipe: SegmenterRecipe,
    *,
    encoder_weights: Path | None = None,
    command: str = "",
    log: Callable[[str], object] = print,
) -> tuple[torch.nn.Module, SegmenterMeta]:
    """Train on the "train" films, select on "val", measure on "test"; the network and its card."""
    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    network = build_network()
    if encoder_weights is not None:
        load_encoder_weights(network, encoder_weights)
    split = np.array([item.split for item in items])
    train = np.flatnonzero(split == "train")
    val = np.flatnonzero(split == "val")
    images = torch.from_numpy(films).float().div_(255.0)[:, None]
    targets = torch.from_numpy(masks)[:, None]
    augment = _augment()
    optimiser = torch.optim.AdamW(
        network.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay
    )
    steps = recipe.epochs * -(-len(train) // recipe.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=recipe.lr, total_steps=steps, pct_start=0.1
    )
    meta = SegmenterMeta(input_size=recipe.input_size, seed=recipe.seed, epochs=recipe.epochs)
    best, best_state, best_epoch = -1.0, copy.deepcopy(network.state_dict()), -1
    for epoch in range(recipe.epochs):
        started = time.perf_counter()
        network.train()
        freeze_batchnorm_statistics(cast(nn.Module, network.encoder))
        order = train[torch.randperm(len(train), generator=generator).numpy()]
        losses = []
        batches = range(0, len(order), recipe.batch_size)
        for start in track(batches, total=len(batches), description=f"Epoch {epoch + 1}"):
            pick = order[start : start + recipe.batch_size]
            pairs = [
                augment(tv_tensors.Image(images[i]), tv_tensors.Mask(targets[i])) for i in pick
            ]
            batch = _intensity(torch.stack([p[0] for p in pairs]), generator)
            target = torch.stack([p[1] for p in pairs]).float()
            batch = (
                F.interpolate(
                    batch,
                    size=recipe.input_size,
                    mode="bilinear",
                    align_corners=False,
                    antialias=True,
                )
                if batch.shape[-1] != recipe.input_size
                else batch
            )
            target = (
                F.interpolate(target, size=recipe.input_size, mode="nearest")
                if target.shape[-1] != recipe.input_size
                else target
            )
            logits = network(normalised(batch))
            loss = F.binary_cross_entropy_with_logits(logits, target) + _soft_dice_loss(
                logits, target
            )
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(loss.item())
        network.eval()
        score = float(evaluate_dice(LungSegmenter(network, meta), films[val], masks[val]).mean())
        log(
            f"epoch {epoch + 1}/{recipe.epochs}: loss {np.mean(losses):.4f}, val Dice {score:.4f}, "
            f"{time.perf_counter() - started:.0f} s"
        )
        if score > best:
            best, best_state, best_epoch = score, copy.deepcopy(network.state_dict()), epoch + 1
    network.load_state_dict(best_state)
    network.eval()
    log(f"kept epoch {best_epoch} (val Dice {best:.4f})")
    segmenter = LungSegmenter(network, meta)
    test: dict[str, SourceDice] = {}
    counts = film_counts(items)
    for source in sorted(counts):
        held = np.flatnonzero((split == "test") & (np.array([i.source for i in items]) == source))
        if len(held):
            scores = evaluate_dice(segmenter, films[held], masks[held])
            test[source] = SourceDice(
                len(held), round(float(scores.mean()), 4), round(float(scores.std()), 4)
            )
    meta = SegmenterMeta(
        input_size=recipe.input_size,
        seed=recipe.seed,
        epochs=recipe.epochs,
        films=counts,
        test=test,
        command=command,
    )
    return network, meta
