"""The learned lung segmenter: training, the check, the crop, the shipped weights, ``segment``."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, dice, film_and_lungs, save, train_tiny
from PIL import Image

from cxrlab.cli import run
from cxrlab.config import preset
from cxrlab.data.cache import CacheSpec, build_cache, load_square
from cxrlab.data.discover import discover
from cxrlab.data.lung_masks import MaskedFilm
from cxrlab.errors import CxrlabError
from cxrlab.lungs import crop_to_lungs, default_segmenter
from cxrlab.lungs.network import SHIPPED, build_network, load_segmenter, save_segmenter
from cxrlab.lungs.segment import (
    WHOLE,
    LungSegmenter,
    clean_mask,
    lung_box,
    plausible,
    threshold_resized,
)
from cxrlab.training.lungs import SegmenterRecipe, train_segmenter


def two_lungs(size: int = 64, *, left: bool = True, right: bool = True) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size] / size
    mask = np.zeros((size, size), dtype=bool)
    for on, cx in ((left, 0.3), (right, 0.7)):
        if on:
            mask |= ((xs - cx) / 0.14) ** 2 + ((ys - 0.5) / 0.3) ** 2 <= 1
    return mask


def test_the_check_and_the_box() -> None:
    mask = two_lungs()
    assert plausible(mask)
    assert not plausible(two_lungs(right=False))  # one lung
    assert not plausible(np.zeros((64, 64), dtype=bool))
    both_left = np.roll(two_lungs(right=False), -8, axis=1) | np.roll(
        two_lungs(right=False), 10, axis=1
    )
    assert not plausible(clean_mask(both_left))  # two pieces, both in the left half
    speck = mask.copy()
    speck[2, 2] = True  # a stray pixel is cleaned away
    assert plausible(clean_mask(speck)) and not clean_mask(speck)[2, 2]
    box = lung_box(mask)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    assert box.top < rows[0] / 64 and box.bottom > (rows[-1] + 1) / 64  # widened by the margin
    assert box.left < cols[0] / 64 and box.right > (cols[-1] + 1) / 64
    assert 0 <= box.top and box.bottom <= 1 and 0 <= box.left and box.right <= 1


def test_film_size_masks_in_strips_match_the_whole_film_resize() -> None:
    """The probability map resized a strip at a time gives the mask that resizing it whole
    (``F.interpolate``) gives, to float rounding at the threshold; the cleaning keeps the two
    largest pieces with their holes filled, in 16 bits or (past 65535 pieces) in 32."""
    smooth = Image.fromarray(np.random.default_rng(0).random((12, 12), dtype=np.float32))
    probability = np.asarray(smooth.resize((48, 48), Image.Resampling.BICUBIC)).clip(0, 1)
    for height, width in ((48, 48), (300, 250), (777, 1031)):
        whole = torch.nn.functional.interpolate(
            torch.from_numpy(probability)[None, None],
            size=(height, width),
            mode="bilinear",
            align_corners=False,
        )[0, 0].numpy()
        strips = threshold_resized(probability, height, width, 0.5)
        assert strips.shape == (height, width) and strips.dtype == bool
        assert (strips != (whole >= 0.5)).mean() < 1e-4, (height, width)
        assert strips.sum() > 0.1 * strips.size and (~strips).sum() > 0.1 * strips.size

    ring = two_lungs(128)
    ring[50:60, 30:45] = False  # a hole inside the left lung
    ring[0:3, 0:3] = True  # a speck, dropped
    cleaned = clean_mask(ring)
    assert cleaned[50:60, 30:45].all() and not cleaned[0:3, 0:3].any()
    assert (cleaned == two_lungs(128)).all()
    specks = np.zeros((600, 600), dtype=bool)
    specks[::2, ::2] = True  # 90000 one-pixel pieces: past 16 bits
    specks[100:401, 50:251] = specks[100:401, 350:551] = True  # two lungs no speck touches
    assert plausible(clean_mask(specks)) and clean_mask(specks).sum() == 2 * 301 * 201


def test_segmenter_learns_synthetic_lungs() -> None:
    """A few epochs on 16 synthetic films: the masks of held-out films overlap the drawn lungs,
    better than the whole film would."""
    pairs = [film_and_lungs(seed, cls, 64) for seed in range(6) for cls in ("NORMAL", "COVID19")]
    pairs += [film_and_lungs(10 + seed, "PNEUMONIA", 64) for seed in range(4)]
    films = np.stack([f for f, _ in pairs])
    masks = np.stack([m for _, m in pairs])
    splits = ["train"] * 12 + ["val"] * 2 + ["test"] * 2
    items = [MaskedFilm("synthetic", s, Path(f"{i}.png"), "") for i, s in enumerate(splits)]
    torch.set_num_threads(1)
    network, meta = train_segmenter(
        items,
        films,
        masks,
        SegmenterRecipe(input_size=64, epochs=12, batch_size=4, lr=3e-3),
        log=lambda _: None,
    )
    held = meta.test["synthetic"]
    assert held.films == 2
    whole = np.mean([dice(np.ones_like(m), m) for m in masks[-2:]])
    assert held.dice > max(0.7, whole + 0.1)
    assert meta.films == {"synthetic": {"train": 12, "val": 2, "test": 2}}


def test_weights_file_round_trip_and_refusals(tmp_path: Path) -> None:
    network = build_network()
    from cxrlab.lungs.network import SegmenterMeta

    path = save_segmenter_to(tmp_path / "seg.pt", network, SegmenterMeta(input_size=64))
    loaded, meta = load_segmenter(path)
    assert meta.input_size == 64
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():  # float16 storage: close, not equal
        assert torch.allclose(loaded(x), network.eval()(x), atol=5e-2)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CxrlabError, match="junk.pt: not a cxrlab lung segmenter"):
        load_segmenter(junk)
    other = tmp_path / "other.pt"
    torch.save({"meta": {"input_size": "big"}, "state_dict": {}}, other)
    with pytest.raises(CxrlabError, match="other.pt: input_size"):
        load_segmenter(other)
    with pytest.raises(CxrlabError, match="no lung segmenter weights"):
        load_segmenter(tmp_path / "absent.pt")


def save_segmenter_to(path: Path, network: torch.nn.Module, meta: object) -> Path:
    save_segmenter(network, meta, path)  # type: ignore[arg-type]
    return path


needs_shipped = pytest.mark.skipif(not SHIPPED.is_file(), reason="no shipped segmenter weights")


@needs_shipped
def test_shipped_weights_segment_a_synthetic_film() -> None:
    segmenter = default_segmenter()
    assert segmenter.meta.test, "the shipped card has held-out Dice per source"
    film, truth = film_and_lungs(3, "NORMAL", 256)
    (mask,), _ = segmenter.masks([film])
    assert mask.shape == film.shape
    assert dice(mask, truth) > 0.6


@needs_shipped
def test_crop_whole_film_when_not_found() -> None:
    segmenter = default_segmenter()
    flat = np.full((80, 100), 128, dtype=np.uint8)  # nothing to find
    cropped, found = crop_to_lungs(flat, segmenter)
    assert not found and cropped.shape == flat.shape
    assert segmenter.box(flat) == (WHOLE, False)


@needs_shipped
def test_crop_is_the_same_in_training_predict_and_onnx(
    tiny_data: tuple[Path, Path], tmp_path: Path
) -> None:
    """The cache rows a run trains on are the squares ``predict`` makes of the same files, from
    the checkpoint and from its ONNX export."""
    from cxrlab.evaluation.predict import load_predictor
    from cxrlab.models.export import export_onnx

    root, cache_root = tiny_data
    out = tmp_path / "run"
    train_tiny(tiny_data, out, preset("scratch", model="resnet18", epochs=1, crop="lungs", **TINY))
    spec = CacheSpec(TINY["image_size"], "squash", "lungs")
    index = discover(root)
    cache = build_cache(index, spec, cache_root=cache_root, workers=1)
    predictor = load_predictor(out / "model.pt")
    onnx_predictor = load_predictor(export_onnx(out / "model.pt"))
    assert predictor.spec == onnx_predictor.spec == spec
    for row in (0, len(cache.paths) - 1):
        path = index.path_of(cache.paths[row])
        expected = np.asarray(cache.images[row])
        assert np.array_equal(load_square(path, predictor.spec), expected)
        uncropped = load_square(path, CacheSpec(TINY["image_size"]))
        assert (
            not np.array_equal(uncropped, expected)
            or not default_segmenter().box(np.asarray(Image.open(path).convert("L")))[1]
        )


def test_a_cropped_model_is_served_as_predict_answers(
    tiny_data: tuple[Path, Path], tmp_path: Path
) -> None:
    """cxrlab serve cuts the lung box as training and predict do: the page's numbers for a film
    are predict's for the same file."""
    from fastapi.testclient import TestClient

    from cxrlab.evaluation.predict import predict_files
    from cxrlab.serve.app import create_app
    from cxrlab.serve.service import ServedModel

    out = tmp_path / "run"
    train_tiny(tiny_data, out, preset("scratch", model="resnet18", epochs=1, crop="lungs", **TINY))
    served = ServedModel(out, device="cpu")
    client = TestClient(create_app(served), base_url="http://127.0.0.1:8000")
    assert client.get("/api/model").json()["crop"] == "lungs"
    film = sorted(p for p in (tiny_data[0] / "Data" / "test").rglob("*") if p.is_file())[0]
    uncropped = load_square(film, CacheSpec(TINY["image_size"]))
    assert not np.array_equal(load_square(film, served.predictor.spec), uncropped)  # it crops
    parts = [("file", (film.name, film.read_bytes(), "application/octet-stream"))]
    response = client.post("/api/predict", files=parts)
    assert response.status_code == 200, response.text
    probs = list(response.json()["results"][0]["probabilities"].values())
    expected = predict_files(served.predictor, [film]).probs[0].tolist()
    assert probs == pytest.approx(expected, abs=1e-6)


@needs_shipped
def test_segment_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    films = tmp_path / "films"
    good = save(films / "a.png", film_and_lungs(0, "NORMAL", 128)[0])
    save(films / "sub" / "a.png", film_and_lungs(1, "COVID19", 96)[0])  # same stem
    (films / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "masks"
    assert run(["segment", str(films), "--out", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and "of 2 film(s)" in captured.out
    assert sorted(p.name for p in out.glob("*.png")) == ["a-2.png", "a.png", "contact_sheet.png"]
    mask = np.asarray(Image.open(out / "a.png"))
    assert mask.shape == (128, 128) and set(np.unique(mask)) <= {0, 255}
    with (out / "masks.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["mask"] for row in rows] == ["a.png", "a-2.png"]
    assert rows[0]["file"] == str(good)


def test_segment_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["segment", str(tmp_path / "absent.png"), "--out", str(tmp_path / "o")]) == 2
    assert "absent.png: no such file or folder" in capsys.readouterr().err
    films = tmp_path / "films"
    save(films / "a.png", np.zeros((40, 40), dtype=np.uint8))
    assert run(["segment", str(films), "--out", str(films / "masks")]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "inside" in err and len(err.strip().splitlines()) == 1
    assert not (films / "masks").exists()


@needs_shipped
def test_a_named_broken_film_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert run(["segment", str(broken), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and len(err.strip().splitlines()) == 1


def test_a_segmenter_on_any_size_gives_masks_of_that_size() -> None:
    segmenter = LungSegmenter(build_network(), load_meta(48))
    films = [np.zeros((50, 70), np.uint8), np.zeros((90, 40), np.uint8)]
    masks, ok = segmenter.masks(films)
    assert [m.shape for m in masks] == [(50, 70), (90, 40)] and ok.dtype == bool


def load_meta(size: int):
    from cxrlab.lungs.network import SegmenterMeta

    return SegmenterMeta(input_size=size)
