"""The procedural demo dataset: layout, determinism, marker, defects, no shortcut, learnable."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from cxrlab.data.synthetic import DEMO_CLASSES, MARKER_NAME, make_demo_dataset, synth_cxr
from cxrlab.errors import CxrlabError

NUMBERED = re.compile(r"^(COVID19|NORMAL|PNEUMONIA)\((\d+)\)\.jpg$")
DEFECTS = {
    "train/NORMAL/empty.jpg",
    "train/NORMAL/truncated.jpg",
    "train/PNEUMONIA/notes.txt",
    "train/NORMAL/NORMAL(copy).png",
    "train/PNEUMONIA/PNEUMONIA(leak).jpg",
    "train/COVID19/COVID19(tiny).jpg",
}


def _files(root: Path) -> dict[str, bytes]:
    """Every regular file below ``root`` (relative POSIX path -> bytes)."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.uint8)


def _numbered(folder: Path) -> list[Path]:
    """The ``<CLASS>(i).jpg`` files of a class folder, in index order."""
    found = [p for p in folder.iterdir() if NUMBERED.match(p.name)]
    return sorted(found, key=lambda p: int(NUMBERED.match(p.name).group(2)))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default dataset (40 train + 15 test per class, with defects)."""
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "out")


# ------------------------------------------------------------------ layout and names


def test_layout_counts_and_names(demo: Path) -> None:
    data = demo / "Data"
    assert sorted(p.name for p in data.iterdir()) == ["test", "train"]
    for split, count, start in (("train", 40, 0), ("test", 15, 40)):
        assert sorted(p.name for p in (data / split).iterdir()) == list(DEMO_CLASSES)
        for class_name in DEMO_CLASSES:
            folder = data / split / class_name
            names = {p.name for p in _numbered(folder)}
            assert names == {f"{class_name}({i}).jpg" for i in range(start, start + count)}
            extra = {f"{split}/{class_name}/{p.name}" for p in folder.iterdir()} - {
                f"{split}/{class_name}/{name}" for name in names
            }
            assert extra == {d for d in DEFECTS if d.startswith(f"{split}/{class_name}/")}


def test_images_are_grayscale_jpegs_near_size(demo: Path) -> None:
    for path in _numbered(demo / "Data/train/NORMAL")[:10] + _numbered(demo / "Data/test/COVID19"):
        with Image.open(path) as image:
            assert image.format == "JPEG"
            assert image.mode == "L"
            width, height = image.size
        assert 0.9 * 128 - 1 <= width <= 1.1 * 128 + 1
        assert 0.9 * 128 - 1 <= height <= 1.1 * 128 + 1


def test_marker_records_parameters(demo: Path) -> None:
    marker = json.loads((demo / MARKER_NAME).read_text(encoding="utf-8"))
    assert marker["train_per_class"] == 40
    assert marker["test_per_class"] == 15
    assert marker["size"] == 128
    assert marker["seed"] == 0
    assert marker["defects"] is True


def test_synth_cxr_returns_uint8_2d() -> None:
    film = synth_cxr(np.random.default_rng(3), "PNEUMONIA", size=64)
    assert film.dtype == np.uint8
    assert film.ndim == 2
    assert 57 <= film.shape[0] <= 71 and 57 <= film.shape[1] <= 71
    assert film.min() < 40 and film.max() > 150  # dark background, bright bone


# ------------------------------------------------------------------ determinism


def test_deterministic_bytes(tmp_path: Path) -> None:
    kwargs = {"train_per_class": 3, "test_per_class": 2, "size": 64, "seed": 7}
    first = _files(make_demo_dataset(tmp_path / "a", **kwargs) / "Data")
    second = _files(make_demo_dataset(tmp_path / "b", **kwargs) / "Data")
    assert first == second
    other = _files(make_demo_dataset(tmp_path / "c", **dict(kwargs, seed=8)) / "Data")
    assert other.keys() == first.keys()
    assert other["train/NORMAL/NORMAL(0).jpg"] != first["train/NORMAL/NORMAL(0).jpg"]


def test_same_generator_state_gives_same_film_with_or_without_disease() -> None:
    films = {name: synth_cxr(np.random.default_rng(4), name, size=64) for name in DEMO_CLASSES}
    normal = films["NORMAL"].astype(np.float64)
    for name in ("COVID19", "PNEUMONIA"):
        sick = films[name].astype(np.float64)
        assert sick.shape == normal.shape
        assert abs(sick.mean() - normal.mean()) < 1.0  # brightness is no shortcut
        assert np.abs(sick - normal).max() > 30  # but the lungs changed


def test_synth_cxr_deterministic_for_a_generator_seed() -> None:
    a = synth_cxr(np.random.default_rng(11), "COVID19", size=48)
    b = synth_cxr(np.random.default_rng(11), "COVID19", size=48)
    assert np.array_equal(a, b)


def test_test_images_do_not_depend_on_train_count(tmp_path: Path) -> None:
    small = make_demo_dataset(tmp_path / "a", train_per_class=2, test_per_class=2, size=48)
    large = make_demo_dataset(tmp_path / "b", train_per_class=5, test_per_class=2, size=48)
    for class_name in DEMO_CLASSES:
        for k in range(2):
            assert (small / f"Data/test/{class_name}/{class_name}({2 + k}).jpg").read_bytes() == (
                large / f"Data/test/{class_name}/{class_name}({5 + k}).jpg"
            ).read_bytes()


# ------------------------------------------------------------------ marker behaviour


def test_rerun_with_same_parameters_is_a_no_op(tmp_path: Path) -> None:
    out = make_demo_dataset(tmp_path / "out", train_per_class=2, test_per_class=1, size=48)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    sentinel = out / "Data/train/NORMAL/user-note.txt"
    sentinel.write_text("kept")
    again = make_demo_dataset(out, train_per_class=2, test_per_class=1, size=48)
    assert again == out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert sentinel.read_text() == "kept"


def test_rerun_with_other_parameters_replaces_only_data(tmp_path: Path) -> None:
    out = make_demo_dataset(tmp_path / "out", train_per_class=2, test_per_class=1, size=48)
    beside = out / "README.txt"
    beside.write_text("user file beside Data")
    (out / "Data/train/NORMAL/stale.txt").write_text("stale")
    make_demo_dataset(out, train_per_class=3, test_per_class=1, size=48, defects=False)
    assert beside.read_text() == "user file beside Data"
    assert not (out / "Data/train/NORMAL/stale.txt").exists()
    assert not (out / "Data/train/NORMAL/empty.jpg").exists()
    assert len(_numbered(out / "Data/train/NORMAL")) == 3
    assert (out / "Data/test/NORMAL/NORMAL(3).jpg").is_file()
    assert json.loads((out / MARKER_NAME).read_text())["train_per_class"] == 3


def test_interrupted_run_is_redone(tmp_path: Path) -> None:
    out = make_demo_dataset(tmp_path / "out", train_per_class=2, test_per_class=1, size=48)
    marker = json.loads((out / MARKER_NAME).read_text())
    (out / MARKER_NAME).write_text(json.dumps(dict(marker, complete=False)))
    (out / "Data/test/NORMAL/NORMAL(2).jpg").unlink()
    make_demo_dataset(out, train_per_class=2, test_per_class=1, size=48)
    assert (out / "Data/test/NORMAL/NORMAL(2).jpg").is_file()
    assert json.loads((out / MARKER_NAME).read_text())["complete"] is True


def test_refuses_foreign_data_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "Data/train/NORMAL").mkdir(parents=True)
    precious = out / "Data/train/NORMAL/patient.jpg"
    precious.write_bytes(b"not ours")
    with pytest.raises(CxrlabError, match="exists"):
        make_demo_dataset(out, train_per_class=2, test_per_class=1, size=48)
    assert precious.read_bytes() == b"not ours"
    assert not (out / MARKER_NAME).exists()


def test_writes_into_existing_folder_without_data(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "other.txt").write_text("hello")
    make_demo_dataset(out, train_per_class=2, test_per_class=1, size=48)
    assert (out / "other.txt").read_text() == "hello"
    assert (out / "Data/train/COVID19/COVID19(0).jpg").is_file()


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"train_per_class": 1}, "train_per_class"),
        ({"test_per_class": 0}, "test_per_class"),
        ({"size": 16}, "size"),
        ({"seed": -1}, "seed"),
        ({"train_per_class": 2.5}, "train_per_class"),
        ({"defects": "yes"}, "defects"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, option: str) -> None:
    with pytest.raises(CxrlabError, match=option) as info:
        make_demo_dataset(tmp_path / "out", **kwargs)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_output_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(CxrlabError, match="not a folder"):
        make_demo_dataset(target)


def test_synth_cxr_bad_arguments() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(CxrlabError, match="class_name"):
        synth_cxr(rng, "TUBERCULOSIS")
    with pytest.raises(CxrlabError, match="size"):
        synth_cxr(rng, "NORMAL", size=8)
    with pytest.raises(CxrlabError, match="rng"):
        synth_cxr(0, "NORMAL")  # type: ignore[arg-type]


# ------------------------------------------------------------------ defects


def test_defects_are_what_they_claim(demo: Path) -> None:
    data = demo / "Data"
    assert (data / "train/NORMAL/empty.jpg").stat().st_size == 0

    truncated = data / "train/NORMAL/truncated.jpg"
    assert truncated.read_bytes()[:2] == b"\xff\xd8"  # starts like a JPEG
    with pytest.raises(OSError):
        with Image.open(truncated) as image:
            image.load()

    with pytest.raises(UnidentifiedImageError):
        Image.open(data / "train/PNEUMONIA/notes.txt")
    assert (data / "train/PNEUMONIA/notes.txt").read_text(encoding="utf-8").strip()

    copy = data / "train/NORMAL/NORMAL(copy).png"
    with Image.open(copy) as image:
        assert image.format == "PNG"
    original = data / "train/NORMAL/NORMAL(1).jpg"
    assert copy.read_bytes() != original.read_bytes()
    assert np.array_equal(_pixels(copy), _pixels(original))

    leak = _pixels(data / "train/PNEUMONIA/PNEUMONIA(leak).jpg")
    source = _pixels(data / "test/PNEUMONIA/PNEUMONIA(40).jpg")
    assert leak.shape == (round(source.shape[0] * 0.8), round(source.shape[1] * 0.8))
    back = np.asarray(
        Image.fromarray(leak).resize(source.shape[::-1], Image.Resampling.BILINEAR), np.float32
    )
    assert np.abs(back - source).mean() < 6  # a near-duplicate of the test image
    other = _pixels(data / "test/PNEUMONIA/PNEUMONIA(41).jpg")
    other = np.asarray(Image.fromarray(other).resize(source.shape[::-1]), np.float32)
    assert np.abs(other - source).mean() > np.abs(back - source).mean() * 2

    with Image.open(data / "train/COVID19/COVID19(tiny).jpg") as image:
        image.load()
        assert image.size == (20, 20)


def test_no_defects_when_disabled(tmp_path: Path) -> None:
    out = make_demo_dataset(
        tmp_path / "out", train_per_class=2, test_per_class=1, size=48, defects=False
    )
    names = {p.name for p in (out / "Data").rglob("*") if p.is_file()}
    assert all(NUMBERED.match(name) for name in names)
    assert len(names) == 3 * 3


# ------------------------------------------------------------------ no format shortcut


def test_sizes_are_independent_of_class() -> None:
    shapes = {name: [] for name in DEMO_CLASSES}
    for index in range(120):
        for class_name in DEMO_CLASSES:
            rng = np.random.default_rng([5, index, DEMO_CLASSES.index(class_name)])
            shapes[class_name].append(synth_cxr(rng, class_name, size=48).shape)
    aspects = {name: np.mean([w / h for h, w in s]) for name, s in shapes.items()}
    heights = {name: np.mean([h for h, _ in s]) for name, s in shapes.items()}
    widths = {name: np.mean([w for _, w in s]) for name, s in shapes.items()}
    for values, tolerance in ((aspects, 0.05), (heights, 1.5), (widths, 1.5)):
        assert max(values.values()) - min(values.values()) < tolerance, values
    for name, s in shapes.items():
        assert all(43 <= h <= 53 and 43 <= w <= 53 for h, w in s), name


# ------------------------------------------------------------------ learnability


def _thumbnails(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    features, labels, means = [], [], []
    for label, class_name in enumerate(DEMO_CLASSES):
        for path in _numbered(root / "Data" / split / class_name):
            pixels = _pixels(path)
            means.append(pixels.mean())
            thumb = Image.fromarray(pixels).resize((32, 32), Image.Resampling.BILINEAR)
            values = np.asarray(thumb, dtype=np.float64).ravel()
            features.append((values - values.mean()) / (values.std() + 1e-6))
            labels.append(label)
    return np.array(features), np.array(labels), np.array(means)[:, None]


def test_learnable_from_pattern_not_brightness(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # 40 test films per class (not the default 15) keep the accuracy estimate steady.
    out = make_demo_dataset(tmp_path / "out", train_per_class=60, test_per_class=40, defects=False)
    x_train, y_train, mean_train = _thumbnails(out, "train")
    x_test, y_test, mean_test = _thumbnails(out, "test")
    assert len(y_train) == 180 and len(y_test) == 120

    pixels = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    accuracy = pixels.fit(x_train, y_train).score(x_test, y_test)
    assert accuracy >= 0.8, accuracy

    brightness = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    mean_only = brightness.fit(mean_train, y_train).score(mean_test, y_test)
    assert mean_only <= 0.6, mean_only
    assert accuracy - mean_only >= 0.3
