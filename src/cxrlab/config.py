"""One config object per run, saved with the run as ``config.json``; presets name whole recipes.

A preset (``frozen``, ``finetune``, ``scratch``, ``smoke``, ...) fills every field of a recipe.
:func:`resolve` is the one precedence of a run's settings: defaults < preset < recipe file
(:class:`RecipeFile`) < typed values, or, when a run is resumed, its stored ``config.json``
(what contradicts it is one error); the :class:`Resolved` config says where each value came
from. ``RunConfig.describe()`` is what the README and the report quote, so a number can always
be traced to its recipe.

This module speaks in fields, never in command-line options: a bad value is a
:class:`~cxrlab.errors.ConfigError` naming its field (and where it came from), which the CLI
writes as the option that set it (:mod:`cxrlab.cli.options`).

:meth:`RunConfig.load` is the one reader of ``config.json`` (training, resume, compare, the
report, the model card): strict, an error naming the file. This module (outside
:mod:`cxrlab.training`) imports neither torch nor Lightning, so that reports and tools read runs
without the training stack.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Literal, get_args

from cxrlab.artifacts import read_json
from cxrlab.errors import ConfigError, CxrlabError
from cxrlab.fileio import atomic_write_text, read_text
from cxrlab.records import CROPS, RESIZE_MODES, Crop, Resize, parse_target_recall

# The choices of the free-text options, compared across files (config.json, model.pt, reports):
# each a Literal type, its values in order as the one-line errors list them.
Mode = Literal["frozen", "finetune"]
Optimizer = Literal["adamw", "sgd"]
Balance = Literal["weights", "sampler", "source", "none"]
AugmentOn = Literal["loader", "device"]
LoggerName = Literal["csv", "tensorboard", "mlflow"]
Accelerator = Literal["auto", "cpu", "gpu", "cuda", "mps"]
Precision = Literal[
    "auto", "32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true"
]
MODES: tuple[str, ...] = get_args(Mode)
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
BALANCE: tuple[str, ...] = get_args(Balance)
AUGMENT_ON: tuple[str, ...] = get_args(AugmentOn)
LOGGERS: tuple[str, ...] = get_args(LoggerName)
ACCELERATORS: tuple[str, ...] = get_args(Accelerator)
PRECISIONS: tuple[str, ...] = get_args(Precision)


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides a training run's result."""

    model: str = "resnet18"
    mode: Mode = "finetune"  # frozen: only the new head trains; finetune: all layers
    pretrained: bool = True
    weights: str | None = None  # local ImageNet state dict, wins over `pretrained`
    image_size: int = 224
    resize: Resize = "squash"
    crop: Crop = "none"  # lungs: every film cut to its lung box (cxrlab.lungs) before resizing
    val_fraction: float = 0.15
    epochs: int = 10
    batch_size: int = 32  # the global batch: split evenly over the processes under DDP
    optimizer: Optimizer = "adamw"
    lr: float = 1e-3  # head learning rate
    backbone_lr_scale: float = 0.1  # finetune: backbone lr = lr * scale
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    balance: Balance = "weights"  # class-weighted loss, balanced sampling, or neither
    augment: bool = True
    augment_on: AugmentOn = (
        "loader"  # loader: per image in the DataLoader; device: batched on the training device
    )
    freeze_bn: bool = True  # finetune: keep BatchNorm statistics fixed (needed for fused weights)
    patience: int = 5  # early stopping on validation macro-F1, in epochs
    ema_decay: float = (
        0.0  # > 0: validate, select and keep an exponential moving average of the weights
    )
    # test-time augmentation (mean probability over a few views) when testing and predicting
    tta: bool = False
    target_recall: str | None = (
        None  # CLASS=RECALL: an operating point chosen on validation (e.g. COVID19=0.95)
    )
    precision: Precision = "auto"  # auto: bf16-mixed on GPU, 32 on CPU
    seed: int = 0
    num_workers: int = 0
    devices: str = "auto"  # per node; more than one trains with DDP (one process per device)
    num_nodes: int = 1
    strategy: str = "auto"  # Lightning strategy: auto, ddp, ddp_spawn, ...
    accelerator: Accelerator = "auto"
    channels_last: bool = False  # NHWC memory format (faster convolutions on some hardware)
    logger: LoggerName = "csv"  # csv, tensorboard or mlflow (CSV logs are always written)
    manifest: str | None = None  # audit manifest: excluded files are left out
    # training sources besides the main DATA: {name: folder} (--add-source NAME=DIR), and the main
    # data's own name (--source-name; default: its folder's name)
    sources: dict[str, str] = field(default_factory=dict)
    source_name: str | None = None
    # a source without its own test split: this share of each class held out as its test part,
    # drawn once with source_split_seed (not the run's seed, so every seed tests the same films)
    source_test_fraction: float = 0.2
    source_split_seed: int = 0
    # of an added source's films left after its test part, the share that trains (and
    # validates): a learning curve over the added films; drawn with the run's seed
    source_train_fraction: float = 1.0
    extra: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = [
            (self.mode in MODES, "mode", f"'{self.mode}' is not one of {', '.join(MODES)}"),
            (
                self.optimizer in OPTIMIZERS,
                "optimizer",
                f"'{self.optimizer}' is not one of {', '.join(OPTIMIZERS)}",
            ),
            (
                self.balance in BALANCE,
                "balance",
                f"'{self.balance}' is not one of {', '.join(BALANCE)}",
            ),
            (
                self.resize in RESIZE_MODES,
                "resize",
                f"'{self.resize}' is not one of {', '.join(RESIZE_MODES)}",
            ),
            (self.crop in CROPS, "crop", f"'{self.crop}' is not one of {', '.join(CROPS)}"),
            (self.epochs >= 1, "epochs", "must be at least 1"),
            (self.batch_size >= 1, "batch_size", "must be at least 1"),
            (self.lr > 0, "lr", "must be positive"),
            (0 <= self.ema_decay < 1, "ema_decay", "must be in [0, 1) (0 turns EMA off)"),
            (0 < self.val_fraction < 1, "val_fraction", "must be between 0 and 1"),
            (0 < self.source_test_fraction < 1, "source_test_fraction", "must be between 0 and 1"),
            (
                0 <= self.source_train_fraction <= 1,
                "source_train_fraction",
                "must be between 0 and 1",
            ),
            (self.num_nodes >= 1, "num_nodes", "must be at least 1"),
            (
                self.augment_on in AUGMENT_ON,
                "augment_on",
                f"'{self.augment_on}' is not loader or device",
            ),
            (
                self.logger in LOGGERS,
                "logger",
                f"'{self.logger}' is not csv, tensorboard or mlflow",
            ),
            (
                self.accelerator in ACCELERATORS,
                "accelerator",
                f"'{self.accelerator}' is not one of {', '.join(ACCELERATORS)}",
            ),
            (
                self.precision in PRECISIONS,
                "precision",
                f"'{self.precision}' is not one of {', '.join(PRECISIONS)}",
            ),
        ]
        for ok, name, message in checks:
            if not ok:
                raise ConfigError(name, message)
        if self.target_recall is not None:
            parse_target_recall(
                self.target_recall
            )  # the class is checked once the data's classes are known

    def updated(self, **changes: object) -> RunConfig:
        """A copy with ``changes`` applied (``None`` values are ignored)."""
        unknown = set(changes) - FIELDS
        if unknown:
            raise CxrlabError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @property
    def weights_source(self) -> str:
        """Where the starting weights came from: a weights file, ImageNet or nowhere."""
        if self.weights:
            return Path(self.weights).name
        return "ImageNet" if self.pretrained else "from scratch"

    @property
    def run_name(self) -> str:
        source = "imagenet" if (self.pretrained or self.weights) else "scratch"
        return f"{self.model.replace(':', '-')}-{self.mode}-{source}-s{self.seed}"

    def describe(self) -> str:
        source = f"weights {self.weights_source}" if self.weights else self.weights_source
        extras = ([f"EMA {self.ema_decay:g}"] if self.ema_decay else []) + (
            ["TTA"] if self.tta else []
        )
        extras += [f"operating point {self.target_recall}"] if self.target_recall else []
        if self.sources:
            share = self.source_train_fraction
            part = f" ({share:g} of their training films)" if share < 1 else ""
            extras.append(f"+ sources {', '.join(self.sources)}{part}")
        extras += [f"balance {self.balance}"] if self.balance == "source" else []
        return (
            f"{self.model} {self.mode} ({source}), {self.image_size}px {self.resize}, "
            f"{'lung crop, ' if self.crop == 'lungs' else ''}"
            f"{self.epochs} epochs, "
            f"batch {self.batch_size}, {self.optimizer} lr {self.lr:g}"
            f"{''.join(', ' + e for e in extras)}, seed {self.seed}"
        )

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        if not path.is_file():
            raise CxrlabError(f"{path}: no run config here (is this a cxrlab run folder?)")
        data = read_json(path)
        unknown = sorted(set(data) - FIELDS)
        if unknown:  # a field this version does not know would be silently dropped: refuse
            raise CxrlabError(
                f"{path}: unknown field(s) {', '.join(unknown)} (written by another cxrlab "
                "version?); remove them or use that version"
            )
        return cls(**data)  # a field missing from an older run takes today's default


FIELDS = frozenset(f.name for f in fields(RunConfig))

# Where and how a run executes, not what it computes: free to differ between the runs of one
# comparison (compare reuses a finished run whatever they were). The rest of RunConfig is the
# recipe.
RUNTIME_FIELDS = frozenset(
    {"num_workers", "devices", "num_nodes", "strategy", "accelerator", "logger", "channels_last"}
)
# Of those, what may change when a run is resumed (the others change how batches are split).
EXECUTION_ONLY = frozenset({"num_workers", "logger"})


# the fine-tuning recipe, shared by the baseline and the proposed model (see PRESETS)
FINETUNE: dict[str, object] = dict(
    mode="finetune",
    epochs=10,
    batch_size=32,
    lr=1e-3,
    backbone_lr_scale=0.1,
    freeze_bn=True,
    patience=4,
)

PRESETS: dict[str, dict[str, object]] = {
    # The pretrained network unchanged, a new linear head trained on cached features.
    "frozen": dict(
        mode="frozen",
        epochs=60,
        batch_size=256,
        lr=1e-3,
        augment=False,
        label_smoothing=0.0,
        patience=15,
        warmup_epochs=0.0,
    ),
    # All layers trained, backbone at a tenth of the head's learning rate, BatchNorm frozen.
    "finetune": FINETUNE,
    # From random weights: one learning rate everywhere, BatchNorm trained.
    "scratch": dict(
        mode="finetune",
        pretrained=False,
        epochs=15,
        batch_size=32,
        lr=1e-3,
        backbone_lr_scale=1.0,
        freeze_bn=False,
        patience=5,
    ),
    # The proposed model (second design) is trained exactly as the fine-tuned baseline: it differs
    # from it in its head alone, so a comparison under this recipe measures that head.
    "proposed": dict(FINETUNE),
    # The first design's recipe: finetune plus an EMA of the weights. (Test-time augmentation was
    # tried and left out: it lowered validation macro-F1 on two seeds of three; see the README.)
    "proposed_v1": FINETUNE | dict(ema_decay=0.998),
    # Seconds on a laptop: for checking a setup, not for numbers.
    "smoke": dict(epochs=2, image_size=64, batch_size=16, patience=2),
}


def preset(name: str, **overrides: object) -> RunConfig:
    """The named recipe with ``overrides`` applied."""
    return resolve(name, typed=overrides).config


# Where a field's value came from, in the order they override each other.
Origin = Literal["default", "preset", "file", "typed", "stored"]


@dataclass(frozen=True)
class RecipeFile:
    """The fields a recipe file sets: YAML or JSON, so a run's own ``config.json`` works."""

    path: Path
    fields: Mapping[str, object]

    @classmethod
    def read(cls, path: Path) -> RecipeFile:
        """The file's fields; an unreadable file or an unknown field is an error naming it."""
        import yaml

        try:
            data = yaml.safe_load(read_text(path)) or {}
        except OSError as exc:
            raise ConfigError(
                "config_file", f"cannot be read ({exc.strerror})", value=path
            ) from None
        except yaml.YAMLError as exc:
            raise ConfigError(
                "config_file", f"not YAML or JSON ({str(exc).splitlines()[0]})", value=path
            ) from None
        if not isinstance(data, dict):
            raise ConfigError("config_file", "expected field: value lines (a mapping)", value=path)
        unknown = sorted(set(map(str, data)) - FIELDS)
        if unknown:
            raise ConfigError(
                "config_file",
                f"unknown field(s) {', '.join(unknown)} "
                f"(the fields are RunConfig's: {', '.join(f.name for f in fields(RunConfig))})",
                value=path,
            )
        return cls(Path(path), data)

    def only(self, names: Collection[str]) -> RecipeFile:
        """The same file, reduced to the fields in ``names``."""
        return RecipeFile(self.path, {k: v for k, v in self.fields.items() if k in names})


@dataclass(frozen=True)
class Resolved:
    """A run's config and, field by field, where its value came from."""

    config: RunConfig
    origins: Mapping[str, Origin]

    def given(self, origin: Origin) -> dict[str, object]:
        """The fields whose value came from ``origin``, with their values."""
        return {k: getattr(self.config, k) for k, o in self.origins.items() if o == origin}


def resolve(
    preset_name: str | None = None,
    *,
    file: RecipeFile | None = None,
    typed: Mapping[str, object] | None = None,
    stored: Path | None = None,
) -> Resolved:
    """The one precedence of a run's settings: defaults < preset < recipe file < typed values.

    Resuming (``stored``: the run's ``config.json``), the run keeps its stored config: a recipe
    file is refused, and a preset or typed value that contradicts the stored recipe is an error
    listing each (a value that only changes how the run executes, ``EXECUTION_ONLY``, is not).
    ``preset_name`` None means none was asked for: ``finetune`` for a new run. ``None`` values
    are not set. An invalid value is a :class:`ConfigError` saying where it came from.
    """
    typed = {k: v for k, v in (typed or {}).items() if v is not None}
    if stored is not None:
        return _resumed(stored, preset_name, file, typed)
    name = preset_name or "finetune"
    origins: dict[str, Origin] = dict.fromkeys(FIELDS, "default")
    values: dict[str, object] = {}
    layers: list[tuple[Origin, Mapping[str, object]]] = [
        ("preset", _preset(name)),
        ("file", file.fields if file else {}),
        ("typed", typed),
    ]
    for origin, layer in layers:
        for key, value in layer.items():
            if value is not None:
                values[key], origins[key] = value, origin
    try:
        config = RunConfig().updated(**values)
    except ConfigError as exc:
        origin = origins.get(exc.field or "", "typed")
        where = {"file": str(file.path) if file else None, "preset": name}.get(origin)
        raise exc.came_from(origin, where) from None
    return Resolved(config, origins)


def _preset(name: str) -> Mapping[str, object]:
    """The fields the preset ``name`` sets; an unknown name is an error listing the presets."""
    if name not in PRESETS:
        raise ConfigError("preset", f"'{name}' is not one of {', '.join(PRESETS)}")
    return PRESETS[name]


def _resumed(
    stored_file: Path,
    preset_name: str | None,
    file: RecipeFile | None,
    typed: Mapping[str, object],
) -> Resolved:
    """The stored config of a resumed run; what contradicts it is one error."""
    if file is not None:
        raise ConfigError(
            "config_file", "a resumed run keeps its own config.json; leave {config_file} out"
        )
    if not stored_file.is_file():
        raise ConfigError("resume", f"{stored_file.parent} holds no run to resume (no config.json)")
    stored = RunConfig.load(stored_file)
    requested: dict[str, tuple[str, object]] = {}  # field -> (what asked for it, the value)
    if preset_name is not None:
        requested |= {k: (f"{{preset}} {preset_name}", v) for k, v in _preset(preset_name).items()}
    requested |= {
        k: (f"{{{k}}}" if k == "pretrained" else f"{{{k}}} {v}", v)  # --no-pretrained: a flag
        for k, v in typed.items()
    }
    conflicts = [
        f"{asked} (the run has {k} {getattr(stored, k)})"
        for k, (asked, value) in requested.items()
        if k not in EXECUTION_ONLY and getattr(stored, k) != value
    ]
    if conflicts:
        raise ConfigError(
            "resume",
            f"{'; '.join(conflicts)}: a resumed run keeps its recipe; "
            "leave these out, or train into another {run_dir}",
        )
    return Resolved(stored, dict.fromkeys(FIELDS, "stored"))
