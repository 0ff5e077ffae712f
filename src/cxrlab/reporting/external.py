"""The report's external validation: every run on every external set, beside its own test split.

Each run's evaluation is read from ``RUN/external/<NAME>/`` (written by
:func:`cxrlab.evaluation.external.evaluate_model`). Per set the report shows, per run, the
balanced accuracy over the classes present and each present class's recall with 95% bootstrap
intervals, the same numbers on the run's own test split and the gap; how the films of each class
are called (an absent class included); a chart of the gap; and McNemar's test between every pair
of runs on that set (Holm-adjusted), so that "model A holds up better off its own data than B"
is a tested claim.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from markupsafe import Markup

from cxrlab.artifacts import RunDir
from cxrlab.errors import CxrlabError
from cxrlab.evaluation.external import evaluation_predictions, load_evaluation
from cxrlab.records import Evaluation
from cxrlab.reporting.pairs import PairTest, mcnemar_html, mcnemar_table, pair_tests
from cxrlab.reporting.plots import plot_external_gap
from cxrlab.reporting.render import Figure, render, render_markdown
from cxrlab.reporting.runs import ReportRun
from cxrlab.reporting.tables import (
    MISSING,
    Cell,
    Table,
    csv_number,
    fmt,
    interval_cell,
    interval_fields,
)

GAP_PNG = "external_gap.png"


@dataclass
class ExternalScores:
    """One run's predictions on one external set (what a paired test needs)."""

    label: str
    paths: list[str]
    y_true: np.ndarray
    probs: np.ndarray

    @property
    def y_pred(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


@dataclass
class ExternalSet:
    """One external set: each run's evaluation (in run order) and the paired tests between runs."""

    name: str
    evaluations: list[Evaluation]
    tests: list[PairTest]

    @property
    def present(self) -> list[str]:
        return self.evaluations[0].present


def load_external_sets(runs: Sequence[ReportRun], names: Sequence[str]) -> list[ExternalSet]:
    """Every run's evaluation on each set in ``names``; a run without one is an error naming it."""
    sets = []
    for name in names:
        evaluations, scores = [], []
        for run in runs:
            folder = RunDir(run.run_dir).external(name)
            if not folder.metrics.is_file():
                raise CxrlabError(
                    f"{run.run_dir}: not evaluated on '{name}' "
                    f"(cxrlab evaluate {run.run_dir} DATA --name {name})"
                )
            evaluations.append(load_evaluation(folder.root))
            scores.append(
                ExternalScores(run.label, *evaluation_predictions(folder.root, run.classes))
            )
        sets.append(ExternalSet(name, evaluations, pair_tests(scores)))
    return sets


def _gap(value: float, reference: float | None) -> Cell:
    return Cell(f"{value - reference:+.3f}" if reference is not None else MISSING)


def external_table(runs: Sequence[ReportRun], found: ExternalSet) -> Table:
    """Per run: balanced accuracy and each present class's recall there, its own test split,
    the gaps."""
    headers = ["run", "films", "balanced accuracy [CI]", "own test", "gap"]
    for name in found.present:
        headers += [f"recall {name} [CI]", "own test", "gap"]
    rows = []
    for run, ev in zip(runs, found.evaluations):
        internal = ev.internal
        row = [
            Cell(run.label),
            Cell(str(ev.n)),
            interval_cell(ev.balanced_accuracy),
            Cell(fmt(internal.balanced_accuracy) if internal else MISSING),
            _gap(ev.balanced_accuracy.value, internal.balanced_accuracy if internal else None),
        ]
        for name in found.present:
            reference = internal.recall[name] if internal else None
            recall = ev.per_class[name].recall
            row += [interval_cell(recall), Cell(fmt(reference)), _gap(recall.value, reference)]
        rows.append(row)
    return Table(headers, rows)


def called_table(runs: Sequence[ReportRun], found: ExternalSet) -> Table:
    """Per run and present class: how many of its films are called each of the model's
    classes."""
    classes = found.evaluations[0].classes
    rows = [
        [
            Cell(run.label),
            Cell(name),
            Cell(str(result.n)),
            *(Cell(str(result.called[c])) for c in classes),
            interval_cell(result.precision),
        ]
        for run, ev in zip(runs, found.evaluations)
        for name, result in ev.per_class.items()
    ]
    headers = ["run", "class", "films", *(f"called {c}" for c in classes), "precision [CI]"]
    return Table(headers, rows, text=(0, 1))


def external_columns(found: Sequence[ExternalSet], position: int) -> dict[str, str]:
    """The ``results.csv`` columns of the run at ``position``: each set's balanced accuracy,
    recalls, gaps."""
    row: dict[str, str] = {}
    for external in found:
        ev = external.evaluations[position]
        key = external.name
        row |= interval_fields(f"{key}_balanced_accuracy", ev.balanced_accuracy)
        if ev.internal is not None:
            gap = ev.balanced_accuracy.value - ev.internal.balanced_accuracy
            row[f"{key}_balanced_accuracy_gap"] = csv_number(gap)
        for name, result in ev.per_class.items():
            row[f"{key}_recall_{name}"] = csv_number(result.recall.value)
    return row


def external_markdown(runs: Sequence[ReportRun], found: Sequence[ExternalSet]) -> str:
    """The external-validation part of ``results.md``."""
    sets = [
        (
            external.name,
            [
                external_table(runs, external),
                called_table(runs, external),
                *([mcnemar_table(external.tests)] if external.tests else []),
            ],
        )
        for external in found
    ]
    return render_markdown("external.md", explanation=EXPLANATION, sets=sets)


EXPLANATION = (
    "Each finished model scored once on films from other sources (never used to train or select). "
    "Balanced accuracy is the mean recall over the classes the set holds; 'own test' is the same "
    "number on the run's own test split, 'gap' the difference. A large negative gap means the "
    "model learned something its own data rewards and other sources do not."
)
GAP_CAPTION = (
    "Balanced accuracy over each set's classes: own test split against each external set (95% "
    "CI); dotted: chance for two classes."
)


def external_html(runs: Sequence[ReportRun], found: Sequence[ExternalSet], out_dir: Path) -> Markup:
    """The report section: explanation, the gap chart, then per set its tables and paired
    tests."""
    gaps = {
        e.name: [
            (ev.balanced_accuracy, ev.internal.balanced_accuracy if ev.internal else None)
            for ev in e.evaluations
        ]
        for e in found
    }
    chart = plot_external_gap([run.label for run in runs], gaps, out_dir / GAP_PNG)
    sets = [
        {
            "name": external.name,
            "n": external.evaluations[0].n,
            "present": ", ".join(external.present),
            "absent": ", ".join(external.evaluations[0].absent),
            "scores": external_table(runs, external),
            "called": called_table(runs, external),
            "pairs": mcnemar_html(external.tests),
        }
        for external in found
    ]
    return render(
        "external.html", explanation=EXPLANATION, chart=Figure(chart, GAP_CAPTION), sets=sets
    )
