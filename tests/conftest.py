"""Tiny synthetic fixtures: images are made in each test, nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chest-xray-covid19-pneumonia"


def smooth_image(seed: int, size: tuple[int, int] = (80, 96)) -> np.ndarray:
    """A distinct smooth random ``uint8`` image (H, W): low-frequency noise, full contrast."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((6, 6))
    image = Image.fromarray((coarse * 255).astype(np.uint8)).resize(size[::-1], Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.float64)
    array = (array - array.min()) / max(array.max() - array.min(), 1) * 255
    return array.astype(np.uint8)


def save(path: Path, pixels: np.ndarray, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **kwargs)
    return path


@pytest.fixture
def kaggle_tree(tmp_path: Path) -> Path:
    """``root/Data/{train,test}/{A,B,C}`` with 4 train and 2 test distinct PNGs per class."""
    root = tmp_path / "ds"
    seed = 0
    for split, n in (("train", 4), ("test", 2)):
        for cls in ("A", "B", "C"):
            for i in range(n):
                seed += 1
                save(root / "Data" / split / cls / f"{cls}({i}).png", smooth_image(seed))
    return root


def requires_real_data() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip(f"real dataset not found at {REAL_DATA} (place ../shared/data beside the repo)")
    return REAL_DATA
