from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import typer

from cxrlab.cli import app, run
from cxrlab.errors import CxrlabError


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error:") and "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "data"
    args = [
        "demo-data",
        str(root),
        "--train-per-class",
        "6",
        "--test-per-class",
        "3",
        "--size",
        "96",
    ]
    assert run(args) == 0
    return root


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("download", "demo-data", "audit", "analyze", "cache", "split", "demo"):
        assert run([command, "--help"]) == 0
        assert "Usage" in capsys.readouterr().out


def test_audit_analyze_cache_split(
    demo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audit_dir = tmp_path / "audit"
    assert (
        run(["audit", str(demo_root), "--out", str(audit_dir), "--no-progress", "--workers", "1"])
        == 0
    )
    out = capsys.readouterr().out
    assert "LEAKAGE" in out and "Shortcut check" in out
    assert (audit_dir / "manifest.csv").is_file()
    assert run(["analyze", str(demo_root), "--out", str(tmp_path / "an"), "--no-progress"]) == 0
    assert (tmp_path / "an" / "summary.md").is_file()
    assert (
        run(
            [
                "cache",
                str(demo_root),
                "--image-size",
                "32",
                "--cache-dir",
                str(tmp_path / "c"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "unreadable" in capsys.readouterr().out
    split_csv = tmp_path / "split.csv"
    assert (
        run(["split", str(demo_root), "--out", str(split_csv), "--manifest", str(audit_dir)]) == 0
    )
    text = split_csv.read_text()
    assert "leak" not in text and "empty.jpg" not in text and ",test,data\n" in text


def test_missing_folder_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run(["audit", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: dataset folder does not exist" in one_line_error(capsys)
    # train says so before its banner ("Training resnet18 ..."), and nothing else
    assert run(["train", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")]) == 2
    said = capsys.readouterr()
    assert said.out == "" and said.err.strip().endswith("nowhere: dataset folder does not exist")
    assert len(said.err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_wrong_option_value_names_the_option(
    demo_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["cache", str(demo_root), "--resize", "crop"]) == 2
    assert "--resize" in one_line_error(capsys)
    assert run(["audit", str(demo_root), "--min-size", "0"]) == 2
    assert "--min-size" in capsys.readouterr().err


def test_debug_shows_the_exception(tmp_path: Path) -> None:
    with pytest.raises(CxrlabError):
        run(["--debug", "audit", str(tmp_path / "nowhere")])


def test_download_offline_says_how_to_place_data(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import kagglehub

    def offline(*args: object, **kwargs: object) -> str:
        raise ConnectionError("Failed to resolve 'www.kaggle.com'")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    assert run(["download", "--out", str(tmp_path / "kaggle")]) == 2
    err = one_line_error(capsys)
    assert "no internet connection" in err and "by hand" in err and "Data/train/<CLASS>" in err


def test_download_calls_kagglehub_and_indexes(
    monkeypatch: pytest.MonkeyPatch,
    demo_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import kagglehub

    calls = {}

    def fake(handle: str, **kwargs: object) -> str:
        calls.update(kwargs, handle=handle)
        return str(demo_root)

    monkeypatch.setattr(kagglehub, "dataset_download", fake)
    assert run(["download", "--out", str(tmp_path / "k")]) == 0
    assert calls["handle"] == "prashant268/chest-xray-covid19-pneumonia"
    assert calls["output_dir"] == str(tmp_path / "k")
    assert "COVID19, NORMAL, PNEUMONIA" in capsys.readouterr().out


def test_quick_start_demo(tmp_path: Path) -> None:
    assert run(["demo", str(tmp_path / "demo"), "--no-progress"]) == 0
    for rel in (
        "audit/audit.md",
        "analysis/summary.md",
        "compare/report.html",
        "compare/results.csv",
    ):
        assert (tmp_path / "demo" / rel).is_file(), rel
    report = (tmp_path / "demo" / "compare" / "report.html").read_text()
    assert "alexnet-finetune-scratch-s0" in report and "resnet18-finetune-scratch-s0" in report
    assert 'id="robustness"' in report and 'id="gradcam"' in report and "not computed" not in report
    for name in ("alexnet", "resnet18"):  # the recipe the demo promises: 64 px, 4 epochs
        saved = json.loads(
            (
                tmp_path
                / "demo"
                / "compare"
                / "runs"
                / f"{name}-finetune-scratch-s0"
                / "config.json"
            ).read_text()
        )
        assert (saved["image_size"], saved["epochs"], saved["pretrained"]) == (64, 4, False)


def test_compare_takes_several_values_after_one_flag(demo_root: Path) -> None:
    """compare's repeatable --models/--seeds/--weights/--external take several values after one
    flag; the other options, and train's --weights, take one (DATA after them stays DATA)."""
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    args = ["D", "--models", "a", "b", "--mode", "both", "--seeds", "0", "1"]
    ctx = commands["compare"].make_context("compare", [*args, "--add-source", "x=y"])
    assert (ctx.params["models"], ctx.params["seeds"]) == (["a", "b"], [0, 1])
    assert (ctx.params["mode"], ctx.params["add_source"], ctx.params["data"]) == (
        "both",
        ["x=y"],
        Path("D"),
    )
    ctx = commands["train"].make_context("train", ["--weights", "w.pt", str(demo_root)])
    assert (ctx.params["weights"], ctx.params["data"]) == (Path("w.pt"), demo_root)


@pytest.mark.parametrize(
    ("args", "line"),
    [  # a setting the library names by its field, written as the option that set it
        (["compare", "{data}", "--models", "timm:resnet_banana"], "--models timm:resnet_banana:"),
        (["train", "{data}", "--model", "timm:resnet_banana"], "--model timm:resnet_banana:"),
        (
            ["train", "{data}", "--model", "alexnet", "--image-size", "32"],
            "--image-size 32: alexnet needs at least 63 px (e.g. --image-size 63)",
        ),
        (["train", "{data}", "--lr", "0"], "--lr: must be positive"),
        (["train", "{data}", "--add-source", "a"], "--add-source a: write NAME=DIR"),
        (["train", "{data}", "--target-recall", "X"], "e.g. --target-recall COVID19=0.95"),
    ],
)
def test_library_errors_name_the_option(
    demo_root: Path, capsys: pytest.CaptureFixture[str], args: list[str], line: str
) -> None:
    assert run([a.format(data=demo_root) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert line in err and len(err.splitlines()) == 1, err


def test_train_then_predict(
    demo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    args = [
        "train",
        str(demo_root),
        "--model",
        "resnet18",
        "--preset",
        "smoke",
        "--no-pretrained",
        "--image-size",
        "32",
    ]
    args += [
        "--out",
        str(run_dir),
        "--cache-dir",
        str(tmp_path / "c"),
        "--no-progress",
        "--workers",
        "1",
    ]
    assert run(args) == 0
    assert "accuracy" in capsys.readouterr().out
    card = (run_dir / "MODEL_CARD.md").read_text()
    assert "Not evaluated on any external set" in card and "## Robustness probes" in card
    assert "lungs hidden: balanced accuracy" in card and "lung fields found on" in card
    for name in ("robustness.json", "gradcam.json", "gradcam.png"):  # diagnostics after testing
        assert (run_dir / name).is_file(), name
    robustness = json.loads((run_dir / "robustness.json").read_text())
    assert list(robustness["variants"]) == [
        "squash",
        "pad",
        "rotate+10",
        "rotate-10",
        "darken",
        "lungs-hidden",
        "lungs-only",
    ]
    assert set(robustness["lung_fields"]["segmented_by_class"]) == {
        "COVID19",
        "NORMAL",
        "PNEUMONIA",
    }
    assert robustness["chance"]["balanced_accuracy"] == pytest.approx(1 / 3)
    assert robustness["variants"]["squash"]["accuracy"] == pytest.approx(
        json.loads((run_dir / "metrics.json").read_text())["test"]["accuracy"]
    )
    assert run(["explain", str(run_dir), "--data", str(tmp_path / "elsewhere")]) == 2
    assert "elsewhere: dataset folder does not exist" in capsys.readouterr().err
    folder = tmp_path / "new"
    folder.mkdir()
    for name in ("a.jpg", "b.png"):
        shutil.copy(next((demo_root / "Data" / "test" / "NORMAL").glob("*.jpg")), folder / name)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    out_csv = tmp_path / "p.csv"
    assert (
        run(
            [
                "predict",
                str(run_dir / "model.pt"),
                str(folder),
                "--out",
                str(out_csv),
                "--no-progress",
            ]
        )
        == 0
    )
    rows = out_csv.read_text().splitlines()
    assert rows[0] == "path,predicted,p_COVID19,p_NORMAL,p_PNEUMONIA" and len(rows) == 3
    assert "broken.jpg" in capsys.readouterr().err
    assert run(["predict", str(out_csv), str(folder)]) == 2
    assert "p.csv" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "{data}", "--mode", "half"], "--mode"),
        (["train", "{data}", "--weights", "missing.pth"], "missing.pth"),
        (["train", "{data}", "--resume"], "--resume"),
        (["train", "{data}", "--preset", "fast"], "--preset"),
        (["compare", "{data}", "--models", "alexnet", "--weights", "resnet18=x.pth"], "--weights"),
        (["compare", "{data}", "--mode", "half"], "--mode"),
    ],
)
def test_training_options_fail_in_one_line(
    demo_root: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert run([a.format(data=demo_root) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_train_from_a_recipe_file(
    demo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--config: the file's fields over the preset's, options typed over both; the run's saved
    config.json is itself a recipe file; an unknown field is one line naming the file."""
    from cxrlab.config import RecipeFile

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "model: mobilenet_v2\nepochs: 1\nimage_size: 32\npretrained: false\nlr: 0.002\n"
    )
    run_dir = tmp_path / "run"
    args = ["train", str(demo_root), "--preset", "smoke", "--config", str(recipe), "--lr", "0.003"]
    args += ["--out", str(run_dir), "--cache-dir", str(tmp_path / "c"), "--no-progress"]
    assert run([*args, "--workers", "1", "--no-diagnose"]) == 0
    saved = json.loads((run_dir / "config.json").read_text())
    assert (saved["model"], saved["epochs"], saved["image_size"]) == ("mobilenet_v2", 1, 32)
    assert (saved["pretrained"], saved["lr"], saved["batch_size"]) == (False, 0.003, 16)  # smoke
    assert RecipeFile.read(run_dir / "config.json").fields == saved
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 1\nmixup: 0.2\n")
    capsys.readouterr()
    assert run(["train", str(demo_root), "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "bad.yaml: unknown field(s) mixup" in err and len(err.splitlines()) == 1
    bad.write_text("epochs: 0\n")  # a bad value is named where it came from: the file
    assert run(["train", str(demo_root), "--config", str(bad)]) == 2
    assert f"--config {bad}: epochs: must be at least 1" in capsys.readouterr().err
    assert run(["train", str(demo_root), "--config", str(recipe), "--resume", "--out", "x"]) == 2
    assert "--config" in capsys.readouterr().err


def test_compare_recipe_file_splits_shared_and_fine_tuned_fields(
    demo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cxrlab.config import RecipeFile
    from cxrlab.pipelines.compare import plan_runs

    recipe = tmp_path / "r.yaml"
    recipe.write_text("image_size: 64\nnum_workers: 2\nlr: 0.01\n")
    frozen, tuned = plan_runs(
        ["resnet18"], "both", file=RecipeFile.read(recipe), typed={"lr": 0.02}, head_epochs=3
    )[0]
    assert (frozen.mode, frozen.image_size, frozen.num_workers) == ("frozen", 64, 2)
    assert (frozen.lr, frozen.epochs) == (1e-3, 3)  # the frozen recipe's, and --head-epochs
    assert (tuned.image_size, tuned.num_workers, tuned.lr) == (64, 2, 0.02)  # typed over file
    recipe.write_text("model: alexnet\nlr: 0.01\n")
    assert run(["compare", str(demo_root), "--config", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert "r.yaml: model is set per run by compare" in err and len(err.splitlines()) == 1


def test_no_progress_is_read_from_the_command_run() -> None:
    """Progress bars are the process's setting: hidden when the command run (a nested one
    included) gets its --no-progress, and only then."""
    from cxrlab.cli.options import hides_progress, invoked_command

    cases = {
        ("lungs", "train", "--no-progress"): ("train", True),
        ("--debug", "train", "D", "--no-progress"): ("train", True),
        ("train", "D"): ("train", False),
        ("--help",): (None, False),
        ("lungs",): (None, False),
    }
    for argv, (name, hidden) in cases.items():
        command = invoked_command(app, list(argv))
        assert (command.name if command else None, hides_progress(app, list(argv))) == (
            name,
            hidden,
        ), argv
