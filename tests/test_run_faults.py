"""Training runs under faults and bad options: failed starts leave nothing, resume reproduces,
conflicting or impossible options are refused by name before any work (issue 11, defects 5-12)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import TINY, killed_at, train_tiny

from cxrlab.cli import run
from cxrlab.config import preset
from cxrlab.errors import CxrlabError
from cxrlab.models.registry import check_model
from cxrlab.records import read_history
from cxrlab.training import module as module_module

_train = train_tiny


def _cli_train(tiny_data: tuple[Path, Path], out: Path, *extra: str) -> int:
    root, cache = tiny_data
    return run(
        [
            "train",
            str(root),
            "--out",
            str(out),
            "--cache-dir",
            str(cache),
            "--no-progress",
            "--workers",
            "1",
            "--no-diagnose",
            *extra,
        ]
    )


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error:") and "Traceback" not in err
    return err


SMALL = [
    "--model",
    "resnet18",
    "--preset",
    "scratch",
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--val-fraction",
    "0.25",
]


def _fail_at_first_step(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self, batch, index):
        raise RuntimeError("out of memory (injected)")

    monkeypatch.setattr(module_module.ClassifierModule, "training_step", broken)


# Defect 5: a run that fails before its first epoch leaves nothing, or is recognised and replaced.
def test_failed_start_leaves_no_stub_and_the_folder_stays_usable(
    tiny_data: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    config = preset("scratch", model="resnet18", epochs=1, **TINY)
    _fail_at_first_step(monkeypatch)
    with pytest.raises(RuntimeError, match="injected"):
        _train(tiny_data, out, config)
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())
    monkeypatch.undo()
    assert _train(tiny_data, out, config).metrics.epochs_run == 1  # no "a run already exists here"


def test_stub_left_by_a_kill_is_replaced_and_not_resumed(
    tiny_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    preset("scratch", model="alexnet", image_size=96, epochs=9).save(
        out / "config.json"
    )  # killed before epoch 1
    (out / "split.csv").write_text("path,class,subset\n")
    (out / "notes.txt").write_text("mine")
    assert _cli_train(tiny_data, out, "--resume") == 2
    assert "never finished an epoch" in one_line_error(capsys)
    assert _cli_train(tiny_data, out, *SMALL, "--epochs", "1") == 0
    assert "failed before its first epoch" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["model"] == "resnet18"
    assert (out / "notes.txt").read_text() == "mine"  # only cxrlab's own files are replaced


# Defect 6: --resume shows the stored recipe and refuses conflicting options by name.
def test_resume_banner_is_the_stored_run_and_conflicts_are_refused(
    tiny_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert _cli_train(tiny_data, out, *SMALL, "--epochs", "1") == 0
    capsys.readouterr()
    assert (
        _cli_train(
            tiny_data, out, "--resume", "--model", "alexnet", "--image-size", "128", "--epochs", "1"
        )
        == 2
    )
    err = one_line_error(capsys)
    assert (
        "--model alexnet" in err and "resnet18" in err and "--image-size 128" in err and "32" in err
    )
    assert "--epochs" not in err  # the same value as stored is no conflict
    assert _cli_train(tiny_data, out, "--resume") == 0
    banner = capsys.readouterr().out
    assert "Resuming resnet18 finetune (from scratch), 32px squash, 1 epochs" in banner
    assert _cli_train(tiny_data, out, "--resume", "--preset", "smoke") == 2
    assert "--preset smoke" in one_line_error(capsys)


# Defect 7: a run resumed at an epoch boundary is the run it would have been.
@pytest.mark.parametrize("balance", ["weights", "sampler"])
def test_resumed_run_equals_the_uninterrupted_run(
    tiny_data: tuple[Path, Path], tmp_path: Path, balance: str
) -> None:
    config = preset("scratch", model="resnet18", epochs=3, patience=10, balance=balance, **TINY)
    whole = _train(tiny_data, tmp_path / "whole", config)

    with killed_at(epoch=1), pytest.raises(RuntimeError, match="killed"):
        _train(tiny_data, tmp_path / "resumed", config)
    resumed = _train(tiny_data, tmp_path / "resumed", config, resume=True)

    strip = lambda rows: [replace(row, epoch_time_s=0.0) for row in rows]  # noqa: E731
    assert strip(read_history(resumed.run_dir / "history.csv")) == strip(
        read_history(whole.run_dir / "history.csv")
    )
    for key in ("test", "intervals", "best_epoch", "epochs_run", "best_val_macro_f1"):
        assert getattr(resumed.metrics, key) == getattr(whole.metrics, key), key
    assert (resumed.run_dir / "test_predictions.csv").read_text() == (
        whole.run_dir / "test_predictions.csv"
    ).read_text()


# Defect 8: each model states its smallest input; smaller is refused before any work.
def test_too_small_images_are_refused_before_any_work(
    tiny_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(CxrlabError, match="image_size 32: alexnet needs at least 63 px"):
        check_model("alexnet", 32)
    check_model("alexnet", 63)
    check_model("resnet18", 16)
    root, _ = tiny_data
    cache = tmp_path / "cache"
    assert (
        run(
            [
                "train",
                str(root),
                "--model",
                "alexnet",
                "--image-size",
                "32",
                "--out",
                str(tmp_path / "r"),
                "--cache-dir",
                str(cache),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "--image-size 32: alexnet needs at least 63 px" in one_line_error(capsys)
    assert not cache.exists() and not (tmp_path / "r").exists()
    assert (
        run(
            [
                "compare",
                str(root),
                "--models",
                "resnet18",
                "alexnet",
                "--image-size",
                "32",
                "--no-audit",
                "--out",
                str(tmp_path / "c"),
                "--cache-dir",
                str(cache),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "alexnet needs at least 63 px" in one_line_error(capsys)
    assert not cache.exists()


# Defect 9: errors that fell through as a generic exit 1 now name the option or the file.
def test_gpu_asked_for_without_a_gpu(
    tiny_data: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _cli_train(tiny_data, tmp_path / "r", *SMALL, "--accelerator", "gpu") == 2
    assert "--accelerator gpu" in one_line_error(capsys)
    for option, value in (
        ("--accelerator", "tpu9"),
        ("--precision", "8-bit"),
        ("--strategy", "ddp_banana"),
        ("--devices", "two"),
    ):
        assert _cli_train(tiny_data, tmp_path / "r", *SMALL, option, value) == 2
        err = one_line_error(capsys)
        assert option in err and value in err
    assert not (tmp_path / "r").exists()


def _interrupted_run(tiny_data: tuple[Path, Path], out: Path) -> Path:
    """A run killed in its second epoch: last.ckpt holds epoch 1."""
    with killed_at(epoch=1), pytest.raises(RuntimeError, match="killed"):
        _train(tiny_data, out, preset("scratch", model="resnet18", epochs=2, **TINY))
    return out / "checkpoints" / "last.ckpt"


class Payload:
    def __reduce__(self):
        return (print, ("pickle payload ran",))


@pytest.mark.parametrize("damage", ["truncated", "unpicklable"])
def test_damaged_last_checkpoint_on_resume_names_the_file(
    tiny_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    last = _interrupted_run(tiny_data, tmp_path / "run")
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[:5000])
    else:
        last.write_bytes(pickle.dumps({"state_dict": Payload()}))
    capsys.readouterr()
    assert _cli_train(tiny_data, tmp_path / "run", "--resume") == 2
    err = one_line_error(capsys)
    assert "last.ckpt" in err and "--resume" in err
    assert "pickle payload ran" not in capsys.readouterr().out


# Defect 10: unreadable files are named, and split.csv and the counts agree.
def test_unreadable_files_are_reported_and_left_out_of_split(
    tiny_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_data[0], root)
    (root / "Data" / "test" / "NORMAL" / "broken.jpg").write_bytes(
        b"\xff\xd8\xff not really a jpeg"
    )
    out = tmp_path / "run"
    assert (
        run(
            [
                "train",
                str(root),
                *SMALL,
                "--epochs",
                "1",
                "--out",
                str(out),
                "--cache-dir",
                str(tmp_path / "c"),
                "--no-progress",
                "--no-diagnose",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "broken.jpg" in printed and "skipped" in printed
    split_rows = (out / "split.csv").read_text().splitlines()[1:]
    assert not any("broken.jpg" in row for row in split_rows)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n"] == sum(",test," in row for row in split_rows) == 9
    assert "Data/test/NORMAL/broken.jpg" in metrics["skipped"]


# Defect 11: an unknown model is named as given, with train's own option, before any caching.
@pytest.mark.parametrize("name", ["resnet_banana", "timm:resnet_banana"])
def test_unknown_model_is_refused_first(
    tiny_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    cache = tmp_path / "cache"
    assert (
        run(
            [
                "train",
                str(tiny_data[0]),
                "--model",
                name,
                "--out",
                str(tmp_path / "r"),
                "--cache-dir",
                str(cache),
                "--no-progress",
            ]
        )
        == 2
    )
    err = one_line_error(capsys)
    assert f"--model {name}:" in err and "--models" not in err
    assert not cache.exists()


# Defect 12: an impossible DDP layout is refused once, before any process is started.
def test_indivisible_batch_is_refused_before_spawning(
    tiny_data: tuple[Path, Path], tmp_path: Path
) -> None:
    root, cache = tiny_data
    args = [
        "train",
        str(root),
        *SMALL,
        "--accelerator",
        "cpu",
        "--devices",
        "3",
        "--strategy",
        "ddp",
        "--batch-size",
        "16",
    ]
    args += [
        "--out",
        str(tmp_path / "r"),
        "--cache-dir",
        str(cache),
        "--no-progress",
        "--workers",
        "1",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "cxrlab", *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--batch-size 16" in lines[0] and "3" in lines[0], done.stderr
    assert not (tmp_path / "r").exists()


def test_a_second_process_cannot_train_into_a_busy_folder(
    tiny_data: tuple[Path, Path], tmp_path: Path
) -> None:
    from cxrlab.fileio import locked

    out = tmp_path / "run"
    out.mkdir()
    with (
        locked(out),
        pytest.raises(CxrlabError, match="another cxrlab process is training into this folder"),
    ):
        _train(tiny_data, out, preset("scratch", model="resnet18", epochs=1, **TINY))
    assert list(out.iterdir()) == []
