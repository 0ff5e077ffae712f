"""Training commands: train, compare, explain (diagnostics), calibrate."""

from __future__ import annotations

import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from cxrlab.cli.app import (
    AcceleratorOpt,
    AddSourceOpt,
    AugmentOnOpt,
    AugmentOpt,
    BalanceOpt,
    BatchOpt,
    CacheDirOpt,
    ChannelsLastOpt,
    CropOpt,
    DataArg,
    DevicesOpt,
    EmaOpt,
    EpochsOpt,
    FreezeBnOpt,
    ImageSizeOpt,
    LoaderWorkersOpt,
    LoggerOpt,
    LrOpt,
    ManifestOpt,
    NoPretrainedOpt,
    NoProgressOpt,
    NumNodesOpt,
    OptimizerOpt,
    PrecisionOpt,
    ResizeOpt,
    SeedOpt,
    SourceNameOpt,
    SourceTestFractionOpt,
    SourceTrainFractionOpt,
    StrategyOpt,
    TargetRecallOpt,
    TtaOpt,
    ValFractionOpt,
    WorkersOpt,
    app,
    console,
    default_out,
    err_console,
    parse_external,
    parse_weights,
    shown,
)
from cxrlab.cli.options import is_typed, several_values, typed_fields
from cxrlab.errors import CxrlabError
from cxrlab.fileio import read_text

if TYPE_CHECKING:
    from cxrlab.config import RecipeFile
    from cxrlab.records import OperatingResult, RunMetrics
    from cxrlab.training.run import RunResult


def print_result(result: RunResult) -> None:
    m = result.metrics
    assert m is not None  # only the process that tested the run prints it
    test = m.test
    if test is None:
        console.print(f"Run {shown(result.run_dir)}: no test split, nothing tested")
        return
    table = Table(
        title=(
            f"Test ({test.n} images), checkpoint of epoch {m.best_epoch + 1} "
            f"(val macro-F1 {m.best_val_macro_f1:.3f})"
        )
    )
    table.add_column("metric")
    table.add_column("value [95% CI]", justify="right")
    table.add_row("accuracy", str(m.intervals["accuracy"]))
    table.add_row("macro-F1", str(m.intervals["macro_f1"]))
    for name in m.classes:
        table.add_row(f"recall {shown(name)}", str(m.intervals[f"recall_{name}"]))
    table.add_row("balanced accuracy", f"{test.balanced_accuracy:.3f}")
    table.add_row("macro AUC", f"{test.macro_auc:.3f}")
    console.print(table)
    for name, scores in m.per_source.items():
        recalls = ", ".join(f"{shown(c)} {r.recall.value:.3f}" for c, r in scores.per_class.items())
        console.print(
            f"  source {shown(name)}: {scores.n} test films, balanced accuracy "
            f"{scores.balanced_accuracy}; recall {recalls}"
        )
    print_calibration(m)
    console.print(
        f"Run folder {shown(result.run_dir)} "
        "(model.pt, metrics.json, test_predictions.csv, history.csv)"
    )


def print_calibration(metrics: RunMetrics) -> None:
    """The temperature with ECE before and after, and the operating point's rates, of a run."""
    calibration, point = metrics.calibration, metrics.operating_point
    if calibration:
        effects = {"val": calibration.val, "test": calibration.test}
        eces = "; ".join(
            f"{name} {effect.ece_before:.3f} -> {effect.ece_after:.3f}"
            for name, effect in effects.items()
            if effect is not None
        )
        console.print(
            f"Calibration: temperature {calibration.temperature:.3f} (fitted on validation); "
            f"ECE {eces}"
        )
    if point:
        console.print(
            f"Operating point {shown(point.label)}={point.target_recall:g}: "
            f"p({shown(point.label)}) >= {point.threshold:.3f} "
            f"(validation recall {point.val_recall:.3f}, "
            f"specificity {point.val_specificity:.3f})"
        )
        if point.test is not None:
            print_point_result("test split", point.test)


def print_point_result(where: str, result: OperatingResult) -> None:
    """Sensitivity and specificity at the operating point on one set."""
    rate = lambda interval: str(interval) if interval is not None else "n/a"  # noqa: E731
    console.print(
        f"  on the {shown(where)}: sensitivity {rate(result.sensitivity)}, "
        f"specificity {rate(result.specificity)} "
        f"({result.called} of {result.n} called it)"
    )


STOP_SIGNALS = {signal.SIGINT: 130, signal.SIGTERM: 143}  # exit status 128 + the signal


@contextmanager
def stopped_by_signal(data: Path, run_dir: Path) -> Iterator[None]:
    """Ctrl-C or SIGTERM inside the block: one line saying what was kept and how to go on, and
    exit status 130 (SIGINT) or 143 (SIGTERM). Both signals raise KeyboardInterrupt here;
    Lightning catches it, stops cleanly and exits 1 on its own, so the handler notes which
    signal it was."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum: int, frame: object) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    except (KeyboardInterrupt, SystemExit) as exc:
        if not received and not isinstance(exc, KeyboardInterrupt):
            raise
        signum = received[0] if received else signal.SIGINT
        from cxrlab.artifacts import RunDir

        last = RunDir(run_dir).last_checkpoint
        if last.is_file():
            again = shlex.join(["cxrlab", "train", str(data), "--out", str(run_dir), "--resume"])
            kept = f"{last} keeps the last finished epoch; go on with: {again}"
        else:
            kept = "no epoch had finished, so nothing was kept; run the same command again"
        stop = signal.Signals(signum)
        err_console.print(
            f"interrupted ({stop.name}): {shown(kept)}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(STOP_SIGNALS[stop]) from None
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


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
    crop: CropOpt = "none",
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
    add_source: AddSourceOpt = None,
    source_name: SourceNameOpt = None,
    source_test_fraction: SourceTestFractionOpt = None,
    source_train_fraction: SourceTrainFractionOpt = None,
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
    from cxrlab.artifacts import RunDir
    from cxrlab.config import RecipeFile, resolve
    from cxrlab.data.discover import dataset_folder
    from cxrlab.outputs import check_cache_folder, check_output_folder
    from cxrlab.training.run import train_run
    from cxrlab.training.trainer import check_runnable, launched_rank

    if weights is not None and not weights.expanduser().is_file():
        raise CxrlabError(f"--weights: {weights}: file not found")
    worker = launched_rank() != 0  # a DDP process Lightning started: rank 0 reports
    if resume and out is None:
        raise CxrlabError("--resume: name the run folder with --out")
    config = resolve(  # preset < --config file < typed; or the stored run's own config
        preset_name if is_typed(ctx, "preset_name") or not resume else None,
        file=RecipeFile.read(config_file) if config_file is not None else None,
        typed=typed_fields(ctx),
        stored=RunDir(out).config if resume and out is not None else None,
    ).config
    run_dir = out or default_out(data, config.run_name)
    inputs = [data, *map(Path, config.sources.values())]
    check_output_folder(run_dir, inputs)
    check_cache_folder(cache_dir, inputs)
    if not worker:  # before the banner: an impossible run says so first
        dataset_folder(data)
        check_runnable(config)
        console.print(("Resuming " if resume else "Training ") + shown(config.describe()))
    say = (
        (lambda line: None)
        if worker
        else (lambda line: console.print(shown(line), highlight=False, soft_wrap=True))
    )
    with nullcontext() if worker else stopped_by_signal(data, run_dir):  # (DDP: the launcher)
        result = train_run(
            data,
            config,
            run_dir,
            resume=resume,
            cache_root=cache_dir,
            workers=workers,
            say=say,
        )
    if worker:
        return
    assert result.metrics is not None  # this process (not a DDP worker) tested the run
    print_result(result)
    if result.metrics.test is not None and not no_diagnose:
        diagnose_runs([run_dir], data)
    else:
        write_card(run_dir)


def diagnose_runs(run_dirs: list[Path], data: Path, *, device: str = "auto") -> None:
    from cxrlab.pipelines.diagnose import diagnose_run

    for run_dir in run_dirs:
        console.print(f"Robustness and Grad-CAM of {shown(run_dir.name)} on its test films ...")
        found = diagnose_run(run_dir, data, device=device)
        rob, cam = found.robustness, found.gradcam
        drops = ", ".join(f"{name} {v.accuracy:.3f}" for name, v in rob.variants.items())
        console.print(f"  accuracy by variant: {drops}")
        console.print(
            f"  Grad-CAM mass in the lung fields {cam.lung_share or 0.0:.2f} "
            f"(uniform map: {cam.lung_area or 0:.2f}), "
            f"on the border {cam.border_share or 0:.2f}"
        )
        console.print(
            f"  written: {shown(run_dir / 'robustness.json')}, "
            f"{shown(run_dir / 'gradcam.json')}, {shown(run_dir / 'gradcam.png')}"
        )
        write_card(run_dir)


def write_card(run_dir: Path) -> None:
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
    diagnose_runs(runs, data, device=device)


@app.command(cls=several_values("models", "seeds", "weights", "external"))
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
    crop: CropOpt = "none",
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
    add_source: AddSourceOpt = None,
    source_name: SourceNameOpt = None,
    source_test_fraction: SourceTestFractionOpt = None,
    source_train_fraction: SourceTrainFractionOpt = None,
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
    from cxrlab.config import RecipeFile

    compare_models(
        data,
        [name for item in models for name in item.split()],
        mode,
        weights=weights or [],
        pretrained=not no_pretrained,
        seeds=seeds or [0],
        out=out,
        file=RecipeFile.read(config_file) if config_file is not None else None,
        # --mode, --weights, --manifest and --no-pretrained mean something else here (modes to
        # run, one file per model, the audit's manifest for every run, models without weights)
        typed=typed_fields(ctx, leave_out=frozenset({"mode", "weights", "manifest", "pretrained"})),
        head_epochs=head_epochs,
        manifest=manifest,
        audit=not no_audit,
        external=external or [],
        cache_dir=cache_dir,
        workers=workers,
    )


def compare_models(
    data: Path,
    models: list[str],
    mode: str,
    *,
    weights: list[str],
    pretrained: bool,
    seeds: list[int],
    out: Path | None,
    file: RecipeFile | None,
    typed: dict[str, object],
    head_epochs: int | None,
    manifest: Path | None,
    audit: bool,
    external: list[str],
    cache_dir: Path | None,
    workers: int,
) -> None:
    """compare, its options parsed (``typed``: the config fields given, by field); the demo
    runs it too."""
    from cxrlab.outputs import check_cache_folder, check_output_folder
    from cxrlab.pipelines.compare import plan_runs, run_comparison

    configs, notes = plan_runs(
        models,
        mode,
        weights=parse_weights(weights, models),
        pretrained=pretrained,
        seeds=seeds,
        file=file,
        typed=typed,
        head_epochs=head_epochs,
    )
    for note in notes:
        console.print(f"[yellow]note:[/] {shown(note)}")
    externals = parse_external(external)
    out = out or default_out(data, "compare")
    inputs = [data, *map(Path, configs[0].sources.values())] if configs else [data]
    check_output_folder(out, inputs)
    check_cache_folder(cache_dir, inputs)
    report = run_comparison(
        data,
        configs,
        out,
        manifest=manifest,
        audit=audit,
        cache_root=cache_dir,
        workers=workers,
        external=externals,
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
        )
        console.print(f"Run {shown(run_dir)}:")
        assert result.metrics is not None  # calibrate_run tests the run here
        print_calibration(result.metrics)
        write_card(run_dir)
