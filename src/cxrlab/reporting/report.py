"""Compare finished training runs in one self-contained HTML report, with figures and tables.

:func:`write_report` reads run folders written by ``cxrlab train`` (their files only, see
:mod:`cxrlab.reporting.runs`) and writes into one folder:

* ``report.html`` — a single file (figures embedded as data URIs, inline CSS, no scripts,
  no external links), rendered from the templates in ``templates/``. A header gives the title,
  date, command, machine, cxrlab version and the evaluation protocol; numbered sections follow:
  the dataset (:mod:`~cxrlab.reporting.dataset`), the comparison table with the best value per
  metric column in bold (:mod:`~cxrlab.reporting.comparison`), external validation when asked
  for (:mod:`~cxrlab.reporting.external`), calibration (:mod:`~cxrlab.reporting.calibration`),
  metric bars, learning curves, confusion matrices and ROC curves
  (:mod:`~cxrlab.reporting.plots`), McNemar's test for every pair of runs, Holm-adjusted
  (:mod:`~cxrlab.reporting.pairs`), per-class metrics, robustness and the shortcut probes
  (:mod:`~cxrlab.reporting.robustness`), Grad-CAM (:mod:`~cxrlab.reporting.gradcam`) and each
  run's recipe and folder. A run without robustness or Grad-CAM results says "not computed";
* ``results.md`` — the same tables in Markdown;
* ``results.csv`` — one row of numbers per run; ``mcnemar.csv`` — one row per pair of runs;
  ``robustness.csv`` and ``gradcam.csv`` — one row per run (empty numbers where not computed);
* ``bars.png``, ``curves.png``, ``confusion.png``, ``roc.png``, ``reliability.png`` (and
  ``external_gap.png``) — the figures.

Every table is built once as a :class:`~cxrlab.reporting.tables.Table` and rendered to HTML or
Markdown; all text is escaped (:mod:`~cxrlab.reporting.render`) and every file is written
atomically. Epochs are counted from 1 everywhere in the report.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from markupsafe import Markup

from cxrlab import __version__
from cxrlab.fileio import atomic_write_text
from cxrlab.reporting.calibration import (
    calibration_columns,
    calibration_html,
    calibration_markdown,
)
from cxrlab.reporting.comparison import (
    comparison_html,
    comparison_table,
    per_class_html,
    results_rows,
    runs_html,
)
from cxrlab.reporting.dataset import dataset_html
from cxrlab.reporting.external import (
    external_columns,
    external_html,
    external_markdown,
    load_external_sets,
)
from cxrlab.reporting.gradcam import gradcam_fields, gradcam_html, gradcam_rows, gradcam_table
from cxrlab.reporting.pairs import (
    MCNEMAR_FIELDS,
    mcnemar_html,
    mcnemar_rows,
    mcnemar_table,
    pair_tests,
)
from cxrlab.reporting.plots import (
    plot_confusion_matrices,
    plot_learning_curves,
    plot_metric_bars,
    plot_roc_curves,
)
from cxrlab.reporting.render import Figure, render, render_markdown
from cxrlab.reporting.robustness import (
    robustness_fields,
    robustness_html,
    robustness_rows,
    robustness_table,
)
from cxrlab.reporting.runs import ReportRun, load_runs
from cxrlab.reporting.sources import (
    has_sources,
    per_source_columns,
    sources_html,
    sources_markdown,
)
from cxrlab.reporting.tables import Table, write_csv

PROTOCOL = (
    "Models chosen on validation macro-F1 (validation carved from train); the test split is "
    "read once, with the chosen checkpoint. Intervals: 95% percentile bootstrap over test images."
)
FIGURES = {  # report figure (drawn into <key>.png): caption
    "bars": "Test accuracy, macro-F1 and the recall of each class; error bars: 95% bootstrap CI.",
    "curves": (
        "Loss and accuracy per epoch on the training and validation subsets (dashed: validation "
        "macro-F1); dotted line: the epoch chosen on validation macro-F1."
    ),
    "confusion": (
        "Test predictions of the chosen checkpoint: rows are the true class, columns the predicted "
        "class; each cell gives the count and the share of its true class."
    ),
    "roc": (
        "One-vs-rest ROC curve per class on the test split, every run overlaid (AUC in each "
        "panel's legend)."
    ),
}
# results.md: the note under each heading
COMPARISON_NOTE = (
    "Best value per metric column in bold; brackets: 95% bootstrap CI; epochs counted from 1."
)
MCNEMAR_NOTE = (
    "Only A right: test images run A gets right and run B wrong. Holm-adjusted over the pairs "
    "tested."
)
ROBUSTNESS_NOTE = (
    "Test accuracy on each variant of the test images; brackets: change against the model's own "
    "preprocessing (the reference). A model relying on image format shows a drop."
)
GRADCAM_NOTE = (
    "Share of each Grad-CAM map inside the lung fields, in the border band and elsewhere; lung "
    "area: the share a uniform map would get; enrichment: lung share / lung area."
)


def draw_figures(runs: Sequence[ReportRun], out_dir: Path) -> dict[str, Figure]:
    """The four comparison PNGs in ``out_dir`` with their captions, by :data:`FIGURES` key."""
    plots = {
        "bars": plot_metric_bars,
        "curves": plot_learning_curves,
        "confusion": plot_confusion_matrices,
        "roc": plot_roc_curves,
    }
    return {
        key: Figure(plot(runs, out_dir / f"{key}.png"), FIGURES[key]) for key, plot in plots.items()
    }


def results_markdown(
    title: str,
    comparison: Table,
    pairs: Table | None,
    robustness: Table | None = None,
    gradcam: Table | None = None,
    sections: Sequence[str] = (),
) -> str:
    """``results.md``: the comparison table, (two runs or more) the McNemar table, the
    robustness and Grad-CAM tables when given, then ``sections`` (Markdown already rendered:
    per source, external validation, calibration)."""
    return (
        render_markdown(
            "results.md",
            title=title,
            protocol=PROTOCOL,
            comparison_note=COMPARISON_NOTE,
            comparison=comparison,
            mcnemar_note=MCNEMAR_NOTE,
            pairs=pairs,
            robustness_note=ROBUSTNESS_NOTE,
            robustness=robustness,
            gradcam_note=GRADCAM_NOTE,
            gradcam=gradcam,
            sections=sections,
        )
        + "\n"
    )


def machine_info() -> str:
    """Platform, CPU count, torch version and GPU of the machine writing the report (torch is
    imported here only: the commands that write a report have loaded it already)."""
    import torch

    parts = [platform.platform(), f"{os.cpu_count() or '?'} CPUs", f"torch {torch.__version__}"]
    if torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name(0)}")
    return ", ".join(parts)


@dataclass
class Section:
    """A numbered report section: anchor, heading and HTML body."""

    anchor: str
    heading: str
    body: Markup


def page_html(title: str, command: str | None, sections: Sequence[Section]) -> str:
    """The whole page: inline CSS, header (title, generation details, the evaluation protocol),
    table of contents and numbered sections."""
    details = {"generated": datetime.now().strftime("%Y-%m-%d %H:%M")}
    if command:
        details["command"] = command
    details["machine (this report)"] = machine_info()
    details["cxrlab"] = __version__
    page = render("page.html", title=title, details=details, protocol=PROTOCOL, sections=sections)
    return page + "\n"


def write_report(
    run_dirs: list[Path],
    out_dir: Path,
    *,
    title: str = "cxrlab comparison",
    analysis_dir: Path | None = None,
    command: str | None = None,
    external: Sequence[str] = (),
) -> Path:
    """Compare the runs in ``run_dirs``; write the report and its files into ``out_dir``.

    ``external``: names of external sets every run was evaluated on (``RUN/external/<NAME>/``),
    reported in their own section and in ``results.csv``/``results.md``.
    Returns the path of ``out_dir/report.html``.
    """
    runs = load_runs(run_dirs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = draw_figures(runs, out_dir)
    tests = pair_tests(runs)
    comparison, pairs = comparison_table(runs), mcnemar_table(tests)
    externals = load_external_sets(runs, external)
    results = [
        row
        | per_source_columns(runs[i])
        | external_columns(externals, i)
        | calibration_columns(runs[i], externals, i)
        for i, row in enumerate(results_rows(runs))
    ]
    every_column = list(dict.fromkeys(key for row in results for key in row))
    write_csv(out_dir / "results.csv", every_column, results)
    write_csv(out_dir / "mcnemar.csv", MCNEMAR_FIELDS, mcnemar_rows(tests))
    robustness, gradcam = robustness_table(runs), gradcam_table(runs)
    write_csv(out_dir / "robustness.csv", robustness_fields(runs), robustness_rows(runs))
    write_csv(out_dir / "gradcam.csv", gradcam_fields(runs), gradcam_rows(runs))
    sections = [
        *([sources_markdown(runs)] if has_sources(runs) else []),
        *([external_markdown(runs, externals)] if externals else []),
        calibration_markdown(runs, externals),
    ]
    markdown = results_markdown(
        title, comparison, pairs if tests else None, robustness, gradcam, sections
    )
    atomic_write_text(out_dir / "results.md", markdown)

    analysis = Path(analysis_dir) if analysis_dir else None
    sections = [
        Section("dataset", "Dataset", dataset_html(analysis, runs)),
        Section("comparison", "Comparison on the test split", comparison_html(comparison)),
        *([Section("sources", "Per source", sources_html(runs))] if has_sources(runs) else []),
        *(
            [Section("external", "External validation", external_html(runs, externals, out_dir))]
            if externals
            else []
        ),
        Section(
            "calibration",
            "Calibration and operating point",
            calibration_html(runs, externals, out_dir),
        ),
        Section("bars", "Headline metrics", figures["bars"].html()),
        Section("curves", "Learning curves", figures["curves"].html()),
        Section("confusion", "Confusion matrices", figures["confusion"].html()),
        Section("roc", "ROC curves", figures["roc"].html()),
        Section("mcnemar", "Paired comparison (McNemar)", mcnemar_html(tests)),
        Section("per-class", "Per-class metrics", per_class_html(runs)),
        Section("robustness", "Robustness", robustness_html(runs, robustness)),
        Section("gradcam", "Explainability (Grad-CAM)", gradcam_html(runs, gradcam)),
        Section("runs", "Runs", runs_html(runs)),
    ]
    report = out_dir / "report.html"
    atomic_write_text(report, page_html(title, command, sections))
    return report
