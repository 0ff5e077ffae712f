"""The report's robustness section: accuracy on squashed, padded, rotated and darkened test
films, and the shortcut probes (lung fields hidden or kept alone), from each run's
``robustness.json`` (written by ``cxrlab explain``); a run without one says "not computed"."""

from __future__ import annotations

import math
from collections.abc import Sequence

from markupsafe import Markup

from cxrlab.artifacts import ROBUSTNESS_JSON
from cxrlab.diagnostics import PROBES, VARIANTS, VariantResult, probe_reading
from cxrlab.reporting.render import render
from cxrlab.reporting.runs import ReportRun
from cxrlab.reporting.tables import (
    MISSING,
    NOT_COMPUTED,
    Cell,
    Table,
    csv_number,
    csv_row,
    fmt,
    fmt_change,
    fmt_percent,
)


def robustness_variants(runs: Sequence[ReportRun]) -> list[str]:
    """The variant names of every run's ``robustness.json``: :data:`VARIANTS` order, then others."""
    found: list[str] = []
    for run in runs:
        for name in run.robustness.variants if run.robustness else ():
            if name not in found:
                found.append(name)
    known = [name for name in VARIANTS if name in found]
    return known + [name for name in found if name not in VARIANTS] if found else list(VARIANTS)


def variant_descriptions(runs: Sequence[ReportRun]) -> dict[str, str]:
    """Each variant's description, from the runs' files (falling back to :data:`VARIANTS`)."""
    described = {}
    for name in robustness_variants(runs):
        texts = [
            r.robustness.variants[name].description
            for r in runs
            if r.robustness and name in r.robustness.variants
        ]
        described[name] = next((t for t in texts if t), VARIANTS.get(name, MISSING))
    return described


def _variant(run: ReportRun, name: str) -> VariantResult | None:
    return run.robustness.variants.get(name) if run.robustness else None


def _accuracy(run: ReportRun, name: str) -> float:
    variant = _variant(run, name)
    return variant.accuracy if variant else math.nan


def worst_drop(run: ReportRun) -> tuple[float, str]:
    """The largest accuracy drop over the variants other than the reference, and its variant."""
    if not run.robustness:
        return math.nan, ""
    reference = run.robustness.reference
    drops = [
        (v.accuracy_drop, name)
        for name, v in run.robustness.variants.items()
        if name not in (reference, *PROBES) and math.isfinite(v.accuracy_drop)
    ]
    return max(drops) if drops else (math.nan, "")


def _probe_cells(run: ReportRun) -> list[Cell]:
    """The probe columns of a run: balanced accuracy with the lungs hidden and with only the
    lungs (chance in brackets), and the share of films whose lungs were found (per class)."""
    data = run.robustness
    chance = fmt(data.chance.balanced_accuracy if data and data.chance else None)
    cells = []
    for name in PROBES:
        variant = _variant(run, name)
        value = variant.balanced_accuracy if variant else None
        computed = value is not None
        cells.append(Cell(fmt(value), f"(chance {chance})") if computed else Cell(NOT_COMPUTED))
    found = data.lung_fields if data else None
    if found is None:
        return [*cells, Cell(NOT_COMPUTED)]
    by_class = ", ".join(f"{c} {fmt_percent(v)}" for c, v in found.segmented_by_class.items())
    note = f"({by_class}; {found.segmenter})" if by_class else f"({found.segmenter})"
    return [*cells, Cell(fmt_percent(found.segmented), note)]


def _row(run: ReportRun, names: Sequence[str]) -> list[Cell]:
    """A run's own preprocessing, test images, each format variant's accuracy with the change
    against the reference, the worst drop and the probes."""
    data = run.robustness
    assert data is not None  # rows of runs without robustness.json are "not computed"
    skipped = f"({data.unreadable} unreadable)" if data.unreadable else ""
    row = [
        Cell(run.label),
        Cell(f"{data.reference} {data.image_size}px"),
        Cell(str(data.n_images), skipped),
    ]
    for name in names:
        variant = _variant(run, name)
        if variant is None:
            row.append(Cell(MISSING))
            continue
        own = name == data.reference
        note = "(reference)" if own else f"({fmt_change(-variant.accuracy_drop)})"
        row.append(Cell(fmt(variant.accuracy), note))
    drop, where = worst_drop(run)
    row.append(Cell(fmt(drop), f"({where})" if where else ""))
    return row + _probe_cells(run)


def robustness_table(runs: Sequence[ReportRun]) -> Table:
    """Per run: its own preprocessing, then the accuracy on each format variant with the
    change against that reference, the worst drop, and the shortcut probes (balanced
    accuracy, lungs found). Bold: best accuracy per format variant, smallest worst drop."""
    names = [name for name in robustness_variants(runs) if name not in PROBES]
    probes = [f"{name.replace('-', ' ')} (balanced)" for name in PROBES]
    blank = [Cell(MISSING)] * (len(names) + len(probes) + 3)
    rows = [
        _row(run, names) if run.robustness else [Cell(run.label), Cell(NOT_COMPUTED), *blank]
        for run in runs
    ]
    headers = ["run", "own preprocessing", "test images", *names, "worst drop", *probes]
    table = Table([*headers, "lungs found"], rows, text=(0, 1))
    for j, name in enumerate(names):
        accuracies = [_accuracy(r, name) for r in runs]
        table.bold_best(3 + j, accuracies, True)
    table.bold_best(3 + len(names), [worst_drop(r)[0] for r in runs], False)
    return table


def robustness_fields(runs: Sequence[ReportRun]) -> list[str]:
    """The columns of ``robustness.csv``."""
    per_variant = [
        f"{name}_{key}"
        for name in robustness_variants(runs)
        for key in (
            "accuracy",
            "accuracy_drop",
            "balanced_accuracy",
            "macro_f1",
            *(f"recall_{c}" for c in runs[0].classes),
        )
    ]
    return [
        "run",
        "computed",
        "reference",
        "image_size",
        "n_images",
        "unreadable",
        "worst_drop",
        "worst_variant",
        *per_variant,
        "chance_balanced_accuracy",
        "chance_accuracy",
        "lungs_segmented",
        *(f"lungs_segmented_{c}" for c in runs[0].classes),
    ]


def _variant_fields(
    name: str, variant: VariantResult | None, classes: Sequence[str]
) -> dict[str, str]:
    """The ``robustness.csv`` columns of one variant (empty where the run lacks it)."""
    numbers = (
        {
            "accuracy": csv_number(variant.accuracy),
            "accuracy_drop": csv_number(variant.accuracy_drop),
            "balanced_accuracy": csv_number(variant.balanced_accuracy),
            "macro_f1": csv_number(variant.macro_f1),
        }
        if variant
        else dict.fromkeys(("accuracy", "accuracy_drop", "balanced_accuracy", "macro_f1"), "")
    )
    recalls = {c: csv_number(variant.recall.get(c) if variant else None) for c in classes}
    return {f"{name}_{key}": value for key, value in numbers.items()} | {
        f"{name}_recall_{c}": value for c, value in recalls.items()
    }


def robustness_rows(runs: Sequence[ReportRun]) -> list[dict[str, object]]:
    """One dict per run: the rows of ``robustness.csv`` (numbers empty where not computed)."""
    fields = robustness_fields(runs)
    rows = []
    for run in runs:
        row = csv_row(fields, run=run.label, computed=bool(run.robustness))
        if run.robustness:
            data = run.robustness
            drop, where = worst_drop(run)
            row |= {
                "reference": data.reference,
                "image_size": data.image_size,
                "n_images": data.n_images,
                "unreadable": data.unreadable,
                "worst_drop": csv_number(drop),
                "worst_variant": where,
            }
            for name in robustness_variants(runs):
                row |= _variant_fields(name, _variant(run, name), run.classes)
            chance, found = data.chance, data.lung_fields
            if chance is not None:
                row["chance_balanced_accuracy"] = csv_number(chance.balanced_accuracy)
                row["chance_accuracy"] = csv_number(chance.accuracy)
            if found is not None:
                row["lungs_segmented"] = csv_number(found.segmented)
            for c in run.classes:
                share = found.segmented_by_class.get(c) if found else None
                row[f"lungs_segmented_{c}"] = csv_number(share)
        rows.append(row)
    return rows


def robustness_html(runs: Sequence[ReportRun], table: Table) -> Markup:
    """The robustness table, how to read it, what the probes say and what each variant is."""
    return render(
        "robustness.html",
        table=table,
        readings={run.label: probe_reading(run.robustness) for run in runs if run.robustness},
        variants=variant_descriptions(runs),
        missing=", ".join(r.label for r in runs if not r.robustness),
        file=ROBUSTNESS_JSON,
    )
