"""Benchmark: the first proposed design (``proposed_v1``) against the best pretrained baseline \
on the real data, with an ablation.

    # the CPU budget (2 cores: about 2.5 h from scratch)
    uv run python benchmarks/proposed_v1_real.py
    # on a GPU
    uv run python benchmarks/proposed_v1_real.py --image-size 224 --epochs 25 --num-workers 8

1. ``cxrlab compare`` of ``mobilenet_v2`` (ImageNet, fine-tuned: the best pretrained model of
   the comparison) and ``proposed_v1`` under the same budget (image size, epochs, patience,
   split), seeds 0 1 2 each. The report has the table with bootstrap CIs, McNemar's test for
   every pair, robustness and Grad-CAM for every run.
2. The ablation, seed 0, one component added at a time: the baseline; + EMA of weights;
   + the two-scale GeM head (``proposed_v1_noeq``); + histogram equalisation (``proposed_v1``).
   Test-time augmentation, a rejected part, is measured on validation only (with and without,
   same checkpoints): that is the split that decided it.
3. Prints mean ± std over seeds of every headline metric, McNemar's test of the proposed
   model against the baseline with the seeds' predictions pooled (the seeds' mean probability per
   image) and seed by seed, and the ablation table; writes OUT/summary.md.

Skips (exit 0, with a message) when ../shared is absent. Re-running reuses finished runs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_real import cxrlab, machine, real_data_parser, shared_missing

from cxrlab.artifacts import RunDir
from cxrlab.diagnostics import GradcamSummary, Robustness
from cxrlab.progress import progress_bars
from cxrlab.records import ClassificationMetrics, RunMetrics

HEADLINE = (
    ("accuracy", "accuracy"),
    ("macro_f1", "macro-F1"),
    ("recall_COVID19", "COVID19 recall"),
)
GOALS = {"accuracy": 0.98, "macro_f1": 0.97, "recall_COVID19": 0.97}


def headline(test: ClassificationMetrics) -> dict[str, float]:
    return {
        "accuracy": test.accuracy,
        "macro_f1": test.macro_f1,
        "recall_COVID19": test.per_class["COVID19"].recall,
    }


def load(run_dir: Path) -> RunMetrics:
    return RunMetrics.load(run_dir / "metrics.json")


def main() -> int:
    parser = real_data_parser(__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/proposed-v1-real"))
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--no-ablation", action="store_true", help="Only the seeds comparison.")
    args = parser.parse_args()
    if shared_missing(args.data, args.weights):
        return 0
    print("machine:", machine())
    started = time.perf_counter()
    budget = [
        "--image-size",
        str(args.image_size),
        "--epochs",
        str(args.epochs),
        "--num-workers",
        str(args.num_workers),
        "--no-progress",
    ]
    seeds = [item for seed in args.seeds for item in ("--seeds", str(seed))]
    cxrlab(
        [
            "compare",
            str(args.data),
            "--models",
            "proposed_v1",
            "mobilenet_v2",
            "--mode",
            "finetune",
            "--weights",
            f"mobilenet_v2={args.weights}",
            "--weights",
            f"proposed_v1={args.weights}",
            *seeds,
            "--out",
            str(args.out),
            *budget,
        ]
    )
    lines = [
        f"# Proposed vs best pretrained baseline ({args.image_size} px, {args.epochs} epochs, "
        f"seeds {args.seeds})",
        "",
    ]
    runs = {
        name: [args.out / "runs" / f"{name}-finetune-imagenet-s{s}" for s in args.seeds]
        for name in ("mobilenet_v2", "proposed_v1")
    }
    lines += seed_summary(runs)
    lines += pooled_mcnemar(runs)
    lines += validation_tta(runs["proposed_v1"], args.data)
    lines += diagnostics_summary(runs)
    if not args.no_ablation:
        ablation_dir = args.out / "ablation"
        manifest = args.out / "audit" / "manifest.csv"
        steps = [
            ("+ EMA of weights", "mobilenet_v2", "ema"),
            ("+ two-scale GeM head", "proposed_v1_noeq", "gem-head"),
        ]
        for _label, model, folder in steps:
            if not (ablation_dir / folder / "metrics.json").is_file():
                cxrlab(
                    [
                        "train",
                        str(args.data),
                        "--model",
                        model,
                        "--preset",
                        "proposed_v1",
                        "--weights",
                        str(args.weights),
                        "--seed",
                        str(args.seeds[0]),
                        "--manifest",
                        str(manifest),
                        "--out",
                        str(ablation_dir / folder),
                        *budget,
                        "--no-diagnose",
                    ]
                )
        lines += ablation_table(
            runs["mobilenet_v2"][0],
            ablation_dir / "ema",
            ablation_dir / "gem-head",
            runs["proposed_v1"][0],
        )
    lines.append(f"\nWall time of this command: {time.perf_counter() - started:.0f} s")
    text = "\n".join(lines) + "\n"
    (args.out / "summary.md").write_text(text)
    print(text)
    return 0


def seed_summary(runs: dict[str, list[Path]]) -> list[str]:
    lines = [
        "## Test metrics over seeds (mean ± std)",
        "",
        "| model | seeds | " + " | ".join(h for _, h in HEADLINE) + " | best val macro-F1 |",
        "|---|---|" + "---|" * (len(HEADLINE) + 1),
    ]
    for name, dirs in runs.items():
        values = [headline(load(d).test) for d in dirs]
        val = [load(d).best_val_macro_f1 for d in dirs]
        cells = [
            f"{np.mean([v[k] for v in values]):.4f} ± "
            f"{np.std([v[k] for v in values], ddof=1) if len(values) > 1 else 0:.4f}"
            for k, _ in HEADLINE
        ]
        lines.append(
            f"| {name} | {len(dirs)} | "
            + " | ".join(cells)
            + f" | {np.mean(val):.4f} ± {np.std(val, ddof=1) if len(val) > 1 else 0:.4f} |"
        )
    no_tta = [load(d).test_without_tta for d in runs["proposed_v1"]]
    no_tta = [t for t in no_tta if t is not None]
    if no_tta:  # the same checkpoints tested without test-time augmentation
        values = [headline(t) for t in no_tta]
        cells = [
            f"{np.mean([v[k] for v in values]):.4f} ± "
            f"{np.std([v[k] for v in values], ddof=1) if len(values) > 1 else 0:.4f}"
            for k, _ in HEADLINE
        ]
        lines.append(
            f"| proposed, same checkpoints without TTA | {len(values)} | "
            + " | ".join(cells)
            + " | |"
        )
    goals = ", ".join(f"{h} ≥ {GOALS[k]}" for k, h in HEADLINE)
    lines += ["", f"Goals: {goals}."]
    return lines


def pooled_mcnemar(runs: dict[str, list[Path]]) -> list[str]:
    from cxrlab.evaluation.metrics import mcnemar
    from cxrlab.evaluation.predictions_csv import read_predictions

    classes = load(runs["proposed_v1"][0]).classes
    lines = [
        "",
        "## McNemar's test, proposed vs mobilenet_v2 (test split)",
        "",
        "| pairing | only proposed right | only baseline right | p |",
        "|---|---|---|---|",
    ]
    probs = {}  # (seeds, images, classes) per model, each file read once
    for name, dirs in runs.items():
        read = [read_predictions(d / "test_predictions.csv", classes) for d in dirs]
        y_true = read[0][1]
        probs[name] = np.stack([p for _, _, p in read])
    for i in range(min(len(p) for p in probs.values())):
        result = mcnemar(
            y_true, probs["proposed_v1"][i].argmax(1), probs["mobilenet_v2"][i].argmax(1)
        )
        lines.append(
            f"| seed {i} vs seed {i} | {result.only_a_right} | {result.only_b_right} | "
            f"{result.p_value:.3g} |"
        )
    # one prediction per image from the seeds' mean probability
    result = mcnemar(
        y_true, probs["proposed_v1"].mean(0).argmax(1), probs["mobilenet_v2"].mean(0).argmax(1)
    )
    lines.append(
        f"| seed-averaged probabilities | {result.only_a_right} | {result.only_b_right} | "
        f"{result.p_value:.3g} |"
    )
    return lines


def validation_tta(runs: list[Path], data: Path) -> list[str]:
    """Validation macro-F1 and COVID19 recall of each run's kept checkpoint with and without TTA
    (the split that may decide whether TTA stays in the recipe)."""
    from cxrlab.data.cache import CacheSpec, build_cache
    from cxrlab.data.datasets import CachedImageDataset, rows_for
    from cxrlab.data.discover import discover
    from cxrlab.data.split import load_split
    from cxrlab.evaluation.metrics import classification_metrics
    from cxrlab.evaluation.predict import predict_probs
    from cxrlab.models.checkpoint import load_model
    from cxrlab.models.tta import with_tta

    lines = [
        "",
        "## Test-time augmentation on validation",
        "",
        "| run | TTA | val macro-F1 | val COVID19 recall |",
        "|---|---|---|---|",
    ]
    for run in runs:
        model, meta = load_model(run / "model.pt")
        cache = build_cache(discover(data), CacheSpec.of_model(meta))
        rows = rows_for(cache, load_split(run / "split.csv")["val"])
        for tta in (False, True):
            m = classification_metrics(
                cache.labels[rows],
                predict_probs(with_tta(model, tta), CachedImageDataset(cache, rows)),
                list(model.classes),
            )
            lines.append(
                f"| {run.name} | {'on' if tta else 'off'} | {m.macro_f1:.4f} | "
                f"{m.per_class['COVID19'].recall:.3f} |"
            )
    return lines


def diagnostics_summary(runs: dict[str, list[Path]]) -> list[str]:
    """Robustness (accuracy per variant) and Grad-CAM shares, mean over seeds."""
    lines = ["", "## Robustness and Grad-CAM (mean over seeds)", ""]
    variants = ("squash", "pad", "rotate+10", "rotate-10", "darken")
    lines += [
        "| model | " + " | ".join(variants) + " | lung share | lung area | border share |",
        "|---|" + "---|" * (len(variants) + 3),
    ]
    for name, dirs in runs.items():
        rob = [r for d in dirs if (r := Robustness.load_optional(RunDir(d).robustness))]
        cam = [c for d in dirs if (c := GradcamSummary.load_optional(RunDir(d).gradcam))]
        if not rob or not cam:
            lines.append(f"| {name} | not computed |")
            continue
        acc = [f"{np.mean([r.variants[v].accuracy for r in rob]):.4f}" for v in variants]
        shares = [
            f"{np.mean([c.lung_share for c in cam]):.3f}",
            f"{np.mean([c.lung_area for c in cam]):.3f}",
            f"{np.mean([c.border_share for c in cam]):.3f}",
        ]
        lines.append(f"| {name} | " + " | ".join(acc + shares) + " |")
    return lines


def ablation_table(baseline: Path, ema: Path, gem: Path, full: Path) -> list[str]:
    def row(label: str, metrics: RunMetrics) -> str:
        h = headline(metrics.test)
        return (
            f"| {label} | {metrics.best_val_macro_f1:.4f} | "
            + " | ".join(f"{h[k]:.4f}" for k, _ in HEADLINE)
            + " |"
        )

    b, e, g, f = (load(p) for p in (baseline, ema, gem, full))
    return [
        "",
        "## Ablation (seed 0, each row adds one part)",
        "",
        "| model | best val macro-F1 | " + " | ".join(h for _, h in HEADLINE) + " |",
        "|---|---|" + "---|" * len(HEADLINE),
        row("mobilenet_v2 fine-tuned (baseline)", b),
        row("+ EMA of weights", e),
        row("+ two-scale GeM head (proposed_v1_noeq)", g),
        row("+ histogram equalisation (proposed)", f),
    ]


if __name__ == "__main__":
    with progress_bars(False):  # the log keeps the numbers only
        sys.exit(main())
