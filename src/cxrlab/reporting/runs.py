"""Finished runs as the report reads them: the run folder's files, not the training code.

A run folder (written by ``cxrlab train``) holds ``config.json`` (the recipe), ``metrics.json``
(the chosen checkpoint's numbers), ``history.csv`` (one row per epoch, counted from 0) and
``test_predictions.csv``; later commands add ``robustness.json``, ``gradcam.json`` and
``gradcam.png``. They are read here as typed records (:class:`~cxrlab.config.RunConfig`,
:mod:`cxrlab.records`, :mod:`cxrlab.diagnostics`), so that rendering a report loads neither
Lightning nor :mod:`cxrlab.training`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrlab.artifacts import RunDir
from cxrlab.config import RunConfig
from cxrlab.diagnostics import GradcamSummary, Robustness
from cxrlab.errors import CxrlabError
from cxrlab.evaluation.predictions_csv import read_predictions
from cxrlab.records import ClassificationMetrics, HistoryRow, Interval, RunMetrics, read_history


@dataclass
class ReportRun:
    """One finished run as the report needs it: recipe, metrics, history and test predictions."""

    run_dir: Path
    recipe: RunConfig  # config.json
    metrics: RunMetrics
    history: list[HistoryRow]
    paths: list[str]
    y_true: np.ndarray
    probs: np.ndarray
    label: str  # metrics.run, plus the folder name where two runs of a report share it
    robustness: Robustness | None = None  # robustness.json, when the run has one
    gradcam: GradcamSummary | None = None  # gradcam.json, when the run has one

    @property
    def gradcam_png(self) -> Path | None:
        """The run's Grad-CAM overlay figure, when it has one."""
        path = RunDir(self.run_dir).gradcam_png
        return path if path.is_file() else None

    @property
    def classes(self) -> list[str]:
        return list(self.metrics.classes)

    @property
    def y_pred(self) -> np.ndarray:
        """Predicted class per test image (argmax of the probabilities)."""
        return self.probs.argmax(axis=1)

    @property
    def test(self) -> ClassificationMetrics:
        """The test metrics of ``metrics.json`` (a report's runs all have them)."""
        assert self.metrics.test is not None  # checked by load_run
        return self.metrics.test

    @property
    def best_epoch(self) -> int:
        """The chosen epoch, counted from 0 (-1 when unknown)."""
        return self.metrics.best_epoch

    @property
    def train_seconds(self) -> float:
        """Training time including the frozen-mode feature extraction."""
        timings = self.metrics.timings
        return timings.get("train_s", math.nan) + timings.get("features_s", 0.0)

    def interval(self, key: str) -> Interval:
        """The bootstrap interval of a headline metric (``accuracy``, ``recall_<CLASS>``...)."""
        return self.metrics.intervals.get(key) or Interval(math.nan, math.nan, math.nan)


def load_run(run_dir: Path) -> ReportRun:
    """Read one finished run folder; it must hold test results. Robustness and Grad-CAM
    results are read when present (older runs lack them)."""
    run_dir = Path(run_dir)
    files = RunDir(run_dir)
    files.check_finished()
    metrics, recipe = RunMetrics.load(files.metrics), RunConfig.load(files.config)
    predictions = files.test_predictions
    if metrics.test is None or not predictions.is_file():
        raise CxrlabError(f"{run_dir}: no test results (the dataset has no test split)")
    history = read_history(files.history) if files.history.is_file() else []
    paths, y_true, probs = read_predictions(predictions, metrics.classes)
    return ReportRun(
        run_dir,
        recipe,
        metrics,
        history,
        paths,
        y_true,
        probs,
        metrics.run,
        robustness=Robustness.load_optional(files.robustness),
        gradcam=GradcamSummary.load_optional(files.gradcam),
    )


def load_runs(run_dirs: Sequence[Path]) -> list[ReportRun]:
    """Read the runs of one comparison: same classes, unique labels (folder added on clashes)."""
    if not run_dirs:
        raise CxrlabError("report: no run folders given")
    folders = [Path(d).resolve() for d in run_dirs]
    if len(set(folders)) < len(folders):
        raise CxrlabError("report: a run folder is given twice")
    runs = [load_run(d) for d in folders]
    first = runs[0]
    for run in runs[1:]:
        if run.classes != first.classes:
            raise CxrlabError(
                f"{run.run_dir}: classes {', '.join(run.classes)} differ from "
                f"{', '.join(first.classes)} of {first.run_dir}: runs on different datasets"
            )
    names = [run.label for run in runs]
    for run in runs:
        if names.count(run.label) > 1:
            run.label = f"{run.label} [{run.run_dir.name}]"
    if len({run.label for run in runs}) < len(runs):
        raise CxrlabError("report: two runs share a name and a folder name; rename a folder")
    return runs
