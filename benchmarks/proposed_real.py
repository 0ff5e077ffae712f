"""Benchmark: the proposed model (second design) against fine-tuned MobileNetV2, on the Kaggle \
test split and on external-dev.

    # the CPU budget: 128 px, 15 epochs, seeds 0 1 2 (2 cores: about 2.5 h)
    uv run python benchmarks/proposed_real.py
    # on a GPU
    uv run python benchmarks/proposed_real.py --image-size 224 --epochs 25 --num-workers 8
    # the tables again, from the runs already in OUT
    uv run python benchmarks/proposed_real.py --summary-only

1. ``cxrlab compare`` of ``mobilenet_v2`` (ImageNet, fine-tuned: the best pretrained model of
   the comparison, on the Kaggle test split and on external-dev) and ``proposed`` under the same
   recipe and budget (the ``proposed`` preset is the ``finetune`` one: the two differ in their
   head alone), seed by seed. Each finished model is scored once on
   ``../shared/data/external-dev`` (``--external adult=...``); nothing is chosen on it. The
   operating point COVID19=0.95 is chosen on validation.
2. For each model, mean ± std over seeds on both sets (argmax decisions), each seed's bootstrap
   CI of external balanced accuracy, and McNemar's test of proposed against the baseline on
   both sets, seed by seed and on the seeds' averaged probabilities; then the issue's goals,
   met or not. Only seeds both models finished are compared. Writes OUT/summary.md.

The ablation of the design's parts (lung crop, equalisation, masking, patches, the two-stage
decision) is the frozen-feature screen, ``benchmarks/proposed_v2_explore.py``: a fine-tuned
3-seed comparison per part does not fit the CPU budget. Here the two models differ in one part.

Skips (exit 0, with a message) when ../shared is absent. Re-running reuses finished runs.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
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
from proposed_v1_real import headline, load

from cxrlab.progress import progress_bars

MODELS = ("mobilenet_v2", "proposed")
EXTERNAL = "adult"


@dataclass
class Seed:
    """One finished run's numbers on both sets."""

    kaggle: dict[str, float]
    external: dict[str, float]
    external_ci: tuple[float, float]
    kaggle_true: np.ndarray
    kaggle_pred: np.ndarray
    kaggle_probs: np.ndarray
    external_true: np.ndarray
    external_probs: np.ndarray


def read_seed(run_dir: Path) -> Seed:
    from cxrlab.artifacts import RunDir
    from cxrlab.evaluation.external import load_evaluation
    from cxrlab.evaluation.predictions_csv import read_predictions

    files = RunDir(run_dir)
    metrics = load(run_dir)
    classes = metrics.classes
    ext = load_evaluation(files.external(EXTERNAL).root)
    _, y, p = read_predictions(files.test_predictions, classes)
    _, ye, pe = read_predictions(files.external(EXTERNAL).predictions, classes)
    bal = ext.balanced_accuracy
    return Seed(
        kaggle=headline(metrics.test),
        external={
            "recall_NORMAL": ext.per_class["NORMAL"].recall.value,
            "recall_COVID19": ext.per_class["COVID19"].recall.value,
            "balanced_accuracy": bal.value,
            "normal_called_covid": ext.per_class["NORMAL"].called["COVID19"],
        },
        external_ci=(bal.low, bal.high),
        kaggle_true=y,
        kaggle_pred=p.argmax(1),
        kaggle_probs=p,
        external_true=ye,
        external_probs=pe,
    )


def finished(out: Path, seeds: list[int]) -> dict[int, dict[str, Seed]]:
    """Seeds both models finished, scored on external-dev too."""
    done = {}
    for seed in seeds:
        dirs = {m: out / "runs" / f"{m}-finetune-imagenet-s{seed}" for m in MODELS}
        if all((d / "external" / EXTERNAL / "predictions.csv").is_file() for d in dirs.values()):
            done[seed] = {m: read_seed(d) for m, d in dirs.items()}
    return done


def mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.3f}"


def summary(done: dict[int, dict[str, Seed]]) -> list[str]:
    from cxrlab.evaluation.metrics import mcnemar

    seeds = sorted(done)
    lines = [
        f"Seeds both models finished: {seeds}",
        "",
        "## Kaggle test split vs external-dev (mean ± std over seeds, argmax decisions)",
        "",
    ]
    lines += [
        "| model | seeds | Kaggle test accuracy | Kaggle test macro-F1 "
        "| Kaggle test COVID19 recall | external NORMAL recall | external COVID19 recall "
        "| external balanced accuracy "
        "| external NORMAL called COVID19 (of 400) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in MODELS:
        runs = [done[s][m] for s in seeds]
        k = [
            mean_std([r.kaggle[key] for r in runs])
            for key in ("accuracy", "macro_f1", "recall_COVID19")
        ]
        e = [
            mean_std([r.external[key] for r in runs])
            for key in ("recall_NORMAL", "recall_COVID19", "balanced_accuracy")
        ]
        called = " / ".join(str(r.external["normal_called_covid"]) for r in runs)
        lines.append(f"| {m} | {len(runs)} | " + " | ".join(k + e) + f" | {called} |")
    lines += ["", "External balanced accuracy per seed, bootstrap 95% CI:", ""]
    for m in MODELS:
        cells = [
            f"s{s} {done[s][m].external['balanced_accuracy']:.3f} "
            f"[{done[s][m].external_ci[0]:.3f}, {done[s][m].external_ci[1]:.3f}]"
            for s in seeds
        ]
        lines.append(f"- {m}: " + "; ".join(cells))
    lines += [
        "",
        "## McNemar's test, proposed vs mobilenet_v2 (films only one of the two gets right)",
        "",
    ]
    lines += [
        "| set | pairing | only proposed right | only baseline right | p |",
        "|---|---|---|---|---|",
    ]
    for name, truth, probs in (
        ("Kaggle test", "kaggle_true", "kaggle_probs"),
        ("external-dev", "external_true", "external_probs"),
    ):
        y = getattr(done[seeds[0]]["proposed"], truth)
        for s in seeds:
            r = mcnemar(
                y,
                getattr(done[s]["proposed"], probs).argmax(1),
                getattr(done[s]["mobilenet_v2"], probs).argmax(1),
            )
            lines.append(
                f"| {name} | seed {s} vs seed {s} | {r.only_a_right} | {r.only_b_right} | "
                f"{r.p_value:.2g} |"
            )
        if len(seeds) > 1:  # one prediction per film from the seeds' mean probability
            avg = {
                m: np.mean([getattr(done[s][m], probs) for s in seeds], axis=0).argmax(1)
                for m in MODELS
            }
            r = mcnemar(y, avg["proposed"], avg["mobilenet_v2"])
            lines.append(
                f"| {name} | seed-averaged probabilities | {r.only_a_right} | {r.only_b_right} | "
                f"{r.p_value:.2g} |"
            )
    lines += ["", "## The goals (issue 13)", ""] + goals(done)
    return lines


def abnormal_on_unseen_covid(out: Path, data: Path, seeds: list[int]) -> list[str]:
    """Share of the adult COVID19 *training* films each model calls abnormal (anything but NORMAL).

    The proposed model's abnormality decision never learnt from them (its stage-1 loss sees
    NORMAL and PNEUMONIA films only), so for it this is a free check on adult films; the
    baseline trained on them, so its share is only a reference.
    """
    from cxrlab.data.cache import CacheSpec, build_cache
    from cxrlab.data.datasets import CachedImageDataset, rows_for
    from cxrlab.data.discover import discover
    from cxrlab.data.split import load_split
    from cxrlab.evaluation.predict import predict_probs
    from cxrlab.models.checkpoint import load_model

    lines = [
        "",
        "## Abnormal calls on the adult COVID19 training films (stage 1 never learnt from them)",
        "",
        "| model | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|" + "---|" * len(seeds),
    ]
    index = discover(data)
    for m in MODELS:
        cells = []
        for seed in seeds:
            run = out / "runs" / f"{m}-finetune-imagenet-s{seed}"
            model, meta = load_model(run / "model.pt")
            cache = build_cache(index, CacheSpec.of_model(meta))
            covid = [
                item for item in load_split(run / "split.csv")["train"] if item[1] == "COVID19"
            ]
            probs = predict_probs(model, CachedImageDataset(cache, rows_for(cache, covid)))
            called = int((probs.argmax(1) != list(model.classes).index("NORMAL")).sum())
            cells.append(f"{called}/{len(probs)} ({called / len(probs):.3f})")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def shortcut_probes(out: Path, seeds: list[int]) -> list[str]:
    """The runs' own shortcut probes on the Kaggle test films (``robustness.json``): balanced
    accuracy with the lung fields hidden (mid-grey) and with only the lungs kept, mean ± std."""
    lines = [
        "",
        "## Shortcut probes on the Kaggle test films (chance 0.333; mean ± std over seeds)",
        "",
        "| model | lungs hidden: balanced accuracy | recall COVID19 / NORMAL / PNEUMONIA | "
        "only the lungs kept |",
        "|---|---|---|---|",
    ]
    from cxrlab.artifacts import RunDir
    from cxrlab.diagnostics import Robustness

    for m in MODELS:
        runs = [RunDir(out / "runs" / f"{m}-finetune-imagenet-s{s}") for s in seeds]
        found = [Robustness.load(run.robustness).variants for run in runs]
        hidden = [v["lungs-hidden"] for v in found]
        recall = " / ".join(
            f"{np.mean([h.recall[c] for h in hidden]):.3f}"
            for c in ("COVID19", "NORMAL", "PNEUMONIA")
        )
        lines.append(
            f"| {m} | {mean_std([h.balanced_accuracy for h in hidden])} | {recall} | "
            f"{mean_std([v['lungs-only'].balanced_accuracy for v in found])} |"
        )
    return lines


def goals(done: dict[int, dict[str, Seed]]) -> list[str]:
    from cxrlab.evaluation.metrics import mcnemar

    seeds = sorted(done)
    mean = {
        m: {
            k: float(np.mean([done[s][m].external[k] for s in seeds]))
            for k in done[seeds[0]][m].external
        }
        for m in MODELS
    }
    kaggle = {
        m: {
            k: float(np.mean([done[s][m].kaggle[k] for s in seeds]))
            for k in done[seeds[0]][m].kaggle
        }
        for m in MODELS
    }
    worst_p = max(
        mcnemar(
            done[s]["proposed"].external_true,
            done[s]["proposed"].external_probs.argmax(1),
            done[s]["mobilenet_v2"].external_probs.argmax(1),
        ).p_value
        if mean["proposed"]["balanced_accuracy"] > mean["mobilenet_v2"]["balanced_accuracy"]
        else 1.0
        for s in seeds
    )
    p, b = mean["proposed"], kaggle["proposed"]
    checks = [
        (
            "external-dev NORMAL recall ≥ 0.80",
            p["recall_NORMAL"] >= 0.80,
            f"{p['recall_NORMAL']:.3f}",
        ),
        (
            "external-dev COVID19 recall ≥ 0.85",
            p["recall_COVID19"] >= 0.85,
            f"{p['recall_COVID19']:.3f}",
        ),
        (
            "external-dev balanced accuracy ≥ 0.82",
            p["balanced_accuracy"] >= 0.82,
            f"{p['balanced_accuracy']:.3f}",
        ),
        (
            "better than the baseline on external-dev, McNemar p < 0.05 on every seed",
            worst_p < 0.05,
            f"{p['balanced_accuracy']:.3f} vs {mean['mobilenet_v2']['balanced_accuracy']:.3f}, "
            f"largest p {worst_p:.2g}",
        ),
        (
            "Kaggle test macro-F1 ≥ baseline mean − 0.01",
            b["macro_f1"] >= kaggle["mobilenet_v2"]["macro_f1"] - 0.01,
            f"{b['macro_f1']:.3f} vs {kaggle['mobilenet_v2']['macro_f1']:.3f}",
        ),
        (
            "Kaggle test COVID19 recall ≥ 0.90",
            b["recall_COVID19"] >= 0.90,
            f"{b['recall_COVID19']:.3f}",
        ),
    ]
    return ["| goal (proposed, mean over seeds) | measured | met |", "|---|---|---|"] + [
        f"| {g} | {v} | {'yes' if ok else '**no**'} |" for g, ok, v in checks
    ]


def main() -> int:
    parser = real_data_parser(__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/proposed-real"))
    parser.add_argument(
        "--external",
        type=Path,
        default=DEFAULT_EXTERNAL,
        help="external-dev (scored once per finished model)",
    )
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument(
        "--summary-only",
        action="store_true",
        help="No training: the tables from the runs already in --out.",
    )
    args = parser.parse_args()
    if shared_missing(args.data, args.weights):
        return 0
    if not args.external.is_dir():
        print(f"skipped: {args.external} is absent (this benchmark needs external-dev)")
        return 0
    print("machine:", machine())
    started = time.perf_counter()
    if not args.summary_only:
        cxrlab(
            [
                "compare",
                str(args.data),
                "--models",
                *MODELS,
                "--mode",
                "finetune",
                *(f"--weights={m}={args.weights}" for m in MODELS),
                *(item for seed in args.seeds for item in ("--seeds", str(seed))),
                "--out",
                str(args.out),
                "--image-size",
                str(args.image_size),
                "--epochs",
                str(args.epochs),
                "--num-workers",
                str(args.num_workers),
                "--no-progress",
                "--external",
                f"{EXTERNAL}={args.external}",
                "--target-recall",
                "COVID19=0.95",
            ]
        )
    done = finished(args.out, args.seeds)
    if not done:
        print(f"no seed has both models finished in {args.out}")
        return 1
    title = (
        f"# proposed vs fine-tuned mobilenet_v2 ({args.image_size} px, {args.epochs} epochs, "
        f"seeds {sorted(done)})"
    )
    lines = (
        summary(done)
        + shortcut_probes(args.out, sorted(done))
        + abnormal_on_unseen_covid(args.out, args.data, sorted(done))
    )
    text = (
        "\n".join(
            [
                title,
                "",
                *lines,
                "",
                f"Wall time of this command: {time.perf_counter() - started:.0f} s",
            ]
        )
        + "\n"
    )
    (args.out / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    with progress_bars(False):  # the log keeps the numbers only
        sys.exit(main())
