"""Tiny synthetic fixtures: images are made in each test, nothing is downloaded."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrlab.data.synthetic import synth_cxr

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chest-xray-covid19-pneumonia"


@pytest.fixture(scope="session", autouse=True)
def cache_outside_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The decoded-image cache of every test (and of the commands tests start) in pytest's
    temporary folder, never in the user's ``~/.cache/cxrlab``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CXRLAB_CACHE", str(tmp_path_factory.mktemp("cxrlab-cache")))
        yield


def smooth_image(seed: int, size: tuple[int, int] = (80, 96)) -> np.ndarray:
    """A distinct smooth random ``uint8`` image (H, W): low-frequency noise, full contrast."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((6, 6))
    image = Image.fromarray((coarse * 255).astype(np.uint8)).resize(
        size[::-1], Image.Resampling.BICUBIC
    )
    array = np.asarray(image, dtype=np.float64)
    array = (array - array.min()) / max(array.max() - array.min(), 1) * 255
    return array.astype(np.uint8)


def modules_loaded_by(*modules: str) -> list[str]:
    """Every module a fresh interpreter has loaded after importing ``modules``."""
    code = f"import sys, {', '.join(modules)}; print('\\n'.join(sorted(sys.modules)))"
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()


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


# Tests left out of the fast default run (pyproject.toml's addopts); `uv run pytest -q -m ""` runs
# everything, as .ci/run does. Marked here by file; a real-data test also by its decorator.
MARKED_FILES = {
    "test_serve_browser.py": "browser",
    "test_run_faults.py": "faults",
    "test_hostile.py": "faults",
}


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        marker = MARKED_FILES.get(item.path.name)
        if marker is not None:
            item.add_marker(getattr(pytest.mark, marker))


def requires_real_data() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip(f"real dataset not found at {REAL_DATA} (place ../shared/data beside the repo)")
    return REAL_DATA


TINY = dict(
    image_size=32, batch_size=8, val_fraction=0.25
)  # a training run of seconds on tiny_data


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small synthetic dataset (8 train, 3 test films per class) and a cache folder for it."""
    from cxrlab.data.synthetic import make_demo_dataset

    base = tmp_path_factory.mktemp("train")
    root = make_demo_dataset(
        base / "data", train_per_class=8, test_per_class=3, size=48, defects=False
    )
    return root, base / "cache"


def train_tiny(tiny_data: tuple[Path, Path], out: Path, config, **kwargs: object):
    """``train_run`` on ``tiny_data`` without progress bars, in one process."""
    from cxrlab.training.run import train_run

    root, cache = tiny_data
    return train_run(root, config, out, cache_root=cache, workers=1, **kwargs)


@contextmanager
def killed_at(epoch: int, batch: int = 0) -> Iterator[None]:
    """Inside the block, training raises ``RuntimeError("killed")`` at that batch of that epoch
    (both from 0), as a kill there would stop it."""
    from cxrlab.training import trainer as run_module

    def killed(self, trainer, module, data, index) -> None:
        if trainer.current_epoch == epoch and index == batch:
            raise RuntimeError("killed")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_module.HistoryWriter, "on_train_batch_start", killed, raising=False)
        yield


def square(pixels: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR))


def film_and_lungs(seed: int, class_name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic film and the generator's own lung fields (its local ``lungs``), both square."""
    captured: dict[str, np.ndarray] = {}

    def profile(frame, event, arg):
        if event == "return" and frame.f_code is synth_cxr.__code__:
            captured["lungs"] = np.array(frame.f_locals["lungs"])

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        film = synth_cxr(np.random.default_rng(seed), class_name, size=size)
    finally:
        sys.setprofile(previous)
    assert "lungs" in captured, "synth_cxr no longer has a local 'lungs' array"
    lungs = (captured["lungs"] > 0.5).astype(np.uint8) * 255
    return square(film, size), square(lungs, size) > 127


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)
