"""The traps of added sources, measured on the runs of ``sources_real.py`` (its ``traps``
stage calls :func:`traps`).

1. Framing. adult-extra's NORMAL films are teaching files, tightly framed around the chest;
   external-dev's NORMAL films (RSNA) show more of the body. A model that learnt "teaching-file
   framing = NORMAL" calls more external-dev NORMAL films NORMAL once they are cropped to a
   tighter frame (the central 76% of each side), and fewer of the held-out teaching films once
   they are framed wider (a 12% border of their own edge intensity on each side). A model that
   reads anatomy changes little either way. Both are scored with ``evaluate_model`` into the
   run's ``external/`` folder (diagnostics on transformed films: nothing is chosen on them).
2. Lungs hidden, per source: the robustness probe (:mod:`cxrlab.evaluation.robustness`, the
   heuristic lung fields) on each source's test films on their own: the recall of each class
   the source holds with the lung fields hidden against as they are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CROP = 0.76  # share of each side kept: tighter framing
BORDER = 0.12  # share of each side added: wider framing


def _write_variant(films: list[Path], out: Path, how: str) -> Path:
    """``out/NORMAL/<stem>.png`` for each film: as it is (``same``), cropped tighter (``crop``)
    or framed wider (``wider``)."""
    from cxrlab.data.reader import read_grayscale

    folder = out / "NORMAL"
    if folder.is_dir() and len(list(folder.glob("*.png"))) == len(films):
        return out
    folder.mkdir(parents=True, exist_ok=True)
    for film in films:
        pixels = read_grayscale(film)
        h, w = pixels.shape
        if how == "same":
            pass
        elif how == "crop":
            dh, dw = round(h * (1 - CROP) / 2), round(w * (1 - CROP) / 2)
            pixels = pixels[dh : h - dh, dw : w - dw]
        else:
            edge = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
            bh, bw = round(h * BORDER), round(w * BORDER)
            canvas = np.full((h + 2 * bh, w + 2 * bw), int(np.median(edge)), np.uint8)
            canvas[bh : bh + h, bw : bw + w] = pixels
            pixels = canvas
        Image.fromarray(pixels).save(folder / f"{film.stem}.png")
    return out


def _test_films(run_dir: Path, source: str) -> list[tuple[str, str]]:
    import csv

    with (run_dir / "split.csv").open(newline="") as handle:
        return [
            (row["path"], row["class"])
            for row in csv.DictReader(handle)
            if row["subset"] == "test" and row.get("source") == source
        ]


def framing(runs: list[Path], out: Path, external: Path, sources: dict[str, Path]) -> list[str]:
    from cxrlab.evaluation.external import evaluate_model

    ext_normal = sorted((external / "NORMAL").glob("*"))
    teaching = [
        sources["teaching"] / p.partition(":")[2] for p, _ in _test_films(runs[0], "teaching")
    ]
    sets = {
        "extdev-normal": external,
        "extdev-normal-cropped": _write_variant(ext_normal, out / "extdev-normal-cropped", "crop"),
        "teaching-test": _write_variant(teaching, out / "teaching-test", "same"),
        "teaching-test-wider": _write_variant(teaching, out / "teaching-test-wider", "wider"),
    }
    lines = [
        "## Framing: NORMAL recall as the films are, and reframed",
        "",
        "| run | external-dev NORMAL | cropped tighter | teaching test NORMAL | framed wider |",
        "|---|---|---|---|---|",
    ]
    for run_dir in runs:
        recall = {}
        for name, folder in sets.items():
            target = run_dir / "external" / f"trap-{name}"
            metrics = target / "metrics.json"
            if metrics.is_file():
                from cxrlab.evaluation.external import load_evaluation

                ev = load_evaluation(target)
            else:
                ev, _ = evaluate_model(run_dir, folder, name=f"trap-{name}")
            recall[name] = ev.per_class["NORMAL"].recall.value
        lines.append(
            f"| {run_dir.name} | {recall['extdev-normal']:.3f} | "
            f"{recall['extdev-normal-cropped']:.3f} | {recall['teaching-test']:.3f} | "
            f"{recall['teaching-test-wider']:.3f} |"
        )
    return lines


def lungs_hidden(runs: list[Path], data: Path, sources: dict[str, Path]) -> list[str]:
    from cxrlab.data.cache import CacheSpec
    from cxrlab.data.discover import discover_sources
    from cxrlab.evaluation.robustness import robustness_eval
    from cxrlab.models.checkpoint import load_model

    lines = [
        "## Lungs hidden, per source (test films; recall as they are → with the lungs hidden)",
        "",
        "| run | source | films | recall (as they are → lungs hidden) |",
        "|---|---|---|---|",
    ]
    index = discover_sources(data, sources, source_name="kaggle")
    for run_dir in runs:
        model, meta = load_model(run_dir / "model.pt")
        spec = CacheSpec.of_model(meta)
        classes = list(model.classes)
        for source in ("kaggle", *sources):
            films = _test_films(run_dir, source)
            paths = [index.path_of(p) for p, _ in films]
            labels = np.array([classes.index(c) for _, c in films])
            found = robustness_eval(model, paths, labels, classes, spec)
            plain, hidden = found.variants[spec.resize], found.variants["lungs-hidden"]
            held = [c for k, c in enumerate(classes) if (labels == k).any()]
            cells = ", ".join(f"{c} {plain.recall[c]:.3f} → {hidden.recall[c]:.3f}" for c in held)
            lines.append(f"| {run_dir.name} | {source} | {len(films)} | {cells} |")
    return lines


def traps(out: Path, external: Path, sources: dict[str, Path]) -> list[str]:
    """Both traps on the seed-0 runs of ``out`` with ``--balance source`` at F = 0 and 1."""
    from compare_real import DEFAULT_DATA

    runs = sorted(
        d
        for d in (out / "runs").glob("*")
        if (d / "metrics.json").is_file() and ("-f0-source-" in d.name or "-f1-source-" in d.name)
    )
    seed0 = [d for d in runs if d.name.endswith("-s0")]  # the CPU budget: seed 0 of each
    lines = framing(seed0, out / "traps", external, sources)
    return lines + [""] + lungs_hidden(seed0, DEFAULT_DATA, sources)
