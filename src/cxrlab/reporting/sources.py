"""The Sources section: each run's training sources and its test films scored source by source.

A run trained on several sources (``--add-source``) has, in ``metrics.json``, the films each
source gave (``sources``) and each source's test films scored on their own (``per_source``: a
source may hold some classes only, so balanced accuracy is over its present classes). The
section shows both, so a number on the union of the test films never hides a source.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup

from cxrlab.reporting.render import render, render_markdown
from cxrlab.reporting.runs import ReportRun
from cxrlab.reporting.tables import MISSING, Cell, Table, interval_cell, interval_fields

SOURCES_NOTE = (
    "Each source's test films scored on their own: balanced accuracy over the classes the source "
    "holds; brackets: 95% bootstrap CI. Training films: train + validation, per class."
)


def has_sources(runs: Sequence[ReportRun]) -> bool:
    return any(run.metrics.per_source for run in runs)


def per_source_table(runs: Sequence[ReportRun]) -> Table:
    """One row per (run, source): test films, present classes, balanced accuracy and each
    class's recall with intervals, and the films the source gave to training."""
    classes = runs[0].classes
    rows = []
    for run in runs:
        for name, scores in run.metrics.per_source.items():
            given = run.metrics.sources.get(name, {})
            trained = {
                c: sum(given.get(s, {}).get(c, 0) for s in ("train", "val")) for c in classes
            }
            rows.append(
                [
                    Cell(run.label),
                    Cell(name),
                    Cell(", ".join(f"{c} {n}" for c, n in trained.items() if n) or MISSING),
                    Cell(str(scores.n)),
                    interval_cell(scores.balanced_accuracy),
                    *(
                        interval_cell(scores.per_class[c].recall)
                        if c in scores.per_class
                        else Cell(MISSING)
                        for c in classes
                    ),
                ]
            )
    headers = ["run", "source", "training films", "test films", "balanced accuracy [CI]"]
    return Table([*headers, *(f"recall {c} [CI]" for c in classes)], rows, (0, 1))


def per_source_columns(run: ReportRun) -> dict[str, str]:
    """``results.csv`` columns of one run: each source's balanced accuracy and recalls."""
    row: dict[str, str] = {}
    for name, scores in run.metrics.per_source.items():
        row |= interval_fields(f"{name}_balanced_accuracy", scores.balanced_accuracy)
        for c, result in scores.per_class.items():
            row |= interval_fields(f"{name}_recall_{c}", result.recall)
    return row


def sources_markdown(runs: Sequence[ReportRun]) -> str:
    """The per-source part of ``results.md``."""
    return render_markdown("sources.md", note=SOURCES_NOTE, table=per_source_table(runs))


def sources_html(runs: Sequence[ReportRun]) -> Markup:
    return render("sources.html", note=SOURCES_NOTE, table=per_source_table(runs))
