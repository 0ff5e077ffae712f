"""The ``cxrlab`` Typer app, its shared options (declared once, used by train and compare)
and the helpers every command uses."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from cxrlab import __version__
from cxrlab.errors import CxrlabError
from cxrlab.fileio import display_name

if TYPE_CHECKING:
    from cxrlab.data.discover import DatasetIndex

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


NO_PROGRESS = "--no-progress"
NoProgressOpt = Annotated[bool, typer.Option(NO_PROGRESS, help="Hide progress bars.")]


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


# Training options shared by `train` and `compare` (None = the preset's value).
ImageSizeOpt = Annotated[
    int | None, typer.Option("--image-size", help="Image side in pixels \\[preset: 224].")
]


ResizeOpt = Annotated[
    str,
    typer.Option("--resize", help="squash (stretch to square) or pad (keep aspect, pad black)."),
]


CropOpt = Annotated[
    str,
    typer.Option(
        "--crop", help="none, or lungs (each film cut to its lung box by the learned segmenter)."
    ),
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
        help=(
            "Class imbalance: weights (weighted loss), sampler (balanced batches), source "
            "(balanced batches where each class weighs the same and, within a class, each "
            "source) or none."
        ),
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


AddSourceOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--add-source",
        help=(
            "NAME=DIR: another source of training films, a Kaggle layout or class folders holding "
            "some of DATA's classes (repeatable). A source without a test split gets one, held "
            "out once per class."
        ),
    ),
]


SourceNameOpt = Annotated[
    str | None,
    typer.Option(
        "--source-name", help="DATA's own name as a source \\[default: its folder's name]."
    ),
]


SourceTestFractionOpt = Annotated[
    float | None,
    typer.Option(
        "--source-test-fraction",
        help="Share of each class held out as test films of an added source without a test "
        "split \\[0.2].",
    ),
]


SourceTrainFractionOpt = Annotated[
    float | None,
    typer.Option(
        "--source-train-fraction",
        help="Share of an added source's films (after its test part) used to train and validate "
        "\\[1]; 0: the source is only tested on.",
    ),
]


def open_sources(data: Path, add_source: list[str] | None, source_name: str | None) -> DatasetIndex:
    """DATA and its ``--add-source`` folders as one indexed set (every folder checked now)."""
    from cxrlab.data.discover import discover_sources, parse_sources

    return discover_sources(data, parse_sources(add_source or []), source_name=source_name)


CacheDirOpt = Annotated[
    Path | None,
    typer.Option("--cache-dir", help="Cache root \\[default: $CXRLAB_CACHE or ~/.cache/cxrlab]."),
]


def parse_weights(items: list[str], models: list[str]) -> dict[str, str]:
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


def parse_external(items: list[str]) -> dict[str, Path]:
    """``--external NAME=PATH`` (repeatable) into ``{name: folder}``."""
    from cxrlab.data.discover import parse_named_folders

    parsed = parse_named_folders(
        items, "external", "adult=../shared/data/external-dev", form="NAME=PATH"
    )
    for name, folder in parsed.items():
        if not folder.is_dir():
            raise CxrlabError(f"--external {name}={folder}: {folder} is not a folder")
    return parsed
