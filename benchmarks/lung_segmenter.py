"""Benchmark: the learned lung segmenter on every class of the Kaggle test split, external-dev
and adult-extra: how many films get a plausible two-lung mask, the heuristic beside it, contact
sheets to look at, and the time per 256 px film.

    uv run python benchmarks/lung_segmenter.py [--out runs/benchmarks/lungs] [--sheet-films 48]

Each film is loaded as cxrlab's cache stores it at 256 px (``load_square(path, CacheSpec(256))``:
squashed) and segmented by :func:`cxrlab.lungs.default_segmenter` (the shipped weights, or
``$CXRLAB_LUNG_SEGMENTER``). "found" is :func:`cxrlab.lungs.plausible` (the stated check: two
pieces, one in each half, each >= 2% of the film, together 8-60%). Beside it, the heuristic's own
verdict (:func:`cxrlab.lungs.heuristic.lung_field_mask`) and, on the films both found, the Dice
overlap of the two masks (a weak reference: the heuristic is right on about four in five of its
found films by eye). ``OUT/sheet-<set>-<class>.png``: ``--sheet-films`` evenly spaced films of
each class with the learned masks' outlines (green: found, orange: not), to look at; the sheets
show dataset films, so they stay in OUT and are not committed. Time: batch-1 segmentation of
the first 60 Kaggle test films (after 5 untimed), median ms, with the default threads and with
one. Writes ``OUT/found.md``. A missing data folder is skipped with a message.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from cxrlab.data.cache import CacheSpec, load_square
from cxrlab.lungs import default_segmenter, heuristic
from cxrlab.lungs.segment import dice
from cxrlab.reporting.contact_sheet import contact_sheet

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SETS = {
    "kaggle-test": DATA / "chest-xray-covid19-pneumonia" / "Data" / "test",
    "external-dev": DATA / "external-dev",
    "adult-extra": DATA / "adult-extra",
}
SUFFIXES = {".jpg", ".jpeg", ".png"}
SIZE = 256


def class_films(folder: Path) -> dict[str, list[Path]]:
    return {
        c.name: sorted(f for f in c.iterdir() if f.suffix.lower() in SUFFIXES)
        for c in sorted(p for p in folder.iterdir() if p.is_dir())
    }


def latency(films: list[np.ndarray]) -> float:
    segmenter = default_segmenter()
    for film in films[:5]:
        segmenter.masks([film])
    times = []
    for film in films[5:65]:
        started = time.perf_counter()
        segmenter.masks([film])
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/lungs"))
    parser.add_argument("--sheet-films", type=int, default=48)
    args = parser.parse_args()
    segmenter = default_segmenter()
    args.out.mkdir(parents=True, exist_ok=True)
    spec = CacheSpec(SIZE)
    lines = [
        f"Segmenter: {segmenter.label}; films at {SIZE} px (squashed).",
        "",
        "| set | class | films | found (learned) | found (heuristic) | Dice learned vs heuristic, "
        "both found |",
        "|---|---|---|---|---|---|",
    ]
    timing: list[np.ndarray] = []
    for name, folder in SETS.items():
        if not folder.is_dir():
            print(f"skipped {name}: {folder} not found")
            continue
        for cls, paths in class_films(folder).items():
            films = [load_square(p, spec) for p in paths]
            if name == "kaggle-test" and len(timing) < 65:
                timing += films[: 65 - len(timing)]
            masks, found = segmenter.masks(np.stack(films))
            old = [heuristic.lung_field_mask(f) for f in films]
            old_found = np.array([ok for _, ok in old])
            both = found & old_found
            agree = [dice(masks[i], old[i][0]) for i in np.flatnonzero(both)]
            lines.append(
                f"| {name} | {cls} | {len(films)} | {found.mean():.1%} ({found.sum()}) | "
                f"{old_found.mean():.1%} | "
                f"{np.mean(agree) if agree else float('nan'):.3f} |"
            )
            print(lines[-1], flush=True)
            picks = np.linspace(0, len(films) - 1, min(args.sheet_films, len(films)))
            picks = picks.round().astype(int)
            contact_sheet(
                [films[i] for i in picks],
                [masks[i] for i in picks],
                [bool(found[i]) for i in picks],
                [paths[i].name for i in picks],
                args.out / f"sheet-{name}-{cls}.png",
                title=f"{name} {cls}: {len(picks)} of {len(films)} films, {segmenter.label}",
            )
    if timing:
        threads = torch.get_num_threads()
        default_ms = latency(timing)
        torch.set_num_threads(1)
        one_ms = latency(timing)
        torch.set_num_threads(threads)
        lines += [
            "",
            f"Time per {SIZE} px film, batch 1, median of 60: {default_ms:.1f} ms with {threads} "
            f"threads, {one_ms:.1f} ms with 1 thread (segmentation, cleaning and the check).",
        ]
        print(lines[-1])
    (args.out / "found.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out / 'found.md'} and the contact sheets")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
