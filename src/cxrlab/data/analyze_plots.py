"""The analysis figures: class counts, image sizes, intensity, random samples and mean images.

Each ``plot_*`` function draws one PNG from the readable records of each class (in class
order) and the colour of each class; :mod:`cxrlab.data.analyze` decides the file names.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.lines import Line2D
from PIL import Image

from cxrlab.data.reader import read_grayscale
from cxrlab.data.scan import HIST_BINS, ImageRecord, most_common_size
from cxrlab.data.summary import DatasetSummary
from cxrlab.errors import CxrlabError
from cxrlab.fileio import pct
from cxrlab.plotting import empty_panel, new_figure, save_figure

SAMPLE_MAX_SIDE = 256  # sample images are shrunk to this before plotting


def plot_class_counts(summary: DatasetSummary, colours: dict[str, str], path: Path) -> None:
    """Grouped bars: files per class in each split, unreadable files included."""
    classes, splits = summary.dataset.classes, summary.dataset.splits
    counts = summary.counts
    figure = new_figure(max(6.0, 1.2 + 0.55 * len(classes) * max(len(splits), 1) + 0.6), 4.6)
    ax = figure.add_subplot()
    if not splits:
        empty_panel(ax, "no files")
        save_figure(figure, path)
        return
    width = 0.8 / len(classes)
    x = np.arange(len(splits))
    highest = max((counts[s][c] for s in splits for c in classes), default=0)
    for i, c in enumerate(classes):
        values = [counts[s][c] for s in splits]
        offset = (i - (len(classes) - 1) / 2) * width
        bars = ax.bar(x + offset, values, width * 0.95, label=c, color=colours[c])
        ax.bar_label(bars, labels=[f"{v}" for v in values], padding=2, fontsize=8)
    ax.set_xticks(x, [f"{s}\n({summary.totals.per_split[s]} files)" for s in splits])
    ax.set_ylabel("files")
    ax.set_ylim(0, max(highest, 1) * 1.15)
    ax.spines[["top", "right"]].set_visible(False)
    title = "Files per class and split"
    if summary.not_ok.total:
        title += f" (incl. {summary.not_ok.total} unreadable)"
    ax.set_title(title)
    ax.legend(title="class", frameon=False, loc="upper right")
    save_figure(figure, path)


def plot_image_sizes(
    ok_by_class: dict[str, list[ImageRecord]], colours: dict[str, str], path: Path
) -> None:
    """Width against height (crowded exact sizes ringed) and the aspect ratio per class."""
    classes = list(ok_by_class)
    figure = new_figure(12.5, 5.2)
    ax_scatter, ax_aspect = figure.subplots(1, 2, width_ratios=[1.1, 1])
    ok_all = [r for recs in ok_by_class.values() for r in recs]
    if not ok_all:
        empty_panel(ax_scatter, "no readable images")
        empty_panel(ax_aspect, "no readable images")
        save_figure(figure, path)
        return

    # Width vs height; large classes first so that small ones stay visible on top.
    for c in sorted(classes, key=lambda c: -len(ok_by_class[c])):
        recs = ok_by_class[c]
        if recs:
            ax_scatter.scatter(
                [r.width for r in recs],
                [r.height for r in recs],
                s=8,
                alpha=0.35,
                color=colours[c],
                edgecolors="none",
            )
    handles = [
        Line2D([], [], ls="", marker="o", ms=6, color=colours[c], label=f"{c} (n={len(recs)})")
        for c, recs in ok_by_class.items()
        if recs
    ]
    sides = [side for r in ok_all for side in (r.width, r.height)]
    low, high = float(min(sides)), float(max(sides))
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
    common, common_n = most_common_size(sizes)
    marked = [common] if common_n >= 2 else []
    if sizes[(224, 224)] >= 2 and (224, 224) not in marked:
        marked.append((224, 224))  # the usual ImageNet input size: a sign of pre-resized copies
    for w, h in marked:
        per = Counter(r.label for r in ok_all if (r.width, r.height) == (w, h))
        detail = ", ".join(f"{classes[label]} {k}" for label, k in sorted(per.items()))
        ax_scatter.plot([w], [h], marker="o", ms=14, mfc="none", mec="black", mew=1.2, ls="")
        ax_scatter.annotate(
            f"{w}x{h}",
            xy=(w, h),
            xytext=(-10, 10),
            textcoords="offset points",
            ha="right",
            va="bottom",
            fontsize=8.5,
            fontweight="bold",
            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.8},
        )
        handles.append(
            Line2D(
                [],
                [],
                ls="",
                marker="o",
                ms=9,
                mfc="none",
                mec="black",
                mew=1.2,
                label=f"exactly {w}x{h}: {sizes[(w, h)]} images\n({detail})",
            )
        )
    ax_scatter.legend(handles=handles, loc="best", fontsize=8, framealpha=0.9)

    # Aspect ratio, normalised per class so that a small class is as visible as a large one.
    aspects = {c: np.array([r.aspect for r in recs]) for c, recs in ok_by_class.items() if recs}
    low, high = np.percentile(np.concatenate(list(aspects.values())), [0.5, 99.5])
    if high - low < 0.05:
        low, high = low - 0.1, high + 0.1
    bins = np.linspace(low, high, 41)
    for c, aspect in aspects.items():
        values = np.clip(aspect, low, high)
        weights = np.full(values.size, 100.0 / values.size)
        ax_aspect.hist(
            values, bins=bins, weights=weights, histtype="stepfilled", alpha=0.25, color=colours[c]
        )
        label = f"{c} (median {np.median(aspect):.2f}, {pct(float(np.mean(aspect == 1.0)))} square)"
        ax_aspect.hist(
            values,
            bins=bins,
            weights=weights,
            histtype="step",
            lw=1.6,
            color=colours[c],
            label=label,
        )
    ax_aspect.axvline(1.0, ls="--", lw=0.8, color="0.5")
    ax_aspect.set_xlabel("aspect ratio (width / height); 1 = square")
    ax_aspect.set_ylabel("% of the class's images")
    ax_aspect.set_title("Aspect ratio per class")
    ax_aspect.spines[["top", "right"]].set_visible(False)
    ax_aspect.legend(fontsize=8, frameon=False)
    figure.suptitle("Image sizes and shapes (readable images)", fontsize=13)
    save_figure(figure, path)


def plot_intensity(
    ok_by_class: dict[str, list[ImageRecord]], colours: dict[str, str], path: Path
) -> None:
    """The mean intensity histogram per class, and box plots of the per-image mean intensity."""
    classes = list(ok_by_class)
    figure = new_figure(12.5, 4.8)
    ax_hist, ax_box = figure.subplots(1, 2, width_ratios=[1.3, 1])
    centres = (np.arange(HIST_BINS) + 0.5) * (256.0 / HIST_BINS)
    plotted = False
    for c, recs in ok_by_class.items():
        hists = [r.histogram for r in recs if r.histogram is not None]
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
        empty_panel(ax_hist, "no readable images")

    data, positions, labels = [], [], []
    for i, (c, recs) in enumerate(ok_by_class.items()):
        values = np.array([r.mean for r in recs], dtype=np.float64)
        values = values[np.isfinite(values)]
        labels.append(f"{c}\n(n={values.size})")
        if values.size:
            data.append(values)
            positions.append(i)
    if data:
        parts = ax_box.boxplot(
            data,
            positions=positions,
            widths=0.6,
            patch_artist=True,
            showfliers=True,
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
        empty_panel(ax_box, "no readable images")
    figure.suptitle("Intensity (readable images)", fontsize=13)
    save_figure(figure, path)


def _sample_pixels(path_of: Callable[[str], Path], record: ImageRecord) -> np.ndarray:
    """The image shrunk to at most SAMPLE_MAX_SIDE, aspect kept; the thumbnail if it fails."""
    try:
        pixels = read_grayscale(path_of(record.path), draft_size=SAMPLE_MAX_SIDE)
    except (CxrlabError, OSError, ValueError):
        thumb = record.thumbs.get(64)
        if thumb is None:
            return np.zeros((max(record.height, 1), max(record.width, 1)), dtype=np.uint8)
        image = Image.fromarray(thumb).resize(
            (max(1, round(64 * min(record.aspect, 4))), 64)
            if record.aspect >= 1
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


def plot_samples(
    path_of: Callable[[str], Path],
    ok_by_class: dict[str, list[ImageRecord]],
    colours: dict[str, str],
    samples_per_class: int,
    seed: int,
    path: Path,
) -> list[dict]:
    """One row of seeded random images per class; returns what was shown (class, path, size)."""
    cols = max(samples_per_class, 1)
    rows = max(len(ok_by_class), 1)
    figure = new_figure(1.55 * cols + 0.9, 1.85 * rows + 0.7)
    axes = np.asarray(figure.subplots(rows, cols, squeeze=False))
    rng = np.random.default_rng(seed)
    shown: list[dict[str, str]] = []
    for row, (c, recs) in enumerate(ok_by_class.items()):
        k = min(len(recs), max(samples_per_class, 0))
        picks = sorted(rng.choice(len(recs), size=k, replace=False).tolist()) if k else []
        for col in range(cols):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if col == 0:
                ax.set_ylabel(
                    f"{c}\n(n={len(recs)})", fontsize=10, color=colours[c], fontweight="bold"
                )
            if col >= len(picks):
                if col == 0:
                    ax.text(
                        0.5,
                        0.5,
                        "no readable\nimages",
                        ha="center",
                        va="center",
                        transform=ax.transAxes,
                        fontsize=8,
                        color="0.4",
                    )
                continue
            record = recs[picks[col]]
            ax.set_facecolor("#dcdcdc")
            ax.imshow(
                _sample_pixels(path_of, record),
                cmap="gray",
                vmin=0,
                vmax=255,
                aspect="equal",
                interpolation="antialiased",
            )
            size = f"{record.width}x{record.height}"
            ax.set_xlabel(size, fontsize=8, labelpad=2)
            shown.append({"class": c, "path": record.path, "size": size})
    figure.suptitle(
        "Random readable images per class, each in its own aspect ratio (caption: width x height)",
        fontsize=11,
    )
    save_figure(figure, path)
    return shown


def plot_mean_images(
    ok_by_class: dict[str, list[ImageRecord]], colours: dict[str, str], path: Path
) -> None:
    """The pixel-wise mean 64x64 thumbnail per class and (two or more) its difference to all."""
    means: dict[str, np.ndarray] = {}
    for c, recs in ok_by_class.items():
        thumbs = [r.thumbs[64] for r in recs if 64 in r.thumbs]
        if thumbs:
            means[c] = np.mean(np.stack(thumbs).astype(np.float32), axis=0)
    show_diff = len(means) >= 2
    cols = max(len(ok_by_class), 1)
    rows = 2 if show_diff else 1
    figure = new_figure(max(2.6 * cols + 1.2, 5.0), 2.9 * rows + 0.8)
    axes = np.asarray(figure.subplots(rows, cols, squeeze=False))
    if means:
        low = min(float(m.min()) for m in means.values())
        high = max(float(m.max()) for m in means.values())
        if high <= low:
            high = low + 1.0
        overall = np.mean(np.stack(list(means.values())), axis=0)
        spread = max(float(np.abs(m - overall).max()) for m in means.values()) or 1.0
    else:  # every class is drawn as an empty panel: nothing uses these
        low, high, overall, spread = 0.0, 1.0, np.zeros(()), 1.0
    image = diff_image = None
    for col, (c, recs) in enumerate(ok_by_class.items()):
        ax = axes[0, col]
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{c} (n={len(recs)})", color=colours[c], fontweight="bold", fontsize=10)
        if c not in means:
            for row_ax, text in zip(axes[:, col], ["no readable images", ""]):
                empty_panel(row_ax, text)
                row_ax.set_box_aspect(1)
            continue
        image = ax.imshow(means[c], cmap="gray", vmin=low, vmax=high, aspect="equal")
        if show_diff:
            ax2 = axes[1, col]
            ax2.set_xticks([])
            ax2.set_yticks([])
            diff_image = ax2.imshow(
                means[c] - overall, cmap="RdBu_r", vmin=-spread, vmax=spread, aspect="equal"
            )
            if col == 0:
                ax2.set_ylabel("minus the mean\nof all classes", fontsize=9)
    if image is not None:
        figure.colorbar(image, ax=list(axes[0, :]), shrink=0.85, label="mean intensity")
        axes[0, 0].set_ylabel("mean image\n(64x64, squashed)", fontsize=9)
    if diff_image is not None:
        figure.colorbar(diff_image, ax=list(axes[1, :]), shrink=0.85, label="difference")
    title = "Pixel-wise mean image per class"
    if show_diff:
        title += " (red = brighter, blue = darker than average)"
    figure.suptitle(title, fontsize=11)
    save_figure(figure, path)
