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
The figures are drawn by :mod:`cxrlab.data.analyze_plots`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.table import Table
from rich.text import Text

from cxrlab.data.discover import SPLIT_ORDER, DatasetIndex
from cxrlab.data.findings import findings_of, status_detail
from cxrlab.data.scan import ImageRecord, most_common_size
from cxrlab.data.summary import (
    ClassStats,
    CommonSize,
    DatasetInfo,
    DatasetSummary,
    Intensity,
    NotOk,
    SideRange,
    SplitClassCell,
    Totals,
)
from cxrlab.errors import CxrlabError
from cxrlab.fileio import atomic_write_text, display_name, markdown_escape, markdown_table, pct

PLOTS = {
    "class_counts": "class_counts.png",
    "image_sizes": "image_sizes.png",
    "intensity": "intensity.png",
    "samples": "samples.png",
    "mean_images": "mean_images.png",
}
SUMMARY_JSON, SUMMARY_MD = "summary.json", "summary.md"
SPLIT_CLASS_COLUMNS = ("split", "class", "files", "share", "median WxH", "square", "mean intensity")

# Thresholds behind the findings.


# --------------------------------------------------------------------------- numbers


def _median(values: Sequence[float]) -> float | None:
    array = np.asarray(values, dtype=np.float64)
    array = array[np.isfinite(array)]
    return float(np.median(array)) if array.size else None


def _finite(value: float | np.floating) -> float | None:
    """``value`` as a plain float; None where it is not finite (JSON has no NaN)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _group_stats(records: Sequence[ImageRecord], n_files: int) -> ClassStats:
    """Size, shape, intensity, border and format statistics of some readable images, out of
    ``n_files`` files."""
    n = len(records)
    if n == 0:
        return ClassStats(
            n_ok=0,
            width=SideRange(None, None, None),
            height=SideRange(None, None, None),
            median_size="-",
            square_share=None,
            most_common_size=None,
            median_aspect=None,
            intensity=Intensity(None, None, None),
            median_border_fraction=None,
            formats={},
            modes={},
            n_files=n_files,
        )
    widths = np.array([r.width for r in records], dtype=np.float64)
    heights = np.array([r.height for r in records], dtype=np.float64)
    means = np.array([r.mean for r in records], dtype=np.float64)
    stds = np.array([r.std for r in records], dtype=np.float64)
    (common_w, common_h), common_n = most_common_size(Counter((r.width, r.height) for r in records))
    median_w, median_h = float(np.median(widths)), float(np.median(heights))
    intensity = Intensity(
        mean=_finite(np.nanmean(means)),
        std=_finite(np.nanstd(means)),
        mean_pixel_std=_finite(np.nanmean(stds)),
    )
    return ClassStats(
        n_ok=n,
        width=SideRange(median_w, int(widths.min()), int(widths.max())),
        height=SideRange(median_h, int(heights.min()), int(heights.max())),
        median_size=f"{round(median_w)}x{round(median_h)}",
        square_share=float(np.mean(widths == heights)),
        most_common_size=CommonSize(
            size=f"{common_w}x{common_h}",
            width=int(common_w),
            height=int(common_h),
            count=int(common_n),
            share=common_n / n,
        ),
        median_aspect=_finite(np.median(widths / heights)),
        intensity=intensity,
        median_border_fraction=_median([r.border_fraction for r in records]),
        formats=dict(Counter(r.file_format or "unknown" for r in records).most_common()),
        modes=dict(Counter(r.mode or "unknown" for r in records).most_common()),
        n_files=n_files,
    )


def _splits_of(index: DatasetIndex, records: Sequence[ImageRecord]) -> list[str]:
    present = list(index.splits)
    extra = sorted({r.split for r in records} - set(present))
    ordered = [s for s in SPLIT_ORDER if s in present]
    ordered += [s for s in present if s not in SPLIT_ORDER]
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
    index: DatasetIndex,
    records: Sequence[ImageRecord],
    splits: list[str],
    ok_by_class: dict[str, list[ImageRecord]],
) -> DatasetSummary:
    """The numbers of the summary; its findings, samples, colours and files still empty."""
    classes = list(index.classes)
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
    per_split_class: dict[str, dict[str, SplitClassCell]] = {}
    for s in splits:
        per_split_class[s] = {}
        split_shares = shares(counts[s])
        for c, recs in ok_by_class.items():
            group = [r for r in recs if r.split == s]
            stats = _group_stats(group, counts[s][c])
            per_split_class[s][c] = SplitClassCell(
                n_files=counts[s][c],
                n_ok=len(group),
                share=split_shares[c],
                median_size=stats.median_size,
                square_share=stats.square_share,
                mean_intensity=stats.intensity.mean,
            )

    return DatasetSummary(
        dataset=DatasetInfo(
            root=str(index.root),
            name=Path(index.root).name,
            layout=index.layout,
            classes=classes,
            splits=splits,
        ),
        n_files=total,
        n_ok=len(records) - len(not_ok),
        counts=counts,
        ok_counts=ok_counts,
        totals=Totals(per_split=per_split_total, per_class=per_class_total, all=total),
        shares={**{s: shares(counts[s]) for s in splits}, "all": shares(per_class_total)},
        imbalance_ratio={
            **{s: imbalance(counts[s]) for s in splits},
            "all": imbalance(per_class_total),
        },
        not_ok=NotOk(
            total=len(not_ok),
            by_status=dict(Counter(r.status for r in not_ok).most_common()),
            examples=[f"{r.path} ({r.status})" for r in not_ok[:10]],
        ),
        per_class={c: _group_stats(recs, per_class_total[c]) for c, recs in ok_by_class.items()},
        per_split_class=per_split_class,
        findings=[],
        samples=[],
        class_colours={},
        files={},
    )


# --------------------------------------------------------------------------- findings


# --------------------------------------------------------------------------- reports


def _fmt(value: object, spec: str = ".1f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def _share(value: float | None) -> str:
    return "-" if value is None else pct(value)


def _split_class_cells(cell: SplitClassCell) -> list[str]:
    """One per_split_class entry as text: files, share, median WxH, square, mean intensity."""
    return [
        str(cell.n_files),
        _share(cell.share),
        cell.median_size,
        _share(cell.square_share),
        _fmt(cell.mean_intensity),
    ]


def _md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A Markdown table; every header and cell escaped (class names come from folder names)."""
    return markdown_table(
        [markdown_escape(h) for h in header],
        ([markdown_escape(cell) for cell in row] for row in rows),
    )


def _md_figure(key: str) -> list[str]:
    return [f"![{key.replace('_', ' ')}]({PLOTS[key]})", ""]


def _markdown(summary: DatasetSummary) -> str:
    """``summary.md``; names (dataset, classes, files) escaped with :func:`markdown_escape`."""
    md = markdown_escape
    dataset = summary.dataset
    classes, splits = dataset.classes, dataset.splits
    lines = [
        f"# Dataset analysis: {md(dataset.name)}",
        "",
        f"{md(dataset.root)} — layout *{dataset.layout}*, "
        f"{len(classes)} classes, splits: {', '.join(splits) or 'none'}; "
        f"{summary.n_files} files, {summary.n_ok} readable.",
        "",
        "## Findings",
        "",
    ]
    lines += [f"- {md(text)}" for text in summary.findings] or ["- Nothing stands out."]
    lines += ["", "## Files per split and class", ""]
    rows = []
    count_rows = [(s, s, summary.counts[s]) for s in splits]
    count_rows.append(("total", "all", summary.totals.per_class))
    for name, key, counts in count_rows:
        shares = summary.shares[key]
        rows.append(
            [
                name,
                *(f"{counts[c]} ({_share(shares[c])})" for c in classes),
                sum(counts.values()),
                _fmt(summary.imbalance_ratio[key], ".2f"),
            ]
        )
    lines += _md_table(["split", *classes, "total", "max/min"], rows)
    lines += ["", *_md_figure("class_counts")]

    bad = summary.not_ok
    lines += ["## Unreadable files", ""]
    if bad.total:
        lines += [f"{bad.total} files are left out of the statistics and plots.", ""]
        lines += _md_table(["status", "files"], list(bad.by_status.items()))
        lines += ["", "Examples: " + "; ".join(map(md, bad.examples)), ""]
    else:
        lines += ["None: every file decodes.", ""]

    lines += ["## Per class (readable images)", ""]
    rows = []
    for c in classes:
        st = summary.per_class[c]
        common, width, height, intensity = st.most_common_size, st.width, st.height, st.intensity
        rows.append(
            [
                c,
                st.n_ok,
                st.median_size,
                f"{_fmt(width.min)}–{_fmt(width.max)}",
                f"{_fmt(height.min)}–{_fmt(height.max)}",
                _share(st.square_share),
                f"{common.size} ({pct(common.share)})" if common else "-",
                _fmt(st.median_aspect, ".2f"),
                "-"
                if intensity.mean is None
                else f"{_fmt(intensity.mean)} ± {_fmt(intensity.std)}",
                _share(st.median_border_fraction),
                ", ".join(f"{k} {v}" for k, v in st.formats.items()) or "-",
                ", ".join(f"{k} {v}" for k, v in st.modes.items()) or "-",
            ]
        )
    lines += _md_table(
        [
            "class",
            "images",
            "median WxH",
            "width",
            "height",
            "square",
            "most common size",
            "median aspect",
            "mean intensity",
            "median border",
            "formats",
            "modes",
        ],
        rows,
    )
    lines += [
        "",
        "*square*: share of images with width = height; *most common size*: the single most "
        "frequent exact size and its share; *mean intensity*: mean ± std over images of each "
        "image's mean (0–255); *median border*: share of the area in dark rows/columns at the "
        "edges.",
        "",
        "## Per split and class",
        "",
    ]
    rows = [
        [s, c, *_split_class_cells(cell)]
        for s in splits
        for c, cell in summary.per_split_class[s].items()
    ]
    lines += _md_table(SPLIT_CLASS_COLUMNS, rows)
    lines += ["", "## Plots", ""]
    for key in ("image_sizes", "intensity", "samples", "mean_images"):
        lines += _md_figure(key)
    return "\n".join(lines).rstrip() + "\n"


def summary_table(summary: DatasetSummary) -> Table:
    """A short Rich table for the terminal: the per split and class columns of summary.md (names
    as plain text, undecodable bytes shown)."""
    title = Text(f"{display_name(summary.dataset.name)}: {summary.n_files} files")
    table = Table(title=title, title_justify="left")
    for k, header in enumerate(SPLIT_CLASS_COLUMNS):
        table.add_column(header, justify="left" if k < 2 else "right")
    for i, s in enumerate(summary.dataset.splits):
        if i:
            table.add_section()
        for j, (c, cell) in enumerate(summary.per_split_class[s].items()):
            table.add_row(s if j == 0 else "", Text(display_name(c)), *_split_class_cells(cell))
    bad = summary.not_ok
    if bad.total:
        table.caption = (
            f"{bad.total} unreadable files ({status_detail(bad.by_status)}) "
            "left out of size and intensity columns"
        )
    return table


# --------------------------------------------------------------------------- entry point


def analyze_dataset(
    index: DatasetIndex,
    records: list[ImageRecord],
    out_dir: str | Path,
    *,
    samples_per_class: int = 8,
    seed: int = 0,
) -> DatasetSummary:
    """Write the plots and summaries into out_dir; return the summary (saved as summary.json)."""
    from cxrlab.data import analyze_plots as plots  # matplotlib only when drawing
    from cxrlab.plotting import class_colours

    _check_records(index, records)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    classes = list(index.classes)
    ok_by_class: dict[str, list[ImageRecord]] = {c: [] for c in classes}
    for record in records:
        if record.ok:
            ok_by_class[classes[record.label]].append(record)

    numbers = _build_summary(index, records, _splits_of(index, records), ok_by_class)
    findings = findings_of(numbers, ok_by_class)

    colours = class_colours(classes)
    plots.plot_class_counts(numbers, colours, out / PLOTS["class_counts"])
    plots.plot_image_sizes(ok_by_class, colours, out / PLOTS["image_sizes"])
    plots.plot_intensity(ok_by_class, colours, out / PLOTS["intensity"])
    samples = plots.plot_samples(
        index.path_of, ok_by_class, colours, samples_per_class, seed, out / PLOTS["samples"]
    )
    plots.plot_mean_images(ok_by_class, colours, out / PLOTS["mean_images"])
    summary = replace(
        numbers,
        findings=findings,
        samples=samples,
        class_colours=colours,
        files={**PLOTS, "summary_json": SUMMARY_JSON, "summary_md": SUMMARY_MD},
    )
    atomic_write_text(out / SUMMARY_JSON, summary.to_json())
    atomic_write_text(out / SUMMARY_MD, _markdown(summary))
    return summary
