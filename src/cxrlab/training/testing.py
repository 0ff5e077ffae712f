"""The test step of a run: calibrate on validation, then read the test split once.

:func:`calibrate_and_test` is shared by a new run (``training.run``) and by ``cxrlab calibrate``
(a run made before cxrlab calibrated, or one given another operating point): the temperature and
the operating point are fitted on the validation logits only; ``model.pt`` is saved with them; the
predictions files and the test metrics of ``metrics.json`` follow.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from cxrlab.artifacts import RunDir
from cxrlab.config import RunConfig
from cxrlab.evaluation.calibration import (
    calibration_effect,
    choose_operating_point,
    fit_temperature,
    operating_result,
    softmax,
)
from cxrlab.evaluation.external import score
from cxrlab.evaluation.metrics import classification_metrics, headline_intervals
from cxrlab.evaluation.predictions_csv import write_predictions
from cxrlab.models.checkpoint import save_checkpoint
from cxrlab.models.registry import CxrClassifier
from cxrlab.records import (
    ModelMeta,
    RunCalibration,
    RunMetrics,
    RunOperatingPoint,
    SetScores,
    parse_target_recall,
    target_name,
)
from cxrlab.training.prepared import PreparedData


def calibrate_and_test(
    run_dir: Path,
    model: CxrClassifier,
    config: RunConfig,
    prepared: PreparedData,
    logits: dict[str, np.ndarray],
    metrics: RunMetrics,
    *,
    tta: bool,
) -> RunMetrics:
    """Fit the temperature (and the operating point of ``config.target_recall``) on the validation
    logits; save ``model.pt`` with them and with ``tta`` (whether those logits are test-time
    augmented); write ``val_predictions.csv`` and ``test_predictions.csv`` (calibrated); return
    ``metrics`` with the test metrics, the calibration and the operating point."""
    classes = prepared.classes
    y_val = prepared.labels("val")
    temperature = fit_temperature(logits["val"], y_val)
    val_probs = softmax(logits["val"], temperature)
    point = None
    if config.target_recall:
        point = choose_operating_point(
            val_probs, y_val, classes, *parse_target_recall(config.target_recall, classes)
        )
    meta = ModelMeta.of(
        model,
        image_size=config.image_size,
        resize=config.resize,
        crop=config.crop,
        tta=tta,
        config=asdict(config),
        temperature=temperature,
        operating_point=point,
    )
    save_checkpoint(model, RunDir(run_dir).model, meta)

    def paths(subset: str) -> list[str]:
        return [prepared.cache.paths[r] for r in prepared.rows[subset]]

    write_predictions(
        RunDir(run_dir).val_predictions, paths("val"), y_val, val_probs, classes, point
    )
    calibration = RunCalibration(temperature, calibration_effect(logits["val"], y_val, temperature))
    run_point = RunOperatingPoint(**asdict(point)) if point else None
    if "test" not in logits:
        return replace(metrics, calibration=calibration, operating_point=run_point)
    y_true = prepared.labels("test")
    probs = softmax(logits["test"], temperature)
    write_predictions(
        RunDir(run_dir).test_predictions, paths("test"), y_true, probs, classes, point
    )
    return replace(
        metrics,
        per_source=(
            scores_by_source(prepared.sources("test"), y_true, probs, classes)
            if prepared.index.is_multi_source
            else {}
        ),
        calibration=replace(
            calibration, test=calibration_effect(logits["test"], y_true, temperature)
        ),
        operating_point=replace(run_point, test=operating_result(point, y_true, probs, classes))
        if point and run_point
        else None,
        test=classification_metrics(y_true, probs, classes),
        intervals=headline_intervals(y_true, probs, classes),
    )


def scores_by_source(
    sources: list[str], y_true: np.ndarray, probs: np.ndarray, classes: list[str]
) -> dict[str, SetScores]:
    """The films of each source (``sources``: one name per film) scored on their own, in order
    of first appearance; a source may hold some classes only, so these are the subset-aware
    scores of an external set (balanced accuracy and recalls with bootstrap intervals, where
    its films went)."""
    names = np.array(sources)
    return {
        name: score(y_true[names == name], probs[names == name], classes)
        for name in dict.fromkeys(sources)
    }


def is_calibrated(metrics: RunMetrics, target_recall: str | None = None) -> bool:
    """Whether a finished run has its temperature (and, when asked, that operating point)."""
    wanted = target_recall is None or metrics.target == target_name(
        *parse_target_recall(target_recall)
    )
    return metrics.calibration is not None and wanted
