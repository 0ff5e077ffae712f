"""Benchmark: how often the heuristic lung segmentation finds the lung fields, per class.

    uv run python benchmarks/lung_segmentation.py [--sizes 128 224] [--before REV]
        [--limit N] [--montage PNG] [--montage-films K]

Every test film of the Kaggle COVID-19/pneumonia set (``../shared/data/chest-xray-covid19-
pneumonia/Data/test/<CLASS>/``) and every film of the external adult set
(``../shared/data/external-dev/<CLASS>/``) is loaded as cxrlab's cache stores it
(``load_square(path, CacheSpec(size))``: squashed to S x S) and segmented with
:func:`cxrlab.lungs.heuristic.lung_field_mask`. Success is the function's own ``ok``: both
lungs found and plausible, rather than the two-ellipse template. The table gives, per set,
class and size, the share of films segmented and the mean time per film; the numbers of the
current heuristic are in the docstring of :mod:`cxrlab.lungs.heuristic`.

``--before REV`` (default ``640a732``, the commit before the segmentation was reworked) adds
a "before" column: the ``lungs.py`` of that git revision, read with ``git show`` into a
throw-away module and run on the same films (no copy of the old code is kept here);
``--before none`` leaves it out, as does a missing git or revision. ``--montage PNG`` draws
``--montage-films`` evenly spaced films of each class with their current masks, to check by
eye that "found" means lungs. A missing data folder is skipped with a message.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np

from cxrlab.data.cache import CacheSpec, load_square
from cxrlab.lungs import heuristic as lungs

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SETS = {
    "kaggle test": DATA / "chest-xray-covid19-pneumonia" / "Data" / "test",
    "external-dev": DATA / "external-dev",
}
LUNGS_PY = "src/cxrlab/lungs/heuristic.py"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
Segment = Callable[[np.ndarray], tuple[np.ndarray, bool]]


def old_module(revision: str) -> ModuleType | None:
    """``lungs.py`` of a git revision as a module, or None (with a message) where unavailable."""
    command = ["git", "show", f"{revision}:{LUNGS_PY}"]
    try:
        shown = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
        source = shown.stdout
    except (OSError, subprocess.CalledProcessError):
        print(f"(no 'before' column: cannot read {LUNGS_PY} at git revision {revision})")
        return None
    path = Path(tempfile.mkdtemp()) / "lungs_before.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("lungs_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def films(folder: Path, limit: int | None) -> dict[str, list[Path]]:
    """The image files of each class folder, sorted by name (the first ``limit`` of each)."""
    return {
        c.name: sorted(f for f in c.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)[:limit]
        for c in sorted(p for p in folder.iterdir() if p.is_dir())
    }


def segment_all(segment: Segment, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, float]:
    """(masks, ok per film, seconds per film) of ``segment`` on the images."""
    started = time.perf_counter()
    results = [segment(image) for image in images]
    seconds = (time.perf_counter() - started) / max(len(images), 1)
    return np.stack([m for m, _ in results]), np.array([ok for _, ok in results]), seconds


Row = tuple[str, np.ndarray, np.ndarray, np.ndarray]  # title, films, masks, ok


def draw_montage(rows: list[Row], path: Path, columns: int = 10) -> None:
    """Films with their mask outline (green: found, red: template), ``columns`` a line, a new
    line for each class."""
    from scipy import ndimage

    from cxrlab.plotting import new_figure, save_figure

    lines = [
        (name if start == 0 else "", *(a[start : start + columns] for a in (images, masks, oks)))
        for name, images, masks, oks in rows
        for start in range(0, len(images), columns)
    ]
    figure = new_figure(1.5 * columns, 1.6 * len(lines))
    axes = figure.subplots(len(lines), columns, squeeze=False)
    for r, (name, images, masks, oks) in enumerate(lines):
        for c in range(columns):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(images):
                continue
            rgb = np.repeat(images[c][..., None], 3, axis=2).copy()
            edge = ndimage.binary_dilation(masks[c] & ~ndimage.binary_erosion(masks[c]))
            rgb[edge] = (0, 255, 0) if oks[c] else (255, 0, 0)
            ax.imshow(rgb)
            if c == 0 and name:
                ax.set_title(name, fontsize=7, loc="left")
    save_figure(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--before", default="640a732", help="git revision to compare, or 'none'")
    parser.add_argument("--limit", type=int, default=None, help="at most this many films a class")
    parser.add_argument("--montage", type=Path, default=None, help="PNG of films with their masks")
    parser.add_argument("--montage-films", type=int, default=12, help="films a class in the PNG")
    args = parser.parse_args()

    before = None if args.before.lower() == "none" else old_module(args.before)
    present = {name: folder for name, folder in SETS.items() if folder.is_dir()}
    for name, folder in SETS.items():
        if name not in present:
            print(f"skipped {name}: {folder} not found (place ../shared/data beside the repo)")
    if not present:
        sys.exit(0)

    header = f"{'set':<13} {'class':<10} {'size':>4} {'films':>5} {'after':>6} {'ms/film':>7}"
    print(header + (f" {'before':>6} {'ms/film':>7}" if before else ""))
    montage: list[Row] = []
    for set_name, folder in present.items():
        for class_name, paths in films(folder, args.limit).items():
            for size in args.sizes:
                images = [load_square(path, CacheSpec(size)) for path in paths]
                masks, oks, seconds = segment_all(lungs.lung_field_mask, images)
                line = f"{set_name:<13} {class_name:<10} {size:>4} {len(images):>5}"
                line += f" {oks.mean():>6.1%} {1000 * seconds:>7.1f}"
                if before:
                    _, old_oks, old_seconds = segment_all(before.lung_field_mask, images)
                    line += f" {old_oks.mean():>6.1%} {1000 * old_seconds:>7.1f}"
                print(line, flush=True)
                if args.montage and size == args.sizes[-1]:
                    count = min(args.montage_films, len(images))
                    pick = np.linspace(0, len(images) - 1, count).astype(int)
                    title = f"{set_name} {class_name} {size}px"
                    montage.append((title, np.stack(images)[pick], masks[pick], oks[pick]))
    if args.montage:
        draw_montage(montage, args.montage)
        print(f"montage: {args.montage}")


if __name__ == "__main__":
    main()
