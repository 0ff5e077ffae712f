"""The report's dataset section: the summary of ``cxrlab analyze`` (counts, findings, figures)
when its folder is given, and the images each run used."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from markupsafe import Markup

from cxrlab.data.analyze import PLOTS, SUMMARY_JSON
from cxrlab.data.summary import DatasetSummary
from cxrlab.reporting.render import Figure, render
from cxrlab.reporting.runs import ReportRun
from cxrlab.reporting.tables import Cell, Table

SUBSETS = ("train", "val", "test")
ANALYSIS_CAPTIONS = {  # the cxrlab analyze figures shown in the dataset section, in order
    "class_counts": "Files per class and split.",
    "samples": "Random readable images per class.",
    "image_sizes": "Image sizes and shapes per class: a size or shape that differs by class is a "
    "shortcut risk.",
    "intensity": "Intensity per class: brightness that differs by class is a shortcut risk.",
    "mean_images": "Pixel-wise mean image per class and its difference to the mean of all classes.",
}


def subsets_table(runs: Sequence[ReportRun]) -> Table:
    """Images per subset (train / validation / test) used by each run."""
    sizes = [r.metrics.sizes for r in runs]
    rows = [
        [Cell(r.label), *(Cell(str(n.get(s, 0))) for s in SUBSETS)] for r, n in zip(runs, sizes)
    ]
    return Table(["run", "train", "validation", "test"], rows)


def dataset_table(summary: DatasetSummary) -> Table:
    """Files per split and class from an analysis summary (and the readable count if fewer)."""
    classes = summary.dataset.classes
    counts, readable = summary.counts, summary.ok_counts
    rows = []
    for split in summary.dataset.splits:
        cells = []
        for c in classes:
            n, ok = counts[split][c], readable[split][c]
            cells.append(Cell(str(n), f"({ok} readable)" if ok != n else ""))
        rows.append([Cell(split), *cells, Cell(str(sum(counts[split].values())))])
    return Table(["split", *classes, "total"], rows)


def dataset_html(analysis_dir: Path | None, runs: Sequence[ReportRun]) -> Markup:
    """The analysis summary (counts, findings, figures) when given, and each run's subsets."""
    summary = DatasetSummary.load_optional(analysis_dir / SUMMARY_JSON) if analysis_dir else None
    context: dict[str, object] = {"analysis_dir": analysis_dir, "summary": summary}
    if analysis_dir is not None and summary is not None:
        dataset = summary.dataset
        context |= {
            "about": {
                "dataset": dataset.name,
                "folder": dataset.root,
                "layout": dataset.layout,
                "files": f"{summary.n_files} ({summary.n_ok} readable)",
            },
            "counts": dataset_table(summary),
            "findings": summary.findings,
            "figures": [
                Figure(analysis_dir / PLOTS[key], caption)
                for key, caption in ANALYSIS_CAPTIONS.items()
                if (analysis_dir / PLOTS[key]).is_file()
            ],
        }
    return render("dataset.html", subsets=subsets_table(runs), **context)
