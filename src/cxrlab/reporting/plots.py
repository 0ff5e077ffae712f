"""The comparison figures: learning curves, confusion matrices, ROC curves, metric bars, the
external gap and reliability diagrams.

Each ``plot_*`` function takes the runs of a comparison (in report order, as
:class:`~cxrlab.reporting.runs.ReportRun`), draws one PNG at ``path`` and returns ``path``.
Every run keeps one colour across the figures; epochs are counted from 1. Figures are drawn
on the Agg canvas directly (no pyplot), so nothing here touches the global matplotlib backend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.lines import Line2D
from sklearn.metrics import roc_curve

from cxrlab.plotting import class_colours, empty_panel, figure_text, new_figure, save_figure

if TYPE_CHECKING:
    from cxrlab.records import Interval, Reliability
    from cxrlab.reporting.runs import ReportRun

TRAIN_COLOUR = "#1f77b4"
VAL_COLOUR = "#d62728"
F1_COLOUR = "#2ca02c"
# history.csv column (a HistoryRow field), legend label, colour, line style
LOSS_SERIES = (
    ("train_loss", "train", TRAIN_COLOUR, "-"),
    ("val_loss", "validation", VAL_COLOUR, "-"),
)
SCORE_SERIES = (
    ("train_acc", "train accuracy", TRAIN_COLOUR, "-"),
    ("val_acc", "val accuracy", VAL_COLOUR, "-"),
    ("val_macro_f1", "val macro-F1", F1_COLOUR, "--"),
)


def run_colours(runs: Sequence[ReportRun]) -> dict[str, str]:
    """One ``#rrggbb`` colour per run label (tab10, tab20 beyond ten runs)."""
    return class_colours([run.label for run in runs])


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    """(rows, cols) for ``n`` panels, at most ``max_cols`` per row."""
    cols = max(1, min(n, max_cols))
    return max(1, math.ceil(n / cols)), cols


def _legend_columns(runs: Sequence[ReportRun]) -> int:
    """Legend columns for one entry per run: one row up to four runs, rows of three beyond."""
    return len(runs) if len(runs) <= 4 else 3


def plot_learning_curves(runs: Sequence[ReportRun], path: Path) -> Path:
    """Per run: loss and accuracy (train vs validation, validation macro-F1) per epoch."""
    figure = new_figure(12.0, 3.1 * len(runs) + 0.3)
    rows = np.asarray(figure.subfigures(len(runs), 1, squeeze=False)).ravel()
    for row, run in zip(rows, runs):
        row.suptitle(figure_text(run.label), fontsize=12, fontweight="bold")
        ylabels = ("loss", "accuracy / macro-F1")
        for ax, series, ylabel in zip(row.subplots(1, 2), (LOSS_SERIES, SCORE_SERIES), ylabels):
            if not run.history:
                empty_panel(ax, "no history.csv")
                continue
            epochs = [h.epoch + 1 for h in run.history]
            marker = {"marker": "o", "ms": 3} if len(epochs) <= 30 else {}
            for key, label, colour, style in series:
                values = [getattr(h, key) for h in run.history]
                ax.plot(epochs, values, color=colour, ls=style, label=label, **marker)
            if run.best_epoch >= 0:
                ax.axvline(
                    run.best_epoch + 1,
                    color="0.35",
                    ls=":",
                    lw=1.4,
                    label=f"chosen epoch ({run.best_epoch + 1})",
                )
            if series is SCORE_SERIES:
                ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            ax.set_xlim(0.5, max(epochs) + 0.5)
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.spines[["top", "right"]].set_visible(False)
            ax.grid(alpha=0.25)
            ax.legend(fontsize=8, frameon=False, loc="best")
    return save_figure(figure, path)


def plot_confusion_matrices(runs: Sequence[ReportRun], path: Path) -> Path:
    """Per run: test counts and row-normalised shares (rows true, columns predicted)."""
    classes = [figure_text(c) for c in runs[0].classes]
    k = len(classes)
    n_rows, n_cols = _grid(len(runs))
    side = max(3.6, 0.75 * k + 1.8)
    figure = new_figure(side * n_cols + 0.6, side * n_rows + 0.4)
    axes = np.asarray(figure.subplots(n_rows, n_cols, squeeze=False)).ravel()
    fontsize = 10 if k <= 4 else 8 if k <= 8 else 6
    image = None
    for ax, run in zip(axes, runs):
        counts = np.asarray(run.test.confusion_matrix, dtype=np.int64)
        totals = counts.sum(axis=1, keepdims=True)
        share = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
        image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    f"{counts[i, j]}\n{100 * share[i, j]:.0f}%",
                    ha="center",
                    va="center",
                    fontsize=fontsize,
                    color="white" if share[i, j] > 0.55 else "black",
                )
        tilted = k > 2
        ax.set_xticks(
            range(k), classes, rotation=30 if tilted else 0, ha="right" if tilted else "center"
        )
        ax.set_yticks(range(k), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{figure_text(run.label)}\naccuracy {run.test.accuracy:.3f}", fontsize=10)
    for ax in axes[len(runs) :]:
        ax.set_visible(False)
    assert image is not None  # runs is not empty (runs[0] above)
    figure.colorbar(image, ax=list(axes[: len(runs)]), shrink=0.7, label="share of the true class")
    figure.suptitle("Test confusion matrices (count and % of the true class)", fontsize=12)
    return save_figure(figure, path)


def plot_roc_curves(runs: Sequence[ReportRun], path: Path) -> Path:
    """One panel per class (one-vs-rest ROC on the test split), every run overlaid."""
    classes = runs[0].classes
    colours = run_colours(runs)
    n_rows, n_cols = _grid(len(classes))
    legend_rows = math.ceil(len(runs) / _legend_columns(runs))
    figure = new_figure(4.1 * n_cols + 0.4, 4.0 * n_rows + 0.25 * legend_rows + 0.7)
    axes = np.asarray(figure.subplots(n_rows, n_cols, squeeze=False)).ravel()
    for k, (ax, name) in enumerate(zip(axes, classes)):
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="0.6")
        drawn = False
        for run in runs:
            positive = run.y_true == k
            if positive.all() or not positive.any():
                continue
            fpr, tpr, _ = roc_curve(positive, run.probs[:, k])
            auc = run.test.per_class[name].auc
            ax.plot(fpr, tpr, color=colours[run.label], lw=1.6, label=f"AUC {auc:.3f}")
            drawn = True
        if drawn:
            ax.legend(fontsize=9, loc="lower right", framealpha=0.9, handlelength=1.5)
        else:
            empty_panel(ax, figure_text(f"no test images of {name}\n(or only {name})"))
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(figure_text(f"{name} vs rest"), fontsize=11)
        ax.grid(alpha=0.25)
    for ax in axes[len(classes) :]:
        ax.set_visible(False)
    handles = [
        Line2D([], [], color=colours[r.label], lw=2, label=figure_text(r.label)) for r in runs
    ]
    figure.legend(
        handles=handles, loc="outside lower center", ncols=_legend_columns(runs), frameon=False
    )
    figure.suptitle("Test ROC curves, one class against the others", fontsize=12)
    return save_figure(figure, path)


def interval_bars(intervals: Sequence[Interval]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(values, upper ends, error bars)`` of bootstrap intervals, as ``Axes.bar(yerr=...)``
    takes them."""
    values, low, high = (
        np.array([getattr(iv, part) for iv in intervals]) for part in ("value", "low", "high")
    )
    return values, high, np.nan_to_num(np.vstack([values - low, high - values])).clip(min=0.0)


def plot_metric_bars(runs: Sequence[ReportRun], path: Path) -> Path:
    """Grouped bars: test accuracy, macro-F1 and each class's recall per run, with 95% CIs."""
    classes = runs[0].classes
    keys = ["accuracy", "macro_f1", *(f"recall_{c}" for c in classes)]
    names = ["accuracy", "macro-F1", *(figure_text(f"recall\n{c}") for c in classes)]
    colours = run_colours(runs)
    width = 0.8 / len(runs)
    x = np.arange(len(keys))
    figure = new_figure(max(7.5, 1.0 + len(keys) * (0.45 * len(runs) + 0.5)), 4.8)
    ax = figure.add_subplot()
    for i, run in enumerate(runs):
        values, high, errors = interval_bars([run.interval(key) for key in keys])
        offset = (i - (len(runs) - 1) / 2) * width
        bars = ax.bar(
            x + offset,
            np.nan_to_num(values),
            width * 0.92,
            color=colours[run.label],
            label=figure_text(run.label),
            yerr=errors,
            capsize=3,
            error_kw={"lw": 1, "ecolor": "0.25"},
        )
        tops = np.fmax(np.nan_to_num(high), np.nan_to_num(values))
        for bar, value, top in zip(bars, values, tops):
            text = f"{value:.2f}" if np.isfinite(value) else "n/a"
            ax.text(
                bar.get_x() + bar.get_width() / 2,
                top + 0.015,
                text,
                ha="center",
                va="bottom",
                fontsize=8,
                rotation=90 if len(runs) > 3 else 0,
            )
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1.12 if len(runs) <= 3 else 1.2)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("test value (95% bootstrap CI)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.spines[["top", "right"]].set_visible(False)
    figure.legend(
        loc="outside upper center", ncols=_legend_columns(runs), frameon=False, fontsize=9
    )
    return save_figure(figure, path)


def plot_external_gap(
    labels: Sequence[str], sets: dict[str, list[tuple[Interval, float | None]]], path: Path
) -> Path:
    """Per run: balanced accuracy on its own test split (over each set's present classes) and on
    each external set, with the external 95% CI; ``sets`` maps a set name to one
    ``(external interval, own-test value)`` per run, in ``labels`` order."""
    names = list(sets)
    bars = ["own test", *names]
    colours = class_colours(bars)
    width = 0.8 / len(bars)
    x = np.arange(len(labels))
    figure = new_figure(max(6.0, 1.5 + len(labels) * (0.5 * len(bars) + 0.6)), 4.2)
    ax = figure.add_subplot()
    for i, bar in enumerate(bars):
        offset = (i - (len(bars) - 1) / 2) * width
        if bar == "own test":  # the first set's present classes (the usual case: one set)
            values = np.array([np.nan if own is None else own for _, own in sets[names[0]]])
            errors = None
        else:
            values, _, errors = interval_bars([iv for iv, _ in sets[bar]])
        ax.bar(
            x + offset,
            np.nan_to_num(values),
            width * 0.92,
            color=colours[bar],
            label=figure_text(bar),
            yerr=errors,
            capsize=3,
            error_kw={"lw": 1, "ecolor": "0.25"},
        )
    ax.axhline(0.5, color="0.5", lw=0.8, ls=":")
    tilted = len(labels) > 3
    ax.set_xticks(
        x,
        [figure_text(label) for label in labels],
        rotation=20 if tilted else 0,
        ha="right" if tilted else "center",
    )
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("balanced accuracy (present classes)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.spines[["top", "right"]].set_visible(False)
    figure.legend(loc="outside upper center", ncols=len(bars), frameon=False, fontsize=9)
    return save_figure(figure, path)


def plot_reliability(
    labels: Sequence[str],
    diagrams: Sequence[tuple[Reliability, Reliability] | None],
    path: Path,
) -> Path:
    """Per run: its test split's reliability diagram (accuracy against mean top-class confidence per
    bin, marker area by films) before and after temperature scaling; ``None`` for an uncalibrated
    run."""
    rows, cols = _grid(len(labels), 4)
    figure = new_figure(3.2 * cols, 3.2 * rows + 0.4)
    for i, (label, diagram) in enumerate(zip(labels, diagrams)):
        ax = figure.add_subplot(rows, cols, i + 1)
        ax.set_title(figure_text(label), fontsize=9)
        if diagram is None:
            empty_panel(ax, "not calibrated")
            continue
        ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls=":")
        before, after = (diagram[0], "before", "0.45", "--"), (diagram[1], "after", VAL_COLOUR, "-")
        for reliability, name, colour, style in (before, after):
            sizes = 12 + 120 * np.asarray(reliability.count) / max(1, sum(reliability.count))
            x, y = reliability.confidence, reliability.accuracy
            ax.plot(x, y, ls=style, color=colour, lw=1.2, label=name)
            ax.scatter(x, y, s=sizes, color=colour, zorder=3)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("confidence", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
        ax.spines[["top", "right"]].set_visible(False)
        ax.legend(fontsize=7, frameon=False, loc="upper left")
    return save_figure(figure, path)
