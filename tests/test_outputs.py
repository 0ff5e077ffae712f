"""``predict --out`` and ``export --out``: never over an input or into a dataset; over an existing
file only when it is a previous output of the same kind, or with ``--force``; written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxrlab.cli import run
from cxrlab.evaluation import predict
from cxrlab.evaluation.predictions_csv import write_predictions
from cxrlab.models import checkpoint as checkpoint_module
from cxrlab.models.checkpoint import save_checkpoint
from cxrlab.models.registry import create_model
from cxrlab.records import ModelMeta

PREDICT = ["--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def model_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained resnet18 checkpoint (32 px)."""
    model = create_model("resnet18", ["A", "B", "C"], pretrained=False)
    return save_checkpoint(
        model,
        tmp_path_factory.mktemp("model") / "model.pt",
        ModelMeta.of(model, image_size=32, resize="squash"),
    )


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if a command loads its model: refusals must come before any work."""

    def loaded(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(predict, "load_predictor", loaded)
    monkeypatch.setattr(checkpoint_module, "load_model", loaded)


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: --out "), err
    return err


def test_predict_refuses_to_overwrite_an_input_image(
    model_pt: Path, kaggle_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reported defect: ``--out`` naming an input image replaced the JPEG by a CSV."""
    image = kaggle_tree / "Data" / "test" / "A" / "A(0).png"
    original = image.read_bytes()
    link = tmp_path / "link.csv"  # the same file through a symlink, without an image extension
    link.symlink_to(image)
    for out in (image, link):
        for force in ([], ["--force"]):  # an input is never overwritten, even with --force
            assert (
                run(["predict", str(model_pt), str(image), "--out", str(out), *PREDICT, *force])
                == 2
            )
            err = one_line_error(capsys)
            assert str(out) in err and "is an input image" in err
    assert image.read_bytes() == original


def test_predict_refuses_to_overwrite_the_model(
    model_pt: Path, kaggle_tree: Path, capsys: pytest.CaptureFixture[str], no_work: None
) -> None:
    original = model_pt.read_bytes()
    assert (
        run(
            [
                "predict",
                str(model_pt),
                str(kaggle_tree / "Data" / "test"),
                "--out",
                str(model_pt),
                *PREDICT,
            ]
        )
        == 2
    )
    assert "is an input file" in one_line_error(capsys)
    assert model_pt.read_bytes() == original


@pytest.mark.parametrize(
    ("given", "out", "message"),
    [
        ("Data/test", "Data/test/A/p.csv", "is inside the input folder"),
        ("Data/test", "Data/test/p.csv", "is inside the input folder"),
        ("Data/test", "Data/p.csv", "is inside the dataset folder"),  # beside the split folders
        (
            "Data/test/A/A(0).png",
            "Data/test/A/p.csv",
            "is inside the dataset folder",
        ),  # images given one by one
        ("Data/test/A/A(0).png", "Data/train/B/p.csv", "is inside the dataset folder"),
        ("Data/test", "elsewhere/p.png", "has an image extension"),
        ("Data/test", "elsewhere", "is a folder"),
    ],
)
def test_predict_never_writes_into_a_dataset(
    model_pt: Path,
    kaggle_tree: Path,
    capsys: pytest.CaptureFixture[str],
    no_work: None,
    given: str,
    out: str,
    message: str,
) -> None:
    (kaggle_tree / "elsewhere").mkdir()
    before = sorted(kaggle_tree.rglob("*"))
    argv = [
        "predict",
        str(model_pt),
        str(kaggle_tree / given),
        "--out",
        str(kaggle_tree / out),
        *PREDICT,
    ]
    for force in ([], ["--force"]):
        assert run(argv + force) == 2
        err = one_line_error(capsys)
        assert message in err and str(kaggle_tree / out) in err
    assert sorted(kaggle_tree.rglob("*")) == before


def test_predict_overwrites_other_files_only_with_force(
    model_pt: Path, kaggle_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    argv = [
        "predict",
        str(model_pt),
        str(kaggle_tree / "Data" / "test"),
        "--out",
        str(notes),
        *PREDICT,
    ]
    assert run(argv) == 2
    assert (
        "exists and is not a cxrlab predictions file; pass --force to overwrite"
        in one_line_error(capsys)
    )
    assert notes.read_text() == "hello\n"

    assert run([*argv, "--force"]) == 0
    assert notes.read_text().startswith("path,predicted,p_A,p_B,p_C\n")
    assert run(argv) == 0  # now a previous output: re-running the command needs no --force
    assert len(notes.read_text().splitlines()) == 1 + 6


def test_predict_may_overwrite_a_test_predictions_csv(
    model_pt: Path, kaggle_tree: Path, tmp_path: Path
) -> None:
    """The other header cxrlab writes (``test_predictions.csv`` of a run, with the true class)."""
    out = tmp_path / "test_predictions.csv"
    write_predictions(out, ["x.png"], np.array([0]), np.array([[0.9, 0.05, 0.05]]), ["A", "B", "C"])
    assert (
        run(
            [
                "predict",
                str(model_pt),
                str(kaggle_tree / "Data" / "test"),
                "--out",
                str(out),
                *PREDICT,
            ]
        )
        == 0
    )
    assert out.read_text().startswith("path,predicted,")


def test_a_failed_write_keeps_the_previous_predictions(tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    out.write_text("path,predicted,p_A,p_B,p_C\nold.png,A,1,0,0\n")
    probs = np.array(
        [[0.9, 0.1, 0, 0], [0, 0, 0, 1.0]]
    )  # the second row's class is missing: fails mid-file
    with pytest.raises(IndexError):
        write_predictions(out, ["a.png", "b.png"], None, probs, ["A", "B", "C"])
    assert out.read_text() == "path,predicted,p_A,p_B,p_C\nold.png,A,1,0,0\n"
    assert [p.name for p in tmp_path.iterdir()] == ["p.csv"]  # no temporary file left behind


@pytest.mark.parametrize("target", ["checkpoint", "image"])
def test_export_refuses_the_checkpoint_and_images(
    model_pt: Path,
    kaggle_tree: Path,
    capsys: pytest.CaptureFixture[str],
    no_work: None,
    target: str,
) -> None:
    out = model_pt if target == "checkpoint" else kaggle_tree / "Data" / "test" / "A" / "A(0).png"
    original = out.read_bytes()
    for force in ([], ["--force"]):
        assert run(["export", str(model_pt), "--onnx", "--out", str(out), *force]) == 2
        err = one_line_error(capsys)
        assert (
            str(out) in err
            and ("is an input file" if target == "checkpoint" else "has an image extension") in err
        )
    assert out.read_bytes() == original


def test_export_overwrites_other_files_only_with_force(
    model_pt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "deploy" / "model.onnx"
    out.parent.mkdir()
    out.write_text("not an onnx model\n")
    argv = ["export", str(model_pt), "--onnx", "--out", str(out)]
    assert run(argv) == 2
    assert "exists and is not a cxrlab ONNX export; pass --force to overwrite" in one_line_error(
        capsys
    )
    assert out.read_text() == "not an onnx model\n"

    assert run([*argv, "--force"]) == 0
    first = out.stat().st_ino
    assert run(argv) == 0  # re-running onto its own previous export needs no --force
    assert out.stat().st_ino != first  # written again (a new file renamed over the old one)
    assert [p.name for p in out.parent.iterdir()] == ["model.onnx"]  # no temporary file left behind


def test_split_refuses_to_overwrite_an_input(
    kaggle_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = kaggle_tree / "Data" / "train" / "A" / "A(0).png"
    before = image.read_bytes()
    for out in (image, kaggle_tree / "split.csv"):
        assert run(["split", str(kaggle_tree), "--out", str(out), "--force"]) == 2
        one_line_error(capsys)
    assert image.read_bytes() == before and not (kaggle_tree / "split.csv").exists()
    notes = tmp_path / "notes.csv"
    notes.write_text("mine\n")
    assert run(["split", str(kaggle_tree), "--out", str(notes)]) == 2
    assert "not a cxrlab split file" in one_line_error(capsys)
    split = [
        "split",
        str(kaggle_tree),
        "--out",
        str(tmp_path / "split.csv"),
        "--val-fraction",
        "0.5",
    ]
    assert run(split) == 0
    assert run(split) == 0  # its own earlier output is rewritten


def _snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    return {
        str(p.relative_to(root)): (
            p.stat().st_mtime_ns,
            p.stat().st_size,
            p.read_bytes() if p.is_file() else b"",
        )
        for p in sorted(root.rglob("*"))
    }


def test_no_command_modifies_the_dataset(
    kaggle_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (kaggle_tree / "Data" / "test" / "A" / "broken.png").write_bytes(
        b"\x89PNG\r\n\x1a\n not really"
    )
    before = _snapshot(kaggle_tree)
    data, cache, run_dir = str(kaggle_tree), str(tmp_path / "cache"), tmp_path / "run"
    common = ["--no-progress", "--workers", "1"]
    for args in (
        ["audit", data, "--out", str(tmp_path / "audit"), *common],
        ["analyze", data, "--out", str(tmp_path / "analysis"), *common],
        ["cache", data, "--image-size", "32", "--cache-dir", cache, *common],
        ["split", data, "--out", str(tmp_path / "split.csv"), "--val-fraction", "0.5"],
        [
            "train",
            data,
            "--model",
            "resnet18",
            "--preset",
            "smoke",
            "--no-pretrained",
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--val-fraction",
            "0.5",
            "--batch-size",
            "4",
            "--out",
            str(run_dir),
            "--cache-dir",
            cache,
            *common,
        ],
        [
            "predict",
            str(run_dir / "model.pt"),
            data,
            "--out",
            str(tmp_path / "p.csv"),
            "--no-progress",
        ],
        ["export", str(run_dir / "model.pt"), "--onnx"],
    ):
        assert run(args) == 0, args
    capsys.readouterr()
    for command, option in (
        ("audit", "--out"),
        ("analyze", "--out"),
        ("cache", "--cache-dir"),
        ("train", "--out"),
    ):
        assert (
            run([command, data, option, str(kaggle_tree / "Data" / "outputs"), "--no-progress"])
            == 2
        ), command
        err = capsys.readouterr().err.strip()
        assert (
            err.startswith(f"error: {option} ")
            and "inside the dataset folder" in err
            and len(err.splitlines()) == 1
        )
    assert _snapshot(kaggle_tree) == before
