"""Tests for cxrlab.evaluation.robustness on tiny synthetic films of different aspect ratios,
and its shortcut probes (lung fields hidden / kept alone) with stand-in models."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cxrlab.data.cache import CacheSpec, load_square, resize_square
from cxrlab.diagnostics import (
    DARKEN_FACTOR,
    MID_GREY,
    PROBES,
    VARIANTS,
    Chance,
    Robustness,
    VariantResult,
    probe_reading,
)
from cxrlab.errors import CxrlabError
from cxrlab.evaluation import robustness
from cxrlab.evaluation.robustness import (
    VARIANT_LIST,
    apply_variant,
    chance_levels,
    load_variant_images,
    robustness_eval,
)
from cxrlab.lungs import segmenter_label

SIZE = 33  # odd: one pixel is the exact centre of rotation
CLASSES = ["tall", "wide"]


def film(height: int, width: int, seed: int) -> np.ndarray:
    """A bright (60..220) smooth film with no black border."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((4, 4))
    from PIL import Image

    image = Image.fromarray((coarse * 255).astype(np.uint8)).resize(
        (width, height), Image.Resampling.BICUBIC
    )
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
    assert list(VARIANTS) == [
        "squash",
        "pad",
        "rotate+10",
        "rotate-10",
        "darken",
        "lungs-hidden",
        "lungs-only",
    ]
    assert PROBES == ("lungs-hidden", "lungs-only")
    assert all(isinstance(d, str) and d for d in VARIANTS.values())
    assert [v.name for v in VARIANT_LIST] == list(VARIANTS)  # the pixel work does every variant
    assert tuple(v.name for v in VARIANT_LIST if v.grey) == PROBES


def test_images_are_decoded_both_ways(films: tuple[list[Path], np.ndarray]) -> None:
    paths, _ = films
    images = load_variant_images(paths, CacheSpec(SIZE, "pad"))
    assert images["squash"].shape == images["pad"].shape == (6, SIZE, SIZE)
    assert images["squash"].dtype == np.uint8 and images["readable"].all()
    for mode in ("squash", "pad"):
        np.testing.assert_array_equal(images[mode][1], load_square(paths[1], CacheSpec(SIZE, mode)))
    assert images["pad"][1, 0].max() == 0 and images["squash"][1, 0].min() > 0  # wide: top bar


def test_shortcut_model_shows_a_drop(films: tuple[list[Path], np.ndarray]) -> None:
    paths, labels = films
    result = robustness_eval(
        BarDetector(), paths, labels, CLASSES, CacheSpec(SIZE, "pad"), batch_size=4
    )
    json.dumps(asdict(result))  # JSON-ready
    assert result.reference == "pad" and result.image_size == SIZE
    assert result.n_images == 6 and result.unreadable == 0
    variants = result.variants
    assert list(variants) == list(VARIANTS)
    assert variants["pad"].accuracy == 1.0 and variants["pad"].accuracy_drop == 0.0
    assert variants["squash"].accuracy == 0.5 and variants["squash"].accuracy_drop == 0.5
    assert variants["squash"].recall == {"tall": 1.0, "wide": 0.0}
    assert variants["pad"].macro_f1 == 1.0 and variants["squash"].macro_f1 < 1.0
    assert variants["darken"].description == VARIANTS["darken"]

    # The same model trained on squashed films: squash is the reference, pad looks "better".
    squash = robustness_eval(BarDetector(), paths, labels, CLASSES, CacheSpec(SIZE, "squash"))
    assert squash.variants["squash"].accuracy_drop == 0.0
    assert squash.variants["pad"].accuracy_drop == -0.5


def test_robustness_json_is_a_typed_record_read_strictly(
    films: tuple[list[Path], np.ndarray], tmp_path: Path
) -> None:
    paths, labels = films
    result = robustness_eval(BarDetector(), paths, labels, CLASSES, CacheSpec(SIZE, "pad"))
    saved = tmp_path / "robustness.json"
    saved.write_text(result.to_json())  # as the diagnose pipeline writes it
    data = json.loads(saved.read_text())
    json.dumps(data, allow_nan=False)  # no NaN: the comparisons below are exact
    assert list(data) == [
        "reference",
        "image_size",
        "n_images",
        "unreadable",
        "variants",
        "chance",
        "lung_fields",
    ]
    assert list(data["variants"]["pad"]) == [
        "description",
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "recall",
        "accuracy_drop",
    ]
    loaded = Robustness.load(saved)
    assert loaded == result and json.loads(loaded.to_json()) == data

    # A file from before the shortcut probes: no chance, lung fields or balanced accuracy.
    old = {k: v for k, v in data.items() if k not in ("chance", "lung_fields")}
    old["variants"] = {
        name: {k: v for k, v in variant.items() if k != "balanced_accuracy"}
        for name, variant in data["variants"].items()
        if name not in PROBES
    }
    saved.write_text(json.dumps(old))
    before = Robustness.load(saved)
    assert before.chance is None and before.lung_fields is None
    assert before.variants["pad"].balanced_accuracy is None and before.variants["pad"].accuracy == 1
    assert probe_reading(before) == "lungs hidden: not computed"

    # Anything else unknown or missing is an error naming the file and the key.
    typo = json.loads(json.dumps(data))
    typo["variants"]["pad"]["acuracy"] = 1.0
    lost = json.loads(json.dumps(data))
    del lost["lung_fields"]["n_segmented"]
    for broken, message in (
        (typo, "variants.pad.acuracy: unknown key"),
        (lost, "lung_fields.n_segmented: missing key"),
        ({k: v for k, v in data.items() if k != "unreadable"}, "unreadable: missing key"),
    ):
        saved.write_text(json.dumps(broken))
        with pytest.raises(CxrlabError) as error:
            Robustness.load(saved)
        assert str(error.value) == f"{saved}: {message}"


def test_variants_feed_the_transformed_images(films: tuple[list[Path], np.ndarray]) -> None:
    paths, labels = films
    model = BarDetector()
    images = load_variant_images(paths, CacheSpec(SIZE, "squash"))
    robustness_eval(
        model,
        paths,
        labels,
        CLASSES,
        CacheSpec(SIZE, "squash"),
        batch_size=64,
        images=images,
    )
    squash, pad, plus, minus, dark, hidden, only = (batch[:, 0].numpy() for batch in model.seen)
    np.testing.assert_allclose(squash, images["squash"] / 255.0, atol=1e-6)
    np.testing.assert_allclose(pad, images["pad"] / 255.0, atol=1e-6)
    np.testing.assert_allclose(dark, squash * DARKEN_FACTOR, atol=1e-6)  # darken = x 0.6
    c = SIZE // 2
    for rotated in (plus, minus):
        assert np.abs(rotated - squash).mean() > 0.01  # the image changed
        np.testing.assert_allclose(rotated[:, c, c], squash[:, c, c], atol=1e-5)  # centre kept
        assert (rotated[:, 0, 0] == 0).all() and (rotated[:, -1, -1] == 0).all()  # black corners
    assert np.abs(plus - minus).mean() > 0.01  # opposite directions
    grey = hidden == np.float32(MID_GREY)  # the probes: complementary grey regions of the squash
    assert grey.any() and (only[grey] == squash[grey]).all()
    assert (only[~grey] == np.float32(MID_GREY)).all() and (hidden[~grey] == squash[~grey]).all()


def test_apply_variant_on_a_batch() -> None:
    x = torch.rand(2, 1, SIZE, SIZE)
    assert torch.equal(apply_variant("squash", x), x)
    torch.testing.assert_close(apply_variant("darken", x), x * 0.6)
    assert apply_variant("rotate+10", x).shape == x.shape
    with pytest.raises(CxrlabError, match="unknown variant"):
        apply_variant("blur", x)


def test_probes_grey_the_lungs_or_the_rest() -> None:
    x = torch.rand(2, 1, SIZE, SIZE)
    lungs = torch.zeros(2, 1, SIZE, SIZE, dtype=torch.bool)
    lungs[:, :, 8:25, 4:14] = lungs[:, :, 8:25, 19:29] = True
    hidden, only = apply_variant("lungs-hidden", x, lungs), apply_variant("lungs-only", x, lungs)
    assert (hidden[lungs] == MID_GREY).all() and torch.equal(hidden[~lungs], x[~lungs])
    assert (only[~lungs] == MID_GREY).all() and torch.equal(only[lungs], x[lungs])
    assert torch.equal(apply_variant("darken", x, lungs), x * DARKEN_FACTOR)  # masks unused
    with pytest.raises(CxrlabError, match="lung masks"):
        apply_variant("lungs-hidden", x)


def test_unreadable_file_is_skipped_and_counted(
    films: tuple[list[Path], np.ndarray], tmp_path: Path
) -> None:
    paths, labels = films
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")
    paths = [*paths[:2], broken, *paths[2:]]
    labels = np.array([*labels[:2], 1, *labels[2:]])  # a wrong label would cost accuracy if kept
    result = robustness_eval(BarDetector(), paths, labels, CLASSES, CacheSpec(SIZE, "pad"))
    assert result.unreadable == 1 and result.n_images == 6
    assert result.variants["pad"].accuracy == 1.0
    with pytest.raises(CxrlabError, match="could be decoded"):
        robustness_eval(BarDetector(), [broken], np.array([0]), CLASSES, CacheSpec(SIZE, "pad"))


def test_given_images_are_checked(films: tuple[list[Path], np.ndarray]) -> None:
    paths, labels = films
    images = load_variant_images(paths, CacheSpec(SIZE, "pad"))
    with pytest.raises(CxrlabError, match="shape"):
        robustness_eval(
            BarDetector(),
            paths,
            labels,
            CLASSES,
            CacheSpec(48, "pad"),
            images=images,
        )
    with pytest.raises(CxrlabError, match="labels"):
        robustness_eval(
            BarDetector(),
            paths,
            labels[:3],
            CLASSES,
            CacheSpec(SIZE, "pad"),
            images=images,
        )


def test_real_network_runs_every_variant(films: tuple[list[Path], np.ndarray]) -> None:
    from cxrlab.models.registry import create_model

    paths, labels = films
    model = create_model("mobilenet_v2", CLASSES, pretrained=False)
    result = robustness_eval(model, paths, labels, CLASSES, CacheSpec(SIZE, "squash"))
    for values in result.variants.values():
        assert 0.0 <= values.accuracy <= 1.0 and 0.0 <= values.macro_f1 <= 1.0
        assert set(values.recall) == set(CLASSES)
    assert result.variants["squash"].accuracy_drop == 0.0


# --------------------------------------------------------------------------- shortcut probes

LUNGS = np.zeros((SIZE, SIZE), dtype=bool)  # the stand-in lung fields of every film
LUNGS[6:27, 3:14] = LUNGS[6:27, 19:30] = True


class RegionReader(nn.Module):
    """Class 0 when the mean intensity of one region (inside or outside :data:`LUNGS`) is
    above mid-grey, else class 1; exactly mid-grey ties to class 0."""

    def __init__(self, inside: bool) -> None:
        super().__init__()
        self.region = torch.from_numpy(LUNGS if inside else ~LUNGS)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mean = images[:, 0][:, self.region].mean(dim=1)
        return torch.stack([mean - MID_GREY, MID_GREY - mean], dim=1) * 100


@pytest.fixture
def region_films(tmp_path: Path) -> tuple[list[Path], np.ndarray]:
    """Four class-0 films bright everywhere and two class-1 films dark everywhere (square PNGs,
    so the model sees them unchanged), each with a little noise."""
    from PIL import Image

    rng = np.random.default_rng(0)
    paths, labels = [], []
    for i, label in enumerate([0, 0, 0, 0, 1, 1]):
        level = 200 if label == 0 else 55
        pixels = np.clip(level + rng.normal(0, 10, (SIZE, SIZE)), 0, 255).astype(np.uint8)
        path = tmp_path / f"film{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
        labels.append(label)
    return paths, np.array(labels)


@pytest.fixture
def known_lungs(monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """``lung_masks`` replaced: :data:`LUNGS` for every film, found on all but the first two
    films (templated there); returns the list of arrays it was asked to segment."""
    asked: list[np.ndarray] = []

    def fake(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        asked.append(np.array(images))
        ok = np.ones(len(images), dtype=bool)
        ok[:2] = False
        return np.repeat(LUNGS[None], len(images), axis=0), ok

    monkeypatch.setattr(robustness, "lung_masks", fake)
    return asked


@pytest.mark.parametrize("mode", ["squash", "pad"])
def test_probes_tell_a_lung_reader_from_an_outside_reader(
    region_films: tuple[list[Path], np.ndarray], known_lungs: list[np.ndarray], mode: str
) -> None:
    paths, labels = region_films
    images = load_variant_images(paths, CacheSpec(SIZE, mode))
    lungs = robustness_eval(
        RegionReader(inside=True),
        paths,
        labels,
        CLASSES,
        CacheSpec(SIZE, mode),
        images=images,
    )
    outside = robustness_eval(
        RegionReader(inside=False),
        paths,
        labels,
        CLASSES,
        CacheSpec(SIZE, mode),
        images=images,
    )
    json.dumps(asdict(lungs), allow_nan=False)

    assert len(known_lungs) == 1  # segmented once, on the model's own squares, then reused
    np.testing.assert_array_equal(known_lungs[0], images[mode])
    for result in (lungs, outside):
        assert result.variants[mode].accuracy == 1.0
        assert result.variants[mode].balanced_accuracy == 1.0
        assert asdict(result.chance) == {
            "balanced_accuracy": 0.5,
            "accuracy": pytest.approx(4 / 6),
            "majority_class": "tall",
        }
        assert asdict(result.lung_fields) == {
            "mode": mode,
            "segmented": pytest.approx(4 / 6),
            "n_segmented": 4,
            "segmented_by_class": {"tall": 0.5, "wide": 1.0},
            "segmenter": segmenter_label(),
        }
    # Reading the lungs: hidden -> every film mid-grey there -> one class -> chance; only -> intact.
    hidden, only = lungs.variants["lungs-hidden"], lungs.variants["lungs-only"]
    assert hidden.balanced_accuracy == 0.5 and hidden.accuracy == pytest.approx(4 / 6)
    assert hidden.recall == {"tall": 1.0, "wide": 0.0}
    assert only.balanced_accuracy == 1.0 and only.accuracy_drop == 0.0
    assert probe_reading(lungs).endswith("falls to near chance")
    # Reading outside the lungs: the reverse.
    assert outside.variants["lungs-hidden"].balanced_accuracy == 1.0
    assert outside.variants["lungs-only"].balanced_accuracy == 0.5
    assert probe_reading(outside) == (
        "lungs hidden: balanced accuracy 1.000 vs chance 0.500: "
        "the model reads something outside the lungs"
    )


def test_chance_levels_and_readings_of_old_files() -> None:
    assert chance_levels(np.array([0, 0, 0, 2]), ["a", "b", "c"]) == Chance(
        balanced_accuracy=0.5,
        accuracy=0.75,
        majority_class="a",  # b absent: k = 2
    )

    def stored(hidden: float | None, chance: float | None) -> Robustness:
        """A robustness.json with the lungs-hidden probe at ``hidden`` (None: before it)."""
        variant = VariantResult(
            description="", accuracy=0.9, macro_f1=0.9, recall={}, accuracy_drop=0.0
        )
        variants = {"squash": variant}
        if hidden is not None:
            variants["lungs-hidden"] = replace(variant, balanced_accuracy=hidden)
        probes_chance = None if chance is None else Chance(chance, 0.5, "a")
        return Robustness(
            reference="squash",
            image_size=8,
            n_images=4,
            unreadable=0,
            variants=variants,
            chance=probes_chance,
        )

    old = stored(None, None)
    assert probe_reading(old) == probe_reading(None) == "lungs hidden: not computed"
    assert probe_reading(stored(0.1, 1 / 3)).endswith("falls below chance")
    near = stored(0.48, 1 / 3)
    assert probe_reading(near).endswith("falls to near chance")  # 0.147 above: within the margin


class PooledLinear(nn.Module):
    """A linear classifier on 4x4-average-pooled pixels (weights from a fitted sklearn model)."""

    def __init__(self, coef: np.ndarray, intercept: np.ndarray) -> None:
        super().__init__()
        self.linear = nn.Linear(coef.shape[1], coef.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(torch.from_numpy(coef))
            self.linear.bias.copy_(torch.from_numpy(intercept))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(nn.functional.avg_pool2d(images, 4).flatten(1))


def test_a_lesion_reader_falls_to_chance_with_the_lungs_hidden(tmp_path: Path) -> None:
    """The synthetic films draw every lesion inside the lung fields, so a model fitted to the
    lesions has nothing left to read once the (really segmented) lungs are grey."""
    from PIL import Image
    from sklearn.linear_model import LogisticRegression

    from cxrlab.data.synthetic import DEMO_CLASSES, synth_cxr

    size, classes = 64, list(DEMO_CLASSES)

    def films(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        pixels = [
            resize_square(
                synth_cxr(np.random.default_rng([seed, i, k]), name, size=size), CacheSpec(size)
            )
            for i in range(per_class)
            for k, name in enumerate(classes)
        ]
        return np.stack(pixels), np.tile(np.arange(len(classes)), per_class)

    train, train_labels = films(100, 1)
    pooled = (
        nn.functional.avg_pool2d(torch.from_numpy(train / 255.0)[:, None], 4).flatten(1).numpy()
    )
    fitted = LogisticRegression(max_iter=2000).fit(pooled, train_labels)
    model = PooledLinear(fitted.coef_.astype(np.float32), fitted.intercept_.astype(np.float32))

    test, labels = films(20, 2)
    paths = []
    for i, pixels in enumerate(test):
        paths.append(tmp_path / f"film{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    result = robustness_eval(model, paths, labels, classes, CacheSpec(size, "squash"))

    chance = result.chance.balanced_accuracy
    assert chance == pytest.approx(1 / 3) and result.lung_fields.segmented > 0.8
    assert result.variants["squash"].balanced_accuracy > 0.75  # it learned the lesions
    assert result.variants["lungs-hidden"].balanced_accuracy < chance + 0.1
    assert probe_reading(result).endswith("falls to near chance")
