"""The report's explainability section: where each model's Grad-CAM maps fall (lungs, border,
elsewhere), from each run's ``gradcam.json`` and ``gradcam.png`` (written by ``cxrlab explain``);
a run without them says "not computed"."""

from __future__ import annotations

import math
from collections.abc import Sequence

from markupsafe import Markup

from cxrlab.artifacts import GRADCAM_JSON
from cxrlab.diagnostics import GradcamSummary
from cxrlab.reporting.render import Figure, render
from cxrlab.reporting.runs import ReportRun
from cxrlab.reporting.tables import (
    MISSING,
    NOT_COMPUTED,
    Cell,
    Table,
    csv_number,
    csv_row,
    fmt,
    fmt_percent,
    number,
)

# the shares (gradcam.csv columns), their table header and which way is better (None: not ranked)
GRADCAM_SHARES = (
    ("lung_share", "lung share", True),
    ("border_share", "border share", False),
    ("other_share", "other", None),
    ("lung_area", "lung area (uniform)", None),
)
GRADCAM_FIELDS = (
    "run",
    "computed",
    "n_images",
    "target",
    "layer",
    "lung_share",
    "border_share",
    "other_share",
    "lung_area",
    "lung_enrichment",
    "lung_share_correct",
    "lung_share_wrong",
    "segmented",
)


def _numbers(data: GradcamSummary | None) -> dict[str, float | None]:
    """The numbers of a run's ``gradcam.json`` by ``gradcam.csv`` column (None without one)."""
    return {
        "lung_share": data.lung_share if data else None,
        "border_share": data.border_share if data else None,
        "other_share": data.other_share if data else None,
        "lung_area": data.lung_area if data else None,
        "lung_enrichment": data.lung_enrichment if data else None,
        "lung_share_correct": data.lung_share_correct if data else None,
        "lung_share_wrong": data.lung_share_wrong if data else None,
        "segmented": data.segmented if data else None,
    }


def gradcam_table(runs: Sequence[ReportRun]) -> Table:
    """Per run: where the Grad-CAM maps fall (lungs, border, elsewhere), the lung area a
    uniform map would get, the enrichment, the lung share by correctness and class, and how
    many lung masks were segmented. Bold: highest lung share and enrichment, lowest border."""
    classes = runs[0].classes
    headers = [
        "run",
        "layer",
        "images",
        *(h for _, h, _ in GRADCAM_SHARES),
        "enrichment",
        "lung share right",
        "lung share wrong",
        *(f"lung share {c}" for c in classes),
        "segmented",
    ]
    rows = []
    for run in runs:
        data = run.gradcam
        if not data:
            dashes = [Cell(MISSING)] * (len(headers) - 2)
            rows.append([Cell(run.label), Cell(NOT_COMPUTED), *dashes])
            continue
        numbers, enrichment = _numbers(data), number(data.lung_enrichment)
        rows.append(
            [
                Cell(run.label),
                Cell(data.layer or MISSING),
                Cell(str(data.n_images)),
                *(Cell(fmt(numbers[key])) for key, _, _ in GRADCAM_SHARES),
                Cell(f"{fmt(enrichment, 2)}×" if math.isfinite(enrichment) else MISSING),
                Cell(fmt(data.lung_share_correct)),
                Cell(fmt(data.lung_share_wrong)),
                *(Cell(fmt(data.lung_share_by_class.get(c))) for c in classes),
                Cell(fmt_percent(data.segmented)),
            ]
        )
    table = Table(headers, rows, text=(0, 1))
    ranked = [(key, higher) for key, _, higher in GRADCAM_SHARES] + [("lung_enrichment", True)]
    for j, (key, higher) in enumerate(ranked):
        if higher is not None:
            values = [number(_numbers(r.gradcam)[key]) for r in runs]
            table.bold_best(3 + j, values, higher)
    return table


def gradcam_fields(runs: Sequence[ReportRun]) -> list[str]:
    """The columns of ``gradcam.csv``."""
    return [*GRADCAM_FIELDS, *(f"lung_share_{c}" for c in runs[0].classes)]


def gradcam_rows(runs: Sequence[ReportRun]) -> list[dict[str, object]]:
    """One dict per run: the rows of ``gradcam.csv`` (numbers empty where not computed)."""
    fields = gradcam_fields(runs)
    rows = []
    for run in runs:
        row = csv_row(fields, run=run.label, computed=bool(run.gradcam))
        if run.gradcam:
            data = run.gradcam
            row |= {"n_images": data.n_images, "target": data.target, "layer": data.layer}
            row |= {key: csv_number(value) for key, value in _numbers(data).items()}
            for c in run.classes:
                row[f"lung_share_{c}"] = csv_number(data.lung_share_by_class.get(c))
        rows.append(row)
    return rows


def gradcam_caption(run: ReportRun) -> str:
    """The caption of a run's Grad-CAM overlay figure."""
    data = run.gradcam
    target = (data.target if data else "") or "predicted class"
    layer = f" at layer {data.layer}" if data and data.layer else ""
    return (
        f"{run.label}: Grad-CAM of the {target}{layer}, overlaid on test images; rows: true "
        "class; columns: correctly classified examples, then wrongly classified ones."
    )


def gradcam_html(runs: Sequence[ReportRun], table: Table) -> Markup:
    """The Grad-CAM table, how to read it and each run's overlay figure."""
    figures = {
        run.label: Figure(run.gradcam_png, gradcam_caption(run))
        for run in runs
        if run.gradcam_png is not None
    }
    missing = [r.label for r in runs if not r.gradcam and r.gradcam_png is None]
    return render(
        "gradcam.html", table=table, figures=figures, missing=", ".join(missing), file=GRADCAM_JSON
    )
