"""Tests for cxrlab.evaluation.robustness on tiny synthetic films of different aspect ratios."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cxrlab.data.cache import CacheSpec, load_square
from cxrlab.errors import CxrlabError
from cxrlab.evaluation.robustness import (
    DARKEN_FACTOR,
    VARIANTS,
    apply_variant,
    load_variant_images,
    robustness_eval,
)

SIZE = 33  # odd: one pixel is the exact centre of rotation
CLASSES = ["tall", "wide"]


def film(height: int, width: int, seed: int) -> np.ndarray:
    """A bright (60..220) smooth film with no black border."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((4, 4))
    from PIL import Image

    image = Image.fromarray((coarse * 255).astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
    return (60 + np.asarray(image, dtype=np.float64) / 255 * 160).astype(np.uint8)


@pytest.fixture
def films(tmp_path: Path) -> tuple[list[Path], np.ndarray]:
    """Three tall (label 0) and three wide (label 1) PNGs."""
    from PIL import Image

    paths, labels = [], []
    for i in range(3):
        for label, shape in ((0, (90, 50)), (1, (50, 90))):
            path = tmp_path / f"{CLASSES[label]}{i}.png"
            Image.fromarray(film(*shape, seed=10 * i + label)).save(path)
            paths.append(path)
            labels.append(label)
    return paths, np.array(labels)


class BarDetector(nn.Module):
    """The format shortcut: 'wide' exactly when the top rows are black (a padding bar)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append(images.detach().clone())
        bar = (images[:, 0, :2, :].mean(dim=(1, 2)) < 0.02).float()
        return torch.stack([1 - bar, bar], dim=1) * 10


def test_variants_are_named_and_described() -> None:
    assert list(VARIANTS) == ["squash", "pad", "rotate+10", "rotate-10", "darken"]
    assert all(isinstance(d, str) and d for d in VARIANTS.values())


def test_images_are_decoded_both_ways(films: tuple[list[Path], np.ndarray]) -> None:
    paths, _ = films
    images = load_variant_images(paths, CacheSpec(SIZE, "pad"), progress=False)
    assert images["squash"].shape == images["pad"].shape == (6, SIZE, SIZE)
    assert images["squash"].dtype == np.uint8 and images["readable"].all()
    for mode in ("squash", "pad"):
        np.testing.assert_array_equal(images[mode][1], load_square(paths[1], CacheSpec(SIZE, mode)))
    assert images["pad"][1, 0].max() == 0 and images["squash"][1, 0].min() > 0  # wide: top bar


def test_shortcut_model_shows_a_drop(films: tuple[list[Path], np.ndarray]) -> None:
    paths, labels = films
    result = robustness_eval(
        BarDetector(), paths, labels, CLASSES, CacheSpec(SIZE, "pad"), batch_size=4, progress=False
    )
    json.dumps(result)  # JSON-ready
    assert result["reference"] == "pad" and result["image_size"] == SIZE
    assert result["n_images"] == 6 and result["unreadable"] == 0
    variants = result["variants"]
    assert list(variants) == list(VARIANTS)
    assert variants["pad"]["accuracy"] == 1.0 and variants["pad"]["accuracy_drop"] == 0.0
    assert variants["squash"]["accuracy"] == 0.5 and variants["squash"]["accuracy_drop"] == 0.5
    assert variants["squash"]["recall"] == {"tall": 1.0, "wide": 0.0}
    assert variants["pad"]["macro_f1"] == 1.0 and variants["squash"]["macro_f1"] < 1.0
    assert variants["darken"]["description"] == VARIANTS["darken"]

    # The same model trained on squashed films: squash is the reference, pad looks "better".
    squash = robustness_eval(BarDetector(), paths, labels, CLASSES, CacheSpec(SIZE, "squash"), progress=False)
    assert squash["variants"]["squash"]["accuracy_drop"] == 0.0
    assert squash["variants"]["pad"]["accuracy_drop"] == -0.5


def test_variants_feed_the_transformed_images(films: tuple[list[Path], np.ndarray]) -> None:
    paths, labels = films
    model = BarDetector()
    images = load_variant_images(paths, CacheSpec(SIZE, "squash"), progress=False)
    robustness_eval(
        model, paths, labels, CLASSES, CacheSpec(SIZE, "squash"), batch_size=64, progress=False,
        images=images,
    )
    squash, pad, plus, minus, dark = (batch[:, 0].numpy() for batch in model.seen)
    np.testing.assert_allclose(squash, images["squash"] / 255.0, atol=1e-6)
    np.testing.assert_allclose(pad, images["pad"] / 255.0, atol=1e-6)
    np.testing.assert_allclose(dark, squash * DARKEN_FACTOR, atol=1e-6)  # darken = x 0.6
    c = SIZE // 2
    for rotated in (plus, minus):
        assert np.abs(rotated - squash).mean() > 0.01  # the image changed
        np.testing.assert_allclose(rotated[:, c, c], squash[:, c, c], atol=1e-5)  # centre kept
        assert (rotated[:, 0, 0] == 0).all() and (rotated[:, -1, -1] == 0).all()  # black corners
    assert np.abs(plus - minus).mean() > 0.01  # opposite directions


def test_apply_variant_on_a_batch() -> None:
    x = torch.rand(2, 1, SIZE, SIZE)
    assert torch.equal(apply_variant("squash", x), x)
    torch.testing.assert_close(apply_variant("darken", x), x * 0.6)
    assert apply_variant("rotate+10", x).shape == x.shape
    with pytest.raises(CxrlabError, match="unknown variant"):
        apply_variant("blur", x)


def test_unreadable_file_is_skipped_and_counted(films: tuple[list[Path], np.ndarray], tmp_path: Path) -> None:
    paths, labels = films
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")
    paths = [*paths[:2], broken, *paths[2:]]
    labels = np.array([*labels[:2], 1, *labels[2:]])  # a wrong label would cost accuracy if kept
    result = robustness_eval(BarDetector(), paths, labels, CLASSES, CacheSpec(SIZE, "pad"), progress=False)
    assert result["unreadable"] == 1 and result["n_images"] == 6
    assert result["variants"]["pad"]["accuracy"] == 1.0
    with pytest.raises(CxrlabError, match="could be decoded"):
        robustness_eval(BarDetector(), [broken], np.array([0]), CLASSES, CacheSpec(SIZE, "pad"), progress=False)


def test_given_images_are_checked(films: tuple[list[Path], np.ndarray]) -> None:
    paths, labels = films
    images = load_variant_images(paths, CacheSpec(SIZE, "pad"), progress=False)
    with pytest.raises(CxrlabError, match="shape"):
        robustness_eval(BarDetector(), paths, labels, CLASSES, CacheSpec(48, "pad"), images=images, progress=False)
    with pytest.raises(CxrlabError, match="labels"):
        robustness_eval(BarDetector(), paths, labels[:3], CLASSES, CacheSpec(SIZE, "pad"), images=images, progress=False)


def test_real_network_runs_every_variant(films: tuple[list[Path], np.ndarray]) -> None:
    from cxrlab.models.registry import create_model

    paths, labels = films
    model = create_model("mobilenet_v2", CLASSES, pretrained=False)
    result = robustness_eval(model, paths, labels, CLASSES, CacheSpec(SIZE, "squash"), progress=False)
    for values in result["variants"].values():
        assert 0.0 <= values["accuracy"] <= 1.0 and 0.0 <= values["macro_f1"] <= 1.0
        assert set(values["recall"]) == set(CLASSES)
    assert result["variants"]["squash"]["accuracy_drop"] == 0.0
