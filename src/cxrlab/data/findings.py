"""What the analysis says in words: imbalance, sizes and shapes, unreadable files, intensity,
borders and format differences between classes, each a finding with its numbers; the
thresholds that make a difference worth saying are named here."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from cxrlab.data.scan import ImageRecord
from cxrlab.data.summary import DatasetSummary
from cxrlab.fileio import pct

IMBALANCE_RATIO = 1.5  # largest / smallest class above this counts as imbalanced
MOSTLY = 0.5  # "mostly" one size / square
RARELY = 0.1  # "almost never"
ASPECT_RATIO_GAP = 1.15  # median aspect ratios differing by this factor
RESOLUTION_GAP = 2.0  # median pixel counts differing by this factor
INTENSITY_EFFECT = 0.5  # difference of class means over the pooled standard deviation
INTENSITY_LEVELS = 5.0  # ... and at least this many grey levels (0..255)
BORDER_GAP = 0.05  # median border fractions differing by this much of the area
MAX_FINDINGS = 4


def _join(names: Sequence[str]) -> str:
    names = list(names)
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def status_detail(by_status: dict[str, int]) -> str:
    """'3 empty, 1 not an image' from the unreadable-file counts per status."""
    return ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in by_status.items())


def _finding_imbalance(summary: DatasetSummary) -> str | None:
    splits = summary.dataset.splits
    if not splits:
        return None
    split = "train" if "train" in splits else splits[0]
    table = summary.counts[split]
    whole = sum(table.values())
    if whole == 0 or len(table) < 2:
        return None
    empty = [c for c, n in table.items() if n == 0]
    if empty:
        return (
            f"{_join(empty)} {'has' if len(empty) == 1 else 'have'} no files in {split}: "
            f"a model trained on this split cannot learn {'it' if len(empty) == 1 else 'them'}."
        )
    smallest = min(table, key=table.__getitem__)
    largest = max(table, key=table.__getitem__)
    ratio = table[largest] / table[smallest]
    if ratio >= IMBALANCE_RATIO:
        return (
            f"{smallest} is {pct(table[smallest] / whole)} of {split} "
            f"({table[smallest]} of {whole}; "
            f"{largest} has {ratio:.1f}x as many): use class weights or balanced sampling, "
            "and report per-class recall, not accuracy."
        )
    return f"Classes are roughly balanced in {split} (largest/smallest = {ratio:.2f})."


def _finding_shape(
    summary: DatasetSummary, ok_by_class: dict[str, list[ImageRecord]]
) -> str | None:
    stats = {c: s for c, s in summary.per_class.items() if s.n_ok > 0}
    common = {c: s.most_common_size for c, s in stats.items() if s.most_common_size}
    if len(stats) < 2:
        return None  # nothing to compare
    # 1) One exact size dominates some classes and is (nearly) absent from others.
    size_counts = {
        c: Counter((r.width, r.height) for r in recs) for c, recs in ok_by_class.items() if recs
    }
    candidates = list(
        dict.fromkeys(  # in class order, so that ties resolve the same way each run
            (size.width, size.height) for size in common.values() if size.share >= MOSTLY
        )
    )
    best: tuple[int, str] | None = None
    for size in candidates:
        share = {c: size_counts[c][size] / stats[c].n_ok for c in stats}
        mostly = [c for c in stats if share[c] >= MOSTLY]
        rare = [c for c in stats if share[c] <= RARELY]
        if not mostly or not rare:
            continue
        hits_m = sum(size_counts[c][size] for c in mostly)
        hits_r = sum(size_counts[c][size] for c in rare)
        n_m = sum(stats[c].n_ok for c in mostly)
        n_r = sum(stats[c].n_ok for c in rare)
        text = (
            f"{_join(mostly)} {'is' if len(mostly) == 1 else 'are'} mostly exactly "
            f"{size[0]}x{size[1]} ({pct(hits_m / n_m)}), {_join(rare)} almost never "
            f"({pct(hits_r / n_r)}): image shape alone reveals the class — a format shortcut; "
            "resize every image the same way (or crop) and check the model is not using it."
        )
        if best is None or hits_m > best[0]:
            best = (hits_m, text)
    if best is not None:
        return best[1]
    # 2) Square against non-square.
    square = {c: s.square_share or 0.0 for c, s in stats.items()}
    mostly = [c for c in stats if square[c] >= MOSTLY]
    rare = [c for c in stats if square[c] <= RARELY]
    if mostly and rare:
        return (
            f"{_join(mostly)} images are mostly square "
            f"({', '.join(pct(square[c]) for c in mostly)}), {_join(rare)} almost never "
            f"({', '.join(pct(square[c]) for c in rare)}): image shape reveals the class — "
            "a format shortcut; resize every image the same way."
        )
    # 3) Aspect ratio or resolution differs.
    aspects = {c: s.median_aspect or math.nan for c, s in stats.items()}
    lo, hi = min(aspects, key=aspects.__getitem__), max(aspects, key=aspects.__getitem__)
    if aspects[hi] / aspects[lo] >= ASPECT_RATIO_GAP:
        return (
            f"Median aspect ratio (width/height) differs by class: {hi} {aspects[hi]:.2f} vs "
            f"{lo} {aspects[lo]:.2f}: shape hints at the class; resize every image the same way."
        )
    all_sizes = {size for counter in size_counts.values() for size in counter}
    if len(all_sizes) == 1:
        ((w, h),) = all_sizes
        return (
            f"All {summary.n_ok} readable images are {w}x{h}: size and shape carry no class "
            "information."
        )
    pixels = {c: (s.width.median or 0.0) * (s.height.median or 0.0) for c, s in stats.items()}
    lo, hi = min(pixels, key=pixels.__getitem__), max(pixels, key=pixels.__getitem__)
    if pixels[hi] / pixels[lo] >= RESOLUTION_GAP:
        return (
            f"Resolution differs by class (median {stats[hi].median_size} for {hi} vs "
            f"{stats[lo].median_size} for {lo}): sharpness or resizing artefacts may hint at "
            "the class."
        )
    return "Image sizes and shapes look alike across classes: no obvious format shortcut."


def _finding_not_ok(summary: DatasetSummary) -> str | None:
    bad = summary.not_ok
    if not bad.total:
        return None
    text = (
        f"{bad.total} of {summary.n_files} files cannot be read "
        f"({status_detail(bad.by_status)}): they are left out of every statistic and plot; "
        "remove or fix them before training."
    )
    lost = [c for c, s in summary.per_class.items() if s.n_ok == 0]
    if lost:
        text += f" {_join(lost)} {'has' if len(lost) == 1 else 'have'} no readable image at all."
    return text


def _finding_intensity(ok_by_class: dict[str, list[ImageRecord]]) -> str | None:
    means = {
        c: np.array([r.mean for r in recs], dtype=np.float64)
        for c, recs in ok_by_class.items()
        if len(recs) >= 2
    }
    if len(means) < 2:
        return None
    best: tuple[float, str, str] | None = None
    names = list(means)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            diff = abs(means[a].mean() - means[b].mean())
            pooled = math.sqrt((means[a].var() + means[b].var()) / 2.0)
            effect = diff / pooled if pooled > 0 else (math.inf if diff > 0 else 0.0)
            if diff >= INTENSITY_LEVELS and effect >= INTENSITY_EFFECT:
                if best is None or effect > best[0]:
                    hi, lo = (a, b) if means[a].mean() > means[b].mean() else (b, a)
                    best = (effect, hi, lo)
    if best is None:
        return None
    _, hi, lo = best
    return (
        f"Brightness differs by class: mean intensity {means[hi].mean():.0f} for {hi} vs "
        f"{means[lo].mean():.0f} for {lo} (0–255): exposure can act as a shortcut; normalise "
        "each image and check the model is not using it."
    )


def _finding_border(summary: DatasetSummary) -> str | None:
    borders = {
        c: s.median_border_fraction
        for c, s in summary.per_class.items()
        if s.median_border_fraction is not None
    }
    if len(borders) < 2:
        return None
    lo, hi = min(borders, key=borders.__getitem__), max(borders, key=borders.__getitem__)
    if borders[hi] - borders[lo] < BORDER_GAP:
        return None
    return (
        f"Black borders differ by class: a median {pct(borders[hi])} of the image area for {hi} "
        f"vs {pct(borders[lo])} for {lo}: crop borders or the model may learn them."
    )


def _finding_mode(summary: DatasetSummary) -> str | None:
    dominant = {c: next(iter(s.modes)) for c, s in summary.per_class.items() if s.modes}
    if len(set(dominant.values())) < 2:
        return None
    detail = ", ".join(f"{c}: {m}" for c, m in dominant.items())
    return (
        f"Files were saved differently per class (mostly {detail}): all are read as 8-bit "
        "grayscale, but compression or colour artefacts can still hint at the class."
    )


def findings_of(summary: DatasetSummary, ok_by_class: dict[str, list[ImageRecord]]) -> list[str]:
    candidates = [
        _finding_imbalance(summary),
        _finding_shape(summary, ok_by_class),
        _finding_not_ok(summary),
        _finding_intensity(ok_by_class),
        _finding_border(summary),
        _finding_mode(summary),
    ]
    return [text for text in candidates if text][:MAX_FINDINGS]
