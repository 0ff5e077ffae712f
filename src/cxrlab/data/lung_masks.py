"""The lung masks cxrlab's segmenter learns from: films paired with masks, per source, split.

Two sources of adult lung masks are available offline:

* ``ieee8023``: the 517 lung masks of the torchxrayvision wheel (PyPI, ``torchxrayvision/data/
  semantic_masks_v7labs_lungs.zip``, drawn by V7 Labs on films of the ieee8023 COVID-19
  collection). The Kaggle data's ``MANIFEST.csv`` names the ieee8023 file behind each of its
  COVID19 films (``source_name``); a mask whose file name matches is paired with that film.
* ``openist``: the masks of adult-extra's NORMAL films (``adult-extra-masks/openist-*.png``, same
  stem as the film).

Masks are stored at the original film's size; they are resized to the film's square (nearest
neighbour) and a pixel is lung when it is at least 128. A mask with no lung pixel, or whose
aspect ratio differs from its film's by more than 3%, is left out and counted.

Splits, fixed for every seed of the segmenter: ``ieee8023`` films in the Kaggle test split are
its held-out test masks (so the classifier's test films are never a segmenter's training
film either); ``openist`` holds out :data:`TEST_FRACTION` of its films (seeded by
``split_seed``); of the rest of each source :data:`VAL_FRACTION` validates.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cxrlab.data.reader import decode_image
from cxrlab.errors import ConfigError, CxrlabError, ImageReadError
from cxrlab.progress import track

MASKS_MEMBER = "torchxrayvision/data/semantic_masks_v7labs_lungs.zip"
TEST_FRACTION = 0.2
VAL_FRACTION = 0.15
ASPECT_TOLERANCE = 0.03


@dataclass(frozen=True)
class MaskedFilm:
    """One film with a lung mask: its source, split, film file and where its mask is."""

    source: str
    split: str  # train, val or test
    film: Path
    mask: str  # a file path, or "<zip>::<member>"


@dataclass(frozen=True)
class MaskSet:
    """The paired films, and how many masks were left out and why."""

    films: list[MaskedFilm]
    left_out: dict[str, int]


def film_counts(films: list[MaskedFilm]) -> dict[str, dict[str, int]]:
    """Films per source and split."""
    out: dict[str, dict[str, int]] = {}
    for film in films:
        out.setdefault(film.source, {}).setdefault(film.split, 0)
        out[film.source][film.split] += 1
    return out


def _masks_zip(path: Path) -> zipfile.ZipFile:
    """The masks zip, given itself or the torchxrayvision wheel that contains it."""
    try:
        outer = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ConfigError("txv_masks", f"{path}: not a zip or wheel ({exc})") from exc
    if MASKS_MEMBER in outer.namelist():
        return zipfile.ZipFile(io.BytesIO(outer.read(MASKS_MEMBER)))
    return outer


def _split_rest(films: list[MaskedFilm], rng: np.random.Generator) -> list[MaskedFilm]:
    """``films`` (all "train") with :data:`VAL_FRACTION` of them, drawn by ``rng``, as "val"."""
    order = rng.permutation(len(films))
    n_val = round(VAL_FRACTION * len(films))
    val = set(order[:n_val].tolist())
    return [
        MaskedFilm(f.source, "val" if i in val else f.split, f.film, f.mask)
        for i, f in enumerate(films)
    ]


def collect_masks(
    kaggle: Path,
    adult_extra: Path,
    adult_extra_masks: Path,
    txv_masks: Path,
    *,
    split_seed: int = 0,
) -> MaskSet:
    """Every film with a mask of both sources, split (see the module docstring)."""
    for setting, folder in (
        ("kaggle", kaggle),
        ("adult_extra", adult_extra),
        ("adult_extra_masks", adult_extra_masks),
    ):
        if not folder.is_dir():
            raise ConfigError(setting, f"{folder} is not a folder")
    manifest = kaggle / "MANIFEST.csv"
    if not manifest.is_file():
        raise ConfigError("kaggle", f"{manifest} not found (it names each COVID19 film's source)")
    rng = np.random.default_rng(split_seed)
    members = {Path(n).name: n for n in _masks_zip(txv_masks).namelist() if not n.endswith("/")}
    ieee: list[MaskedFilm] = []
    with manifest.open(newline="") as handle:
        for row in csv.DictReader(handle):
            member = members.get(row.get("source_name", ""))
            if row.get("cls") != "COVID19" or member is None:
                continue
            film = kaggle / "Data" / row["split"] / "COVID19" / row["out_name"]
            ieee.append(MaskedFilm("ieee8023", row["split"], film, f"{txv_masks}::{member}"))
    test = [f for f in ieee if f.split == "test"]
    ieee = _split_rest([f for f in ieee if f.split == "train"], rng) + test
    openist = [
        MaskedFilm("openist", "train", film, str(adult_extra_masks / f"{film.stem}.png"))
        for film in sorted((adult_extra / "NORMAL").glob("openist-*.jpg"))
        if (adult_extra_masks / f"{film.stem}.png").is_file()
    ]
    order = rng.permutation(len(openist))
    held = set(order[: round(TEST_FRACTION * len(openist))].tolist())
    test = [
        MaskedFilm(f.source, "test", f.film, f.mask) for i, f in enumerate(openist) if i in held
    ]
    rest = [f for i, f in enumerate(openist) if i not in held]
    films = ieee + _split_rest(rest, rng) + test
    if not films:
        raise ConfigError(
            "kaggle", "no film with a lung mask found: check {kaggle}, {adult_extra} and masks"
        )
    return MaskSet(films, {})


def _read_mask(where: str, zips: dict[str, zipfile.ZipFile]) -> Image.Image:
    if "::" in where:
        archive, member = where.split("::", 1)
        if archive not in zips:
            zips[archive] = _masks_zip(Path(archive))
        return Image.open(io.BytesIO(zips[archive].read(member)))
    return Image.open(where)


def load_pairs(mask_set: MaskSet, size: int) -> tuple[list[MaskedFilm], np.ndarray, np.ndarray]:
    """Films squashed to ``size`` (``uint8 (N, S, S)``) with their masks (bool), in order; a
    pair left out (unreadable, empty mask, another aspect ratio) is counted in ``left_out``."""
    kept: list[MaskedFilm] = []
    films, masks = [], []
    left_out: Counter[str] = Counter()
    zips: dict[str, zipfile.ZipFile] = {}
    for item in track(
        mask_set.films,
        total=len(mask_set.films),
        description="Reading films and masks",
    ):
        try:
            pixels = decode_image(item.film).pixels
            mask_image = _read_mask(item.mask, zips).convert("L")
        except (ImageReadError, OSError, KeyError):
            left_out["unreadable"] += 1
            continue
        height, width = pixels.shape
        mask_w, mask_h = mask_image.size
        if abs((mask_w / mask_h) / (width / height) - 1) > ASPECT_TOLERANCE:
            left_out["aspect ratio differs from the film's"] += 1
            continue
        mask = np.asarray(mask_image.resize((size, size), Image.Resampling.NEAREST)) >= 128
        if not mask.any():
            left_out["empty mask"] += 1
            continue
        square = Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR)
        films.append(np.asarray(square, dtype=np.uint8))
        masks.append(mask)
        kept.append(item)
    mask_set.left_out.update(left_out)
    if not kept:
        raise CxrlabError("no readable film with a lung mask")
    return kept, np.stack(films), np.stack(masks)
