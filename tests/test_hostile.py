"""Hostile input through the command line (issue 23): DICOMs pydicom cannot window, symlinks in
a dataset, cells a spreadsheet would run, files that are blank or far too large."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, save, smooth_image, train_tiny
from test_reader import write_dicom

from cxrlab.cli import run
from cxrlab.fileio import csv_dict_reader, open_text


@pytest.fixture(scope="module")
def model(tiny_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run's ``model.pt``."""
    from cxrlab.config import preset

    out = tmp_path_factory.mktemp("hostile") / "run"
    train_tiny(tiny_data, out, preset("scratch", model="resnet18", epochs=1, **TINY))
    return out / "model.pt"


def manifest_rows(audit: Path) -> dict[str, dict[str, str]]:
    """The audit's ``manifest.csv`` by path."""
    with open_text(audit / "manifest.csv") as handle:
        return {row["path"]: row for row in csv.DictReader(handle)}


def window_zero(path: Path) -> Path:
    """A DICOM whose WindowWidth is 0 (pydicom refuses to apply that window)."""
    return write_dicom(path, np.ones((16, 16)), WindowCenter=1, WindowWidth=0)


def test_predict_names_an_unwindowable_dicom_in_one_line(
    model: Path, tiny_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Named on the command line: exit 2, one line naming it, nothing written. In a folder: the
    others are predicted and it is listed as skipped."""
    folder = tmp_path / "films"
    folder.mkdir()
    good = next((tiny_data[0] / "Data" / "test" / "NORMAL").glob("*.*"))
    (folder / good.name).write_bytes(good.read_bytes())
    bad = window_zero(folder / "w0.dcm")
    out = tmp_path / "p.csv"
    common = ["--out", str(out), "--no-progress", "--device", "cpu"]
    assert run(["predict", str(model), str(bad), *common]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}: corrupt:") and "window" in err.lower()
    assert "\n" not in err and "Traceback" not in err and not out.exists()
    assert run(["predict", str(model), str(folder), *common]) == 0
    assert f"skipped {bad}: corrupt" in capsys.readouterr().err.replace("\n", "")
    with open_text(out) as handle:
        assert [row["path"] for row in csv.DictReader(handle)] == [str(folder / good.name)]


def test_audit_lists_an_unwindowable_dicom(
    tiny_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    for split in ("train", "test"):
        for label in ("A", "B"):
            source = tiny_data[0] / "Data" / split / ("NORMAL" if label == "A" else "PNEUMONIA")
            target = data / "Data" / split / label
            target.mkdir(parents=True)
            for film in sorted(source.iterdir())[:3]:
                (target / film.name).write_bytes(film.read_bytes())
    window_zero(data / "Data" / "train" / "A" / "w0.dcm")
    audit = tmp_path / "audit"
    args = ["audit", str(data), "--out", str(audit), "--no-progress", "--workers", "1"]
    assert run(args) == 0, capsys.readouterr().err
    assert manifest_rows(audit)["Data/train/A/w0.dcm"]["reasons"].startswith("unreadable: corrupt")


def small_dataset(root: Path, per_class: int = 3) -> Path:
    """Two classes, A and B, of ``per_class`` distinct 80x96 films each in train and test."""
    seed = 100
    for split in ("train", "test"):
        for label in ("A", "B"):
            for _ in range(per_class):
                save(root / "Data" / split / label / f"{seed}.png", smooth_image(seed))
                seed += 1
    return root


def audit(data: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, str]]:
    args = ["audit", str(data), "--out", str(out), "--no-progress", "--workers", "1"]
    assert run(args) == 0, capsys.readouterr().err
    return manifest_rows(out)


def test_symlinks_are_listed_never_dropped(
    tiny_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dangling link, a loop and a link to a folder are listed as unreadable with the reason;
    a link to a film outside the dataset is read and flagged as such."""
    from cxrlab.data.discover import discover

    data = small_dataset(tmp_path / "data")
    folder = data / "Data" / "train" / "A"
    outside = tmp_path / "elsewhere.png"
    save(outside, smooth_image(1))
    (folder / "dangling.png").symlink_to("nowhere.png")
    (folder / "loop.png").symlink_to("loop.png")
    (folder / "up").symlink_to("..")
    (folder / "outside.png").symlink_to(outside)
    links = {"dangling.png", "loop.png", "up", "outside.png"}
    found = {s.path.name for s in discover(data).samples if s.path.parent == folder}
    assert links <= found
    rows = audit(data, tmp_path / "audit", capsys)
    reasons = {name: rows[f"Data/train/A/{name}"]["reasons"] for name in links}
    assert reasons["dangling.png"] == (
        "unreadable: unreadable: symbolic link to nowhere.png: No such file or directory"
    )
    assert "symbolic link to loop.png: Too many levels of symbolic links" in reasons["loop.png"]
    assert reasons["up"] == "unreadable: unreadable: symbolic link to ..: a folder, not followed"
    assert rows["Data/train/A/outside.png"]["status"] == "warning"
    assert reasons["outside.png"].startswith("outside: a symbolic link read from outside")
    assert str(outside) in reasons["outside.png"]


def test_audit_flags_blank_and_oversized_films(
    tiny_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = small_dataset(tmp_path / "data")
    folder = data / "Data" / "train" / "B"
    save(folder / "blank.png", np.zeros((80, 80), dtype=np.uint8))
    save(folder / "grey.png", np.full((80, 80), 128, dtype=np.uint8))
    wide = np.tile(np.linspace(0, 255, 5001).astype(np.uint8), (64, 1))
    save(folder / "huge.png", wide)
    rows = audit(data, tmp_path / "audit", capsys)
    for name in ("blank.png", "grey.png"):
        row = rows[f"Data/train/B/{name}"]
        assert row["status"] == "warning" and row["reasons"].startswith("blank: "), name
    huge = rows["Data/train/B/huge.png"]
    assert huge["status"] == "warning" and huge["reasons"].startswith("very_large: 5001x64")
    ordinary = [r for p, r in rows.items() if p.startswith("Data/test/")]
    assert all(r["status"] == "ok" for r in ordinary)
    assert "kept with a warning" in capsys.readouterr().out


def test_csv_files_never_hold_a_formula(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A film named ``=1+1.jpg`` and a class folder named ``=cmd|calc``: the cells of
    predictions.csv and manifest.csv start with an apostrophe, and cxrlab reads them back."""
    from cxrlab.data.audit import read_manifest

    data = small_dataset(tmp_path / "data")
    for split in ("train", "test"):
        (data / "Data" / split / "B").rename(data / "Data" / split / "=cmd|calc")
    film = next((data / "Data" / "test" / "A").iterdir())
    formula = film.with_name("=1+1.png")
    film.rename(formula)
    rows = audit(data, tmp_path / "audit", capsys)
    text = (tmp_path / "audit" / "manifest.csv").read_text()
    assert ",'=cmd|calc," in text and ",=cmd" not in text and "\n=" not in text
    assert rows["Data/test/A/=1+1.png"]["path"] == "Data/test/A/=1+1.png"
    assert "Data/test/A/=1+1.png" in read_manifest(tmp_path / "audit")
    out = tmp_path / "p.csv"
    monkeypatch.chdir(formula.parent)  # the name as typed: the cell starts with "="
    args = ["predict", str(model), formula.name, "--out", str(out), "--no-progress"]
    assert run([*args, "--device", "cpu"]) == 0
    assert out.read_text().splitlines()[1].startswith("'=1+1.png,")
    with open_text(out) as handle:
        assert [row["path"] for row in csv_dict_reader(handle)] == ["=1+1.png"]


def smoke_train(data: Path, out: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "train", str(data), "--model", "resnet18", "--preset", "smoke", "--no-pretrained",
        "--image-size", "32", "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
        "--no-progress", "--workers", "1", "--no-diagnose", *extra,
    ]  # fmt: skip


def test_a_read_only_or_full_output_is_refused_before_the_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a probe before anything is read or trained (a real read-only mount needs more
    than a test may do: the file system's answer is simulated)."""
    import errno
    import shutil
    import tempfile

    from cxrlab import fileio

    data = small_dataset(tmp_path / "data")
    run_dir = tmp_path / "runs" / "one"

    def read_only(*args: object, **kwargs: object) -> object:
        raise OSError(errno.EROFS, "Read-only file system")

    with monkeypatch.context() as patch:
        patch.setattr(tempfile, "TemporaryFile", read_only)
        assert run(smoke_train(data, run_dir, tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --out {run_dir}: cannot write in {tmp_path} (read-only file system)"
    assert not run_dir.exists() and not (tmp_path / "cache").exists()

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(fileio.shutil, "disk_usage", lambda p: usage._replace(free=4096))
    assert run(smoke_train(data, run_dir, tmp_path)) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --out {run_dir}: no space left on device: {tmp_path}"
    )
    out = tmp_path / "p.csv"
    film = next((data / "Data" / "test" / "A").iterdir())
    assert run(["predict", str(tmp_path / "model.pt"), str(film), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --out {out}: no space left on device: {tmp_path}"
    )


def test_a_full_disk_under_the_cache_is_one_line_and_leaves_no_orphan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The array's blocks are allocated before the memory map writes them: a full disk is an
    error there (not a SIGBUS later), the new array is removed and the earlier cache stays."""
    import errno
    import os

    data = small_dataset(tmp_path / "data")
    cache = tmp_path / "cache"
    args = ["cache", str(data), "--image-size", "32", "--cache-dir", str(cache), "--no-progress"]
    assert run(args) == 0
    before = sorted(p.name for p in cache.rglob("*"))
    save(data / "Data" / "train" / "A" / "new.png", smooth_image(99))

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    capsys.readouterr()
    assert run(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no space left on device: ") and "\n" not in err
    assert str(cache) in err and " MB)" in err
    assert sorted(p.name for p in cache.rglob("*")) == before  # no orphan, index untouched
    monkeypatch.undo()
    assert run(args) == 0


@pytest.mark.parametrize(
    ("sig", "epoch", "status", "said"),
    [
        ("SIGINT", 1, 130, "last.ckpt keeps the last finished epoch; go on with: cxrlab train"),
        ("SIGTERM", 0, 143, "no epoch had finished, so nothing was kept"),
    ],
)
def test_ctrl_c_or_sigterm_in_train_says_what_was_kept(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    sig: str,
    epoch: int,
    status: int,
    said: str,
) -> None:
    import os
    import signal

    from cxrlab.training import trainer as run_module

    def interrupt(self, trainer, module, batch, index) -> None:
        if trainer.current_epoch == epoch and index == 0:
            os.kill(os.getpid(), getattr(signal, sig))

    monkeypatch.setattr(run_module.HistoryWriter, "on_train_batch_start", interrupt, raising=False)
    data = small_dataset(tmp_path / "data", per_class=8)
    run_dir = tmp_path / "run"
    assert run(smoke_train(data, run_dir, tmp_path, "--epochs", "2")) == status
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"interrupted ({sig}): ") and said in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    if epoch:
        assert f"--out {run_dir} --resume" in err
        assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_an_audit_of_cjk_and_emoji_names_warns_of_no_glyphs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The duplicates figure shows the names; matplotlib's "Glyph ... missing" warnings (16
    lines for such an audit) are not shown."""
    import warnings

    data = small_dataset(tmp_path / "data")
    film = smooth_image(7)
    save(data / "Data" / "train" / "A" / "胸部X線写真.png", film)
    save(data / "Data" / "train" / "A" / "🫁 lungs.png", film)  # an exact copy: in the figure
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = audit(data, tmp_path / "audit", capsys)
    assert "duplicate" in rows["Data/train/A/🫁 lungs.png"]["reasons"]
    glyphs = [str(w.message) for w in caught if "Glyph" in str(w.message)]
    assert not glyphs and "Glyph" not in capsys.readouterr().err


def test_the_audit_measures_a_film_within_the_memory_budget(tmp_path: Path) -> None:
    """The audit's statistics of a film (mean, std, histogram, hash) add no per-pixel float64
    copies: scanning a 1-megapixel film allocates at most 4 bytes a pixel (tracemalloc; Pillow's
    own decoded image comes on top); with float64 statistics it took 10."""
    import tracemalloc

    from cxrlab.data.discover import Sample
    from cxrlab.data.scan import scan_file

    side = 1000
    pixels = np.random.default_rng(0).integers(0, 256, (side, side), dtype=np.uint8)
    path = save(tmp_path / "film.png", pixels)
    tracemalloc.start()
    try:
        record = scan_file(Sample(path, "train", 0), path.name)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert record.mean == pytest.approx(pixels.mean()) and record.std == pytest.approx(pixels.std())
    expected = np.bincount(pixels.ravel() >> 2, minlength=64) / pixels.size
    assert np.allclose(record.histogram, expected)
    assert peak <= 4 * side * side, f"{peak / side**2:.1f} bytes per pixel"
