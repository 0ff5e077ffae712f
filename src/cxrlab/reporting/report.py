"""Compare finished training runs in one self-contained HTML report, with figures and tables.

:func:`write_report` reads run folders written by :func:`cxrlab.training.run.train_run`
and writes into one folder:

* ``report.html`` — a single file (figures embedded as data URIs, inline CSS, no scripts,
  no external links). A header gives the title, date, command, machine, cxrlab version and
  the evaluation protocol; numbered sections follow: (1) the dataset — the summary of
  ``cxrlab analyze`` when its folder is given (counts, findings, its figures) and the images
  each run used; (2) the comparison table, best value per metric column in bold; (3) metric
  bars with 95% CIs; (4) learning curves; (5) confusion matrices; (6) ROC curves;
  (7) McNemar's test for every pair of runs on the same test images, Holm-adjusted;
  (8) per-class precision/recall/F1/AUC; (9) robustness: accuracy on squashed, padded,
  rotated and darkened test images, and the shortcut probes: lung fields hidden or kept
  alone, with the share of films whose lungs were found (``robustness.json`` of each run);
  (10) explainability: where each model's Grad-CAM maps fall — lungs, border, elsewhere
  (``gradcam.json`` and ``gradcam.png`` of each run); (11) each run's recipe (with EMA and
  TTA) and folder. Sections 9 and 10 are optional per run: a run without those files says
  "not computed";
* ``results.md`` — the comparison, McNemar, robustness and Grad-CAM tables in Markdown;
* ``results.csv`` — one row of numbers per run; ``mcnemar.csv`` — one row per pair of runs;
  ``robustness.csv`` and ``gradcam.csv`` — one row per run (empty numbers where not computed);
* ``bars.png``, ``curves.png``, ``confusion.png``, ``roc.png`` — the figures, drawn by
  :mod:`cxrlab.reporting.plots`.

Every table is built once as a :class:`Table` and rendered to HTML or Markdown; all text in
either (run, class and model names, folders) is escaped by :func:`cxrlab.fileio.html_escape` or
:func:`cxrlab.fileio.markdown_escape`, and every text file is written atomically. Epochs are
counted from 1 everywhere in the report (``metrics.json`` and ``history.csv`` count from 0).
"""

from __future__ import annotations

import base64
import csv
import itertools
import json
import math
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from cxrlab import __version__
from cxrlab.data.analyze import PLOTS
from cxrlab.errors import CxrlabError
from cxrlab.evaluation.metrics import Interval, McNemarResult, holm, mcnemar
from cxrlab.evaluation.predict import read_predictions
from cxrlab.evaluation.robustness import PROBES, VARIANTS, probe_reading
from cxrlab.fileio import atomic_open, atomic_write_text, html_escape, markdown_escape, read_text
from cxrlab.reporting.plots import (
    plot_confusion_matrices,
    plot_learning_curves,
    plot_metric_bars,
    plot_roc_curves,
)
from cxrlab.training.config import RunConfig
from cxrlab.training.run import RunResult, read_history

PROTOCOL = (
    "Models chosen on validation macro-F1 (validation carved from train); the test split is "
    "read once, with the chosen checkpoint. Intervals: 95% percentile bootstrap over test images."
)
ALPHA = 0.05  # significance level for the Holm-adjusted McNemar p-values
MISSING = "–"
SPEED = "inference_img_per_s"
SUBSETS = ("train", "val", "test")
FIGURES = {  # report figure: (file name, caption)
    "bars": ("bars.png", "Test accuracy, macro-F1 and the recall of each class; error bars: 95% "
             "bootstrap CI."),
    "curves": ("curves.png", "Loss and accuracy per epoch on the training and validation subsets "
               "(dashed: validation macro-F1); dotted line: the epoch chosen on validation "
               "macro-F1."),
    "confusion": ("confusion.png", "Test predictions of the chosen checkpoint: rows are the true "
                  "class, columns the predicted class; each cell gives the count and the share of "
                  "its true class."),
    "roc": ("roc.png", "One-vs-rest ROC curve per class on the test split, every run overlaid "
            "(AUC in each panel's legend)."),
}
ANALYSIS_CAPTIONS = {  # the cxrlab analyze figures shown in the dataset section, in order
    "class_counts": "Files per class and split.",
    "samples": "Random readable images per class.",
    "image_sizes": "Image sizes and shapes per class: a size or shape that differs by class is a "
                   "shortcut risk.",
    "intensity": "Intensity per class: brightness that differs by class is a shortcut risk.",
    "mean_images": "Pixel-wise mean image per class and its difference to the mean of all classes.",
}
NOT_COMPUTED = "not computed"
ROBUSTNESS_JSON, GRADCAM_JSON, GRADCAM_PNG = "robustness.json", "gradcam.json", "gradcam.png"
# gradcam.json share keys, their table header and which way is better (None: not ranked)
GRADCAM_SHARES = (
    ("lung_share", "lung share", True),
    ("border_share", "border share", False),
    ("other_share", "other", None),
    ("lung_area", "lung area (uniform)", None),
)
GRADCAM_FIELDS = (
    "run", "computed", "n_images", "target", "layer", "lung_share", "border_share", "other_share",
    "lung_area", "lung_enrichment", "lung_share_correct", "lung_share_wrong", "segmented",
)
MCNEMAR_FIELDS = (
    "run_a", "run_b", "n", "only_a_right", "only_b_right", "statistic", "exact", "p_value",
    "p_holm", "note",
)

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: #1f2328; max-width: 1480px; margin: 0 auto; padding: 24px 24px 48px;
       line-height: 1.5; font-size: 15px; }
h1 { font-size: 28px; margin: 0 0 4px; }
h2 { font-size: 21px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 2px solid #d0d7de; }
h3 { font-size: 16px; margin: 18px 0 6px; }
nav ol { columns: 2; margin: 6px 0 0; }
a { color: #0a58ca; text-decoration: none; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 12px 0; }
dl.meta dt { font-weight: 600; color: #57606a; }
dl.meta dd { margin: 0; overflow-wrap: anywhere; }
.note { background: #f6f8fa; border-left: 4px solid #8c959f; padding: 8px 12px; margin: 10px 0; }
.scroll { overflow-x: auto; margin: 8px 0 4px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { padding: 4px 5px; border-bottom: 1px solid #d8dee4; vertical-align: top; }
th { background: #f0f3f6; text-align: left; font-weight: 600; vertical-align: bottom; }
td { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
td.text { text-align: left; white-space: normal; max-width: 18em; }
td:first-child { min-width: 8.5em; }
tbody tr:nth-child(even) { background: #fafbfc; }
.ci { color: #6e7781; font-size: 11.5px; }
figure { margin: 10px 0 4px; }
figure img { max-width: 100%; height: auto; border: 1px solid #e6e8eb; }
figcaption { color: #57606a; font-size: 13.5px; margin-top: 4px; }
"""


# --------------------------------------------------------------------------- runs


@dataclass
class ReportRun:
    """One finished run as the report needs it: recipe, metrics, history and test predictions."""

    run_dir: Path
    config: RunConfig
    metrics: dict
    history: list[dict[str, float]]
    paths: list[str]
    y_true: np.ndarray
    probs: np.ndarray
    label: str  # metrics["run"], plus the folder name where two runs of a report share it
    settings: dict = field(default_factory=dict)  # config.json as written, newer fields too
    robustness: dict | None = None  # robustness.json, when the run has one
    gradcam: dict | None = None  # gradcam.json, when the run has one

    @property
    def gradcam_png(self) -> Path | None:
        """The run's Grad-CAM overlay figure, when it has one."""
        path = self.run_dir / GRADCAM_PNG
        return path if path.is_file() else None

    def setting(self, key: str, default: object = None) -> object:
        """A config field, read from ``config.json`` when :class:`RunConfig` does not know it."""
        return getattr(self.config, key, self.settings.get(key, default))

    @property
    def classes(self) -> list[str]:
        return list(self.metrics["classes"])

    @property
    def y_pred(self) -> np.ndarray:
        """Predicted class per test image (argmax of the probabilities)."""
        return self.probs.argmax(axis=1)

    @property
    def test(self) -> dict:
        """The test metrics of ``metrics.json``."""
        return self.metrics["test"]

    @property
    def best_epoch(self) -> int:
        """The chosen epoch, counted from 0 (-1 when unknown)."""
        return int(self.metrics.get("best_epoch", -1))

    @property
    def train_seconds(self) -> float:
        """Training time including the frozen-mode feature extraction."""
        timings = self.metrics.get("timings", {})
        return _number(timings.get("train_s")) + float(timings.get("features_s", 0.0))

    @property
    def weights_source(self) -> str:
        """Where the starting weights came from: a weights file, ImageNet or nowhere."""
        if self.config.weights:
            return Path(self.config.weights).name
        return "ImageNet" if self.config.pretrained else "from scratch"

    def interval(self, key: str) -> Interval:
        """The bootstrap interval of a headline metric (``accuracy``, ``recall_<CLASS>``...)."""
        found = self.metrics.get("intervals", {}).get(key, {})
        return Interval(*(_number(found.get(part)) for part in ("value", "low", "high")))


def _number(value: object) -> float:
    """``value`` as a float; NaN when missing."""
    return float(value) if value is not None else math.nan


def _optional_json(path: Path) -> dict | None:
    """The dict in ``path``; None when there is no such file."""
    if not path.is_file():
        return None
    try:
        data = json.loads(read_text(path))
    except ValueError as exc:
        raise CxrlabError(f"{path}: not valid JSON ({exc}); delete it or compute it again") from exc
    if not isinstance(data, dict):
        raise CxrlabError(f"{path}: expected a JSON object")
    return data


def load_run(run_dir: Path) -> ReportRun:
    """Read one finished run folder; it must hold test results. Robustness and Grad-CAM
    results are read when present (older runs lack them)."""
    run_dir = Path(run_dir)
    result = RunResult.load(run_dir)
    predictions = run_dir / "test_predictions.csv"
    if "test" not in result.metrics or not predictions.is_file():
        raise CxrlabError(f"{run_dir}: no test results (the dataset has no test split)")
    history_file = run_dir / "history.csv"
    history = read_history(history_file) if history_file.is_file() else []
    paths, y_true, probs = read_predictions(predictions, list(result.metrics["classes"]))
    return ReportRun(
        run_dir, result.config, result.metrics, history, paths, y_true, probs, result.metrics["run"],
        settings=_optional_json(run_dir / "config.json") or {},
        robustness=_optional_json(run_dir / ROBUSTNESS_JSON),
        gradcam=_optional_json(run_dir / GRADCAM_JSON),
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


# --------------------------------------------------------------------------- tables


def fmt(value: object, digits: int = 3) -> str:
    """A number with ``digits`` decimals; a dash when missing or NaN."""
    if value is None or not math.isfinite(float(value)):
        return MISSING
    return f"{float(value):.{digits}f}"


def fmt_p(p: float | None) -> str:
    """A p-value: three decimals, scientific notation below 0.001."""
    if p is None or not math.isfinite(p):
        return MISSING
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def fmt_count(n: object) -> str:
    """A parameter count, three significant digits: ``11.2 M``, ``3.84 k``, ``512``."""
    if n is None:
        return MISSING
    n = int(n)
    return f"{n / 1e6:.3g} M" if n >= 1e6 else f"{n / 1e3:.3g} k" if n >= 1e3 else str(n)


@dataclass
class Cell:
    """A table cell: text, an optional bracketed note (a CI, a detail) shown smaller, bold."""

    text: str
    note: str = ""
    bold: bool = False

    @property
    def plain(self) -> str:
        """Text and note on one line, e.g. ``0.951 [0.938, 0.962]``."""
        return f"{self.text} {self.note}".strip()


def interval_cell(interval: Interval) -> Cell:
    """The value with its 95% CI as the note: ``0.951 [0.938, 0.962]``."""
    return Cell(fmt(interval.value), f"[{fmt(interval.low)}, {fmt(interval.high)}]")


@dataclass
class Table:
    """Headers and rows of cells, rendered to HTML or Markdown; ``text`` columns align left."""

    headers: list[str]
    rows: list[list[Cell]]
    text: tuple[int, ...] = (0,)

    def html(self) -> str:
        head = "".join(f"<th>{html_escape(h)}</th>" for h in self.headers)
        body = "\n".join(
            "<tr>" + "".join(self._html_cell(cell, j) for j, cell in enumerate(row)) + "</tr>"
            for row in self.rows
        )
        return (
            f'<div class="scroll"><table>\n<thead><tr>{head}</tr></thead>\n'
            f"<tbody>\n{body}\n</tbody></table></div>"
        )

    def _html_cell(self, cell: Cell, column: int) -> str:
        text = html_escape(cell.text)
        if cell.note:
            text += f'<br><span class="ci">{html_escape(cell.note)}</span>'
        if cell.bold:
            text = f"<strong>{text}</strong>"
        css = ' class="text"' if column in self.text else ""
        return f"<td{css}>{text}</td>"

    def markdown(self) -> str:
        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(cells) + " |"

        def cell(c: Cell) -> str:
            text = markdown_escape(c.plain)
            return f"**{text}**" if c.bold else text

        align = [":---" if j in self.text else "---:" for j in range(len(self.headers))]
        head = [markdown_escape(h) for h in self.headers]
        return "\n".join([line(head), line(align), *(line([cell(c) for c in row]) for row in self.rows)])


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
            header, lambda r: Cell(fmt(r.test.get(key))), lambda r: _number(r.test.get(key)), higher
        )

    return [
        Column("run", lambda r: Cell(r.label)),
        Column("mode", lambda r: Cell(r.config.mode)),
        Column("weights", lambda r: Cell(r.weights_source)),
        headline("accuracy", "accuracy [CI]"),
        test_metric("balanced_accuracy", "balanced accuracy"),
        headline("macro_f1", "macro-F1 [CI]"),
        *(headline(f"recall_{c}", f"recall {c} [CI]") for c in classes),
        test_metric("macro_auc", "macro AUC"),
        test_metric("ece", "ECE", higher=False),
        Column("best epoch / run", _epochs_cell),
        Column("train time (s)", _train_time_cell, lambda r: r.train_seconds, False),
        Column("parameters", _parameters_cell),
        Column("inference (img/s)", _speed_cell, lambda r: _number(r.metrics.get(SPEED))),
    ]


def _epochs_cell(run: ReportRun) -> Cell:
    return Cell(f"{run.best_epoch + 1} / {run.metrics.get('epochs_run', MISSING)}")


def _train_time_cell(run: ReportRun) -> Cell:
    features = run.metrics.get("timings", {}).get("features_s")
    note = f"({features:.1f} s features)" if features is not None else ""
    return Cell(fmt(run.train_seconds, 1), note)


def _parameters_cell(run: ReportRun) -> Cell:
    trainable = fmt_count(run.metrics.get("trainable_parameters"))
    return Cell(fmt_count(run.metrics.get("parameters")), f"({trainable} trainable)")


def _speed_cell(run: ReportRun) -> Cell:
    device = run.metrics.get("inference_device")
    return Cell(fmt(run.metrics.get(SPEED), 0), f"({device})" if device else "")


def _best(values: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Which values are the best (ties included); none when all finite values are equal."""
    finite = values[np.isfinite(values)]
    if finite.size == 0 or np.allclose(finite, finite[0], rtol=1e-9, atol=1e-12):
        return np.zeros(values.shape, dtype=bool)
    best = finite.max() if higher_is_better else finite.min()
    return np.isfinite(values) & np.isclose(values, best, rtol=1e-9, atol=1e-12)


def comparison_table(runs: Sequence[ReportRun]) -> Table:
    """One row per run; the best value of each metric column in bold."""
    columns = comparison_columns(runs[0].classes)
    rows = [[column.cell(run) for column in columns] for run in runs]
    for j, column in enumerate(columns):
        if column.value is not None and len(runs) > 1:
            values = np.array([column.value(run) for run in runs], dtype=np.float64)
            for row, best in zip(rows, _best(values, column.higher_is_better)):
                row[j].bold = bool(best)
    return Table([c.header for c in columns], rows, text=(0, 1, 2))


def per_class_table(run: ReportRun) -> Table:
    """Precision, recall, F1, AUC and support of each class on the test split."""
    rows = []
    for name in run.classes:
        stats = run.test["per_class"][name]
        scores = (Cell(fmt(stats.get(k))) for k in ("precision", "recall", "f1", "auc"))
        rows.append([Cell(name), *scores, Cell(str(stats.get("support", MISSING)))])
    return Table(["class", "precision", "recall", "F1", "AUC (one-vs-rest)", "support"], rows)


def subsets_table(runs: Sequence[ReportRun]) -> Table:
    """Images per subset (train / validation / test) used by each run."""
    sizes = [r.metrics.get("sizes", {}) for r in runs]
    rows = [
        [Cell(r.label), *(Cell(str(n.get(s, 0))) for s in SUBSETS)] for r, n in zip(runs, sizes)
    ]
    return Table(["run", "train", "validation", "test"], rows)


def dataset_table(summary: dict) -> Table:
    """Files per split and class from an analysis summary (and the readable count if fewer)."""
    classes = summary["dataset"]["classes"]
    counts, readable = summary.get("counts", {}), summary.get("ok_counts", {})
    rows = []
    for split in summary["dataset"]["splits"]:
        cells = []
        for c in classes:
            n, ok = counts.get(split, {}).get(c, 0), readable.get(split, {}).get(c, 0)
            cells.append(Cell(str(n), f"({ok} readable)" if ok != n else ""))
        rows.append([Cell(split), *cells, Cell(str(sum(counts.get(split, {}).values())))])
    return Table(["split", *classes, "total"], rows)


# --------------------------------------------------------------------------- robustness


def fmt_change(value: object) -> str:
    """A signed change with a true minus sign: ``+0.012``, ``−0.015``, ``0.000``; a dash when
    missing."""
    number = _number(value)
    if not math.isfinite(number):
        return MISSING
    if round(number, 3) == 0:
        return "0.000"
    return f"{number:+.3f}".replace("-", "−")


def robustness_variants(runs: Sequence[ReportRun]) -> list[str]:
    """The variant names of every run's ``robustness.json``: :data:`VARIANTS` order, then others."""
    found: list[str] = []
    for run in runs:
        for name in (run.robustness or {}).get("variants", {}):
            if name not in found:
                found.append(name)
    known = [name for name in VARIANTS if name in found]
    return known + [name for name in found if name not in VARIANTS] if found else list(VARIANTS)


def variant_descriptions(runs: Sequence[ReportRun]) -> dict[str, str]:
    """Each variant's description, from the runs' files (falling back to :data:`VARIANTS`)."""
    described = {}
    for name in robustness_variants(runs):
        texts = [
            r.robustness["variants"][name].get("description")
            for r in runs
            if r.robustness and name in r.robustness.get("variants", {})
        ]
        described[name] = next((t for t in texts if t), VARIANTS.get(name, MISSING))
    return described


def _variant(run: ReportRun, name: str) -> dict:
    return (run.robustness or {}).get("variants", {}).get(name) or {}


def worst_drop(run: ReportRun) -> tuple[float, str]:
    """The largest accuracy drop over the variants other than the reference, and its variant."""
    if not run.robustness:
        return math.nan, ""
    reference = run.robustness.get("reference")
    drops = [
        (_number(v.get("accuracy_drop")), name)
        for name, v in run.robustness.get("variants", {}).items()
        if name not in (reference, *PROBES) and math.isfinite(_number(v.get("accuracy_drop")))
    ]
    return max(drops) if drops else (math.nan, "")


def _probe_cells(run: ReportRun) -> list[Cell]:
    """The probe columns of a run: balanced accuracy with the lungs hidden and with only the
    lungs (chance in brackets), and the share of films whose lungs were found (per class)."""
    data = run.robustness or {}
    chance = fmt((data.get("chance") or {}).get("balanced_accuracy"))
    cells = []
    for name in PROBES:
        value = _variant(run, name).get("balanced_accuracy")
        computed = value is not None
        cells.append(Cell(fmt(value), f"(chance {chance})") if computed else Cell(NOT_COMPUTED))
    found = data.get("lung_fields") or {}
    if found.get("segmented") is None:
        return [*cells, Cell(NOT_COMPUTED)]
    by_class = ", ".join(
        f"{c} {_percent(v)}" for c, v in (found.get("segmented_by_class") or {}).items()
    )
    return [*cells, Cell(_percent(found["segmented"]), f"({by_class})" if by_class else "")]


def robustness_table(runs: Sequence[ReportRun]) -> Table:
    """Per run: its own preprocessing, then the accuracy on each format variant with the
    change against that reference, the worst drop, and the shortcut probes (balanced
    accuracy, lungs found). Bold: best accuracy per format variant, smallest worst drop."""
    names = [name for name in robustness_variants(runs) if name not in PROBES]
    probes = [f"{name.replace('-', ' ')} (balanced)" for name in PROBES]
    rows = []
    for run in runs:
        if not run.robustness:
            blank = len(names) + len(probes) + 3
            rows.append([Cell(run.label), Cell(NOT_COMPUTED), *[Cell(MISSING)] * blank])
            continue
        data = run.robustness
        unreadable = int(data.get("unreadable") or 0)
        row = [
            Cell(run.label),
            Cell(f"{data.get('reference', MISSING)} {data.get('image_size', MISSING)}px"),
            Cell(str(data.get("n_images", MISSING)), f"({unreadable} unreadable)" if unreadable else ""),
        ]
        for name in names:
            variant = _variant(run, name)
            if not variant:
                row.append(Cell(MISSING))
                continue
            own = name == data.get("reference")
            change = -_number(variant.get("accuracy_drop"))
            note = "(reference)" if own else f"({fmt_change(change)})"
            row.append(Cell(fmt(variant.get("accuracy")), note))
        drop, where = worst_drop(run)
        row.append(Cell(fmt(drop), f"({where})" if where else ""))
        rows.append(row + _probe_cells(run))
    if len(runs) > 1:
        ranked = [
            (3 + j, [_number(_variant(r, name).get("accuracy")) for r in runs], True)
            for j, name in enumerate(names)
        ]
        ranked.append((3 + len(names), [worst_drop(r)[0] for r in runs], False))
        for j, values, higher in ranked:
            for row, best in zip(rows, _best(np.array(values, dtype=np.float64), higher)):
                row[j].bold = bool(best)
    headers = ["run", "own preprocessing", "test images", *names, "worst drop", *probes]
    return Table([*headers, "lungs found"], rows, text=(0, 1))


def robustness_fields(runs: Sequence[ReportRun]) -> list[str]:
    """The columns of ``robustness.csv``."""
    per_variant = [
        f"{name}_{key}"
        for name in robustness_variants(runs)
        for key in (
            "accuracy", "accuracy_drop", "balanced_accuracy", "macro_f1",
            *(f"recall_{c}" for c in runs[0].classes),
        )
    ]
    return [
        "run", "computed", "reference", "image_size", "n_images", "unreadable", "worst_drop",
        "worst_variant", *per_variant, "chance_balanced_accuracy", "chance_accuracy",
        "lungs_segmented", *(f"lungs_segmented_{c}" for c in runs[0].classes),
    ]


def robustness_rows(runs: Sequence[ReportRun]) -> list[dict[str, object]]:
    """One dict per run: the rows of ``robustness.csv`` (numbers empty where not computed)."""
    fields = robustness_fields(runs)
    rows = []
    for run in runs:
        row: dict[str, object] = dict.fromkeys(fields, "")
        row |= {"run": run.label, "computed": bool(run.robustness)}
        if run.robustness:
            data = run.robustness
            drop, where = worst_drop(run)
            row |= {
                "reference": data.get("reference", ""), "image_size": data.get("image_size", ""),
                "n_images": data.get("n_images", ""), "unreadable": data.get("unreadable", ""),
                "worst_drop": _csv_number(drop), "worst_variant": where,
            }
            for name in robustness_variants(runs):
                variant = _variant(run, name)
                for key in ("accuracy", "accuracy_drop", "balanced_accuracy", "macro_f1"):
                    row[f"{name}_{key}"] = _csv_number(variant.get(key)) if variant else ""
                for c in run.classes:
                    recall = (variant.get("recall") or {}).get(c)
                    row[f"{name}_recall_{c}"] = _csv_number(recall)
            chance, found = data.get("chance") or {}, data.get("lung_fields") or {}
            row["chance_balanced_accuracy"] = _csv_number(chance.get("balanced_accuracy"))
            row["chance_accuracy"] = _csv_number(chance.get("accuracy"))
            row["lungs_segmented"] = _csv_number(found.get("segmented"))
            for c in run.classes:
                share = (found.get("segmented_by_class") or {}).get(c)
                row[f"lungs_segmented_{c}"] = _csv_number(share)
        rows.append(row)
    return rows


def probe_readings_html(runs: Sequence[ReportRun]) -> str:
    """One line per run with robustness results: what the lungs-hidden probe says."""
    items = "".join(
        f"<li>{html_escape(run.label)}: {html_escape(probe_reading(run.robustness))}</li>"
        for run in runs
        if run.robustness
    )
    return f"<ul>{items}</ul>" if items else ""


def robustness_html(runs: Sequence[ReportRun], table: Table) -> str:
    """The robustness table, how to read it and what each variant is."""
    missing = [r.label for r in runs if not r.robustness]
    parts = [paragraph(
        "Test accuracy when the test images are presented differently from training: made square "
        "the other way (squashed or padded), rotated slightly, or darkened. Each cell gives the "
        "accuracy on the variant and, in brackets, its change against the model's own "
        "preprocessing (the reference, as trained). A model relying on image format — aspect "
        "ratio, padding bars or brightness, which can differ by class when the classes come from "
        "different sources — shows it as a drop; a model reading the lungs hardly changes. Worst "
        "drop: the largest fall in accuracy over the format variants. Bold: best accuracy per "
        "format variant and smallest worst drop."
    ), paragraph(
        "Shortcut probes (balanced accuracy, as the test split is imbalanced; chance: 1/k for k "
        "classes): with the lung fields hidden, a model that reads disease falls to chance; one "
        "that still scores far above chance reads something outside the lungs — the source "
        "hospital, age, markers (Maguolo & Nanni 2021; DeGrave, Janizek & Lee 2021). With only "
        "the lungs kept it should hold up. Lungs found: the share of films whose lung fields the "
        "heuristic segmentation found; on the others its two-ellipse template was used."
    ), table.html(), probe_readings_html(runs), "<h3>Variants</h3>",
        definition_list(variant_descriptions(runs))]
    if missing:
        parts.append(paragraph(
            f"Not computed for: {', '.join(missing)} (no {ROBUSTNESS_JSON} in the run folder).",
            "note",
        ))
    return "\n".join(parts)


# --------------------------------------------------------------------------- Grad-CAM


def _share(data: dict, key: str) -> Cell:
    return Cell(fmt(data.get(key)))


def _percent(value: object) -> str:
    number = _number(value)
    return f"{100 * number:.0f}%" if math.isfinite(number) else MISSING


def gradcam_table(runs: Sequence[ReportRun]) -> Table:
    """Per run: where the Grad-CAM maps fall (lungs, border, elsewhere), the lung area a
    uniform map would get, the enrichment, the lung share by correctness and class, and how
    many lung masks were segmented. Bold: highest lung share and enrichment, lowest border."""
    classes = runs[0].classes
    headers = [
        "run", "layer", "images", *(h for _, h, _ in GRADCAM_SHARES), "enrichment",
        "lung share right", "lung share wrong", *(f"lung share {c}" for c in classes), "segmented",
    ]
    rows = []
    for run in runs:
        data = run.gradcam
        if not data:
            rows.append([Cell(run.label), Cell(NOT_COMPUTED), *[Cell(MISSING)] * (len(headers) - 2)])
            continue
        enrichment = _number(data.get("lung_enrichment"))
        by_class = data.get("lung_share_by_class") or {}
        rows.append([
            Cell(run.label), Cell(str(data.get("layer") or MISSING)),
            Cell(str(data.get("n_images", MISSING))),
            *(_share(data, key) for key, _, _ in GRADCAM_SHARES),
            Cell(f"{fmt(enrichment, 2)}×" if math.isfinite(enrichment) else MISSING),
            _share(data, "lung_share_correct"), _share(data, "lung_share_wrong"),
            *(Cell(fmt(by_class.get(c))) for c in classes),
            Cell(_percent(data.get("segmented"))),
        ])
    if len(runs) > 1:
        ranked = [
            (3 + j, key, higher)
            for j, (key, _, higher) in enumerate(GRADCAM_SHARES)
            if higher is not None
        ]
        ranked.append((3 + len(GRADCAM_SHARES), "lung_enrichment", True))
        for j, key, higher in ranked:
            values = np.array([_number((r.gradcam or {}).get(key)) for r in runs], dtype=np.float64)
            for row, best in zip(rows, _best(values, higher)):
                row[j].bold = bool(best)
    return Table(headers, rows, text=(0, 1))


def gradcam_fields(runs: Sequence[ReportRun]) -> list[str]:
    """The columns of ``gradcam.csv``."""
    return [*GRADCAM_FIELDS, *(f"lung_share_{c}" for c in runs[0].classes)]


def gradcam_rows(runs: Sequence[ReportRun]) -> list[dict[str, object]]:
    """One dict per run: the rows of ``gradcam.csv`` (numbers empty where not computed)."""
    fields = gradcam_fields(runs)
    rows = []
    for run in runs:
        row: dict[str, object] = dict.fromkeys(fields, "")
        row |= {"run": run.label, "computed": bool(run.gradcam)}
        if run.gradcam:
            data = run.gradcam
            row |= {k: "" if data.get(k) is None else data[k] for k in ("n_images", "target", "layer")}
            for key in GRADCAM_FIELDS[5:]:
                row[key] = _csv_number(data.get(key))
            by_class = data.get("lung_share_by_class") or {}
            for c in run.classes:
                row[f"lung_share_{c}"] = _csv_number(by_class.get(c))
        rows.append(row)
    return rows


def gradcam_caption(run: ReportRun) -> str:
    """The caption of a run's Grad-CAM overlay figure."""
    data = run.gradcam or {}
    target = data.get("target") or "predicted class"
    layer = f" at layer {data['layer']}" if data.get("layer") else ""
    return (
        f"{run.label}: Grad-CAM of the {target}{layer}, overlaid on test images; rows: true "
        "class; columns: correctly classified examples, then wrongly classified ones."
    )


def gradcam_html(runs: Sequence[ReportRun], table: Table) -> str:
    """The Grad-CAM table, how to read it and each run's overlay figure."""
    parts = [paragraph(
        "Where each model looks: Grad-CAM maps on test images, each map split into the share that "
        "falls inside the lung fields, in a band along the image border (where text, markers and "
        "padding sit) and elsewhere. Lung fields are found by a heuristic segmentation: dark "
        "air-filled regions inside the body by Otsu threshold, with a template fallback when it "
        "fails ('segmented': the fraction of images whose segmentation succeeded). Lung area is "
        "the fraction of the image the lung mask covers, the lung share a uniform map would get; "
        "enrichment is lung share / lung area (1× = no preference for the lungs). A higher lung "
        "share and a lower border share mean the model looks at the lungs rather than at borders, "
        "text and markers."
    ), table.html()]
    for run in runs:
        if run.gradcam_png is not None:
            parts.append(f"<h3>{html_escape(run.label)}</h3>")
            parts.append(figure_html(run.gradcam_png, gradcam_caption(run)))
    missing = [r.label for r in runs if not r.gradcam and r.gradcam_png is None]
    if missing:
        parts.append(paragraph(
            f"Not computed for: {', '.join(missing)} (no {GRADCAM_JSON} in the run folder).", "note"
        ))
    return "\n".join(parts)


# --------------------------------------------------------------------------- McNemar


@dataclass
class PairTest:
    """McNemar's test of two runs on their common test images (``result`` None when skipped)."""

    a: ReportRun
    b: ReportRun
    n: int = 0
    result: McNemarResult | None = None
    p_holm: float | None = None
    note: str = ""


def pair_test(a: ReportRun, b: ReportRun) -> PairTest:
    """McNemar's test of ``a`` against ``b``, test images matched by path."""
    if sorted(a.paths) != sorted(b.paths):
        return PairTest(a, b, note="different test image lists: not tested")
    where = {p: i for i, p in enumerate(b.paths)}
    order = np.array([where[p] for p in a.paths], dtype=np.int64)
    if not np.array_equal(a.y_true, b.y_true[order]):
        return PairTest(a, b, note="same images with different labels: not tested")
    return PairTest(a, b, len(a.paths), mcnemar(a.y_true, a.y_pred, b.y_pred[order]))


def pair_tests(runs: Sequence[ReportRun]) -> list[PairTest]:
    """Every pair of runs, with Holm-adjusted p-values over the pairs that were tested."""
    tests = [pair_test(a, b) for a, b in itertools.combinations(runs, 2)]
    tested = [t for t in tests if t.result is not None]
    for t, p in zip(tested, holm([t.result.p_value for t in tested])):
        t.p_holm = p
    return tests


def mcnemar_table(tests: Sequence[PairTest]) -> Table:
    """Per pair: both runs, discordant counts, the test used, p and Holm-adjusted p."""
    rows = []
    for t in tests:
        r = t.result
        if r is None:
            dashes = [Cell(MISSING)] * 3
            rows.append([Cell(t.a.label), Cell(t.b.label), *dashes, Cell(t.note), *dashes])
            continue
        differ = t.p_holm is not None and t.p_holm < ALPHA
        rows.append([
            Cell(t.a.label), Cell(t.b.label), Cell(str(t.n)),
            Cell(str(r.only_a_right)), Cell(str(r.only_b_right)),
            Cell("exact binomial" if r.exact else "χ² (continuity corr.)"),
            Cell(fmt_p(r.p_value)), Cell(fmt_p(t.p_holm), bold=differ),
            Cell("yes" if differ else "no"),
        ])
    headers = [
        "run A", "run B", "test images", "only A right", "only B right", "test", "p", "p (Holm)",
        f"differ at {ALPHA:g} (Holm)",
    ]
    return Table(headers, rows, text=(0, 1, 5, 8))


# --------------------------------------------------------------------------- files


def _csv_number(value: object) -> str:
    """Six significant digits; empty when missing or NaN."""
    number = _number(value)
    return f"{number:.6g}" if math.isfinite(number) else ""


def _interval_fields(key: str, interval: Interval) -> dict[str, str]:
    return {
        key: _csv_number(interval.value),
        f"{key}_low": _csv_number(interval.low),
        f"{key}_high": _csv_number(interval.high),
    }


def results_rows(runs: Sequence[ReportRun]) -> list[dict[str, object]]:
    """One dict of numbers per run: the rows of ``results.csv`` (epochs counted from 1)."""
    rows = []
    for run in runs:
        row: dict[str, object] = {
            "run": run.label, "model": run.config.model, "mode": run.config.mode
        }
        for key in ("accuracy", "macro_f1"):
            row |= _interval_fields(key, run.interval(key))
        row |= {k: _csv_number(run.test.get(k)) for k in ("balanced_accuracy", "macro_auc", "ece")}
        for c in run.classes:
            row |= _interval_fields(f"recall_{c}", run.interval(f"recall_{c}"))
        row |= {
            "train_s": _csv_number(run.train_seconds),
            "parameters": run.metrics.get("parameters", ""),
            "trainable_parameters": run.metrics.get("trainable_parameters", ""),
            SPEED: _csv_number(run.metrics.get(SPEED)),
            "best_epoch": run.best_epoch + 1,
            "epochs_run": run.metrics.get("epochs_run", ""),
        }
        rows.append(row)
    return rows


def mcnemar_rows(tests: Sequence[PairTest]) -> list[dict[str, object]]:
    """One dict per pair of runs: the rows of ``mcnemar.csv`` (numbers empty when skipped)."""
    rows = []
    for t in tests:
        row: dict[str, object] = dict.fromkeys(MCNEMAR_FIELDS, "")
        row |= {"run_a": t.a.label, "run_b": t.b.label, "note": t.note}
        if t.result is not None:
            r = t.result
            row |= {
                "n": t.n, "only_a_right": r.only_a_right, "only_b_right": r.only_b_right,
                "statistic": _csv_number(r.statistic), "exact": r.exact,
                "p_value": _csv_number(r.p_value), "p_holm": _csv_number(t.p_holm),
            }
        rows.append(row)
    return rows


def write_csv(path: Path, fields: Sequence[str], rows: Sequence[dict[str, object]]) -> Path:
    """Write dict rows with the columns ``fields`` to ``path``."""
    with atomic_open(path, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields), restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


def results_markdown(
    title: str,
    comparison: Table,
    pairs: Table | None,
    robustness: Table | None = None,
    gradcam: Table | None = None,
) -> str:
    """``results.md``: the comparison table, (two runs or more) the McNemar table, and the
    robustness and Grad-CAM tables when given."""
    parts = [
        f"# {markdown_escape(title)}", "", PROTOCOL, "", "## Comparison on the test split", "",
        "Best value per metric column in bold; brackets: 95% bootstrap CI; epochs counted from 1.",
        "", comparison.markdown(), "",
    ]
    if pairs is not None:
        parts += [
            "## McNemar's test, every pair of runs", "",
            "Only A right: test images run A gets right and run B wrong. Holm-adjusted over the "
            "pairs tested.", "", pairs.markdown(), "",
        ]
    if robustness is not None:
        parts += [
            "## Robustness", "",
            "Test accuracy on each variant of the test images; brackets: change against the "
            "model's own preprocessing (the reference). A model relying on image format shows a "
            "drop.", "", robustness.markdown(), "",
        ]
    if gradcam is not None:
        parts += [
            "## Explainability (Grad-CAM)", "",
            "Share of each Grad-CAM map inside the lung fields, in the border band and elsewhere; "
            "lung area: the share a uniform map would get; enrichment: lung share / lung area.",
            "", gradcam.markdown(), "",
        ]
    return "\n".join(parts)


# --------------------------------------------------------------------------- HTML


def embed_png(path: Path, alt: str) -> str:
    """An ``<img>`` with the PNG inlined as a base64 data URI."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html_escape(alt)}" src="data:image/png;base64,{data}">'


def figure_html(path: Path, caption: str) -> str:
    """An embedded PNG with its caption."""
    return (
        f"<figure>{embed_png(path, caption)}"
        f"<figcaption>{html_escape(caption)}</figcaption></figure>"
    )


def paragraph(text: str, css: str = "") -> str:
    """Escaped text in a ``<p>`` (optionally with a class)."""
    attribute = f' class="{css}"' if css else ""
    return f"<p{attribute}>{html_escape(text)}</p>"


def definition_list(items: dict[str, str]) -> str:
    """Escaped term/value pairs as a two-column grid."""
    body = "".join(f"<dt>{html_escape(k)}</dt><dd>{html_escape(v)}</dd>" for k, v in items.items())
    return f'<dl class="meta">{body}</dl>'


def machine_info() -> str:
    """Platform, CPU count, torch version and GPU of the machine writing the report."""
    parts = [platform.platform(), f"{os.cpu_count() or '?'} CPUs", f"torch {torch.__version__}"]
    if torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name(0)}")
    return ", ".join(parts)


@dataclass
class Section:
    """A numbered report section: anchor, heading and HTML body."""

    anchor: str
    heading: str
    body: str


def header_html(title: str, command: str | None) -> str:
    """Title, generation details and the evaluation protocol."""
    details = {"generated": datetime.now().strftime("%Y-%m-%d %H:%M")}
    if command:
        details["command"] = command
    details["machine (this report)"] = machine_info()
    details["cxrlab"] = __version__
    return f"<h1>{html_escape(title)}</h1>{definition_list(details)}{paragraph(PROTOCOL, 'note')}"


def dataset_html(analysis_dir: Path | None, runs: Sequence[ReportRun]) -> str:
    """The analysis summary (counts, findings, figures) when given, and each run's subsets."""
    parts: list[str] = []
    summary_file = analysis_dir / "summary.json" if analysis_dir else None
    if summary_file is not None and summary_file.is_file():
        summary = json.loads(read_text(summary_file))
        dataset = summary.get("dataset", {})
        parts.append(definition_list({
            "dataset": str(dataset.get("name", MISSING)),
            "folder": str(dataset.get("root", MISSING)),
            "layout": str(dataset.get("layout", MISSING)),
            "files": f"{summary.get('n_files', MISSING)} ({summary.get('n_ok', MISSING)} readable)",
        }))
        parts.append("<h3>Files per split and class</h3>" + dataset_table(summary).html())
        if summary.get("findings"):
            items = "".join(f"<li>{html_escape(str(f))}</li>" for f in summary["findings"])
            parts.append(f"<h3>Findings</h3><ul>{items}</ul>")
        for key, caption in ANALYSIS_CAPTIONS.items():
            if (analysis_dir / PLOTS[key]).is_file():
                parts.append(figure_html(analysis_dir / PLOTS[key], caption))
    elif analysis_dir is not None:
        message = f"No summary.json in {analysis_dir}: run cxrlab analyze first."
        parts.append(paragraph(message, "note"))
    else:
        parts.append(paragraph(
            "No dataset analysis given: pass the output folder of cxrlab analyze to include class "
            "counts, findings and sample images.", "note",
        ))
    parts.append("<h3>Images used by each run</h3>")
    parts.append(paragraph(
        "Validation is carved from the train split with the run's seed; test is the dataset's own "
        "test split."
    ))
    parts.append(subsets_table(runs).html())
    return "\n".join(parts)


def comparison_html(table: Table) -> str:
    """The comparison table and how to read it."""
    return paragraph(
        "Best value per metric column in bold (lowest for ECE and training time). Brackets: 95% "
        "bootstrap CI. Training time includes frozen-mode feature extraction; inference speed: "
        "forward passes on random batches at the run's image size, on the device named."
    ) + table.html()


def mcnemar_html(tests: Sequence[PairTest], table: Table) -> str:
    """The pairwise McNemar table with how to read it, and the pairs that were skipped."""
    if not tests:
        return paragraph("One run only: nothing to test.")
    tested = sum(t.result is not None for t in tests)
    parts = [paragraph(
        "McNemar's test on the test images of both runs: 'only A right' counts images run A "
        "gets right and run B wrong, and vice versa; the test column says whether the exact "
        "binomial test (few discordant images) or χ² with continuity correction was used. Holm's "
        f"adjustment over the {tested} pair(s) tested; bold: the runs differ at the {ALPHA:g} "
        "level after adjustment."
    ), table.html()]
    skipped = [f"{t.a.label} vs {t.b.label} ({t.note})" for t in tests if t.result is None]
    if skipped:
        parts.append(paragraph(
            f"Skipped: {'; '.join(skipped)}. McNemar's test needs both runs on the same images.",
            "note",
        ))
    return "\n".join(parts)


def per_class_html(runs: Sequence[ReportRun]) -> str:
    """One per-class table per run."""
    return "\n".join(f"<h3>{html_escape(r.label)}</h3>{per_class_table(r).html()}" for r in runs)


def recipe_items(run: ReportRun) -> dict[str, str]:
    """A run's recipe, folder and validation score; TTA and weight EMA when the run used them."""
    card = run.run_dir / "MODEL_CARD.md"
    items = {
        "recipe": run.metrics.get("description") or run.config.describe(),
        "folder": str(run.run_dir),
        **({"model card": str(card)} if card.is_file() else {}),
        "best validation macro-F1": fmt(run.metrics.get("best_val_macro_f1")),
    }
    without = run.metrics.get("test_without_tta")
    if without is not None or run.setting("tta"):
        note = f" (test accuracy without TTA: {fmt(without.get('accuracy'))})" if without else ""
        items["TTA"] = f"on{note}"
    decay = _number(run.setting("ema_decay"))
    if math.isfinite(decay) and decay > 0:
        items["EMA of weights"] = f"decay {decay:g}"
    return items


def runs_html(runs: Sequence[ReportRun]) -> str:
    """Each run's recipe (``RunConfig.describe()``), its folder, TTA and EMA when used."""
    return "\n".join(
        f"<h3>{html_escape(r.label)}</h3>" + definition_list(recipe_items(r)) for r in runs
    )


def page_html(title: str, header: str, sections: Sequence[Section]) -> str:
    """The whole page: inline CSS, header, table of contents and numbered sections."""
    toc = "".join(f'<li><a href="#{s.anchor}">{html_escape(s.heading)}</a></li>' for s in sections)
    body = "\n".join(
        f'<section id="{s.anchor}"><h2>{i}. {html_escape(s.heading)}</h2>\n{s.body}</section>'
        for i, s in enumerate(sections, start=1)
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html_escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<header>{header}<nav><strong>Contents</strong><ol>{toc}</ol></nav></header>\n"
        f"{body}\n</body>\n</html>\n"
    )


def draw_figures(runs: Sequence[ReportRun], out_dir: Path) -> dict[str, Path]:
    """The four comparison PNGs in ``out_dir``, by :data:`FIGURES` key."""
    plots = {
        "bars": plot_metric_bars,
        "curves": plot_learning_curves,
        "confusion": plot_confusion_matrices,
        "roc": plot_roc_curves,
    }
    return {key: plot(runs, out_dir / FIGURES[key][0]) for key, plot in plots.items()}


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
    from cxrlab.reporting.calibration import calibration_columns, calibration_html, calibration_markdown
    from cxrlab.reporting.external import external_columns, external_html, external_markdown, load_external_sets

    runs = load_runs(run_dirs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = draw_figures(runs, out_dir)
    tests = pair_tests(runs)
    comparison, pairs = comparison_table(runs), mcnemar_table(tests)
    externals = load_external_sets(runs, external)
    results = [
        row | external_columns(externals, i) | calibration_columns(runs[i], externals, i) for i, row in enumerate(results_rows(runs))
    ]
    write_csv(out_dir / "results.csv", list(dict.fromkeys(key for row in results for key in row)), results)  # every run's columns
    write_csv(out_dir / "mcnemar.csv", MCNEMAR_FIELDS, mcnemar_rows(tests))
    robustness, gradcam = robustness_table(runs), gradcam_table(runs)
    write_csv(out_dir / "robustness.csv", robustness_fields(runs), robustness_rows(runs))
    write_csv(out_dir / "gradcam.csv", gradcam_fields(runs), gradcam_rows(runs))
    markdown = results_markdown(title, comparison, pairs if tests else None, robustness, gradcam)
    if externals:
        markdown += "\n" + external_markdown(runs, externals)
    markdown += "\n" + calibration_markdown(runs, externals)
    atomic_write_text(out_dir / "results.md", markdown)

    analysis = Path(analysis_dir) if analysis_dir else None

    def figure(key: str) -> str:
        return figure_html(figures[key], FIGURES[key][1])

    sections = [
        Section("dataset", "Dataset", dataset_html(analysis, runs)),
        Section("comparison", "Comparison on the test split", comparison_html(comparison)),
        *([Section("external", "External validation", external_html(runs, externals, out_dir))] if externals else []),
        Section("calibration", "Calibration and operating point", calibration_html(runs, externals, out_dir)),
        Section("bars", "Headline metrics", figure("bars")),
        Section("curves", "Learning curves", figure("curves")),
        Section("confusion", "Confusion matrices", figure("confusion")),
        Section("roc", "ROC curves", figure("roc")),
        Section("mcnemar", "Paired comparison (McNemar)", mcnemar_html(tests, pairs)),
        Section("per-class", "Per-class metrics", per_class_html(runs)),
        Section("robustness", "Robustness", robustness_html(runs, robustness)),
        Section("gradcam", "Explainability (Grad-CAM)", gradcam_html(runs, gradcam)),
        Section("runs", "Runs", runs_html(runs)),
    ]
    report = out_dir / "report.html"
    atomic_write_text(report, page_html(title, header_html(title, command), sections))
    return report
