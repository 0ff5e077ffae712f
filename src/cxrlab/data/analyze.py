"""Describe a dataset with numbers and plots: class balance, image sizes, intensities, samples.

:func:`analyze_dataset` takes the index from :func:`~cxrlab.data.discover.discover` and the
records from :func:`~cxrlab.data.scan.scan_dataset` and writes, into one folder:

* ``class_counts.png`` — files per class per split;
* ``image_sizes.png`` — width against height per class, and the aspect-ratio distribution;
* ``intensity.png`` — the mean intensity histogram per class and the per-image mean intensity;
* ``samples.png`` — random images per class, each in its own aspect ratio;
* ``mean_images.png`` — the pixel-wise mean image per class (and its difference to the others);
* ``summary.json`` / ``summary.md`` — the numbers, plus a few plain-language findings.

Files that do not decode (``status != "ok"``) are counted but left out of every statistic
and plot. The findings come from thresholds on the numbers (imbalance, one image size or
shape dominating some classes but not others, brightness and border differences), so they
apply to any dataset. :func:`summary_table` turns the summary into a short Rich table.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from rich.table import Table

from cxrlab.data.discover import SPLIT_ORDER, DatasetIndex
from cxrlab.data.reader import read_grayscale
from cxrlab.data.scan import HIST_BINS, ImageRecord
from cxrlab.errors import CxrlabError

DPI = 110
PLOTS = {
    "class_counts": "class_counts.png",
    "image_sizes": "image_sizes.png",
    "intensity": "intensity.png",
    "samples": "samples.png",
    "mean_images": "mean_images.png",
}
PLOT_TITLES = {
    "class_counts": "class counts",
    "image_sizes": "image sizes",
    "intensity": "intensity",
    "samples": "samples",
    "mean_images": "mean images",
}
SAMPLE_MAX_SIDE = 256  # sample images are shrunk to this before plotting

# Thresholds behind the findings.
IMBALANCE_RATIO = 1.5  # largest / smallest class above this counts as imbalanced
MOSTLY = 0.5  # "mostly" one size / square
RARELY = 0.1  # "almost never"
ASPECT_RATIO_GAP = 1.15  # median aspect ratios differing by this factor
RESOLUTION_GAP = 2.0  # median pixel counts differing by this factor
INTENSITY_EFFECT = 0.5  # difference of class means over the pooled standard deviation
INTENSITY_LEVELS = 5.0  # ... and at least this many grey levels (0..255)
BORDER_GAP = 0.05  # median border fractions differing by this much of the area
MAX_FINDINGS = 4


# --------------------------------------------------------------------------- numbers


def _median(values: Sequence[float]) -> float | None:
    array = np.asarray(values, dtype=np.float64)
    array = array[np.isfinite(array)]
    return float(np.median(array)) if array.size else None


def _size_text(width: float | None, height: float | None) -> str:
    if width is None or height is None:
        return "-"
    return f"{round(width)}x{round(height)}"


def _most_common_size(records: Sequence[ImageRecord]) -> tuple[tuple[int, int], int] | None:
    """The most frequent exact (width, height); ties go to the larger count, then the larger area."""
    sizes = Counter((r.width, r.height) for r in records)
    if not sizes:
        return None
    size, count = max(sizes.items(), key=lambda item: (item[1], item[0][0] * item[0][1], item[0]))
    return size, count


def _group_stats(records: Sequence[ImageRecord]) -> dict:
    """Size, shape, intensity, border and format statistics of some readable images."""
    n = len(records)
    if n == 0:
        return {
            "n_ok": 0,
            "width": {"median": None, "min": None, "max": None},
            "height": {"median": None, "min": None, "max": None},
            "median_size": "-",
            "square_share": None,
            "most_common_size": None,
            "median_aspect": None,
            "intensity": {"mean": None, "std": None, "mean_pixel_std": None},
            "median_border_fraction": None,
            "formats": {},
            "modes": {},
        }
    widths = np.array([r.width for r in records], dtype=np.float64)
    heights = np.array([r.height for r in records], dtype=np.float64)
    means = np.array([r.mean for r in records], dtype=np.float64)
    stds = np.array([r.std for r in records], dtype=np.float64)
    (common_w, common_h), common_n = _most_common_size(records)  # type: ignore[misc]
    median_w, median_h = float(np.median(widths)), float(np.median(heights))
    return {
        "n_ok": n,
        "width": {"median": median_w, "min": int(widths.min()), "max": int(widths.max())},
        "height": {"median": median_h, "min": int(heights.min()), "max": int(heights.max())},
        "median_size": _size_text(median_w, median_h),
        "square_share": float(np.mean(widths == heights)),
        "most_common_size": {
            "size": f"{common_w}x{common_h}",
            "width": int(common_w),
            "height": int(common_h),
            "count": int(common_n),
            "share": common_n / n,
        },
        "median_aspect": float(np.median(widths / heights)),
        "intensity": {
            "mean": float(np.nanmean(means)),
            "std": float(np.nanstd(means)),
            "mean_pixel_std": float(np.nanmean(stds)),
        },
        "median_border_fraction": _median([r.border_fraction for r in records]),
        "formats": dict(Counter(r.file_format or "unknown" for r in records).most_common()),
        "modes": dict(Counter(r.mode or "unknown" for r in records).most_common()),
    }


def _splits_of(index: DatasetIndex, records: Sequence[ImageRecord]) -> list[str]:
    present = list(index.splits)
    extra = sorted({r.split for r in records} - set(present))
    ordered = [s for s in SPLIT_ORDER if s in present] + [s for s in present if s not in SPLIT_ORDER]
    return ordered + extra


def _check_records(index: DatasetIndex, records: Sequence[ImageRecord]) -> None:
    n_classes = len(index.classes)
    for record in records:
        if not 0 <= record.label < n_classes:
            raise CxrlabError(
                f"{record.path}: label {record.label} is outside the {n_classes} classes "
                f"of {index.root} (records from another dataset?)"
            )


def _build_summary(
    index: DatasetIndex, records: Sequence[ImageRecord], splits: list[str]
) -> dict:
    classes = list(index.classes)
    ok = [r for r in records if r.ok]
    counts = {s: {c: 0 for c in classes} for s in splits}
    ok_counts = {s: {c: 0 for c in classes} for s in splits}
    for record in records:
        counts[record.split][classes[record.label]] += 1
        if record.ok:
            ok_counts[record.split][classes[record.label]] += 1

    per_split_total = {s: sum(counts[s].values()) for s in splits}
    per_class_total = {c: sum(counts[s][c] for s in splits) for c in classes}
    total = sum(per_split_total.values())

    def shares(table: dict[str, int]) -> dict[str, float | None]:
        whole = sum(table.values())
        return {c: (n / whole if whole else None) for c, n in table.items()}

    def imbalance(table: dict[str, int]) -> float | None:
        values = list(table.values())
        if not values or min(values) == 0:
            return None
        return max(values) / min(values)

    not_ok = [r for r in records if not r.ok]
    by_status = dict(Counter(r.status for r in not_ok).most_common())

    per_class = {c: _group_stats([r for r in ok if classes[r.label] == c]) for c in classes}
    for c in classes:
        per_class[c]["n_files"] = per_class_total[c]

    per_split_class: dict[str, dict[str, dict]] = {}
    for s in splits:
        per_split_class[s] = {}
        split_shares = shares(counts[s])
        for c in classes:
            group = [r for r in ok if r.split == s and classes[r.label] == c]
            stats = _group_stats(group)
            per_split_class[s][c] = {
                "n_files": counts[s][c],
                "n_ok": len(group),
                "share": split_shares[c],
                "median_size": stats["median_size"],
                "square_share": stats["square_share"],
                "mean_intensity": stats["intensity"]["mean"],
            }

    return {
        "dataset": {
            "root": str(index.root),
            "name": Path(index.root).name,
            "layout": index.layout,
            "classes": classes,
            "splits": splits,
        },
        "n_files": total,
        "n_ok": len(ok),
        "counts": counts,
        "ok_counts": ok_counts,
        "totals": {"per_split": per_split_total, "per_class": per_class_total, "all": total},
        "shares": {
            **{s: shares(counts[s]) for s in splits},
            "all": shares(per_class_total),
        },
        "imbalance_ratio": {
            **{s: imbalance(counts[s]) for s in splits},
            "all": imbalance(per_class_total),
        },
        "not_ok": {
            "total": len(not_ok),
            "by_status": by_status,
            "examples": [f"{r.path} ({r.status})" for r in not_ok[:10]],
        },
        "per_class": per_class,
        "per_split_class": per_split_class,
    }


# --------------------------------------------------------------------------- findings


def _pct(value: float) -> str:
    """A share as a percentage with sensible precision (0.4%, 3.9%, 93%)."""
    percent = 100.0 * value
    if percent == 0 or percent == 100:
        return f"{percent:.0f}%"
    if percent < 10 or percent > 99:
        return f"{percent:.1f}%"
    return f"{percent:.0f}%"


def _join(names: Sequence[str]) -> str:
    names = list(names)
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def _finding_imbalance(summary: dict) -> str | None:
    splits = summary["dataset"]["splits"]
    if not splits:
        return None
    split = "train" if "train" in splits else splits[0]
    table = summary["counts"][split]
    whole = sum(table.values())
    if whole == 0 or len(table) < 2:
        return None
    empty = [c for c, n in table.items() if n == 0]
    if empty:
        return (
            f"{_join(empty)} {'has' if len(empty) == 1 else 'have'} no files in {split}: "
            f"a model trained on this split cannot learn {'it' if len(empty) == 1 else 'them'}."
        )
    smallest = min(table, key=table.get)
    largest = max(table, key=table.get)
    ratio = table[largest] / table[smallest]
    if ratio >= IMBALANCE_RATIO:
        return (
            f"{smallest} is {_pct(table[smallest] / whole)} of {split} ({table[smallest]} of {whole}; "
            f"{largest} has {ratio:.1f}x as many): use class weights or balanced sampling, "
            "and report per-class recall, not accuracy."
        )
    return f"Classes are roughly balanced in {split} (largest/smallest = {ratio:.2f})."


def _finding_shape(summary: dict, ok_by_class: dict[str, list[ImageRecord]]) -> str | None:
    stats = {c: s for c, s in summary["per_class"].items() if s["n_ok"] > 0}
    if len(stats) < 2:
        return None  # nothing to compare
    # 1) One exact size dominates some classes and is (nearly) absent from others.
    size_counts = {c: Counter((r.width, r.height) for r in recs) for c, recs in ok_by_class.items() if recs}
    candidates = list(dict.fromkeys(  # in class order, so that ties resolve the same way each run
        (s["most_common_size"]["width"], s["most_common_size"]["height"])
        for s in stats.values()
        if s["most_common_size"]["share"] >= MOSTLY
    ))
    best: tuple[int, str] | None = None
    for size in candidates:
        share = {c: size_counts[c][size] / stats[c]["n_ok"] for c in stats}
        mostly = [c for c in stats if share[c] >= MOSTLY]
        rare = [c for c in stats if share[c] <= RARELY]
        if not mostly or not rare:
            continue
        hits_m = sum(size_counts[c][size] for c in mostly)
        hits_r = sum(size_counts[c][size] for c in rare)
        n_m = sum(stats[c]["n_ok"] for c in mostly)
        n_r = sum(stats[c]["n_ok"] for c in rare)
        text = (
            f"{_join(mostly)} {'is' if len(mostly) == 1 else 'are'} mostly exactly "
            f"{size[0]}x{size[1]} ({_pct(hits_m / n_m)}), {_join(rare)} almost never "
            f"({_pct(hits_r / n_r)}): image shape alone reveals the class — a format shortcut; "
            "resize every image the same way (or crop) and check the model is not using it."
        )
        if best is None or hits_m > best[0]:
            best = (hits_m, text)
    if best is not None:
        return best[1]
    # 2) Square against non-square.
    square = {c: s["square_share"] for c, s in stats.items()}
    mostly = [c for c in stats if square[c] >= MOSTLY]
    rare = [c for c in stats if square[c] <= RARELY]
    if mostly and rare:
        return (
            f"{_join(mostly)} images are mostly square "
            f"({', '.join(_pct(square[c]) for c in mostly)}), {_join(rare)} almost never "
            f"({', '.join(_pct(square[c]) for c in rare)}): image shape reveals the class — "
            "a format shortcut; resize every image the same way."
        )
    # 3) Aspect ratio or resolution differs.
    aspects = {c: s["median_aspect"] for c, s in stats.items()}
    lo, hi = min(aspects, key=aspects.get), max(aspects, key=aspects.get)
    if aspects[hi] / aspects[lo] >= ASPECT_RATIO_GAP:
        return (
            f"Median aspect ratio (width/height) differs by class: {hi} {aspects[hi]:.2f} vs "
            f"{lo} {aspects[lo]:.2f}: shape hints at the class; resize every image the same way."
        )
    all_sizes = Counter()
    for counter in size_counts.values():
        all_sizes.update(counter)
    n_ok = summary["n_ok"]
    if len(all_sizes) == 1:
        (w, h), _ = all_sizes.most_common(1)[0]
        return f"All {n_ok} readable images are {w}x{h}: size and shape carry no class information."
    pixels = {c: s["width"]["median"] * s["height"]["median"] for c, s in stats.items()}
    lo, hi = min(pixels, key=pixels.get), max(pixels, key=pixels.get)
    if pixels[hi] / pixels[lo] >= RESOLUTION_GAP:
        return (
            f"Resolution differs by class (median {stats[hi]['median_size']} for {hi} vs "
            f"{stats[lo]['median_size']} for {lo}): sharpness or resizing artefacts may hint at "
            "the class."
        )
    return "Image sizes and shapes look alike across classes: no obvious format shortcut."


def _finding_not_ok(summary: dict) -> str | None:
    bad = summary["not_ok"]
    if not bad["total"]:
        return None
    detail = ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in bad["by_status"].items())
    text = (
        f"{bad['total']} of {summary['n_files']} files cannot be read ({detail}): they are left "
        "out of every statistic and plot; remove or fix them before training."
    )
    lost = [c for c, s in summary["per_class"].items() if s["n_ok"] == 0]
    if lost:
        text += f" {_join(lost)} {'has' if len(lost) == 1 else 'have'} no readable image at all."
    return text


def _finding_intensity(summary: dict, ok_by_class: dict[str, list[ImageRecord]]) -> str | None:
    groups = {
        c: np.array([r.mean for r in recs], dtype=np.float64) for c, recs in ok_by_class.items() if len(recs) >= 2
    }
    if len(groups) < 2:
        return None
    best: tuple[float, str, str] | None = None
    names = list(groups)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            diff = abs(groups[a].mean() - groups[b].mean())
            pooled = math.sqrt((groups[a].var() + groups[b].var()) / 2.0)
            effect = diff / pooled if pooled > 0 else (math.inf if diff > 0 else 0.0)
            if diff >= INTENSITY_LEVELS and effect >= INTENSITY_EFFECT:
                if best is None or effect > best[0]:
                    hi, lo = (a, b) if groups[a].mean() > groups[b].mean() else (b, a)
                    best = (effect, hi, lo)
    if best is None:
        return None
    _, hi, lo = best
    return (
        f"Brightness differs by class: mean intensity {groups[hi].mean():.0f} for {hi} vs "
        f"{groups[lo].mean():.0f} for {lo} (0–255): exposure can act as a shortcut; normalise "
        "each image and check the model is not using it."
    )


def _finding_border(summary: dict) -> str | None:
    borders = {
        c: s["median_border_fraction"]
        for c, s in summary["per_class"].items()
        if s["median_border_fraction"] is not None
    }
    if len(borders) < 2:
        return None
    lo, hi = min(borders, key=borders.get), max(borders, key=borders.get)
    if borders[hi] - borders[lo] < BORDER_GAP:
        return None
    return (
        f"Black borders differ by class: a median {_pct(borders[hi])} of the image area for {hi} "
        f"vs {_pct(borders[lo])} for {lo}: crop borders or the model may learn them."
    )


def _finding_mode(summary: dict) -> str | None:
    dominant = {
        c: next(iter(s["modes"]))
        for c, s in summary["per_class"].items()
        if s["modes"]
    }
    if len(set(dominant.values())) < 2:
        return None
    detail = ", ".join(f"{c}: {m}" for c, m in dominant.items())
    return (
        f"Files were saved differently per class (mostly {detail}): all are read as 8-bit "
        "grayscale, but compression or colour artefacts can still hint at the class."
    )


def _findings(summary: dict, ok_by_class: dict[str, list[ImageRecord]]) -> list[str]:
    candidates = [
        _finding_imbalance(summary),
        _finding_shape(summary, ok_by_class),
        _finding_not_ok(summary),
        _finding_intensity(summary, ok_by_class),
        _finding_border(summary),
        _finding_mode(summary),
    ]
    return [text for text in candidates if text][:MAX_FINDINGS]


# --------------------------------------------------------------------------- plots


def _class_colours(classes: Sequence[str]) -> dict[str, object]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(classes) <= 10 else "tab20"]
    return {c: cmap(i % cmap.N) for i, c in enumerate(classes)}


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> None:
    figure.savefig(path, dpi=DPI, format="png", facecolor="white")


def _empty_panel(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _plot_class_counts(summary: dict, colours: dict, path: Path) -> None:
    classes = summary["dataset"]["classes"]
    splits = summary["dataset"]["splits"]
    counts = summary["counts"]
    figure = _new_figure(max(6.0, 1.2 + 0.55 * len(classes) * max(len(splits), 1) + 0.6), 4.6)
    ax = figure.add_subplot()
    if not splits:
        _empty_panel(ax, "no files")
        _save(figure, path)
        return
    width = 0.8 / len(classes)
    x = np.arange(len(splits))
    highest = max((counts[s][c] for s in splits for c in classes), default=0)
    for i, c in enumerate(classes):
        values = [counts[s][c] for s in splits]
        bars = ax.bar(x + (i - (len(classes) - 1) / 2) * width, values, width * 0.95, label=c, color=colours[c])
        ax.bar_label(bars, labels=[f"{v}" for v in values], padding=2, fontsize=8)
    ax.set_xticks(x, [f"{s}\n({summary['totals']['per_split'][s]} files)" for s in splits])
    ax.set_ylabel("files")
    ax.set_ylim(0, max(highest, 1) * 1.15)
    ax.spines[["top", "right"]].set_visible(False)
    title = "Files per class and split"
    if summary["not_ok"]["total"]:
        title += f" (incl. {summary['not_ok']['total']} unreadable)"
    ax.set_title(title)
    ax.legend(title="class", frameon=False, loc="upper right")
    _save(figure, path)


def _plot_image_sizes(
    classes: Sequence[str], ok_by_class: dict[str, list[ImageRecord]], colours: dict, path: Path
) -> None:
    figure = _new_figure(12.5, 5.2)
    ax_scatter, ax_aspect = figure.subplots(1, 2, width_ratios=[1.1, 1])
    ok_all = [r for c in classes for r in ok_by_class[c]]
    if not ok_all:
        _empty_panel(ax_scatter, "no readable images")
        _empty_panel(ax_aspect, "no readable images")
        _save(figure, path)
        return

    # Width vs height; large classes first so that small ones stay visible on top.
    from matplotlib.lines import Line2D

    order = sorted(classes, key=lambda c: -len(ok_by_class[c]))
    for c in order:
        recs = ok_by_class[c]
        if recs:
            ax_scatter.scatter(
                [r.width for r in recs], [r.height for r in recs], s=8, alpha=0.35,
                color=colours[c], edgecolors="none",
            )
    handles = [
        Line2D([], [], ls="", marker="o", ms=6, color=colours[c], label=f"{c} (n={len(ok_by_class[c])})")
        for c in classes
        if ok_by_class[c]
    ]
    widths = np.array([r.width for r in ok_all], dtype=np.float64)
    heights = np.array([r.height for r in ok_all], dtype=np.float64)
    low = float(min(widths.min(), heights.min()))
    high = float(max(widths.max(), heights.max()))
    pad = 0.06 * (high - low) if high > low else max(0.1 * high, 5.0)
    low, high = max(0.0, low - pad), high + pad
    ax_scatter.plot([low, high], [low, high], ls="--", lw=0.8, color="0.5")
    handles.append(Line2D([], [], ls="--", lw=0.8, color="0.5", label="square (width = height)"))
    ax_scatter.set_xlim(low, high)
    ax_scatter.set_ylim(low, high)
    ax_scatter.set_aspect("equal")
    ax_scatter.set_xlabel("width (px)")
    ax_scatter.set_ylabel("height (px)")
    ax_scatter.set_title("Image size per class (one dot per image)")
    ax_scatter.spines[["top", "right"]].set_visible(False)
    # Ring the crowded exact sizes: thousands of identical points look like a single dot.
    sizes = Counter((r.width, r.height) for r in ok_all)
    common = _most_common_size(ok_all)
    marked = [common[0]] if common is not None and common[1] >= 2 else []
    if sizes.get((224, 224), 0) >= 2 and (224, 224) not in marked:
        marked.append((224, 224))  # the usual ImageNet input size: a sign of pre-resized copies
    for w, h in marked:
        per = Counter(r.label for r in ok_all if (r.width, r.height) == (w, h))
        detail = ", ".join(f"{classes[label]} {k}" for label, k in sorted(per.items()))
        ax_scatter.plot([w], [h], marker="o", ms=14, mfc="none", mec="black", mew=1.2, ls="")
        ax_scatter.annotate(
            f"{w}x{h}", xy=(w, h), xytext=(-10, 10), textcoords="offset points", ha="right",
            va="bottom", fontsize=8.5, fontweight="bold",
            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.8},
        )
        handles.append(
            Line2D([], [], ls="", marker="o", ms=9, mfc="none", mec="black", mew=1.2,
                   label=f"exactly {w}x{h}: {sizes[(w, h)]} images\n({detail})")
        )
    ax_scatter.legend(handles=handles, loc="best", fontsize=8, framealpha=0.9)

    # Aspect ratio, normalised per class so that a small class is as visible as a large one.
    aspects = {c: np.array([r.aspect for r in ok_by_class[c]]) for c in classes if ok_by_class[c]}
    every = np.concatenate(list(aspects.values()))
    low, high = np.percentile(every, [0.5, 99.5])
    if high - low < 0.05:
        low, high = low - 0.1, high + 0.1
    bins = np.linspace(low, high, 41)
    for c in classes:
        if c not in aspects:
            continue
        values = np.clip(aspects[c], low, high)
        ax_aspect.hist(
            values, bins=bins, weights=np.full(values.size, 100.0 / values.size),
            histtype="stepfilled", alpha=0.25, color=colours[c],
        )
        ax_aspect.hist(
            values, bins=bins, weights=np.full(values.size, 100.0 / values.size),
            histtype="step", lw=1.6, color=colours[c], label=f"{c} (median {np.median(aspects[c]):.2f}, {_pct(float(np.mean(aspects[c] == 1.0)))} square)",
        )
    ax_aspect.axvline(1.0, ls="--", lw=0.8, color="0.5")
    ax_aspect.set_xlabel("aspect ratio (width / height); 1 = square")
    ax_aspect.set_ylabel("% of the class's images")
    ax_aspect.set_title("Aspect ratio per class")
    ax_aspect.spines[["top", "right"]].set_visible(False)
    ax_aspect.legend(fontsize=8, frameon=False)
    figure.suptitle("Image sizes and shapes (readable images)", fontsize=13)
    _save(figure, path)


def _plot_intensity(
    classes: Sequence[str], ok_by_class: dict[str, list[ImageRecord]], colours: dict, path: Path
) -> None:
    figure = _new_figure(12.5, 4.8)
    ax_hist, ax_box = figure.subplots(1, 2, width_ratios=[1.3, 1])
    centres = (np.arange(HIST_BINS) + 0.5) * (256.0 / HIST_BINS)
    plotted = False
    for c in classes:
        hists = [r.histogram for r in ok_by_class[c] if r.histogram is not None]
        if not hists:
            continue
        mean_hist = np.mean(np.stack(hists), axis=0) * 100.0
        ax_hist.plot(centres, mean_hist, color=colours[c], lw=1.8, label=f"{c} (n={len(hists)})")
        plotted = True
    if plotted:
        ax_hist.set_xlim(0, 255)
        ax_hist.set_ylim(bottom=0)
        ax_hist.set_xlabel("pixel intensity (0 = black, 255 = white)")
        ax_hist.set_ylabel("% of pixels (mean over images)")
        ax_hist.set_title("Mean intensity histogram per class")
        ax_hist.legend(fontsize=8, frameon=False)
        ax_hist.spines[["top", "right"]].set_visible(False)
    else:
        _empty_panel(ax_hist, "no readable images")

    data, positions, labels = [], [], []
    for i, c in enumerate(classes):
        values = np.array([r.mean for r in ok_by_class[c]], dtype=np.float64)
        values = values[np.isfinite(values)]
        labels.append(f"{c}\n(n={values.size})")
        if values.size:
            data.append(values)
            positions.append(i)
    if data:
        parts = ax_box.boxplot(
            data, positions=positions, widths=0.6, patch_artist=True, showfliers=True,
            flierprops={"marker": ".", "markersize": 3, "alpha": 0.4},
            medianprops={"color": "black"},
        )
        for patch, i in zip(parts["boxes"], positions):
            patch.set_facecolor(colours[classes[i]])
            patch.set_alpha(0.6)
        ax_box.set_xticks(range(len(classes)), labels)
        ax_box.set_xlim(-0.6, len(classes) - 0.4)
        ax_box.set_ylabel("mean intensity of the image (0–255)")
        ax_box.set_title("Per-image mean intensity")
        ax_box.spines[["top", "right"]].set_visible(False)
    else:
        _empty_panel(ax_box, "no readable images")
    figure.suptitle("Intensity (readable images)", fontsize=13)
    _save(figure, path)


def _sample_pixels(index: DatasetIndex, record: ImageRecord) -> np.ndarray:
    """The image shrunk to at most SAMPLE_MAX_SIDE, aspect kept; the thumbnail if it fails."""
    try:
        pixels = read_grayscale(Path(index.root) / record.path, draft_size=SAMPLE_MAX_SIDE)
    except (CxrlabError, OSError, ValueError):
        thumb = record.thumbs.get(64)
        if thumb is None:
            return np.zeros((max(record.height, 1), max(record.width, 1)), dtype=np.uint8)
        image = Image.fromarray(thumb).resize(
            (max(1, round(64 * min(record.aspect, 4))), 64) if record.aspect >= 1
            else (64, max(1, round(64 / max(record.aspect, 0.25)))),
        )
        return np.asarray(image)
    height, width = pixels.shape
    scale = SAMPLE_MAX_SIDE / max(height, width)
    if scale < 1:
        image = Image.fromarray(pixels).resize(
            (max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BILINEAR
        )
        pixels = np.asarray(image)
    return pixels


def _plot_samples(
    index: DatasetIndex,
    classes: Sequence[str],
    ok_by_class: dict[str, list[ImageRecord]],
    colours: dict,
    samples_per_class: int,
    seed: int,
    path: Path,
) -> list[dict]:
    cols = max(int(samples_per_class), 1)
    rows = max(len(classes), 1)
    figure = _new_figure(1.55 * cols + 0.9, 1.85 * rows + 0.7)
    axes = np.asarray(figure.subplots(rows, cols, squeeze=False))
    rng = np.random.default_rng(seed)
    shown: list[dict] = []
    for row, c in enumerate(classes):
        recs = ok_by_class[c]
        k = min(len(recs), max(int(samples_per_class), 0))
        picks = sorted(rng.choice(len(recs), size=k, replace=False).tolist()) if k else []
        for col in range(cols):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if col == 0:
                ax.set_ylabel(f"{c}\n(n={len(recs)})", fontsize=10, color=colours[c], fontweight="bold")
            if col >= len(picks):
                if col == 0:
                    ax.text(0.5, 0.5, "no readable\nimages", ha="center", va="center",
                            transform=ax.transAxes, fontsize=8, color="0.4")
                continue
            record = recs[picks[col]]
            pixels = _sample_pixels(index, record)
            ax.set_facecolor("#dcdcdc")
            ax.imshow(pixels, cmap="gray", vmin=0, vmax=255, aspect="equal", interpolation="antialiased")
            ax.set_xlabel(f"{record.width}x{record.height}", fontsize=8, labelpad=2)
            shown.append({"class": c, "path": record.path, "size": f"{record.width}x{record.height}"})
    figure.suptitle(
        "Random readable images per class, each in its own aspect ratio (caption: width x height)",
        fontsize=11,
    )
    _save(figure, path)
    return shown


def _plot_mean_images(
    classes: Sequence[str], ok_by_class: dict[str, list[ImageRecord]], colours: dict, path: Path
) -> None:
    means: dict[str, np.ndarray] = {}
    for c in classes:
        thumbs = [r.thumbs[64] for r in ok_by_class[c] if 64 in r.thumbs]
        if thumbs:
            means[c] = np.mean(np.stack(thumbs).astype(np.float32), axis=0)
    show_diff = len(means) >= 2
    cols = max(len(classes), 1)
    rows = 2 if show_diff else 1
    figure = _new_figure(max(2.6 * cols + 1.2, 5.0), 2.9 * rows + 0.8)
    axes = np.asarray(figure.subplots(rows, cols, squeeze=False))
    if means:
        low = min(float(m.min()) for m in means.values())
        high = max(float(m.max()) for m in means.values())
        if high <= low:
            high = low + 1.0
        overall = np.mean(np.stack(list(means.values())), axis=0)
        spread = max(float(np.abs(m - overall).max()) for m in means.values()) or 1.0
    image = diff_image = None
    for col, c in enumerate(classes):
        ax = axes[0, col]
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{c} (n={len(ok_by_class[c])})", color=colours[c], fontweight="bold", fontsize=10)
        if c not in means:
            _empty_panel(ax, "no readable images")
            ax.set_box_aspect(1)
            if show_diff:
                _empty_panel(axes[1, col], "")
                axes[1, col].set_box_aspect(1)
            continue
        image = ax.imshow(means[c], cmap="gray", vmin=low, vmax=high, aspect="equal")
        if show_diff:
            ax2 = axes[1, col]
            ax2.set_xticks([])
            ax2.set_yticks([])
            diff_image = ax2.imshow(means[c] - overall, cmap="RdBu_r", vmin=-spread, vmax=spread, aspect="equal")
            if col == 0:
                ax2.set_ylabel("minus the mean\nof all classes", fontsize=9)
    if image is not None:
        figure.colorbar(image, ax=list(axes[0, :]), shrink=0.85, label="mean intensity")
    if diff_image is not None:
        figure.colorbar(diff_image, ax=list(axes[1, :]), shrink=0.85, label="difference")
    if not means:
        axes[0, 0].set_ylabel("")
    else:
        axes[0, 0].set_ylabel("mean image\n(64x64, squashed)", fontsize=9)
    figure.suptitle("Pixel-wise mean image per class (red = brighter, blue = darker than average)"
                    if show_diff else "Pixel-wise mean image per class", fontsize=11)
    _save(figure, path)


# --------------------------------------------------------------------------- reports


def _json_safe(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def _fmt(value: object, spec: str = ".1f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def _share(value: float | None) -> str:
    return "-" if value is None else _pct(value)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def _markdown(summary: dict) -> str:
    classes = summary["dataset"]["classes"]
    splits = summary["dataset"]["splits"]
    counts = summary["counts"]
    lines = [
        f"# Dataset analysis: {summary['dataset']['name']}",
        "",
        f"`{summary['dataset']['root']}` — layout *{summary['dataset']['layout']}*, "
        f"{len(classes)} classes, splits: {', '.join(splits) or 'none'}; "
        f"{summary['n_files']} files, {summary['n_ok']} readable.",
        "",
        "## Findings",
        "",
    ]
    lines += [f"- {text}" for text in summary["findings"]] or ["- Nothing stands out."]
    lines += ["", "## Files per split and class", ""]
    rows = []
    for s in splits:
        row = [s] + [f"{counts[s][c]} ({_share(summary['shares'][s][c])})" for c in classes]
        ratio = summary["imbalance_ratio"][s]
        rows.append(row + [summary["totals"]["per_split"][s], _fmt(ratio, ".2f")])
    total_row = ["**total**"] + [
        f"{summary['totals']['per_class'][c]} ({_share(summary['shares']['all'][c])})" for c in classes
    ]
    rows.append(total_row + [summary["totals"]["all"], _fmt(summary["imbalance_ratio"]["all"], ".2f")])
    lines += _md_table(["split", *classes, "total", "max/min"], rows)
    lines += ["", f"![{PLOT_TITLES['class_counts']}]({PLOTS['class_counts']})", ""]

    bad = summary["not_ok"]
    lines += ["## Unreadable files", ""]
    if bad["total"]:
        lines += [f"{bad['total']} files are left out of the statistics and plots.", ""]
        lines += _md_table(["status", "files"], list(bad["by_status"].items()))
        lines += ["", "Examples: " + "; ".join(f"`{e}`" for e in bad["examples"]), ""]
    else:
        lines += ["None: every file decodes.", ""]

    lines += ["## Per class (readable images)", ""]
    rows = []
    for c in classes:
        st = summary["per_class"][c]
        common = st["most_common_size"]
        width, height = st["width"], st["height"]
        intensity = st["intensity"]
        rows.append([
            c,
            st["n_ok"],
            _size_text(width["median"], height["median"]),
            f"{_fmt(width['min'])}–{_fmt(width['max'])}",
            f"{_fmt(height['min'])}–{_fmt(height['max'])}",
            _share(st["square_share"]),
            f"{common['size']} ({_pct(common['share'])})" if common else "-",
            _fmt(st["median_aspect"], ".2f"),
            f"{_fmt(intensity['mean'])} ± {_fmt(intensity['std'])}" if intensity["mean"] is not None else "-",
            _share(st["median_border_fraction"]),
            ", ".join(f"{k} {v}" for k, v in st["formats"].items()) or "-",
            ", ".join(f"{k} {v}" for k, v in st["modes"].items()) or "-",
        ])
    lines += _md_table(
        ["class", "images", "median WxH", "width", "height", "square", "most common size",
         "median aspect", "mean intensity", "median border", "formats", "modes"],
        rows,
    )
    lines += [
        "",
        "*square*: share of images with width = height; *most common size*: the single most "
        "frequent exact size and its share; *mean intensity*: mean ± std over images of each "
        "image's mean (0–255); *median border*: share of the area in dark rows/columns at the edges.",
        "",
        "## Per split and class", "",
    ]
    rows = []
    for s in splits:
        for c in classes:
            cell = summary["per_split_class"][s][c]
            rows.append([s, c, cell["n_files"], _share(cell["share"]), cell["median_size"],
                         _share(cell["square_share"]), _fmt(cell["mean_intensity"])])
    lines += _md_table(["split", "class", "files", "share", "median WxH", "square", "mean intensity"], rows)
    lines += ["", "## Plots", ""]
    for key in ("image_sizes", "intensity", "samples", "mean_images"):
        lines += [f"![{PLOT_TITLES[key]}]({PLOTS[key]})", ""]
    return "\n".join(lines).rstrip() + "\n"


def summary_table(summary: dict) -> Table:
    """A short Rich table for the terminal: per split and class, count, share, median WxH, % square, mean intensity."""
    name = summary.get("dataset", {}).get("name", "dataset")
    table = Table(title=f"{name}: {summary.get('n_files', 0)} files", title_justify="left")
    table.add_column("split")
    table.add_column("class")
    table.add_column("files", justify="right")
    table.add_column("share", justify="right")
    table.add_column("median WxH", justify="right")
    table.add_column("square", justify="right")
    table.add_column("mean intensity", justify="right")
    splits = summary["dataset"]["splits"]
    for i, s in enumerate(splits):
        if i:
            table.add_section()
        for j, (c, cell) in enumerate(summary["per_split_class"][s].items()):
            table.add_row(
                s if j == 0 else "",
                c,
                str(cell["n_files"]),
                _share(cell["share"]),
                cell["median_size"],
                _share(cell["square_share"]),
                _fmt(cell["mean_intensity"]),
            )
    bad = summary.get("not_ok", {})
    if bad.get("total"):
        detail = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in bad["by_status"].items())
        table.caption = f"{bad['total']} unreadable files ({detail}) left out of size and intensity columns"
    return table


# --------------------------------------------------------------------------- entry point


def analyze_dataset(
    index: DatasetIndex,
    records: list[ImageRecord],
    out_dir: str | Path,
    *,
    samples_per_class: int = 8,
    seed: int = 0,
) -> dict:
    """Write the plots and summaries into out_dir and return the summary dict (JSON-serialisable)."""
    _check_records(index, records)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    classes = list(index.classes)
    splits = _splits_of(index, records)
    ok_by_class: dict[str, list[ImageRecord]] = {c: [] for c in classes}
    for record in records:
        if record.ok:
            ok_by_class[classes[record.label]].append(record)

    summary = _build_summary(index, records, splits)
    summary["findings"] = _findings(summary, ok_by_class)

    colours = _class_colours(classes)
    _plot_class_counts(summary, colours, out / PLOTS["class_counts"])
    _plot_image_sizes(classes, ok_by_class, colours, out / PLOTS["image_sizes"])
    _plot_intensity(classes, ok_by_class, colours, out / PLOTS["intensity"])
    summary["samples"] = _plot_samples(
        index, classes, ok_by_class, colours, samples_per_class, seed, out / PLOTS["samples"]
    )
    _plot_mean_images(classes, ok_by_class, colours, out / PLOTS["mean_images"])
    summary["class_colours"] = {
        c: "#{:02x}{:02x}{:02x}".format(*(round(255 * v) for v in colours[c][:3])) for c in classes
    }
    summary["files"] = {**PLOTS, "summary_json": "summary.json", "summary_md": "summary.md"}

    summary = _json_safe(summary)  # type: ignore[assignment]
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / "summary.md").write_text(_markdown(summary), encoding="utf-8")
    return summary
