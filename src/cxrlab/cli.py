"""The ``cxrlab`` command line: a thin layer over the library.

Every command prints a one-line ``error: ...`` naming the file or option at fault and exits
with status 2 on bad input; ``cxrlab --debug COMMAND`` shows the traceback instead.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from cxrlab import __version__
from cxrlab.errors import CxrlabError
from cxrlab.fileio import display_name, read_text

app = typer.Typer(
    name="cxrlab",
    help="Chest X-ray classification with CNNs: audit and analyse data, compare pretrained models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

DataArg = Annotated[
    Path,
    typer.Argument(help="Dataset folder (Kaggle layout Data/train/<CLASS>, or <CLASS>/ folders)."),
]
WorkersOpt = Annotated[int, typer.Option("--workers", min=1, help="Decoding processes.")]
NoProgressOpt = Annotated[bool, typer.Option("--no-progress", help="Hide progress bars.")]


def shown(value: object) -> str:
    """A name or message for the terminal: undecodable file-name bytes visible (``\\xe9``) and
    Rich markup escaped, so any file or class name prints as it is."""
    return escape(display_name(str(value)))


def default_out(data: Path, what: str) -> Path:
    return Path("runs") / (data.resolve().name or "data") / what


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        console.print(f"cxrlab {__version__}")
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        console.print(ctx.get_help())


@app.command()
def download(
    out: Annotated[Path, typer.Option("--out", help="Where to put the dataset.")] = Path(
        "data/chest-xray-covid19-pneumonia"
    ),
    handle: Annotated[
        str, typer.Option("--handle", help="Kaggle dataset handle.")
    ] = "prashant268/chest-xray-covid19-pneumonia",
    force: Annotated[bool, typer.Option("--force", help="Download again even if cached.")] = False,
) -> None:
    """Download the Kaggle dataset with kagglehub (needs internet)."""
    from cxrlab.data.download import download_dataset

    index = download_dataset(out, handle, force=force)
    console.print(
        f"Downloaded to {shown(index.root)}: {len(index.samples)} files, "
        f"classes {shown(', '.join(index.classes))}"
    )


@app.command("demo-data")
def demo_data(
    out: Annotated[Path, typer.Argument(help="Folder to write the synthetic dataset into.")] = Path(
        "data/demo"
    ),
    train_per_class: Annotated[int, typer.Option(help="Training images per class.")] = 40,
    test_per_class: Annotated[int, typer.Option(help="Test images per class.")] = 15,
    size: Annotated[int, typer.Option(help="Approximate image side in pixels.")] = 128,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    defects: Annotated[
        bool,
        typer.Option(help="Add a few broken, duplicate and leaked files for the audit to find."),
    ] = True,
) -> None:
    """Write a small synthetic chest X-ray dataset (Kaggle layout) that needs no download."""
    from cxrlab.data.synthetic import make_demo_dataset

    root = make_demo_dataset(
        out,
        train_per_class=train_per_class,
        test_per_class=test_per_class,
        size=size,
        seed=seed,
        defects=defects,
    )
    console.print(f"Demo dataset in {shown(root)}")


def print_audit(result, out: Path) -> None:  # noqa: ANN001 (AuditResult, imported lazily)
    s = result.summary
    table = Table(title=f"Audit of {shown(result.root)}", show_header=True)
    table.add_column("check")
    table.add_column("result", justify="right")
    table.add_row("files", str(s["files"]))
    table.add_row("kept per split", ", ".join(f"{k} {v}" for k, v in s["kept_per_split"].items()))
    table.add_row("unreadable", ", ".join(f"{k} {v}" for k, v in s["unreadable"].items()) or "0")
    table.add_row(f"too small (< {result.config.min_size} px)", str(s["too_small"]))
    table.add_row(
        "exact duplicates: groups (files)",
        f"{s['exact_duplicate_groups']} ({s['exact_duplicate_files']})",
    )
    table.add_row(
        "near duplicates: groups (files)",
        f"{s['near_duplicate_groups']} ({s['near_duplicate_files']})",
    )
    table.add_row(
        "LEAKAGE across splits: groups (files)", f"{s['leakage_groups']} ({s['leakage_files']})"
    )
    table.add_row("label conflicts (groups)", str(s["label_conflict_groups"]))
    table.add_row("excluded (see manifest)", str(s["status"]["excluded"]))
    console.print(table)
    if s["leakage_groups"]:
        leaks = [g for g in result.groups if g.cross_split]
        lines = [" <-> ".join(g.members) for g in leaks[:10]]
        more = f"\n... and {len(leaks) - 10} more (audit.md)" if len(leaks) > 10 else ""
        console.print(
            Panel(
                shown("\n".join(lines)) + more,
                title=f"LEAKAGE: {len(leaks)} image(s) in two splits; train copies excluded",
                border_style="red",
            )
        )
    if s["label_conflict_groups"]:
        conflicts = [g for g in result.groups if g.label_conflict]
        lines = [
            " <-> ".join(f"{m} ({c})" for m, c in zip(g.members, g.classes)) for g in conflicts[:10]
        ]
        console.print(
            Panel(
                shown("\n".join(lines)),
                title="Same image with different labels",
                border_style="yellow",
            )
        )
    sc = result.shortcut
    if sc is not None:
        style = {"high": "red", "moderate": "yellow", "low": "green"}[sc.level]
        body = (
            "Format-only classifier (size, aspect, file size, intensity, border), "
            f"{sc.folds}-fold CV on train:\n"
            f"accuracy {sc.cv_accuracy:.1%} (majority class {sc.majority_rate:.1%}), "
            f"balanced accuracy {sc.cv_balanced_accuracy:.1%} (chance {sc.chance_balanced:.1%})"
        )
        if sc.test_accuracy is not None:
            body += f"\ntrained on train, scored on test: accuracy {sc.test_accuracy:.1%}"
        if sc.explanation:
            body += "\n" + "\n".join(f"- {line}" for line in sc.explanation)
        console.print(
            Panel(shown(body), title=f"Shortcut check: {sc.level.upper()}", border_style=style)
        )
    console.print(
        f"Manifest, report and plots in {shown(out)}/ "
        "(audit.md, manifest.csv, duplicates.png, shortcuts.png)"
    )


@app.command()
def audit(
    data: DataArg,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder \\[default: runs/<DATA>/audit].")
    ] = None,
    min_size: Annotated[
        int, typer.Option("--min-size", min=1, help="Smallest acceptable image side in pixels.")
    ] = 64,
    near_threshold: Annotated[
        float,
        typer.Option(
            "--near-threshold",
            min=0.5,
            max=1.0,
            help="64x64 NCC above which two images are copies.",
        ),
    ] = 0.98,
    workers: WorkersOpt = 2,
    no_progress: NoProgressOpt = False,
) -> None:
    """Find unreadable files, duplicates, leakage across splits and format shortcuts (read-only)."""
    from cxrlab.data.audit import AuditConfig, run_audit
    from cxrlab.data.discover import discover
    from cxrlab.outputs import check_output_folder

    started = time.perf_counter()
    index = discover(data)
    out = out or default_out(data, "audit")
    check_output_folder(out, data)
    config = AuditConfig(min_size=min_size, near_threshold=near_threshold, workers=workers)
    result = run_audit(index, out, config, progress=not no_progress)
    print_audit(result, out)
    console.print(f"audit took {time.perf_counter() - started:.1f} s")


@app.command()
def analyze(
    data: DataArg,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder \\[default: runs/<DATA>/analysis].")
    ] = None,
    samples_per_class: Annotated[
        int, typer.Option(min=1, help="Images per class in the sample grid.")
    ] = 8,
    seed: Annotated[int, typer.Option(help="Seed for picking sample images.")] = 0,
    workers: WorkersOpt = 2,
    no_progress: NoProgressOpt = False,
) -> None:
    """Class balance, image sizes, intensities and sample images, as plots and a summary."""
    from cxrlab.data.analyze import analyze_dataset, summary_table
    from cxrlab.data.discover import discover
    from cxrlab.data.scan import scan_dataset
    from cxrlab.outputs import check_output_folder

    started = time.perf_counter()
    index = discover(data)
    out = out or default_out(data, "analysis")
    check_output_folder(out, data)
    records = scan_dataset(index, workers=workers, progress=not no_progress)
    summary = analyze_dataset(index, records, out, samples_per_class=samples_per_class, seed=seed)
    console.print(summary_table(summary))
    for finding in summary.get("findings", []):
        console.print(f"- {shown(finding)}")
    console.print(f"Plots and summary in {shown(out)}/ (summary.md, summary.json, *.png)")
    console.print(f"analyze took {time.perf_counter() - started:.1f} s")


@app.command()
def cache(
    data: DataArg,
    image_size: Annotated[
        int, typer.Option("--image-size", help="Side of the cached square images.")
    ] = 224,
    resize: Annotated[
        str,
        typer.Option(
            "--resize", help="squash (stretch to square) or pad (keep aspect, pad black)."
        ),
    ] = "squash",
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir", help="Cache root \\[default: $CXRLAB_CACHE or ~/.cache/cxrlab]."
        ),
    ] = None,
    workers: WorkersOpt = 2,
    no_progress: NoProgressOpt = False,
) -> None:
    """Decode and resize every image once into a memory-mapped cache that training reads."""
    from cxrlab.data.cache import CacheSpec, build_cache, default_cache_root
    from cxrlab.data.discover import discover
    from cxrlab.outputs import check_output_folder

    started = time.perf_counter()
    check_output_folder(cache_dir or default_cache_root(), data, option="--cache-dir")
    built = build_cache(
        discover(data),
        CacheSpec(image_size, resize),
        cache_root=cache_dir,
        workers=workers,
        progress=not no_progress,
    )
    console.print(
        f"Cache {shown(built.folder)}: {len(built.paths)} images at {image_size}px ({resize}); "
        f"{built.rebuilt} decoded now, {len(built.errors)} unreadable; "
        f"{time.perf_counter() - started:.1f} s"
    )
    for _path, error in list(built.errors.items())[:20]:
        err_console.print(f"skipped {shown(error)}", highlight=False, soft_wrap=True)


@app.command()
def split(
    data: DataArg,
    out: Annotated[
        Path, typer.Option("--out", help="CSV file to write (path,class,subset).")
    ] = Path("split.csv"),
    val_fraction: Annotated[
        float, typer.Option("--val-fraction", help="Share of train held out for validation.")
    ] = 0.15,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    manifest: Annotated[
        Path | None,
        typer.Option(
            "--manifest", help="Audit manifest (or its folder): excluded files are left out."
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Overwrite an existing --out that is not a cxrlab split file."
        ),
    ] = False,
) -> None:
    """Carve a stratified, seeded validation split from train and write it as CSV."""
    from cxrlab.data.datasets import make_split
    from cxrlab.data.discover import discover
    from cxrlab.data.split import save_split
    from cxrlab.outputs import check_output

    index = discover(data)
    check_output(out, kind="split", inputs=[data], force=force)
    subsets = make_split(index, val_fraction=val_fraction, seed=seed, manifest=manifest)
    save_split(out, subsets)
    console.print(
        f"Split written to {shown(out)}: " + ", ".join(f"{k} {len(v)}" for k, v in subsets.items())
    )


@app.command()
def demo(
    out: Annotated[Path, typer.Argument(help="Folder for the demo data and every output.")] = Path(
        "runs/demo"
    ),
    no_progress: NoProgressOpt = False,
) -> None:
    """The quick start: synthetic data, its audit and analysis, then AlexNet vs ResNet-18 (from
    scratch, 64 px, 4 epochs) trained, tested and compared in one HTML report."""
    data = out / "data"
    demo_data(data)
    audit(data, out=out / "audit", no_progress=no_progress)
    analyze(data, out=out / "analysis", no_progress=no_progress)
    compare(
        data,
        models=["alexnet", "resnet18"],
        mode="finetune",
        no_pretrained=True,
        image_size=64,
        epochs=4,
        out=out / "compare",
        manifest=out / "audit",
        cache_dir=out / "cache",
        no_progress=no_progress,
    )


# Training options shared by `train` and `compare` (None = the preset's value).
ImageSizeOpt = Annotated[
    int | None, typer.Option("--image-size", help="Image side in pixels \\[preset: 224].")
]
ResizeOpt = Annotated[
    str,
    typer.Option("--resize", help="squash (stretch to square) or pad (keep aspect, pad black)."),
]
EpochsOpt = Annotated[
    int | None, typer.Option("--epochs", min=1, help="Training epochs (finetune/scratch runs).")
]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", min=1, help="Batch size.")]
LrOpt = Annotated[
    float | None,
    typer.Option(
        "--lr", help="Learning rate of the new head (finetune: the backbone gets a tenth of it)."
    ),
]
OptimizerOpt = Annotated[str | None, typer.Option("--optimizer", help="adamw or sgd.")]
BalanceOpt = Annotated[
    str | None,
    typer.Option(
        "--balance",
        help="Class imbalance: weights (weighted loss), sampler (balanced batches) or none.",
    ),
]
AugmentOpt = Annotated[
    bool | None,
    typer.Option(
        "--augment/--no-augment",
        help="X-ray augmentations (rotation, shift, scale, brightness, contrast).",
    ),
]
FreezeBnOpt = Annotated[
    bool | None,
    typer.Option(
        "--freeze-bn/--train-bn", help="Keep BatchNorm statistics fixed when fine-tuning."
    ),
]
EmaOpt = Annotated[
    float | None,
    typer.Option(
        "--ema-decay", help="Keep an EMA of the weights with this decay (0: off) \\[preset]."
    ),
]
TtaOpt = Annotated[
    bool | None,
    typer.Option(
        "--tta/--no-tta", help="Test-time augmentation when testing and predicting \\[preset]."
    ),
]
TargetRecallOpt = Annotated[
    str | None,
    typer.Option(
        "--target-recall",
        help=(
            "CLASS=RECALL, e.g. COVID19=0.95: a decision threshold chosen on the validation split "
            "for that recall; sensitivity and specificity are reported on test and external sets."
        ),
    ),
]
SeedOpt = Annotated[
    int, typer.Option("--seed", help="Random seed (split, initialisation, order, augmentation).")
]
ValFractionOpt = Annotated[
    float, typer.Option("--val-fraction", help="Share of train held out for validation.")
]
ManifestOpt = Annotated[
    Path | None,
    typer.Option("--manifest", help="Audit manifest (or its folder): excluded files are left out."),
]
NoPretrainedOpt = Annotated[
    bool,
    typer.Option("--no-pretrained", help="Start from random weights (models without --weights)."),
]
PrecisionOpt = Annotated[
    str,
    typer.Option(
        "--precision", help="auto (bf16-mixed on GPU, 32 on CPU), 32-true, 16-mixed, bf16-mixed."
    ),
]
AcceleratorOpt = Annotated[str, typer.Option("--accelerator", help="auto, cpu or gpu.")]
DevicesOpt = Annotated[str, typer.Option("--devices", help="Devices per node (a number or auto).")]
NumNodesOpt = Annotated[
    int,
    typer.Option(
        "--num-nodes",
        min=1,
        help="Machines (DDP; run the same command on each, with NODE_RANK and MASTER_ADDR set).",
    ),
]
StrategyOpt = Annotated[
    str,
    typer.Option(
        "--strategy", help="Lightning strategy: auto, ddp (one process per device), ddp_spawn, ..."
    ),
]
AugmentOnOpt = Annotated[
    str | None,
    typer.Option(
        "--augment-on",
        help="loader (per image, in the DataLoader) or device (batched, on the GPU).",
    ),
]
ChannelsLastOpt = Annotated[
    bool, typer.Option("--channels-last", help="Train in NHWC memory format.")
]
LoaderWorkersOpt = Annotated[
    int, typer.Option("--num-workers", min=0, help="DataLoader worker processes.")
]
LoggerOpt = Annotated[
    str,
    typer.Option("--logger", help="Extra logger besides CSV: csv (none), tensorboard or mlflow."),
]
CacheDirOpt = Annotated[
    Path | None,
    typer.Option("--cache-dir", help="Cache root \\[default: $CXRLAB_CACHE or ~/.cache/cxrlab]."),
]


def _run_options(**options: object) -> dict[str, object]:
    """Config overrides from CLI options (``None`` = keep the preset's value)."""
    return {k: v for k, v in options.items() if v is not None}


def _parse_weights(items: list[str], models: list[str]) -> dict[str, str]:
    """``--weights NAME=PATH`` (or a bare PATH when there is one model) into ``{model: path}``."""
    parsed: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            if len(models) != 1:
                raise CxrlabError(f"--weights {item}: with several models write MODEL=PATH")
            name, path = models[0], item
        if not Path(path).expanduser().is_file():
            raise CxrlabError(f"--weights: {path}: file not found")
        parsed[name] = path
    return parsed


def _parse_external(items: list[str]) -> dict[str, Path]:
    """``--external NAME=PATH`` (repeatable) into ``{name: folder}``."""
    parsed: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise CxrlabError(
                f"--external {item}: write NAME=PATH, "
                "e.g. --external adult=../shared/data/external-dev"
            )
        if name in parsed:
            raise CxrlabError(f"--external {item}: the name {name} is given twice")
        if not Path(path).expanduser().is_dir():
            raise CxrlabError(f"--external {item}: {path} is not a folder")
        parsed[name] = Path(path).expanduser()
    return parsed


def _print_result(result) -> None:  # noqa: ANN001 (RunResult)
    from cxrlab.evaluation.metrics import Interval

    m = result.metrics
    test = m.get("test")
    if not test:
        console.print(f"Run {shown(result.run_dir)}: no test split, nothing tested")
        return
    ci = m["intervals"]
    table = Table(
        title=(
            f"Test ({test['n']} images), checkpoint of epoch {m['best_epoch'] + 1} "
            f"(val macro-F1 {m['best_val_macro_f1']:.3f})"
        )
    )
    table.add_column("metric")
    table.add_column("value [95% CI]", justify="right")
    fmt = lambda k: str(Interval(**ci[k]))  # noqa: E731
    table.add_row("accuracy", fmt("accuracy"))
    table.add_row("macro-F1", fmt("macro_f1"))
    for name in m["classes"]:
        table.add_row(f"recall {shown(name)}", fmt(f"recall_{name}"))
    table.add_row("balanced accuracy", f"{test['balanced_accuracy']:.3f}")
    table.add_row("macro AUC", f"{test['macro_auc']:.3f}")
    console.print(table)
    print_calibration(m)
    console.print(
        f"Run folder {shown(result.run_dir)} "
        "(model.pt, metrics.json, test_predictions.csv, history.csv)"
    )


def print_calibration(metrics: dict) -> None:
    """The temperature with ECE before and after, and the operating point's rates, of a run."""
    calibration, point = metrics.get("calibration"), metrics.get("operating_point")
    if calibration:
        sets = [name for name in ("val", "test") if calibration.get(name)]
        eces = "; ".join(
            f"{name} {calibration[name]['ece_before']:.3f} -> {calibration[name]['ece_after']:.3f}"
            for name in sets
        )
        console.print(
            f"Calibration: temperature {calibration['temperature']:.3f} (fitted on validation); "
            f"ECE {eces}"
        )
    if point:
        console.print(
            f"Operating point {shown(point['label'])}={point['target_recall']:g}: "
            f"p({shown(point['label'])}) >= {point['threshold']:.3f} "
            f"(validation recall {point['val_recall']:.3f}, "
            f"specificity {point['val_specificity']:.3f})"
        )
        if point.get("test"):
            from cxrlab.evaluation.calibration import OperatingResult

            print_point_result("test split", OperatingResult.from_dict(point["test"]))


def print_point_result(where: str, result) -> None:  # noqa: ANN001 (OperatingResult, imported lazily)
    """Sensitivity and specificity at the operating point on one set."""
    rate = lambda interval: str(interval) if interval is not None else "n/a"  # noqa: E731
    console.print(
        f"  on the {shown(where)}: sensitivity {rate(result.sensitivity)}, "
        f"specificity {rate(result.specificity)} "
        f"({result.called} of {result.n} called it)"
    )


def given_options(ctx: typer.Context, names: dict[str, object]) -> dict[str, object]:
    """Of ``names`` (parameter -> value), those typed on the command line (not defaults)."""
    return {
        k: v
        for k, v in names.items()
        if getattr(ctx.get_parameter_source(k), "name", None) == "COMMANDLINE"
    }


def resumed_config(run_dir: Path, ctx: typer.Context, preset_name: str, options: dict[str, object]):  # noqa: ANN201 (RunConfig)
    """The stored config of the run in ``run_dir``; options given that contradict it are one
    error."""
    from cxrlab.artifacts import RunDir
    from cxrlab.training.config import PRESETS, RunConfig, option_name, resume_conflicts

    if not RunDir(run_dir).config.is_file():
        raise CxrlabError(f"--resume: {run_dir} holds no run to resume (no config.json)")
    stored = RunConfig.load(RunDir(run_dir).config)
    requested: dict[str, tuple[str, object]] = {}
    if given_options(ctx, {"preset_name": preset_name}):
        requested |= {k: (f"--preset {preset_name}", v) for k, v in PRESETS[preset_name].items()}
    requested |= {
        k: (f"{option_name(k)} {v}" if k != "pretrained" else option_name(k), v)
        for k, v in options.items()
    }
    conflicts = resume_conflicts(stored, requested)
    if conflicts:
        raise CxrlabError(
            f"--resume: {'; '.join(conflicts)}: a resumed run keeps its recipe; "
            "leave these out, or train into another --out"
        )
    return stored


@app.command()
def train(
    ctx: typer.Context,
    data: DataArg,
    model: Annotated[
        str, typer.Option("--model", help="Registry name (cxrlab models) or any timm model.")
    ] = "resnet18",
    preset_name: Annotated[
        str, typer.Option("--preset", help="Recipe: frozen, finetune, scratch, proposed or smoke.")
    ] = "finetune",
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help=(
                "Recipe file (YAML or JSON; a run's config.json works): its fields over the "
                "preset's, options typed here over both."
            ),
        ),
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option("--mode", help="frozen (new head only) or finetune (all layers) \\[preset]."),
    ] = None,
    weights: Annotated[
        Path | None, typer.Option("--weights", help="Local ImageNet state dict for the model.")
    ] = None,
    no_pretrained: NoPretrainedOpt = False,
    out: Annotated[
        Path | None, typer.Option("--out", help="Run folder \\[default: runs/<DATA>/<run name>].")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")
    ] = False,
    image_size: ImageSizeOpt = None,
    resize: ResizeOpt = "squash",
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    optimizer: OptimizerOpt = None,
    balance: BalanceOpt = None,
    augment: AugmentOpt = None,
    freeze_bn: FreezeBnOpt = None,
    ema_decay: EmaOpt = None,
    tta: TtaOpt = None,
    target_recall: TargetRecallOpt = None,
    no_diagnose: Annotated[
        bool, typer.Option("--no-diagnose", help="Skip robustness and Grad-CAM after testing.")
    ] = False,
    seed: SeedOpt = 0,
    val_fraction: ValFractionOpt = 0.15,
    manifest: ManifestOpt = None,
    precision: PrecisionOpt = "auto",
    accelerator: AcceleratorOpt = "auto",
    devices: DevicesOpt = "auto",
    num_nodes: NumNodesOpt = 1,
    strategy: StrategyOpt = "auto",
    channels_last: ChannelsLastOpt = False,
    augment_on: AugmentOnOpt = None,
    num_workers: LoaderWorkersOpt = 0,
    logger: LoggerOpt = "csv",
    cache_dir: CacheDirOpt = None,
    workers: WorkersOpt = 2,
    no_progress: NoProgressOpt = False,
) -> None:
    (
        """Train one model (validation picks the epoch), then test it once on the test split.

    Several devices (--devices N, --num-nodes M) train with DDP; --batch-size stays the """
        """global batch."""
    )
    from cxrlab.outputs import check_output_folder
    from cxrlab.training.config import preset, recipe_file
    from cxrlab.training.run import train_run
    from cxrlab.training.trainer import check_runnable, launched_rank

    if weights is not None and not weights.expanduser().is_file():
        raise CxrlabError(f"--weights: {weights}: file not found")
    options = _run_options(
        model=model,
        mode=mode,
        weights=str(weights) if weights else None,
        image_size=image_size,
        resize=resize,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        balance=balance,
        augment=augment,
        freeze_bn=freeze_bn,
        ema_decay=ema_decay,
        tta=tta,
        target_recall=target_recall,
        seed=seed,
        val_fraction=val_fraction,
        manifest=str(manifest) if manifest else None,
        precision=precision,
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        channels_last=channels_last,
        augment_on=augment_on,
        num_workers=num_workers,
        logger=logger,
    ) | ({"pretrained": False} if no_pretrained else {})
    worker = launched_rank() != 0  # a DDP process Lightning started: rank 0 reports
    if resume and config_file is not None:
        raise CxrlabError("--config: a resumed run keeps its own config.json; leave --config out")
    if config_file is not None:  # preset < file < what was typed on the command line
        typed = given_options(ctx, {k: v for k, v in options.items() if k != "pretrained"})
        options = (
            recipe_file(config_file) | typed | ({"pretrained": False} if no_pretrained else {})
        )
    if resume:
        if out is None:
            raise CxrlabError("--resume: name the run folder with --out")
        given = given_options(ctx, {k: v for k, v in options.items() if k != "pretrained"})
        config = resumed_config(
            out, ctx, preset_name, given | ({"pretrained": False} if no_pretrained else {})
        )
    else:
        config = preset(preset_name, **options)
    run_dir = out or default_out(data, config.run_name)
    check_output_folder(run_dir, data)
    if cache_dir is not None:
        check_output_folder(cache_dir, data, option="--cache-dir")
    if not worker:
        check_runnable(config)  # before the banner: an impossible run says so first
        console.print(("Resuming " if resume else "Training ") + shown(config.describe()))
    say = (
        (lambda line: None)
        if worker
        else (lambda line: console.print(shown(line), highlight=False, soft_wrap=True))
    )
    result = train_run(
        data,
        config,
        run_dir,
        resume=resume,
        cache_root=cache_dir,
        workers=workers,
        progress=not no_progress,
        say=say,
    )
    if worker:
        return
    _print_result(result)
    if result.metrics.get("test") and not no_diagnose:
        _diagnose([run_dir], data, progress=not no_progress)
    else:
        _write_card(run_dir)


def _diagnose(run_dirs: list[Path], data: Path, *, progress: bool, device: str = "auto") -> None:
    from cxrlab.pipelines.diagnose import diagnose_run

    for run_dir in run_dirs:
        console.print(f"Robustness and Grad-CAM of {shown(run_dir.name)} on its test films ...")
        found = diagnose_run(run_dir, data, device=device, progress=progress)
        rob, cam = found["robustness"], found["gradcam"]
        drops = ", ".join(f"{name} {v['accuracy']:.3f}" for name, v in rob["variants"].items())
        share = cam["lung_share"] or 0.0
        console.print(f"  accuracy by variant: {drops}")
        console.print(
            f"  Grad-CAM mass in the lung fields {share:.2f} "
            f"(uniform map: {cam['lung_area'] or 0:.2f}), "
            f"on the border {cam['border_share'] or 0:.2f}"
        )
        console.print(
            f"  written: {shown(run_dir / 'robustness.json')}, "
            f"{shown(run_dir / 'gradcam.json')}, {shown(run_dir / 'gradcam.png')}"
        )
        _write_card(run_dir)


def _write_card(run_dir: Path) -> None:
    """(Re)write the run's MODEL_CARD.md from its files."""
    from cxrlab.reporting.model_card import write_model_card

    console.print(f"Model card: {shown(write_model_card(run_dir))}")


@app.command()
def explain(
    runs: Annotated[
        list[Path], typer.Argument(help="Finished run folders (each with model.pt and split.csv).")
    ],
    data: Annotated[
        Path,
        typer.Option(
            "--data", help="The runs' dataset root (its split.csv paths are relative to it)."
        ),
    ],
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    no_progress: NoProgressOpt = False,
) -> None:
    (
        """Robustness (squashed, padded, rotated, darkened test films) and Grad-CAM lung share """
        """of finished runs."""
    )
    _diagnose(runs, data, progress=not no_progress, device=device)


@app.command()
def compare(
    ctx: typer.Context,
    data: DataArg,
    models: Annotated[
        list[str], typer.Option("--models", help="Models to compare (repeat, or space-separated).")
    ] = ["alexnet", "resnet18"],  # noqa: B006
    mode: Annotated[str, typer.Option("--mode", help="frozen, finetune or both.")] = "finetune",
    weights: Annotated[
        list[str] | None,
        typer.Option("--weights", help="MODEL=PATH: a local ImageNet state dict (repeatable)."),
    ] = None,
    no_pretrained: NoPretrainedOpt = False,
    seeds: Annotated[
        list[int] | None,
        typer.Option("--seeds", help="Seeds; each model and mode runs once per seed."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Comparison folder \\[default: runs/<DATA>/compare]."),
    ] = None,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help=(
                "Recipe file (YAML or JSON): data and machine fields for every run, the rest for "
                "the fine-tuned runs; options typed here win."
            ),
        ),
    ] = None,
    manifest: ManifestOpt = None,
    no_audit: Annotated[
        bool,
        typer.Option("--no-audit", help="Skip the audit (no files excluded unless --manifest)."),
    ] = False,
    external: Annotated[
        list[str] | None,
        typer.Option(
            "--external",
            help=(
                "NAME=PATH: a labelled set from elsewhere every model is scored on after testing "
                "(repeatable; never used to train or select)."
            ),
        ),
    ] = None,
    image_size: ImageSizeOpt = None,
    resize: ResizeOpt = "squash",
    epochs: EpochsOpt = None,
    head_epochs: Annotated[
        int | None,
        typer.Option("--head-epochs", min=1, help="Epochs of head training in frozen mode."),
    ] = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    optimizer: OptimizerOpt = None,
    balance: BalanceOpt = None,
    augment: AugmentOpt = None,
    freeze_bn: FreezeBnOpt = None,
    target_recall: TargetRecallOpt = None,
    val_fraction: ValFractionOpt = 0.15,
    precision: PrecisionOpt = "auto",
    accelerator: AcceleratorOpt = "auto",
    devices: DevicesOpt = "auto",
    num_workers: LoaderWorkersOpt = 0,
    logger: LoggerOpt = "csv",
    cache_dir: CacheDirOpt = None,
    workers: WorkersOpt = 2,
    no_progress: NoProgressOpt = False,
) -> None:
    """Train and test several models under one protocol; write one HTML report with every plot."""
    from cxrlab.outputs import check_output_folder
    from cxrlab.pipelines.compare import plan_runs, run_comparison, split_recipe
    from cxrlab.training.config import recipe_file

    models = [name for item in models for name in item.split()]
    shared = _run_options(
        image_size=image_size,
        resize=resize,
        val_fraction=val_fraction,
        precision=precision,
        accelerator=accelerator,
        devices=devices,
        num_workers=num_workers,
        logger=logger,
        balance=balance,
        target_recall=target_recall,
    )
    tuned = _run_options(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        augment=augment,
        freeze_bn=freeze_bn,
    )
    file_shared, file_tuned = {}, {}
    if config_file is not None:  # preset < file < what was typed on the command line
        file_shared, file_tuned = split_recipe(recipe_file(config_file), str(config_file))
        shared, tuned = given_options(ctx, shared), given_options(ctx, tuned)
    configs, notes = plan_runs(
        models,
        mode,
        weights=_parse_weights(weights or [], models),
        pretrained=not no_pretrained,
        seeds=seeds or [0],
        finetune_overrides=file_shared | file_tuned | shared | tuned,
        frozen_overrides=file_shared | shared | _run_options(epochs=head_epochs),
    )
    for note in notes:
        console.print(f"[yellow]note:[/] {shown(note)}")
    externals = _parse_external(external or [])
    out = out or default_out(data, "compare")
    check_output_folder(out, data)
    if cache_dir is not None:
        check_output_folder(cache_dir, data, option="--cache-dir")
    report = run_comparison(
        data,
        configs,
        out,
        manifest=manifest,
        audit=not no_audit,
        cache_root=cache_dir,
        workers=workers,
        external=externals,
        progress=not no_progress,
        command="cxrlab " + " ".join(sys.argv[1:]),
        say=lambda line: console.print(shown(line)),
    )
    results_md = out / "results.md"
    if results_md.is_file():
        console.print(
            read_text(results_md), markup=False, highlight=False, soft_wrap=True
        )  # the Markdown source: every number visible
    console.print(f"Report: {shown(report)}")


@app.command()
def calibrate(
    runs: Annotated[list[Path], typer.Argument(help="Finished run folders.")],
    data: Annotated[
        Path,
        typer.Option(
            "--data", help="The runs' dataset root (their split.csv paths are relative to it)."
        ),
    ],
    target_recall: TargetRecallOpt = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    cache_dir: CacheDirOpt = None,
    workers: WorkersOpt = 2,
    no_progress: NoProgressOpt = False,
) -> None:
    (
        """Fit a run's temperature (and an operating point) on its validation split: """
        """for runs made before
    cxrlab calibrated, or to choose another operating point. Rewrites model.pt, predictions """
        """and metrics."""
    )
    from cxrlab.pipelines.calibrate import calibrate_run

    for run_dir in runs:
        result = calibrate_run(
            run_dir,
            data,
            target_recall=target_recall,
            cache_root=cache_dir,
            workers=workers,
            device=device,
            progress=not no_progress,
        )
        console.print(f"Run {shown(run_dir)}:")
        print_calibration(result.metrics)
        _write_card(run_dir)


@app.command()
def predict(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            help=(
                "A cxrlab model checkpoint (model.pt of a run), "
                "or its .onnx export (run by ONNX Runtime)."
            )
        ),
    ],
    images: Annotated[
        list[Path], typer.Argument(help="Image files or folders (searched recursively).")
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help=(
                "CSV file for the probabilities "
                "(never an input, nor inside an input or dataset folder)."
            ),
        ),
    ] = Path("predictions.csv"),
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help=(
                "Overwrite an existing --out that is not a previous cxrlab predictions CSV "
                "(inputs and dataset folders stay protected)."
            ),
        ),
    ] = False,
    batch_size: BatchOpt = 32,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    no_progress: NoProgressOpt = False,
) -> None:
    (
        """Class probabilities for images, printed and written as CSV (unreadable files are """
        """listed, not fatal)."""
    )
    from cxrlab.evaluation.predict import expand_image_paths, predict_files
    from cxrlab.outputs import check_output

    files = expand_image_paths(images)
    check_output(out, kind="predictions", inputs=[checkpoint, *images, *files], force=force)
    result = predict_files(
        checkpoint, files, batch_size=batch_size or 32, device=device, progress=not no_progress
    )
    result.write_csv(out)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {shown(note)}")
    runtime = " (ONNX Runtime)" if result.runtime == "ONNX Runtime" else ""
    table = Table(title=f"{len(result.paths)} image(s), {result.arch}{runtime}")
    table.add_column("image", overflow="fold")
    table.add_column("predicted")
    decisions = result.decisions
    if decisions is not None:
        table.add_column("decision")
    for name in result.classes:
        table.add_column(f"p({shown(name)})", justify="right")
    for i, (path, row) in enumerate(list(zip(result.paths, result.probs))[:25]):
        decision = [shown(decisions[i])] if decisions is not None else []
        table.add_row(
            shown(path),
            shown(result.classes[int(row.argmax())]),
            *decision,
            *(f"{v:.3f}" for v in row),
        )
    console.print(table)
    if len(result.paths) > 25:
        console.print(f"... {len(result.paths) - 25} more in {shown(out)}")
    if result.point is not None:
        console.print(
            f"decision: the run's operating point {shown(result.point.target)}, "
            f"p({shown(result.point.label)}) >= "
            f"{result.point.threshold:.3f} (chosen on its validation split); "
            "predicted: the most probable class",
            soft_wrap=True,
        )
    for _path, error in result.errors.items():
        err_console.print(f"skipped {shown(error)}", highlight=False, soft_wrap=True)
    console.print(f"Probabilities written to {shown(out)}")


def print_evaluation(evaluation, out: Path) -> None:  # noqa: ANN001 (Evaluation, imported lazily)
    """The external result beside the run's own test split, per present class."""
    ev, internal = evaluation, evaluation.internal
    absent = f"; absent: {', '.join(ev.absent)}" if ev.absent else ""
    recalls = Table(
        title=shown(
            f"{ev.arch} on {ev.name}: {ev.n} films (present: {', '.join(ev.present)}{absent})"
        )
    )
    for column in (
        "class",
        "films",
        "recall [95% CI]",
        *(["own test split (gap)"] if internal else []),
    ):
        recalls.add_column(column, justify="left" if column == "class" else "right")
    for name, result in ev.per_class.items():
        gap = (
            [f"{internal.recall[name]:.3f} ({result.recall.value - internal.recall[name]:+.3f})"]
            if internal
            else []
        )
        recalls.add_row(shown(name), str(result.n), str(result.recall), *gap)
    console.print(recalls)
    called = Table(title="How each class is called")
    called.add_column("class")
    for name in ev.classes:
        called.add_column(shown(name), justify="right")
    called.add_column("precision [95% CI]", justify="right")
    for name, result in ev.per_class.items():
        called.add_row(
            shown(name), *(str(result.called[c]) for c in ev.classes), str(result.precision)
        )
    console.print(called)
    own = (
        f" (own test split: {internal.balanced_accuracy:.3f}, "
        f"gap {ev.balanced_accuracy.value - internal.balanced_accuracy:+.3f})"
        if internal
        else ""
    )
    console.print(f"balanced accuracy over the present classes: {ev.balanced_accuracy}{own}")
    before = (
        f" (without the temperature {ev.temperature:.3f}: {ev.ece_uncalibrated:.3f})"
        if ev.ece_uncalibrated is not None
        else ""
    )
    console.print(f"accuracy: {ev.accuracy}; ECE {ev.ece:.3f}{before}")
    if ev.point is not None and ev.at_point is not None:
        console.print(
            f"Operating point {shown(ev.point.target)}: "
            f"p({shown(ev.point.label)}) >= {ev.point.threshold:.3f}, "
            "chosen on the run's validation split"
        )
        print_point_result(ev.name, ev.at_point)
        if internal is not None and internal.at_point is not None:
            print_point_result("own test split", internal.at_point)
    if ev.macro_f1 is None:
        console.print(
            f"macro-F1 and macro AUC: not defined here ({shown(', '.join(ev.absent))} absent)"
        )
    else:
        console.print(f"macro-F1 {ev.macro_f1:.3f}; macro AUC {ev.macro_auc:.3f}")
    for _path, why in list(ev.skipped.items())[:20]:
        err_console.print(f"skipped {shown(why)}", highlight=False, soft_wrap=True)
    console.print(f"Predictions and metrics in {shown(out)}/ (predictions.csv, metrics.json)")


@app.command()
def evaluate(
    model: Annotated[Path, typer.Argument(help="A run folder, its model.pt, or its .onnx export.")],
    data: Annotated[
        Path,
        typer.Argument(
            help=(
                "A labelled folder: Kaggle layout (its test split) or <CLASS>/ folders; "
                "may hold a subset of the model's classes."
            )
        ),
    ],
    split: Annotated[
        str | None,
        typer.Option("--split", help="Split of DATA to score \\[default: test if there is one]."),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Name of the set \\[default: DATA's folder name].")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder \\[default: RUN/external/<NAME>].")
    ] = None,
    target_recall: Annotated[
        str | None,
        typer.Option(
            "--target-recall",
            help=(
                "CLASS=RECALL: score at a threshold chosen for that recall on the run's "
                "validation split \\[default: the run's own operating point]."
            ),
        ),
    ] = None,
    batch_size: BatchOpt = 32,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    no_progress: NoProgressOpt = False,
) -> None:
    (
        """Score a finished model on another labelled set (external validation), beside its """
        """own test split."""
    )
    from cxrlab.evaluation.external import evaluate_model, resolve_model

    evaluation, written = evaluate_model(
        model,
        data,
        split=split,
        name=name,
        out=out,
        batch_size=batch_size or 32,
        device=device,
        progress=not no_progress,
        target_recall=target_recall,
    )
    print_evaluation(evaluation, written)
    run_dir = resolve_model(model)[1]
    if run_dir is not None:  # the run's card now holds this result too
        _write_card(run_dir)


EXPORT_FORMATS = ("--onnx (an ONNX model for ONNX Runtime)",)


@app.command("export")
def export_model(
    checkpoint: Annotated[
        Path, typer.Argument(help="A cxrlab model checkpoint (model.pt of a run).")
    ],
    onnx: Annotated[
        bool,
        typer.Option(
            "--onnx", help="Write an ONNX model for ONNX Runtime (the one format so far)."
        ),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Output file \\[default: CHECKPOINT with suffix .onnx]."),
    ] = None,
    opset: Annotated[
        int | None, typer.Option("--opset", min=7, help="ONNX opset \\[default: the exporter's].")
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help=(
                "Overwrite an existing --out that is not a previous cxrlab ONNX export "
                "(the checkpoint and images stay protected)."
            ),
        ),
    ] = False,
) -> None:
    (
        """Export a checkpoint for deployment, checked against PyTorch """
        """(`cxrlab predict` runs the .onnx)."""
    )
    if not onnx:
        raise CxrlabError(
            f"export: no format given; formats: {', '.join(EXPORT_FORMATS)}; "
            f"e.g. cxrlab export {checkpoint} --onnx"
        )
    from cxrlab.models.export import TOLERANCE, OnnxModel, export_onnx
    from cxrlab.outputs import check_output

    out = out or checkpoint.with_suffix(".onnx")
    check_output(out, kind="onnx", inputs=[checkpoint], force=force)
    started = time.perf_counter()
    path = export_onnx(checkpoint, out, opset=opset)
    exported = OnnxModel(path)
    size_mb = path.stat().st_size / 1e6
    console.print(
        f"ONNX model: {shown(path)} ({size_mb:.1f} MB, {exported.arch}, "
        f"{exported.image_size} px, {len(exported.classes)} classes)",
        soft_wrap=True,
    )
    console.print(
        f"checked against PyTorch: max |probability difference| {exported.max_abs_diff:.1e} "
        f"(limit {TOLERANCE:.0e}); "
        f"export took {time.perf_counter() - started:.1f} s",
        soft_wrap=True,
    )
    for note in exported.notes:
        console.print(f"[yellow]note:[/] {shown(note)}")


MULTI_VALUE_OPTIONS = ("--models", "--seeds", "--weights", "--external")


def expand_multi_values(argv: list[str]) -> list[str]:
    """``--models a b c`` -> ``--models a --models b --models c`` (click takes one value per
    flag)."""
    out: list[str] = []
    current: str | None = None
    for token in argv:
        if token.startswith("-"):
            current = token if token in MULTI_VALUE_OPTIONS else None
            out.append(token)
        elif current is not None and out[-1] != current:
            out += [current, token]
        else:
            out.append(token)
    return out


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit status; errors become one line on stderr."""
    argv = expand_multi_values(list(sys.argv[1:] if argv is None else argv))
    debug = "--debug" in argv
    try:
        app(args=argv, prog_name="cxrlab")  # standalone: usage errors print and raise SystemExit
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except CxrlabError as exc:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {shown(exc)}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except Exception as exc:  # an unexpected failure: still one line unless --debug
        if debug:
            raise
        err_console.print(
            f"[bold red]error:[/] {type(exc).__name__}: {shown(exc)} "
            "(run with --debug for the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        return 1
    return 0


def main() -> None:
    sys.exit(run())
