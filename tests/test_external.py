"""``cxrlab evaluate``: a finished model scored on another labelled set, beside its own test
split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, train_tiny

from cxrlab.cli import run
from cxrlab.config import preset
from cxrlab.evaluation.external import load_evaluation, score


def test_subset_metrics_by_hand() -> None:
    classes = ["A", "B", "C"]  # C has no films in this set
    y_true = np.array([0, 0, 0, 1, 1])
    called = np.array([0, 0, 2, 1, 0])
    probs = np.full((5, 3), 0.1)
    probs[np.arange(5), called] = 0.8
    result = score(y_true, probs, classes, n_boot=200)
    assert result.present == ["A", "B"]
    assert result.per_class["A"].recall.value == pytest.approx(2 / 3)
    assert result.per_class["B"].recall.value == pytest.approx(1 / 2)
    assert result.balanced_accuracy.value == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert result.accuracy.value == pytest.approx(3 / 5)
    assert result.per_class["A"].precision.value == pytest.approx(
        2 / 3
    )  # A called 3 times, right twice
    assert result.per_class["B"].precision.value == pytest.approx(1.0)
    assert result.per_class["A"].called == {
        "A": 2,
        "B": 0,
        "C": 1,
    }  # how often A is called the absent C
    assert result.macro_f1 is None and result.macro_auc is None  # not defined without C
    low, high = result.balanced_accuracy.low, result.balanced_accuracy.high
    assert 0 <= low <= result.balanced_accuracy.value <= high <= 1
    full = score(np.array([0, 1, 2]), np.eye(3), classes, n_boot=50)
    assert full.macro_f1 == pytest.approx(1.0) and full.macro_auc == pytest.approx(1.0)


@pytest.fixture(scope="module")
def finished_run(tiny_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    train_tiny(tiny_data, out, preset("scratch", model="resnet18", epochs=1, **TINY))
    return out


def _external_set(tiny_data: tuple[Path, Path], root: Path, classes: tuple[str, ...]) -> Path:
    """Plain <CLASS>/ folders holding copies of the tiny test films of ``classes``."""
    for name in classes:
        shutil.copytree(tiny_data[0] / "Data" / "test" / name, root / name)
    return root


def test_evaluate_a_run_on_a_set_with_a_subset_of_classes(
    tiny_data: tuple[Path, Path],
    finished_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = _external_set(tiny_data, tmp_path / "adults", ("COVID19", "NORMAL"))
    (data / "NORMAL" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    assert run(["evaluate", str(finished_run), str(data), "--no-progress", "--device", "cpu"]) == 0
    printed = capsys.readouterr()
    folder = finished_run / "external" / "adults"
    evaluation = load_evaluation(folder)
    assert evaluation.present == ["COVID19", "NORMAL"] and evaluation.absent == ["PNEUMONIA"]
    assert (
        evaluation.n == 6
        and list(evaluation.skipped) == ["NORMAL/broken.jpg"]
        and "broken.jpg" in printed.err
    )
    assert evaluation.macro_f1 is None and "not defined here (PNEUMONIA absent)" in printed.out
    # the same films as the run's own test split: the same recalls, so no gap
    own = json.loads((finished_run / "metrics.json").read_text())["test"]["per_class"]
    for name in ("COVID19", "NORMAL"):
        assert evaluation.per_class[name].recall.value == pytest.approx(own[name]["recall"])
        assert evaluation.internal.recall[name] == pytest.approx(own[name]["recall"])
        assert sum(evaluation.per_class[name].called.values()) == 3
    rows = (folder / "predictions.csv").read_text().splitlines()
    assert rows[0] == "path,true,predicted,p_COVID19,p_NORMAL,p_PNEUMONIA" and len(rows) == 7
    assert "own test split" in printed.out and "How each class is called" in printed.out
    card = (finished_run / "MODEL_CARD.md").read_text()  # rewritten with this result
    assert (
        "## Off its own test split" in card
        and "**adults** (6 films, classes COVID19, NORMAL)" in card
    )
    assert "Not a diagnostic device" in card or "**Not a " in card


def test_evaluate_the_onnx_export_and_a_kaggle_split(
    tiny_data: tuple[Path, Path], finished_run: Path, tmp_path: Path
) -> None:
    onnx = tmp_path / "model.onnx"
    assert run(["export", str(finished_run / "model.pt"), "--onnx", "--out", str(onnx)]) == 0
    assert (
        run(
            [
                "evaluate",
                str(onnx),
                str(tiny_data[0]),
                "--out",
                str(tmp_path / "o"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        run(
            [
                "evaluate",
                str(finished_run),
                str(tiny_data[0]),
                "--out",
                str(tmp_path / "p"),
                "--no-progress",
            ]
        )
        == 0
    )
    by_onnx, by_torch = load_evaluation(tmp_path / "o"), load_evaluation(tmp_path / "p")
    assert by_onnx.split == "test" and by_onnx.n == 9 and by_onnx.macro_f1 is not None
    assert by_onnx.internal is None  # a bare .onnx has no run beside it
    assert by_onnx.accuracy.value == pytest.approx(by_torch.accuracy.value)


def test_unknown_class_folder_is_one_line_and_writes_nothing(
    tiny_data: tuple[Path, Path],
    finished_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = _external_set(tiny_data, tmp_path / "other", ("COVID19",))
    (data / "TUBERCULOSIS").mkdir()
    shutil.copy(next((data / "COVID19").iterdir()), data / "TUBERCULOSIS" / "t.jpg")
    assert (
        run(
            [
                "evaluate",
                str(finished_run),
                str(data),
                "--out",
                str(tmp_path / "o"),
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "TUBERCULOSIS" in err and "not one the model knows" in err
    assert not (tmp_path / "o").exists()
    assert run(["evaluate", str(tmp_path / "nowhere"), str(data), "--no-progress"]) == 2
    assert (
        run(
            [
                "evaluate",
                str(finished_run),
                str(data),
                "--out",
                str(data / "inside"),
                "--no-progress",
            ]
        )
        == 2
    )


def test_compare_scores_every_model_on_every_external_set(
    tiny_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _external_set(tiny_data, tmp_path / "adults", ("COVID19", "NORMAL"))
    out = tmp_path / "cmp"
    args = [
        "compare",
        str(tiny_data[0]),
        "--models",
        "resnet18",
        "mobilenet_v2",
        "--no-pretrained",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--val-fraction",
        "0.25",
        "--no-audit",
        "--external",
        f"adults={data}",
        "--out",
        str(out),
        "--cache-dir",
        str(tiny_data[1]),
        "--no-progress",
    ]
    assert run(args) == 0
    for run_dir in (out / "runs").iterdir():
        assert (run_dir / "external" / "adults" / "metrics.json").is_file()
        card = (run_dir / "MODEL_CARD.md").read_text()
        assert "**adults**" in card and "## Robustness probes" in card and "## Test split" in card
    html = (out / "report.html").read_text()
    assert 'id="external"' in html and "External validation" in html and "called PNEUMONIA" in html
    markdown = (out / "results.md").read_text()
    assert (
        "## External validation" in markdown
        and "### adults" in markdown
        and "only A right" in markdown.split("### adults")[1]
    )
    header = (out / "results.csv").read_text().splitlines()[0]
    assert (
        "adults_balanced_accuracy" in header
        and "adults_recall_NORMAL" in header
        and "adults_balanced_accuracy_gap" in header
    )
    stamp = (
        (out / "runs" / "resnet18-finetune-scratch-s0" / "external" / "adults" / "metrics.json")
        .stat()
        .st_mtime_ns
    )
    assert run(args) == 0  # a re-run evaluates only what is missing
    assert (
        out / "runs" / "resnet18-finetune-scratch-s0" / "external" / "adults" / "metrics.json"
    ).stat().st_mtime_ns == stamp
    capsys.readouterr()
    (data / "TUBERCULOSIS").mkdir()
    shutil.copy(next((data / "NORMAL").iterdir()), data / "TUBERCULOSIS" / "t.jpg")
    assert (
        run(
            [
                *args[:-5],
                "--out",
                str(tmp_path / "cmp2"),
                "--cache-dir",
                str(tiny_data[1]),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "TUBERCULOSIS" in capsys.readouterr().err and not (tmp_path / "cmp2" / "runs").exists()
    assert run(["compare", str(tiny_data[0]), "--external", "adults"]) == 2
    assert "--external adults: write NAME=PATH" in capsys.readouterr().err


def test_card_limitations_name_the_set_the_gap_and_the_worst_confusion() -> None:
    """What serve shows beside every answer stands on its own: the set, both balanced accuracies,
    the class most often called another, and the ECE where calibration does not hold."""
    from cxrlab.records import (
        CalibrationEffect,
        ClassResult,
        Evaluation,
        Internal,
        Interval,
        Reliability,
        RunCalibration,
        RunMetrics,
    )
    from cxrlab.reporting.model_card import limitation_lines

    ci = lambda v: Interval(v, v - 0.02, v + 0.02)  # noqa: E731
    classes = ["COVID19", "NORMAL", "PNEUMONIA"]
    adult = Evaluation(
        name="adult",
        data="x",
        split="train",
        arch="mobilenet_v2",
        classes=classes,
        present=["COVID19", "NORMAL"],
        n=800,
        accuracy=ci(0.55),
        balanced_accuracy=ci(0.55),
        macro_f1=None,
        macro_auc=None,
        ece=0.31,
        per_class={
            "COVID19": ClassResult(400, ci(0.92), ci(0.5), {"COVID19": 366, "NORMAL": 30}, None),
            "NORMAL": ClassResult(400, ci(0.17), ci(0.7), {"COVID19": 324, "NORMAL": 68}, None),
        },
        internal=Internal(1223, {"COVID19": 0.9, "NORMAL": 0.96}, 0.93),
        ece_uncalibrated=0.30,
    )
    bins = Reliability([0.5], [0.5], [1])
    metrics = RunMetrics(
        run="r",
        description="d",
        classes=classes,
        sizes={},
        best_epoch=0,
        epochs_run=1,
        best_val_macro_f1=0.9,
        parameters=1,
        trainable_parameters=1,
        timings={},
        training_processes=1,
        skipped={},
        inference_img_per_s=1.0,
        inference_device="cpu",
        calibration=RunCalibration(1.0, CalibrationEffect(1, 0.1, 0.1, 0.1, 0.1, bins, bins)),
    )
    text = "\n".join(limitation_lines(metrics, None, [adult]))
    assert (
        "Measured on adult (800 films from elsewhere): its accuracy does not carry over to films "
        "from other sources (balanced accuracy 0.55 there, 0.93 on its own test split; of its "
        "400 NORMAL films, 324 were called COVID19)." in text
    )
    assert "not calibrated (ECE 0.31 on adult)" in text
    assert "above" not in text
