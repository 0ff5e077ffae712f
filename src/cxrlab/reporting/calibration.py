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

from cxrlab.evaluation.calibration import CalibrationEffect, OperatingResult
from cxrlab.evaluation.metrics import Interval
from cxrlab.reporting.external import ExternalSet
from cxrlab.reporting.plots import plot_reliability
from cxrlab.reporting.report import Cell, ReportRun, Table, _csv_number, figure_html, fmt, interval_cell, paragraph

RELIABILITY_PNG = "reliability.png"

EXPLANATION = (
    "Temperature scaling divides each model's logits by one number T fitted on the validation split "
    "(T > 1: the model was over-confident). It never changes the predicted class; it makes the "
    "probabilities closer to how often the model is right. ECE is the gap between confidence and "
    "accuracy (15 bins, top class), before → after. On an external set it shows whether probabilities "
    "calibrated on the training hospital's films still mean what they say elsewhere."
)


def _effect(run: ReportRun, name: str) -> CalibrationEffect | None:
    raw = (run.metrics.get("calibration") or {}).get(name)
    return CalibrationEffect.from_dict(raw) if raw else None


def _change(before: float | None, after: float | None) -> Cell:
    return Cell("–") if before is None or after is None else Cell(f"{fmt(before)} → {fmt(after)}")


def calibration_table(runs: Sequence[ReportRun], externals: Sequence[ExternalSet]) -> Table:
    """Per run: T, then ECE before → after on validation, test and each external set; test NLL."""
    headers = ["run", "temperature", "ECE validation", "ECE test", *(f"ECE {e.name}" for e in externals), "NLL test"]
    rows = []
    for position, run in enumerate(runs):
        calibration = run.metrics.get("calibration") or {}
        val, test = _effect(run, "val"), _effect(run, "test")
        row = [
            Cell(run.label),
            Cell(fmt(calibration["temperature"]) if calibration else "–"),
            _change(val.ece_before if val else None, val.ece_after if val else None),
            _change(test.ece_before if test else None, test.ece_after if test else None),
        ]
        for external in externals:
            ev = external.evaluations[position]
            row.append(_change(ev.ece_uncalibrated, ev.ece) if calibration else Cell("–"))
        row.append(_change(test.nll_before if test else None, test.nll_after if test else None))
        rows.append(row)
    return Table(headers, rows)


def has_points(runs: Sequence[ReportRun]) -> bool:
    return any(run.metrics.get("operating_point") for run in runs)


def _rate(interval: Interval | None) -> Cell:
    return interval_cell(interval) if interval is not None else Cell("–")


def operating_point_table(runs: Sequence[ReportRun], externals: Sequence[ExternalSet]) -> Table:
    """Per run with an operating point: target, threshold, validation rates, then sensitivity and
    specificity [CI] on the test split and on each external set."""
    headers = ["run", "target", "threshold", "val recall", "val specificity", "test sensitivity [CI]", "test specificity [CI]"]
    for external in externals:
        headers += [f"{external.name} sensitivity [CI]", f"{external.name} specificity [CI]"]
    rows = []
    for position, run in enumerate(runs):
        point = run.metrics.get("operating_point")
        if not point:
            continue
        test = OperatingResult.from_dict(point["test"]) if point.get("test") else None
        row = [
            Cell(run.label), Cell(f"{point['label']} ≥ {point['target_recall']:g}"), Cell(fmt(point["threshold"])),
            Cell(fmt(point["val_recall"])), Cell(fmt(point["val_specificity"])),
            _rate(test.sensitivity if test else None), _rate(test.specificity if test else None),
        ]
        for external in externals:
            at = external.evaluations[position].at_point
            row += [_rate(at.sensitivity if at else None), _rate(at.specificity if at else None)]
        rows.append(row)
    return Table(headers, rows)


def calibration_columns(run: ReportRun, externals: Sequence[ExternalSet], position: int) -> dict[str, str]:
    """The ``results.csv`` columns of one run: T, ECE before/after (test, each set), operating point."""
    calibration = run.metrics.get("calibration") or {}
    test = _effect(run, "test")
    row = {  # the calibrated test ECE is the comparison's own "ece" column
        "temperature": _csv_number(calibration.get("temperature")),
        "ece_uncalibrated": _csv_number(test.ece_before if test else None),
    }
    for external in externals:
        ev = external.evaluations[position]
        row[f"{external.name}_ece_uncalibrated"], row[f"{external.name}_ece"] = _csv_number(ev.ece_uncalibrated), _csv_number(ev.ece)
    point = run.metrics.get("operating_point")
    if point:
        row |= {"operating_point": f"{point['label']}={point['target_recall']:g}", "threshold": _csv_number(point["threshold"])}
        results = [("test", OperatingResult.from_dict(point["test"]) if point.get("test") else None)]
        results += [(e.name, e.evaluations[position].at_point) for e in externals]
        for name, result in results:
            row[f"{name}_sensitivity"] = _csv_number(result.sensitivity.value if result and result.sensitivity else None)
            row[f"{name}_specificity"] = _csv_number(result.specificity.value if result and result.specificity else None)
    return row


def calibration_markdown(runs: Sequence[ReportRun], externals: Sequence[ExternalSet]) -> str:
    """The calibration part of ``results.md``."""
    parts = ["## Calibration", "", EXPLANATION, "", calibration_table(runs, externals).markdown(), ""]
    if has_points(runs):
        parts += ["### Operating point", "", operating_point_table(runs, externals).markdown(), ""]
    return "\n".join(parts)


def calibration_html(runs: Sequence[ReportRun], externals: Sequence[ExternalSet], out_dir: Path) -> str:
    """The report section: explanation, the table, reliability diagrams, the operating points."""
    diagrams = [(test.reliability_before, test.reliability_after) if (test := _effect(run, "test")) else None for run in runs]
    chart = plot_reliability([run.label for run in runs], diagrams, Path(out_dir) / RELIABILITY_PNG)
    caption = "Reliability on the test split: accuracy against confidence per bin (area: films), before (dashed) and after temperature scaling; dotted: perfect calibration."
    parts = [paragraph(EXPLANATION), calibration_table(runs, externals).html(), figure_html(chart, caption)]
    if has_points(runs):
        parts += [
            "<h3>Operating point</h3>",
            paragraph(
                "The threshold on one class's calibrated probability chosen on the validation split for the target recall "
                "(the class is called when its probability reaches it, otherwise the most probable other class); "
                "sensitivity and specificity of that class against the rest, with 95% bootstrap CIs."
            ),
            operating_point_table(runs, externals).html(),
        ]
    return "\n".join(parts)
