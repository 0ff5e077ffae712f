"""The report's calibration section: how far each model's probabilities can be taken at face value.

Per run: the temperature fitted on its validation split and the ECE before and after it on the
validation split, the test split and every external set; a reliability diagram of the test split
before and after; and, for runs with an operating point (``--target-recall``), the threshold
chosen on validation with its sensitivity and specificity on the test split and on each external
set. A run made before cxrlab calibrated shows dashes (``cxrlab calibrate RUN --data DATA``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from markupsafe import Markup

from cxrlab.records import CalibrationEffect
from cxrlab.reporting.external import ExternalSet
from cxrlab.reporting.plots import plot_reliability
from cxrlab.reporting.render import Figure, render, render_markdown
from cxrlab.reporting.runs import ReportRun
from cxrlab.reporting.tables import MISSING, Cell, Table, csv_number, fmt, interval_cell

RELIABILITY_PNG = "reliability.png"

EXPLANATION = (
    "Temperature scaling divides each model's logits by one number T fitted on the validation "
    "split (T > 1: the model was over-confident). It never changes the predicted class; it makes "
    "the probabilities closer to how often the model is right. ECE is the gap between confidence "
    "and accuracy (15 bins, top class), before → after. On an external set it shows whether "
    "probabilities calibrated on the training hospital's films still mean what they say elsewhere."
)
RELIABILITY_CAPTION = (
    "Reliability on the test split: accuracy against confidence per bin (area: films), before "
    "(dashed) and after temperature scaling; dotted: perfect calibration."
)


def _effect(run: ReportRun, name: str) -> CalibrationEffect | None:
    """The temperature's effect on the run's validation (``val``) or test split, when known."""
    calibration = run.metrics.calibration
    return getattr(calibration, name) if calibration else None


def _change(before: float | None, after: float | None) -> Cell:
    if before is None or after is None:
        return Cell(MISSING)
    return Cell(f"{fmt(before)} → {fmt(after)}")


def calibration_table(runs: Sequence[ReportRun], externals: Sequence[ExternalSet]) -> Table:
    """Per run: T, then ECE before → after on validation, test and each external set; test
    NLL."""
    headers = [
        "run",
        "temperature",
        "ECE validation",
        "ECE test",
        *(f"ECE {e.name}" for e in externals),
        "NLL test",
    ]
    rows = []
    for position, run in enumerate(runs):
        calibration = run.metrics.calibration
        val, test = _effect(run, "val"), _effect(run, "test")
        row = [
            Cell(run.label),
            Cell(fmt(calibration.temperature) if calibration else MISSING),
            _change(val.ece_before if val else None, val.ece_after if val else None),
            _change(test.ece_before if test else None, test.ece_after if test else None),
        ]
        for external in externals:
            ev = external.evaluations[position]
            row.append(_change(ev.ece_uncalibrated, ev.ece) if calibration else Cell(MISSING))
        row.append(_change(test.nll_before if test else None, test.nll_after if test else None))
        rows.append(row)
    return Table(headers, rows)


def has_points(runs: Sequence[ReportRun]) -> bool:
    return any(run.metrics.operating_point for run in runs)


def operating_point_table(runs: Sequence[ReportRun], externals: Sequence[ExternalSet]) -> Table:
    """Per run with an operating point: target, threshold, validation rates, then sensitivity and
    specificity [CI] on the test split and on each external set."""
    headers = [
        "run",
        "target",
        "threshold",
        "val recall",
        "val specificity",
        "test sensitivity [CI]",
        "test specificity [CI]",
    ]
    for external in externals:
        headers += [f"{external.name} sensitivity [CI]", f"{external.name} specificity [CI]"]
    rows = []
    for position, run in enumerate(runs):
        point = run.metrics.operating_point
        if not point:
            continue
        results = [point.test] + [e.evaluations[position].at_point for e in externals]
        row = [
            Cell(run.label),
            Cell(f"{point.label} ≥ {point.target_recall:g}"),
            Cell(fmt(point.threshold)),
            Cell(fmt(point.val_recall)),
            Cell(fmt(point.val_specificity)),
        ]
        for result in results:
            row += [
                interval_cell(result.sensitivity if result else None),
                interval_cell(result.specificity if result else None),
            ]
        rows.append(row)
    return Table(headers, rows)


def calibration_columns(
    run: ReportRun, externals: Sequence[ExternalSet], position: int
) -> dict[str, str]:
    """The ``results.csv`` columns of one run: T, ECE before/after (test, each set), operating
    point."""
    calibration = run.metrics.calibration
    test = _effect(run, "test")
    row = {  # the calibrated test ECE is the comparison's own "ece" column
        "temperature": csv_number(calibration.temperature if calibration else None),
        "ece_uncalibrated": csv_number(test.ece_before if test else None),
    }
    for external in externals:
        ev = external.evaluations[position]
        row[f"{external.name}_ece_uncalibrated"] = csv_number(ev.ece_uncalibrated)
        row[f"{external.name}_ece"] = csv_number(ev.ece)
    point = run.metrics.operating_point
    if point:
        row |= {"operating_point": point.target, "threshold": csv_number(point.threshold)}
        results = [("test", point.test)]
        results += [(e.name, e.evaluations[position].at_point) for e in externals]
        for name, result in results:
            sensitivity = result.sensitivity if result else None
            specificity = result.specificity if result else None
            row[f"{name}_sensitivity"] = csv_number(sensitivity.value if sensitivity else None)
            row[f"{name}_specificity"] = csv_number(specificity.value if specificity else None)
    return row


def calibration_markdown(runs: Sequence[ReportRun], externals: Sequence[ExternalSet]) -> str:
    """The calibration part of ``results.md``."""
    return render_markdown(
        "calibration.md",
        explanation=EXPLANATION,
        table=calibration_table(runs, externals),
        points=operating_point_table(runs, externals) if has_points(runs) else None,
    )


def calibration_html(
    runs: Sequence[ReportRun], externals: Sequence[ExternalSet], out_dir: Path
) -> Markup:
    """The report section: explanation, the table, reliability diagrams, the operating points."""
    effects = [_effect(run, "test") for run in runs]
    diagrams = [(e.reliability_before, e.reliability_after) if e else None for e in effects]
    chart = plot_reliability([run.label for run in runs], diagrams, Path(out_dir) / RELIABILITY_PNG)
    return render(
        "calibration.html",
        explanation=EXPLANATION,
        table=calibration_table(runs, externals),
        chart=Figure(chart, RELIABILITY_CAPTION),
        points=operating_point_table(runs, externals) if has_points(runs) else None,
    )
