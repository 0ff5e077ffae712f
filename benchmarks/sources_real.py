"""Benchmark: what adult films from other sources buy and cost: Kaggle only against Kaggle +
adult-extra, on the Kaggle test split, adult-extra's held-out test films and external-dev.

    uv run python benchmarks/sources_real.py frozen        # the frozen screen and learning curve
    uv run python benchmarks/sources_real.py finetune --models proposed --seeds 0
    uv run python benchmarks/sources_real.py traps          # framing probe, lungs hidden per source
    uv run python benchmarks/sources_real.py summary        # the tables, from the runs in OUT

The sources. ``../shared/data/adult-extra`` holds adult NORMAL films from one teaching set and
adult PNEUMONIA films from NIH; each class comes from one origin, so the benchmark lays them out
as two sources (``OUT/data/teaching``, ``OUT/data/nih``: copies, grouped by the MANIFEST's
``class``/origin) and trains with ``--source-name kaggle --add-source teaching=...
--add-source nih=...``. Each added source gets a test part held out once (20% per class,
``--source-split-seed 0``), the same films for every run.

Every run is ``cxrlab train`` at 128 px on the audited data (the audit runs over all three
sources first, ``OUT/audit``), from the ImageNet MobileNetV2 weights in ../shared/weights.
``--source-train-fraction F`` uses F of the added sources' remaining films to train and
validate; F = 0 is the Kaggle-only model (its training films are exactly the Kaggle ones, and
adult-extra's test part is scored). Each finished model is scored once on
``../shared/data/external-dev`` (``cxrlab evaluate ... --name adult``); nothing is chosen on it.

Grid: ``frozen`` runs both models (mobilenet_v2, proposed) at F = 0 and 1 with ``--balance
weights`` and ``source``, and mobilenet_v2 at F = 0.25 and 0.5 with ``--balance source`` (the
learning curve), over head seeds 0 1 2; ``finetune`` runs the named models at F = 0 and 1 with
``--balance source`` (``--balance`` to change), 15 epochs. ``--crop lungs`` trains the same
grid on films cut to their lung box (``cxrlab train --crop lungs``; runs named ``...+lungs``;
the learning curve's F = 0.25 and 0.5 are left out), and the summary adds McNemar of each
cropped run against its whole-film twin. ``summary`` writes OUT/summary.md:
mean ± std over seeds per configuration, McNemar on external-dev of F = 1 against F = 0 per
model, balance and seed. Skips (exit 0, with a message) when ../shared is absent. Re-running
reuses finished runs.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_real import (
    DEFAULT_EXTERNAL,
    SHARED,
    cxrlab,
    machine,
    real_data_parser,
    shared_missing,
)

ADULT_EXTRA = SHARED / "data" / "adult-extra"
ORIGIN = {"NORMAL": "teaching", "PNEUMONIA": "nih"}  # adult-extra: each class from one origin
EXTERNAL = "adult"


@dataclass(frozen=True)
class Config:
    model: str
    mode: str  # frozen or finetune
    fraction: float  # --source-train-fraction
    balance: str
    seed: int
    crop: str = "none"  # --crop

    @property
    def name(self) -> str:
        crop = "" if self.crop == "none" else f"+{self.crop}"
        return f"{self.model}-{self.mode}-f{self.fraction:g}-{self.balance}{crop}-s{self.seed}"

    @classmethod
    def of_name(cls, name: str) -> Config:
        model, mode, fraction, balance, seed = name.rsplit("-", 4)
        balance, _, crop = balance.partition("+")
        return cls(model, mode, float(fraction[1:]), balance, int(seed[1:]), crop or "none")

    @property
    def group(self) -> tuple[str, str, float, str, str]:
        return self.model, self.mode, self.fraction, self.balance, self.crop


def lay_out_sources(out: Path) -> dict[str, Path]:
    """adult-extra's films as one folder per origin (``OUT/data/<origin>/<CLASS>/``), copied."""
    folders = {}
    with (ADULT_EXTRA / "MANIFEST.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            origin = ORIGIN[row["class"]]
            target = out / "data" / origin / row["class"] / Path(row["file"]).name
            if not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes((ADULT_EXTRA / row["file"]).read_bytes())
            folders[origin] = out / "data" / origin
    return folders


def source_args(sources: dict[str, Path]) -> list[str]:
    args = ["--source-name", "kaggle"]
    for name, folder in sources.items():
        args += ["--add-source", f"{name}={folder}"]
    return args


def grid(
    stage: str, models: list[str], seeds: list[int], balance: str | None, crop: str = "none"
) -> list[Config]:
    """The runs of a stage; with a crop, the learning curve's F = 0.25 and 0.5 are left out."""
    configs = []
    for seed in seeds:
        if stage == "frozen":
            for model in models:
                for chosen in [balance] if balance else ["weights", "source"]:
                    configs += [Config(model, "frozen", f, chosen, seed, crop) for f in (0.0, 1.0)]
            if "mobilenet_v2" in models and crop == "none":
                configs += [
                    Config("mobilenet_v2", "frozen", f, balance or "source", seed)
                    for f in (0.25, 0.5)
                ]
        else:
            configs += [
                Config(m, "finetune", f, balance or "source", seed, crop)
                for m in models
                for f in (0.0, 1.0)
            ]
    return configs


def train(config: Config, args, sources: dict[str, Path]) -> Path:
    run_dir = args.out / "runs" / config.name
    if not (run_dir / "metrics.json").is_file():
        preset = "frozen" if config.mode == "frozen" else (
            "proposed" if config.model == "proposed" else "finetune"
        )  # fmt: skip
        command = ["train", str(args.data), *source_args(sources)]
        command += ["--model", config.model, "--weights", str(args.weights), "--preset", preset]
        command += ["--image-size", str(args.image_size), "--seed", str(config.seed)]
        command += ["--source-train-fraction", f"{config.fraction:g}"]
        command += ["--balance", config.balance, "--manifest", str(args.out / "audit")]
        command += ["--out", str(run_dir), "--no-progress", "--no-diagnose"]
        command += ["--crop", config.crop] if config.crop != "none" else []
        if config.mode == "finetune":
            command += ["--epochs", str(args.epochs)]
        if (run_dir / "checkpoints" / "last.ckpt").is_file():
            command.append("--resume")
        cxrlab(command)
    if not (run_dir / "external" / EXTERNAL / "metrics.json").is_file():
        cxrlab(["evaluate", str(run_dir), str(args.external), "--name", EXTERNAL, "--no-progress"])
    return run_dir


@dataclass
class Numbers:
    """One finished run on the three sets."""

    kaggle: dict[str, float]
    teaching_normal: float
    nih_pneumonia: float
    external: dict[str, float]
    external_true: np.ndarray
    external_pred: np.ndarray


def read_run(run_dir: Path) -> Numbers:
    from cxrlab.artifacts import RunDir
    from cxrlab.evaluation.external import load_evaluation
    from cxrlab.evaluation.predictions_csv import read_predictions
    from cxrlab.records import RunMetrics

    metrics = RunMetrics.load(RunDir(run_dir).metrics)
    kaggle = metrics.per_source["kaggle"]
    ev = load_evaluation(RunDir(run_dir).external(EXTERNAL).root)
    _, y, p = read_predictions(RunDir(run_dir).external(EXTERNAL).predictions, metrics.classes)
    return Numbers(
        kaggle={
            "macro_f1": kaggle.macro_f1,
            "balanced_accuracy": kaggle.balanced_accuracy.value,
            "recall_COVID19": kaggle.per_class["COVID19"].recall.value,
        },
        teaching_normal=metrics.per_source["teaching"].per_class["NORMAL"].recall.value,
        nih_pneumonia=metrics.per_source["nih"].per_class["PNEUMONIA"].recall.value,
        external={
            "recall_NORMAL": ev.per_class["NORMAL"].recall.value,
            "recall_COVID19": ev.per_class["COVID19"].recall.value,
            "balanced_accuracy": ev.balanced_accuracy.value,
            "normal_as_covid": ev.per_class["NORMAL"].called["COVID19"],
            "normal_as_pneumonia": ev.per_class["NORMAL"].called["PNEUMONIA"],
            "covid_as_normal": ev.per_class["COVID19"].called["NORMAL"],
        },
        external_true=y,
        external_pred=p.argmax(1),
    )


def mean_std(values: list[float], digits: int = 3) -> str:
    spread = np.std(values, ddof=1) if len(values) > 1 else 0.0
    return f"{np.mean(values):.{digits}f} ± {spread:.{digits}f}"


def summary(out: Path) -> list[str]:
    from cxrlab.evaluation.metrics import mcnemar

    runs: dict[Config, Numbers] = {}
    for run_dir in sorted((out / "runs").glob("*")):
        if (run_dir / "external" / EXTERNAL / "metrics.json").is_file():
            runs[Config.of_name(run_dir.name)] = read_run(run_dir)
    groups: dict[tuple, list[Config]] = {}
    for config in sorted(
        runs, key=lambda c: (c.mode, c.model, c.crop, c.balance, c.fraction, c.seed)
    ):
        groups.setdefault(config.group, []).append(config)
    lines = [
        "## Kaggle only (F = 0) against Kaggle + adult-extra (mean ± std over seeds)",
        "",
        "F: share of adult-extra's training films used (0 = Kaggle only). Kaggle test: the Kaggle"
        " test split's films. teaching / nih: adult-extra's held-out test films (54 NORMAL / 76 "
        "PNEUMONIA). external-dev: 400 adult NORMAL + 400 adult COVID19 films from elsewhere, "
        "scored once per model. Counts are per seed.",
        "",
        "| model | mode | crop | balance | F | seeds | Kaggle macro-F1 | Kaggle COVID19 recall "
        "| teaching NORMAL recall | nih PNEUMONIA recall | ext NORMAL recall "
        "| ext COVID19 recall | ext balanced accuracy | ext NORMAL → COVID19 "
        "| ext NORMAL → PNEUMONIA | ext COVID19 → NORMAL |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (model, mode, fraction, balance, crop), configs in groups.items():
        n = [runs[c] for c in configs]
        counts = [
            " / ".join(str(int(r.external[key])) for r in n)
            for key in ("normal_as_covid", "normal_as_pneumonia", "covid_as_normal")
        ]
        cells = [
            mean_std([r.kaggle["macro_f1"] for r in n]),
            mean_std([r.kaggle["recall_COVID19"] for r in n]),
            mean_std([r.teaching_normal for r in n]),
            mean_std([r.nih_pneumonia for r in n]),
            mean_std([r.external["recall_NORMAL"] for r in n]),
            mean_std([r.external["recall_COVID19"] for r in n]),
            mean_std([r.external["balanced_accuracy"] for r in n]),
            *counts,
        ]
        seeds = ",".join(str(c.seed) for c in configs)
        lines.append(
            f"| {model} | {mode} | {crop} | {balance} | {fraction:g} | {seeds} | "
            + " | ".join(cells)
            + " |"
        )
    lines += [
        "",
        "## McNemar on external-dev: with all of adult-extra (F = 1) against Kaggle only (F = 0)",
        "",
        "| model | mode | crop | balance | seed | only with-extra right | only Kaggle-only right "
        "| p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for config, with_extra in runs.items():
        if config.fraction != 1.0:
            continue
        base = replace(config, fraction=0.0)
        if base not in runs:
            continue
        r = mcnemar(with_extra.external_true, with_extra.external_pred, runs[base].external_pred)
        lines.append(
            f"| {config.model} | {config.mode} | {config.crop} | {config.balance} | "
            f"{config.seed} | {r.only_a_right} | {r.only_b_right} | {r.p_value:.2g} |"
        )
    lines += [
        "",
        "## McNemar on external-dev: the lung crop against the whole film (same run otherwise)",
        "",
        "| model | mode | balance | F | seed | only cropped right | only whole film right | p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for config, cropped in runs.items():
        base = replace(config, crop="none")
        if config.crop == "none" or base not in runs:
            continue
        r = mcnemar(cropped.external_true, cropped.external_pred, runs[base].external_pred)
        lines.append(
            f"| {config.model} | {config.mode} | {config.balance} | {config.fraction:g} | "
            f"{config.seed} | {r.only_a_right} | {r.only_b_right} | {r.p_value:.2g} |"
        )
    return lines


def main() -> int:
    parser = real_data_parser(__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("frozen", "finetune", "traps", "summary"))
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/sources-real"))
    parser.add_argument("--external", type=Path, default=DEFAULT_EXTERNAL)
    parser.add_argument("--models", nargs="+", default=["mobilenet_v2", "proposed"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--balance", choices=("weights", "source", "sampler"), default=None)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--crop", choices=("none", "lungs"), default="none")
    parser.add_argument("--again", action="store_true", help="traps: measure again")
    args = parser.parse_args()
    if shared_missing(args.data, args.weights) or not ADULT_EXTRA.is_dir():
        if not ADULT_EXTRA.is_dir():
            print(f"SKIP: adult-extra not found at {ADULT_EXTRA}")
        return 0
    print("machine:", machine())
    sources = lay_out_sources(args.out)
    if args.stage in ("frozen", "finetune"):
        if not (args.out / "audit" / "audit.json").is_file():
            audit = ["audit", str(args.data), *source_args(sources)]
            cxrlab([*audit, "--out", str(args.out / "audit"), "--no-progress"])
        for config in grid(args.stage, args.models, args.seeds, args.balance, args.crop):
            train(config, args, sources)
    if args.stage == "traps":
        from sources_traps import traps

        done = args.out / "traps.md"
        lines = done.read_text().splitlines() if done.is_file() and not args.again else []
        if not lines:
            lines = traps(args.out, args.external, sources)
            done.write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    lines = summary(args.out)
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
