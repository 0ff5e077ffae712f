"""Benchmark: `cxrlab serve` on a real-data model: how many films the OOD check flags, and latency.

    uv run python benchmarks/serve_real.py                # train (or reuse) the model, then both
    uv run python benchmarks/serve_real.py --model RUN    # any finished run folder
    uv run python benchmarks/serve_real.py --skip-latency # only the OOD flag rates

1. The model: a frozen ImageNet MobileNetV2 with a linear head at 128 px on the Kaggle data (the
   one pretrained network available offline; minutes on 2 CPU cores), with the operating point
   COVID19=0.95 chosen on validation. ``--model RUN`` serves another finished run instead.
2. The OOD check (``cxrlab ood RUN --data DATA``): fitted on the run's train films, threshold at the
   99th percentile of its validation films' scores. Then the share of films it flags: the run's
   validation films (about 1% by construction), the Kaggle test split (same sources as training),
   and ../shared/data/external-dev (adult films from other hospitals), per class. External-dev is
   scored once (``cxrlab evaluate``, so that the model card and the page say how the model
   transfers) and never used to choose anything.
3. Latency: ``benchmarks/serve_latency.py RUN --film FILM`` (PyTorch and ONNX Runtime,
   concurrency 1 and 8), sending one of the run's own Kaggle test films.

Prints the exact commands, the machine and the tables (OUT/summary.md); skips (exit 0, with a
message) when the data is absent.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_real import (
    DEFAULT_EXTERNAL,
    cxrlab,
    machine,
    real_data_parser,
    shared_missing,
)

from cxrlab.artifacts import RunDir
from cxrlab.progress import progress_bars


def ensure_model(args: argparse.Namespace) -> Path:
    """The run folder to serve: ``--model``, or the frozen MobileNetV2 trained (or reused) here."""
    if args.model is not None:
        return args.model
    run = args.out / "mobilenet_v2-frozen"
    if not RunDir(run).is_finished:
        options = ["--model", "mobilenet_v2", "--preset", "frozen", "--weights", str(args.weights)]
        options += ["--image-size", "128", "--target-recall", "COVID19=0.95", "--no-diagnose"]
        resume = ["--resume"] if RunDir(run).config.is_file() else []
        cxrlab(["train", str(args.data), *options, "--out", str(run), "--no-progress", *resume])
    return run


def called(predictions: Path, root: Path, classes: list[str]) -> dict[Path, bool]:
    """Per film of a predictions file (paths relative to ``root``): whether its argmax is right."""
    from cxrlab.evaluation.predictions_csv import read_predictions

    paths, y_true, probs = read_predictions(predictions, classes)
    return {root / path: bool(ok) for path, ok in zip(paths, probs.argmax(axis=1) == y_true)}


def flag_rates(run: Path, data: Path, external: Path | None) -> list[list[str]]:
    """Per set (the validation and test split per class, each external-dev class): films, how
    many the check flags, and how many of the films the model calls wrongly it flags."""
    from cxrlab.data.split import load_split
    from cxrlab.evaluation.ood import load_stats_for, score_files
    from cxrlab.evaluation.predict import expand_image_paths, load_predictor

    files = RunDir(run)
    predictor = load_predictor(files.model, "cpu")
    stats, why = load_stats_for(predictor.model, files.model)
    if stats is None:
        raise SystemExit(why)
    classes = predictor.classes
    right = called(files.val_predictions, data, classes)
    right |= called(files.test_predictions, data, classes)
    split = load_split(files.split)
    sets: dict[str, list[Path]] = {}
    for subset in ("val", "test"):
        for path, label in split.get(subset, []):
            sets.setdefault(f"Kaggle {subset} {label}", []).append(data / path)
    if external is not None:
        right |= called(files.external("adult").predictions, external, classes)
        for folder in sorted(p for p in external.iterdir() if p.is_dir()):
            sets[f"external-dev {folder.name}"] = expand_image_paths([folder])
    rows = []
    for name, films in sets.items():
        scored = score_files(predictor.model, predictor.spec, stats, films)
        wrong = np.array([not right[path] for path in scored.paths], dtype=bool)
        flagged = scored.flagged
        rows.append(
            [
                name,
                str(len(flagged)),
                f"{int(flagged.sum())} ({flagged.mean():.1%})",
                str(int(wrong.sum())),
                f"{int((flagged & wrong).sum())}" if wrong.any() else "–",
            ]
        )
        print("  " + " | ".join(rows[-1]), flush=True)
    return rows


def latency(run: Path, data: Path, requests: int) -> None:
    """``benchmarks/serve_latency.py`` on this run, sending one of its own Kaggle test films."""
    from cxrlab.data.split import load_split

    film = data / load_split(RunDir(run).split)["test"][0][0]
    command = [sys.executable, str(Path(__file__).with_name("serve_latency.py")), str(run)]
    command += ["--film", str(film), "--requests", str(requests)]
    print("$ " + shlex.join(command), flush=True)
    subprocess.run(command, check=True)


def table(headers: list[str], rows: list[list[str]]) -> str:
    from cxrlab.fileio import markdown_table

    return "\n".join(markdown_table(headers, rows))


def main() -> int:
    parser = real_data_parser(__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/serve-real"))
    parser.add_argument("--model", type=Path, help="a finished run folder (default: train one)")
    parser.add_argument("--external", type=Path, default=DEFAULT_EXTERNAL)
    parser.add_argument("--requests", type=int, default=200, help="timed requests per setting")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-ood", action="store_true")
    args = parser.parse_args()
    if shared_missing(args.data, args.weights):
        return 0
    print("$ " + shlex.join([sys.executable, *sys.argv]))
    print(f"machine: {machine()}; OMP threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    started = time.perf_counter()
    run = ensure_model(args)
    lines = [f"# cxrlab serve on {run}", ""]
    if not args.skip_ood:
        from cxrlab.evaluation.ood import stats_path

        if not stats_path(RunDir(run).model).is_file():
            cxrlab(["ood", str(run), "--data", str(args.data), "--no-progress"])
        external = args.external if args.external.is_dir() else None
        if external is not None and not RunDir(run).external("adult").metrics.is_file():
            # scored once, so that the model card (and the page) state how it transfers
            cxrlab(["evaluate", str(run), str(external), "--name", "adult", "--no-progress"])
        rates = flag_rates(run, args.data, external)
        lines += [
            "## Films flagged unlike the training films (OOD check)",
            "",
            table(["set", "films", "flagged", "called wrongly", "of those flagged"], rates),
            "",
        ]
    lines.append(f"wall time {time.perf_counter() - started:.0f} s")
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.md").write_text(text)
    print(text)
    if not args.skip_latency:
        latency(run, args.data, args.requests)
    return 0


if __name__ == "__main__":
    with progress_bars(False):  # the log keeps the numbers only
        sys.exit(main())
