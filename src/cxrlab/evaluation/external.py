"""External validation: how a finished model does on films from somewhere else.

A model's own test split can flatter it: on the Kaggle COVID-19/pneumonia set every NORMAL and
PNEUMONIA film is a child from one hospital and every COVID19 film an adult from elsewhere, so
"adult film" predicts COVID19. :func:`evaluate_model` scores a model (a ``model.pt``, its ``.onnx``
export, or a run folder) on any labelled folder, preprocessed exactly as in training, and puts
the result beside the run's own test split.

External sets often hold only some of the model's classes (``external-dev``: COVID19 and NORMAL,
no PNEUMONIA). So the headline numbers are the ones defined on any subset of classes:

* per present class: recall and precision with 95% bootstrap intervals, and how often its films
  are called each of the model's classes (an absent one included);
* balanced accuracy over the present classes (the mean of their recalls), with its interval;
* macro-F1 and the macro one-vs-rest AUC only when every class of the model is present
  (otherwise they are not defined and are reported as such); per-class AUC where defined;
* ECE (top-label calibration) over all films, with the run's temperature and without it;
* at the run's operating point (or one chosen with ``target_recall`` on the run's validation
  split), the sensitivity and specificity of its class against the rest;
* the gap to the run's own test split: the same per-class recalls, balanced accuracy and
  operating-point rates there.

Nothing here trains, tunes or selects: an external set is scored once per finished model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from cxrlab.artifacts import VAL_PREDICTIONS, ExternalDir, RunDir
from cxrlab.data.discover import DatasetIndex, discover
from cxrlab.errors import ConfigError, CxrlabError
from cxrlab.evaluation.calibration import (
    choose_operating_point,
    operating_result,
    retemper,
)
from cxrlab.evaluation.metrics import (
    bootstrap_ci,
    expected_calibration_error,
    macro_f1,
    recall_of,
    roc_auc_ovr,
)
from cxrlab.evaluation.predictions_csv import read_predictions, write_predictions
from cxrlab.fileio import atomic_write_text
from cxrlab.records import (
    ClassResult,
    Evaluation,
    Internal,
    OperatingPoint,
    RunMetrics,
    SetScores,
    parse_target_recall,
    target_name,
)


def precision_of(label: int) -> Callable[[np.ndarray, np.ndarray], float]:
    """Statistic: precision of one class (NaN if the resample has no prediction of it)."""

    def precision(y_true: np.ndarray, y_pred: np.ndarray) -> float:
        called = y_pred == label
        return float((y_true[called] == label).mean()) if called.any() else float("nan")

    return precision


def balanced_accuracy_over(labels: list[int]) -> Callable[[np.ndarray, np.ndarray], float]:
    """Statistic: mean recall over ``labels`` (the classes present in the set)."""
    recalls = [recall_of(k) for k in labels]

    def balanced(y_true: np.ndarray, y_pred: np.ndarray) -> float:
        return float(np.nanmean([recall(y_true, y_pred) for recall in recalls]))

    return balanced


def score(
    y_true: np.ndarray, probs: np.ndarray, classes: list[str], *, n_boot: int = 2000, seed: int = 0
) -> SetScores:
    """The subset-aware scores of labels ``y_true`` and probabilities ``probs``."""
    y_true, probs = np.asarray(y_true), np.asarray(probs, dtype=np.float64)
    y_pred = probs.argmax(axis=1)
    present_labels = sorted(set(y_true.tolist()))
    every_class = len(present_labels) == len(classes)
    aucs = roc_auc_ovr(y_true, probs)
    ci = lambda statistic: bootstrap_ci(y_true, y_pred, statistic, n_boot=n_boot, seed=seed)  # noqa: E731
    per_class = {
        classes[k]: ClassResult(
            n=int((y_true == k).sum()),
            recall=ci(recall_of(k)),
            precision=ci(precision_of(k)),
            called={
                name: int(((y_true == k) & (y_pred == j)).sum()) for j, name in enumerate(classes)
            },
            auc=None if np.isnan(aucs[k]) else aucs[k],
        )
        for k in present_labels
    }
    return SetScores(
        present=[classes[k] for k in present_labels],
        n=int(len(y_true)),
        accuracy=ci(lambda t, p: float((t == p).mean())),
        balanced_accuracy=ci(balanced_accuracy_over(present_labels)),
        macro_f1=macro_f1(y_true, y_pred, len(classes)) if every_class else None,
        macro_auc=float(np.nanmean(list(aucs.values()))) if every_class else None,
        ece=expected_calibration_error(y_true, probs),
        per_class=per_class,
    )


def resolve_model(model: Path) -> tuple[Path, Path | None]:
    """``(model file, run folder or None)`` for a run folder, a ``model.pt`` or an ``.onnx``."""
    model = Path(model)
    if model.is_dir():
        if not RunDir(model).model.is_file():
            raise CxrlabError(f"{model}: no model.pt here (is it a finished cxrlab run folder?)")
        return RunDir(model).model, model
    if not model.is_file():
        raise CxrlabError(f"{model}: no such model file or run folder")
    run_dir = model.parent if RunDir(model.parent).is_finished else None
    return model, run_dir


def external_films(
    data: Path, classes: list[str], split: str | None
) -> tuple[DatasetIndex, str, list[tuple[Path, int]]]:
    """The films of ``data`` (its ``split``: by default ``test`` when there is one) with the model's
    label index of each; a class folder the model does not know is an error naming it."""
    index = discover(data, min_classes=1)
    split = split or ("test" if "test" in index.splits else index.splits[0])
    if split not in index.splits:
        raise ConfigError(
            "split",
            f"{index.root} has no such split (have: {', '.join(index.splits)})",
            value=split,
        )
    unknown = sorted({index.classes[s.label] for s in index.split(split)} - set(classes))
    if unknown:
        raise CxrlabError(
            f"{index.root}: class folder {', '.join(unknown)} is not one the model knows "
            f"({', '.join(classes)}); "
            "rename it or leave it out"
        )
    films = [(s.path, classes.index(index.classes[s.label])) for s in index.split(split)]
    return index, split, films


def internal_reference(
    run_dir: Path | None, present: list[str], point: OperatingPoint | None = None
) -> Internal | None:
    """The run's own test numbers for the external set's present classes (None without a run);
    with ``point``, its rates on the test split (from ``test_predictions.csv``)."""
    if run_dir is None or not RunDir(run_dir).is_finished:
        return None
    metrics = RunMetrics.load(RunDir(run_dir).metrics)
    test = metrics.test
    if test is None:
        return None
    recall = {c: test.per_class[c].recall for c in present}
    at_point = None
    if point is not None and RunDir(run_dir).test_predictions.is_file():
        _, y_true, probs = read_predictions(RunDir(run_dir).test_predictions, metrics.classes)
        at_point = operating_result(point, y_true, probs, metrics.classes)
    return Internal(test.n, recall, float(np.mean(list(recall.values()))), at_point)


def validation_point(
    run_dir: Path | None, model: Path, classes: list[str], target_recall: str
) -> OperatingPoint:
    """The operating point for ``target_recall`` chosen on the run's validation predictions."""
    label, recall = parse_target_recall(target_recall, classes)
    found = run_dir / VAL_PREDICTIONS if run_dir is not None else None
    if found is None or not found.is_file():
        raise ConfigError(
            "target_recall",
            "the threshold is chosen on the run's validation "
            f"split, and {model} has no "
            f"{VAL_PREDICTIONS} beside it (give the run folder; "
            "for a run made before cxrlab calibrated: "
            "cxrlab calibrate RUN --data DATA)",
            value=target_recall,
        )
    _, y_val, probs = read_predictions(found, classes)
    return choose_operating_point(probs, y_val, classes, label, recall)


def default_name(data: Path, split: str, index: DatasetIndex) -> str:
    """The set's folder name, with the split for a dataset that has several."""
    name = Path(data).resolve().name or "external"
    return name if index.layout == "imagefolder" else f"{name}-{split}"


def evaluate_model(
    model: Path,
    data: Path,
    *,
    split: str | None = None,
    name: str | None = None,
    out: Path | None = None,
    batch_size: int = 32,
    device: str = "auto",
    target_recall: str | None = None,
) -> tuple[Evaluation, Path]:
    """Score ``model`` on the labelled folder ``data``; write ``predictions.csv`` and
    ``metrics.json`` into ``out`` (default: ``RUN/external/<NAME>/`` beside the model) and return
    both.

    The operating point is the model's own, or, with ``target_recall`` (``CLASS=RECALL``), one
    chosen for it on the run's validation split."""
    from cxrlab.evaluation.predict import load_predictor, predict_files  # import torch
    from cxrlab.outputs import check_output_folder

    model_file, run_dir = resolve_model(model)
    predictor = load_predictor(model_file, device)
    point = predictor.point
    if target_recall is not None and (
        point is None or point.target != target_name(*parse_target_recall(target_recall))
    ):
        point = validation_point(run_dir, model_file, predictor.classes, target_recall)
    index, split, films = external_films(data, predictor.classes, split)
    name = name or default_name(data, split, index)
    out = Path(out) if out is not None else RunDir(model_file.parent).external(name).root
    check_output_folder(out, data)
    found = predict_files(predictor, [path for path, _ in films], batch_size=batch_size)
    label_of = {path: label for path, label in films}
    y_true = np.array([label_of[path] for path in found.paths], dtype=np.int64)
    if not len(y_true):
        raise CxrlabError(f"{data}: none of the {len(films)} films could be read")
    scored = score(y_true, found.probs, predictor.classes)
    evaluation = Evaluation(
        name=name,
        data=str(index.root),
        split=split,
        arch=predictor.arch,
        classes=list(predictor.classes),
        skipped={index.relative(Path(p)): why for p, why in found.errors.items()},
        internal=internal_reference(run_dir, scored.present, point),
        **vars(scored),  # the SetScores part
        temperature=predictor.temperature,
        ece_uncalibrated=expected_calibration_error(
            y_true, retemper(found.probs, 1.0 / predictor.temperature)
        ),
        point=point,
        at_point=operating_result(point, y_true, found.probs, predictor.classes) if point else None,
    )
    write_predictions(
        ExternalDir(out).predictions,
        [index.relative(p) for p in found.paths],
        y_true,
        found.probs,
        predictor.classes,
        point,
    )
    atomic_write_text(
        ExternalDir(out).metrics, evaluation.to_json()
    )  # last: it marks the evaluation done
    return evaluation, out


def is_current(folder: Path, run_metrics: RunMetrics) -> bool:
    """Whether ``folder`` holds an evaluation of the run's model as it is now: the same temperature
    and operating point (an evaluation from before the run was calibrated is stale)."""
    if not ExternalDir(Path(folder)).metrics.is_file():
        return False
    evaluation = load_evaluation(folder)
    temperature = run_metrics.temperature
    same_point = (evaluation.point.target if evaluation.point else None) == run_metrics.target
    return abs(evaluation.temperature - temperature) <= 1e-9 * temperature and same_point


def load_evaluation(folder: Path) -> Evaluation:
    """An evaluation written by :func:`evaluate_model` (``folder`` holds its ``metrics.json``)."""
    return Evaluation.load(ExternalDir(Path(folder)).metrics)


def evaluation_predictions(
    folder: Path, classes: list[str]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(paths, y_true, probs)`` of an evaluation, for paired tests between models."""
    return read_predictions(ExternalDir(Path(folder)).predictions, classes)
