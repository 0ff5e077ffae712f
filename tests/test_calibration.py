"""Temperature scaling and the operating point: the arithmetic by hand, then through train,
predict, evaluate, export, calibrate, compare, the report and the model card."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, train_tiny

from cxrlab.cli import run
from cxrlab.config import preset
from cxrlab.errors import CxrlabError
from cxrlab.evaluation.calibration import (
    calibration_effect,
    choose_operating_point,
    fit_temperature,
    nll,
    operating_result,
    retemper,
    softmax,
)
from cxrlab.evaluation.external import load_evaluation
from cxrlab.evaluation.predict import load_predictor
from cxrlab.models.checkpoint import load_model, save_checkpoint
from cxrlab.records import ModelMeta, RunMetrics, parse_target_recall


def _sampled(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from their own softmax: a perfectly calibrated model."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.5, size=(n, 3))
    probs = softmax(logits)
    y = np.array([rng.choice(3, p=p) for p in probs])
    return logits, y


def test_a_calibrated_model_keeps_t_near_one_and_t_one_changes_nothing() -> None:
    logits, y = _sampled(20000, 0)
    assert fit_temperature(logits, y) == pytest.approx(1.0, abs=0.05)
    assert np.allclose(softmax(logits, 1.0), torch.softmax(torch.from_numpy(logits), 1).numpy())
    effect = calibration_effect(logits, y, 1.0)
    assert effect.nll_before == effect.nll_after and effect.ece_before == effect.ece_after


def test_an_over_confident_model_is_cooled_and_its_nll_and_ece_fall() -> None:
    logits, y = _sampled(5000, 1)
    over = 4.0 * logits  # the same ranking, four times too sure
    temperature = fit_temperature(over, y)
    assert temperature == pytest.approx(4.0, rel=0.1)
    effect = calibration_effect(over, y, temperature)
    assert effect.nll_after < 0.8 * effect.nll_before and effect.ece_after < 0.5 * effect.ece_before
    assert nll(over, y, temperature) == pytest.approx(effect.nll_after)
    assert (
        softmax(over, temperature).argmax(1) == over.argmax(1)
    ).all()  # the decision never changes
    assert sum(effect.reliability_after.count) == 5000
    # the calibrated probabilities give the uncalibrated ones back without the logits
    assert np.allclose(
        retemper(softmax(over, temperature), 1.0 / temperature), softmax(over), atol=1e-9
    )


def test_operating_point_by_hand() -> None:
    classes = ["COVID19", "NORMAL", "PNEUMONIA"]
    # five COVID19 films with p(COVID19) 0.9 0.8 0.6 0.3 0.2, three NORMAL films, one PNEUMONIA
    p_covid = [0.9, 0.8, 0.6, 0.3, 0.2, 0.7, 0.4, 0.1, 0.5]
    p_normal = [0.05, 0.1, 0.3, 0.6, 0.1, 0.2, 0.5, 0.8, 0.1]
    probs = np.array([[c, n, 1 - c - n] for c, n in zip(p_covid, p_normal)])
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1, 2])
    point = choose_operating_point(
        probs, y, classes, "COVID19", 0.6
    )  # 3 of 5 must be called COVID19
    assert point.threshold == pytest.approx(0.6) and point.val_recall == pytest.approx(0.6)
    assert point.val_specificity == pytest.approx(3 / 4)  # the NORMAL film at 0.7 is called COVID19
    assert point.target == "COVID19=0.6" and point.val_positives == 5
    decided = point.decide(probs, classes)
    assert decided.tolist() == [
        0,
        0,
        0,
        1,
        2,
        0,
        1,
        1,
        2,
    ]  # below the threshold: the likelier other class
    lower = choose_operating_point(probs, y, classes, "COVID19", 0.9)  # 5 of 5
    assert lower.threshold == pytest.approx(0.2) and lower.val_recall == 1.0
    result = operating_result(point, y, probs, classes, n_boot=100)
    assert result.sensitivity.value == pytest.approx(
        0.6
    ) and result.specificity.value == pytest.approx(0.75)
    assert result.called == 4 and result.n == 9
    only_positives = operating_result(point, y[:5], probs[:5], classes, n_boot=50)
    assert only_positives.specificity is None  # no films of other classes: not defined


def test_target_recall_is_checked_with_one_line_errors() -> None:
    assert parse_target_recall("COVID19=0.95", ["COVID19", "NORMAL"]) == ("COVID19", 0.95)
    for bad in ("COVID19", "COVID19=1.5", "COVID19=x", "=0.9", "COVID19=0"):
        with pytest.raises(CxrlabError, match="write CLASS=RECALL"):
            parse_target_recall(bad)
    with pytest.raises(CxrlabError, match="TB is not one of the model's classes"):
        parse_target_recall("TB=0.9", ["COVID19", "NORMAL"])
    with pytest.raises(CxrlabError, match="^target_recall"):
        preset("smoke", target_recall="COVID19:0.9")


def test_a_checkpoint_with_t_one_predicts_as_one_without(tmp_path: Path) -> None:
    from cxrlab.models import create_model

    model = create_model("resnet18", ["A", "B", "C"], pretrained=False).eval()
    save_checkpoint(model, tmp_path / "plain.pt", ModelMeta.of(model, image_size=32))
    save_checkpoint(model, tmp_path / "t1.pt", ModelMeta.of(model, image_size=32, temperature=1.0))
    save_checkpoint(model, tmp_path / "t3.pt", ModelMeta.of(model, image_size=32, temperature=3.0))
    images = np.random.default_rng(0).random((4, 1, 32, 32)).astype(np.float32)
    plain, t1, t3 = (
        load_predictor(tmp_path / f"{name}.pt", "cpu") for name in ("plain", "t1", "t3")
    )
    assert plain.temperature == 1.0 and plain.point is None
    assert np.allclose(plain.batch_probs(images), t1.batch_probs(images), atol=1e-7)
    with torch.no_grad():
        logits = model(torch.from_numpy(images)).numpy()
    assert np.allclose(t3.batch_probs(images), softmax(logits, 3.0), atol=1e-5)


@pytest.fixture(scope="module")
def operating_run(tiny_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("op") / "run"
    train_tiny(
        tiny_data,
        out,
        preset("scratch", model="resnet18", epochs=1, target_recall="COVID19=0.5", **TINY),
    )
    return out


def test_train_fits_t_and_the_operating_point_on_validation(operating_run: Path) -> None:
    metrics = json.loads((operating_run / "metrics.json").read_text())
    calibration, point = metrics["calibration"], metrics["operating_point"]
    _, meta = load_model(operating_run / "model.pt")
    assert meta.temperature == calibration["temperature"] > 0
    assert meta.operating_point is not None
    assert meta.operating_point.threshold == point["threshold"] and point["label"] == "COVID19"
    with open(operating_run / "val_predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    classes = metrics["classes"]
    probs = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])
    y = np.array([classes.index(r["true"]) for r in rows])
    assert len(rows) == metrics["sizes"]["val"]
    again = choose_operating_point(
        probs, y, classes, "COVID19", 0.5
    )  # the threshold is the validation split's
    assert (
        again.threshold == pytest.approx(point["threshold"], abs=1e-5)
        and point["val_recall"] >= 0.5
    )
    assert (
        calibration["val"]["nll_after"] <= calibration["val"]["nll_before"] + 1e-9
    )  # T minimises validation NLL
    with open(operating_run / "test_predictions.csv") as handle:
        test_rows = list(csv.DictReader(handle))
    assert list(test_rows[0])[:4] == ["path", "true", "predicted", "decision"]
    test = RunMetrics.load(operating_run / "metrics.json").operating_point.test
    called = sum(r["decision"] == "COVID19" for r in test_rows)
    assert test.called == called and test.n == len(test_rows) == 9
    from cxrlab.reporting.model_card import model_card

    card = model_card(operating_run)
    assert (
        "## Calibration and operating point" in card
        and f"temperature {calibration['temperature']:.3f}" in card
    )
    assert "operating point COVID19 recall ≥ 0.5" in card and "test split: sensitivity" in card


def test_predict_evaluate_and_onnx_apply_the_temperature_and_the_point(
    tiny_data: tuple[Path, Path],
    operating_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    films = tiny_data[0] / "Data" / "test"
    assert (
        run(
            [
                "predict",
                str(operating_run / "model.pt"),
                str(films),
                "--out",
                str(tmp_path / "p.csv"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "decision: the run's operating point COVID19=0.5" in capsys.readouterr().out
    onnx = tmp_path / "m.onnx"
    assert run(["export", str(operating_run / "model.pt"), "--onnx", "--out", str(onnx)]) == 0
    assert (
        run(["predict", str(onnx), str(films), "--out", str(tmp_path / "o.csv"), "--no-progress"])
        == 0
    )

    def read(path: Path) -> list[dict[str, str]]:
        with open(path) as handle:
            return list(csv.DictReader(handle))

    by_torch, by_onnx = read(tmp_path / "p.csv"), read(tmp_path / "o.csv")
    assert [r["decision"] for r in by_torch] == [r["decision"] for r in by_onnx]
    for a, b in zip(by_torch, by_onnx):
        assert float(a["p_COVID19"]) == pytest.approx(float(b["p_COVID19"]), abs=1e-4)
    # predict's probabilities are the run's calibrated test probabilities
    own = {
        Path(r["path"]).name: float(r["p_NORMAL"])
        for r in read(operating_run / "test_predictions.csv")
    }
    for row in by_torch:
        assert float(row["p_NORMAL"]) == pytest.approx(own[Path(row["path"]).name], abs=1e-4)

    external = tmp_path / "adults"
    for name in ("COVID19", "NORMAL"):
        shutil.copytree(films / name, external / name)
    capsys.readouterr()
    assert run(["evaluate", str(operating_run), str(external), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert (
        "Operating point COVID19=0.5" in out
        and "sensitivity" in out
        and "without the temperature" in out
    )
    evaluation = load_evaluation(operating_run / "external" / "adults")
    assert evaluation.point.target == "COVID19=0.5" and evaluation.at_point.n == 6
    assert evaluation.internal.at_point is not None and evaluation.ece_uncalibrated is not None
    # another target is chosen on the run's validation split, never on the external films
    assert (
        run(
            [
                "evaluate",
                str(operating_run),
                str(external),
                "--target-recall",
                "COVID19=1",
                "--out",
                str(tmp_path / "e"),
                "--no-progress",
            ]
        )
        == 0
    )
    stricter = load_evaluation(tmp_path / "e")
    assert (
        stricter.point.threshold <= evaluation.point.threshold and stricter.point.val_recall == 1.0
    )
    capsys.readouterr()
    assert (
        run(
            [
                "evaluate",
                str(onnx),
                str(external),
                "--target-recall",
                "COVID19=0.9",
                "--out",
                str(tmp_path / "f"),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "val_predictions.csv" in capsys.readouterr().err


def test_calibrate_an_old_run_then_compare_re_evaluates_what_is_stale(
    tiny_data: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "cmp"
    external = tmp_path / "adults"
    for name in ("COVID19", "NORMAL"):
        shutil.copytree(tiny_data[0] / "Data" / "test" / name, external / name)
    args = [
        "compare",
        str(tiny_data[0]),
        "--models",
        "resnet18",
        "--no-pretrained",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--val-fraction",
        "0.25",
        "--no-audit",
        "--no-progress",
        "--cache-dir",
        str(tiny_data[1]),
        "--out",
        str(out),
        "--external",
        f"adults={external}",
    ]
    assert run(args) == 0
    run_dir = out / "runs" / "resnet18-finetune-scratch-s0"
    # make it a run from before calibration: no temperature anywhere
    metrics = json.loads((run_dir / "metrics.json").read_text())
    temperature = metrics.pop("calibration")["temperature"]
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "val_predictions.csv").unlink()
    assert run(["compare", *args[1:], "--target-recall", "COVID19=0.5"]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["calibration"]["temperature"] == pytest.approx(
        temperature, rel=1e-4
    )  # the same fit again
    assert (
        metrics["operating_point"]["label"] == "COVID19"
        and (run_dir / "val_predictions.csv").is_file()
    )
    evaluation = load_evaluation(run_dir / "external" / "adults")
    assert evaluation.point is not None and evaluation.temperature == pytest.approx(
        temperature, rel=1e-4
    )
    html, header = (
        (out / "report.html").read_text(),
        (out / "results.csv").read_text().splitlines()[0],
    )
    assert (
        'id="calibration"' in html
        and "Operating point" in html
        and (out / "reliability.png").is_file()
    )
    assert (
        "temperature" in header
        and "adults_ece_uncalibrated" in header
        and "adults_sensitivity" in header
    )
    assert "## Calibration" in (out / "results.md").read_text()
    before = (run_dir / "metrics.json").read_text()
    assert (
        run(
            [
                "calibrate",
                str(run_dir),
                "--data",
                str(tiny_data[0]),
                "--target-recall",
                "TB=0.9",
                "--no-progress",
            ]
        )
        == 2
    )
    assert (run_dir / "metrics.json").read_text() == before  # a wrong class changes nothing
    assert (
        run(
            [
                "calibrate",
                str(run_dir),
                "--data",
                str(tiny_data[0]),
                "--target-recall",
                "PNEUMONIA=0.9",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        json.loads((run_dir / "metrics.json").read_text())["operating_point"]["label"]
        == "PNEUMONIA"
    )


def test_metrics_json_is_a_typed_record_read_strictly(operating_run: Path) -> None:
    """metrics.json loads as RunMetrics and saves back to the same JSON; an unknown, missing or
    mistyped key is an error naming the file and the key, not a silent default."""
    path = operating_run / "metrics.json"
    raw = json.loads(path.read_text())
    metrics = RunMetrics.load(path)
    assert metrics.operating_point.test.n == metrics.test.n == 9
    assert metrics.intervals["accuracy"].value == metrics.test.accuracy
    assert json.loads(metrics.to_json()) == raw  # every key and number kept
    broken = operating_run.parent / "broken.json"

    def refused(data: dict, message: str) -> None:
        broken.write_text(json.dumps(data))
        with pytest.raises(CxrlabError, match=f"broken.json: {message}"):
            RunMetrics.load(broken)

    unknown = json.loads(path.read_text())
    unknown["test"]["per_class"]["NORMAL"]["f2"] = 1.0
    refused(unknown, "test.per_class.NORMAL.f2: unknown key")
    refused({k: v for k, v in raw.items() if k != "run"}, "run: missing key")
    refused(raw | {"epochs_run": "many"}, "epochs_run: Input should be a valid integer")
