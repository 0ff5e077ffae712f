"""The comparison on the test split: the main table, each run's per-class table, ``results.csv``
and the recipe of each run.

Epochs are counted from 1 here (``metrics.json`` and ``history.csv`` count from 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup

from cxrlab.artifacts import MODEL_CARD
from cxrlab.reporting.render import render
from cxrlab.reporting.runs import ReportRun
from cxrlab.reporting.tables import (
    MISSING,
    Cell,
    Table,
    csv_number,
    fmt,
    fmt_count,
    interval_cell,
    interval_fields,
    number,
)

SPEED = "inference_img_per_s"


@dataclass(frozen=True)
class Column:
    """A comparison-table column: its cell per run and, for metrics, the number ranked for bold."""

    header: str
    cell: Callable[[ReportRun], Cell]
    value: Callable[[ReportRun], float] | None = None
    higher_is_better: bool = True


def comparison_columns(classes: Sequence[str]) -> list[Column]:
    """The columns of the comparison table, in order."""

    def headline(key: str, header: str) -> Column:
        return Column(
            header, lambda r: interval_cell(r.interval(key)), lambda r: r.interval(key).value
        )

    def test_metric(key: str, header: str, higher: bool = True) -> Column:
        return Column(
            header,
            lambda r: Cell(fmt(getattr(r.test, key))),
            lambda r: getattr(r.test, key),
            higher,
        )

    return [
        Column("run", lambda r: Cell(r.label)),
        Column("mode", lambda r: Cell(r.recipe.mode)),
        Column("weights", lambda r: Cell(r.recipe.weights_source)),
        headline("accuracy", "accuracy [CI]"),
        test_metric("balanced_accuracy", "balanced accuracy"),
        headline("macro_f1", "macro-F1 [CI]"),
        *(headline(f"recall_{c}", f"recall {c} [CI]") for c in classes),
        test_metric("macro_auc", "macro AUC"),
        test_metric("ece", "ECE", higher=False),
        Column("best epoch / run", _epochs_cell),
        Column("train time (s)", _train_time_cell, lambda r: r.train_seconds, False),
        Column("parameters", _parameters_cell),
        Column("inference (img/s)", _speed_cell, lambda r: r.metrics.inference_img_per_s),
    ]


def _epochs_cell(run: ReportRun) -> Cell:
    return Cell(f"{run.best_epoch + 1} / {run.metrics.epochs_run}")


def _train_time_cell(run: ReportRun) -> Cell:
    features = run.metrics.timings.get("features_s")
    note = f"({features:.1f} s features)" if features is not None else ""
    return Cell(fmt(run.train_seconds, 1), note)


def _parameters_cell(run: ReportRun) -> Cell:
    trainable = fmt_count(run.metrics.trainable_parameters)
    return Cell(fmt_count(run.metrics.parameters), f"({trainable} trainable)")


def _speed_cell(run: ReportRun) -> Cell:
    device = run.metrics.inference_device
    return Cell(fmt(run.metrics.inference_img_per_s, 0), f"({device})" if device else "")


def comparison_table(runs: Sequence[ReportRun]) -> Table:
    """One row per run; the best value of each metric column in bold."""
    columns = comparison_columns(runs[0].classes)
    table = Table(
        [c.header for c in columns], [[c.cell(run) for c in columns] for run in runs], (0, 1, 2)
    )
    for j, column in enumerate(columns):
        if column.value is not None:
            table.bold_best(j, [column.value(run) for run in runs], column.higher_is_better)
    return table


def per_class_table(run: ReportRun) -> Table:
    """Precision, recall, F1, AUC and support of each class on the test split."""
    rows = []
    for name in run.classes:
        stats = run.test.per_class[name]
        scores = (Cell(fmt(v)) for v in (stats.precision, stats.recall, stats.f1, stats.auc))
        rows.append([Cell(name), *scores, Cell(str(stats.support))])
    return Table(["class", "precision", "recall", "F1", "AUC (one-vs-rest)", "support"], rows)


def results_rows(runs: Sequence[ReportRun]) -> list[dict[str, object]]:
    """One dict of numbers per run: the rows of ``results.csv`` (epochs counted from 1)."""
    rows = []
    for run in runs:
        row: dict[str, object] = {
            "run": run.label,
            "model": run.recipe.model,
            "mode": run.recipe.mode,
        }
        for key in ("accuracy", "macro_f1"):
            row |= interval_fields(key, run.interval(key))
        row |= {
            k: csv_number(getattr(run.test, k)) for k in ("balanced_accuracy", "macro_auc", "ece")
        }
        for c in run.classes:
            row |= interval_fields(f"recall_{c}", run.interval(f"recall_{c}"))
        row |= {
            "train_s": csv_number(run.train_seconds),
            "parameters": run.metrics.parameters,
            "trainable_parameters": run.metrics.trainable_parameters,
            SPEED: csv_number(run.metrics.inference_img_per_s),
            "best_epoch": run.best_epoch + 1,
            "epochs_run": run.metrics.epochs_run,
        }
        rows.append(row)
    return rows


def recipe_items(run: ReportRun) -> dict[str, str]:
    """A run's recipe, folder and validation score; TTA and weight EMA when the run used them."""
    card = run.run_dir / MODEL_CARD
    items = {
        "recipe": run.metrics.description or MISSING,
        "folder": str(run.run_dir),
        **({"model card": str(card)} if card.is_file() else {}),
        "best validation macro-F1": fmt(run.metrics.best_val_macro_f1),
    }
    without = run.metrics.test_without_tta
    if without is not None or run.recipe.tta:
        note = f" (test accuracy without TTA: {fmt(without.accuracy)})" if without else ""
        items["TTA"] = f"on{note}"
    decay = number(run.recipe.ema_decay)
    if math.isfinite(decay) and decay > 0:
        items["EMA of weights"] = f"decay {decay:g}"
    return items


def comparison_html(table: Table) -> Markup:
    """The comparison table and how to read it."""
    return render("comparison.html", table=table)


def per_class_html(runs: Sequence[ReportRun]) -> Markup:
    """One per-class table per run."""
    return render("per_class.html", tables={run.label: per_class_table(run) for run in runs})


def runs_html(runs: Sequence[ReportRun]) -> Markup:
    """Each run's recipe (``metrics.json``'s description), its folder, TTA and EMA when used."""
    return render("runs.html", recipes={run.label: recipe_items(run) for run in runs})
