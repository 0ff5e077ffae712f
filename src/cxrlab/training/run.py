"""One training run, end to end: data → model → Lightning fit → test once → run folder.

The run folder (its files are named in :mod:`cxrlab.artifacts`) holds everything needed to
trust, repeat or resume the run: config, split, history, checkpoints, ``model.pt``, the
predictions and ``metrics.json``, written last.

Protocol: the model is chosen on validation macro-F1 (carved from train); the test split is
read once, after training, with the chosen checkpoint.

Several devices or nodes (``devices``, ``num_nodes``, ``strategy`` in the config) train with
Lightning's DDP: Lightning starts one process per device by re-running the same command. The
first process (rank 0) writes the run folder; the others reuse its split and write nothing.
After training, rank 0 alone tests the chosen checkpoint on the whole test split, so every
test image counts exactly once (no DistributedSampler padding in the reported metrics).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import TensorDataset

from cxrlab.artifacts import CONFIG_JSON, HISTORY_CSV, SPLIT_CSV, RunDir, read_json
from cxrlab.data.cache import CacheSpec, ImageCache, build_cache
from cxrlab.data.datasets import CachedImageDataset, make_split, rows_for
from cxrlab.data.discover import DatasetIndex, discover
from cxrlab.data.split import class_weights, load_split, save_split
from cxrlab.device import pick_device
from cxrlab.errors import CxrlabError
from cxrlab.evaluation.calibration import (
    CalibrationEffect,
    OperatingResult,
    choose_operating_point,
    fit_temperature,
    parse_target_recall,
    run_target,
    softmax,
    target_name,
)
from cxrlab.evaluation.metrics import classification_metrics, headline_intervals
from cxrlab.evaluation.predict import (
    inference_speed,
    predict_logits,
    write_predictions,
)
from cxrlab.fileio import atomic_open, atomic_write_text, locked
from cxrlab.models.checkpoint import save_checkpoint
from cxrlab.models.registry import CxrClassifier, check_model, create_model
from cxrlab.models.weights import safe_load
from cxrlab.training.augment import loader_augmentation
from cxrlab.training.config import RunConfig
from cxrlab.training.datamodule import CxrDataModule
from cxrlab.training.frozen import cached_features
from cxrlab.training.module import ClassifierModule

HISTORY_FIELDS = (
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_macro_f1",
    "epoch_time_s",
    "val_n",
)


@dataclass
class PreparedData:
    """A dataset opened for training: its cache, subsets and cache rows per subset."""

    index: DatasetIndex
    cache: ImageCache
    subsets: dict[str, list[tuple[str, str]]]
    rows: dict[str, np.ndarray]
    skipped: dict[str, str] = field(
        default_factory=dict
    )  # files of the split that could not be decoded: why

    @property
    def classes(self) -> list[str]:
        return list(self.index.classes)

    def labels(self, subset: str) -> np.ndarray:
        return self.cache.labels[self.rows[subset]]


def prepare_data(
    data: Path,
    config: RunConfig,
    *,
    split_file: Path | None = None,
    cache_root: Path | None = None,
    workers: int = 2,
    progress: bool = True,
) -> PreparedData:
    """Discover, cache and split ``data``; reuse ``split_file`` when it exists.

    Files that cannot be decoded are taken out of the subsets (and so out of ``split.csv``) and
    listed in ``skipped`` with the reason, so the saved split and every count agree.
    """
    index = discover(data)
    index.require("train")
    cache = build_cache(
        index,
        CacheSpec(config.image_size, config.resize),
        cache_root=cache_root,
        workers=workers,
        progress=progress,
    )
    if split_file is not None and split_file.is_file():
        subsets = load_split(split_file)
    else:
        subsets = make_split(
            index, val_fraction=config.val_fraction, seed=config.seed, manifest=config.manifest
        )
    usable = {path for path, ok in zip(cache.paths, cache.ok) if ok}
    skipped = {
        path: cache.errors.get(path, f"{path}: no longer in the dataset")
        for items in subsets.values()
        for path, _ in items
        if path not in usable
    }
    subsets = {
        name: [item for item in items if item[0] in usable] for name, items in subsets.items()
    }
    rows = {name: rows_for(cache, items) for name, items in subsets.items()}
    for name in ("train", "val"):
        present = set(cache.labels[rows.get(name, np.zeros(0, np.int64))].tolist())
        missing = [c for k, c in enumerate(index.classes) if k not in present]
        if missing:
            raise CxrlabError(
                f"{data}: the {name} subset has no usable images of class {', '.join(missing)}"
            )
    return PreparedData(index, cache, subsets, rows, skipped)


class HistoryWriter(Callback):
    """Rewrite ``history.csv`` after every epoch (so a killed run keeps its curves)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_epoch_end(self, trainer: L.Trainer, module: ClassifierModule) -> None:
        if trainer.is_global_zero:
            write_history(self.path, module.history)


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    with atomic_open(path, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        for row in history:
            writer.writerow(
                {
                    k: (int(row[k]) if k == "epoch" else f"{row.get(k, math.nan):.6g}")
                    for k in HISTORY_FIELDS
                }
            )


def _loggers(config: RunConfig, run_dir: Path) -> list[Logger]:
    """CSV always (a resumed run logs into a new folder, keeping the old logs); TensorBoard or
    MLflow on request."""
    versions = (
        [p.name for p in RunDir(run_dir).logs.glob("csv*")] if RunDir(run_dir).logs.is_dir() else []
    )
    loggers: list[Logger] = [
        CSVLogger(run_dir, name="logs", version=f"csv-{len(versions)}" if versions else "csv")
    ]
    try:
        if config.logger == "tensorboard":
            from lightning.pytorch.loggers import TensorBoardLogger

            loggers.append(TensorBoardLogger(run_dir, name="logs", version="tensorboard"))
        elif config.logger == "mlflow":
            from lightning.pytorch.loggers import MLFlowLogger

            loggers.append(
                MLFlowLogger(
                    experiment_name="cxrlab",
                    run_name=run_dir.name,
                    tracking_uri=f"file:{run_dir / 'logs' / 'mlruns'}",
                )
            )
    except ImportError as exc:  # Lightning raises ModuleNotFoundError when the backend is missing
        raise CxrlabError(
            f"--logger {config.logger}: the {config.logger} package is not installed "
            f"(pip install {config.logger})"
        ) from exc
    return loggers


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written whole or not at all (a kill mid-write keeps the previous
    file)."""

    def save_checkpoint(
        self, checkpoint: dict, path: str | Path, storage_options: object | None = None
    ) -> None:
        with atomic_open(path, "wb") as handle:
            torch.save(checkpoint, handle)


def quiet_lightning() -> None:
    """Keep Lightning's banners and known-harmless warnings out of the user's terminal."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    for message in (
        ".*LeafSpec.*",
        ".*smaller than the logging interval.*",
        ".*module\\(s\\) in eval mode.*",
        ".*does not have many workers.*",
        ".*Checkpoint directory .* exists and is not empty.*",
        ".*sync_dist=True.*",
        ".*overridden `on_after_batch_transfer`.*",
    ):
        warnings.filterwarnings("ignore", message=message)


def _precision(config: RunConfig) -> str:
    if config.precision != "auto":
        return config.precision
    on_gpu = torch.cuda.is_available() and config.accelerator in ("auto", "gpu", "cuda")
    return "bf16-mixed" if on_gpu else "32-true"


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def build_trainer(
    config: RunConfig,
    device: torch.device,
    *,
    callbacks: list[Callback],
    logger: list[Logger] | bool,
    progress: bool,
    root: Path,
    **overrides: object,
) -> L.Trainer:
    """The Lightning Trainer of a run (``overrides``: extra Trainer arguments, e.g. for
    benchmarks)."""
    settings: dict[str, object] = dict(
        max_epochs=config.epochs,
        accelerator="cpu"
        if device.type == "cpu" and config.accelerator == "auto"
        else config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        precision=_precision(config),
        callbacks=callbacks,
        logger=logger,
        deterministic=True
        if device.type == "cpu"
        else "warn",  # some CUDA kernels have no deterministic version
        num_sanity_val_steps=0,
        enable_progress_bar=progress,
        enable_model_summary=False,
        default_root_dir=root,
        plugins=[AtomicCheckpointIO()],
    )
    return L.Trainer(**(settings | overrides))


@dataclass
class RunResult:
    """Where a finished run lives and its headline numbers."""

    run_dir: Path
    config: RunConfig
    metrics: dict

    @classmethod
    def load(cls, run_dir: Path) -> RunResult:
        files = RunDir(run_dir)
        if not files.is_finished:
            raise CxrlabError(
                f"{run_dir}: no metrics.json (the run has not finished; resume it with --resume)"
            )
        return cls(run_dir, RunConfig.load(files.config), read_json(files.metrics))


def is_finished(run_dir: Path) -> bool:
    return RunDir(run_dir).is_finished


def is_resumable(run_dir: Path) -> bool:
    """A run that finished at least one epoch (a folder with only a config failed before that)."""
    return RunDir(run_dir).config.is_file() and (
        is_finished(run_dir) or RunDir(run_dir).last_checkpoint.is_file()
    )


def launched_rank() -> int:
    """This process's global rank when a DDP launcher started it (0 for the first or only process).

    Known before the Trainer exists, from the variables Lightning's launchers (and SLURM,
    torchrun) set.
    """
    import os

    for name in ("RANK", "SLURM_PROCID"):
        if name in os.environ:
            return int(os.environ[name])
    return int(os.environ.get("LOCAL_RANK", 0)) + int(os.environ.get("NODE_RANK", 0))


RUN_FILES = (CONFIG_JSON, SPLIT_CSV, HISTORY_CSV, "checkpoints", "logs")  # before epoch 1 ends


def discard_unstarted(run_dir: Path) -> None:
    """Remove what a run that never finished an epoch wrote: cxrlab's own files, nothing else."""
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def check_runnable(config: RunConfig, *, model_option: str = "--model") -> None:
    """Refuse, before any caching or training, what cannot run here: an unknown model, images too
    small for it, a GPU that is not there, a global batch that the processes cannot share."""
    check_model(config.model, config.image_size, option=model_option)
    if config.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise CxrlabError(
            f"--accelerator {config.accelerator}: no CUDA GPU is available here; "
            "use --accelerator cpu or auto"
        )
    from lightning.pytorch.strategies import StrategyRegistry

    if config.strategy != "auto" and config.strategy not in StrategyRegistry:
        raise CxrlabError(
            f"--strategy {config.strategy}: not a Lightning strategy "
            "(e.g. auto, ddp, ddp_spawn, fsdp)"
        )
    processes = planned_processes(config)
    if config.batch_size % processes:
        raise CxrlabError(
            f"--batch-size {config.batch_size}: "
            f"not divisible by the {processes} training processes "
            f"(--devices {config.devices} x --num-nodes {config.num_nodes}); "
            "the batch is split evenly over them"
        )


def planned_processes(config: RunConfig) -> int:
    """How many training processes Lightning will start for ``config`` (devices x nodes)."""
    devices = config.devices.strip()
    on_gpu = torch.cuda.is_available() and config.accelerator in ("auto", "gpu", "cuda")
    if devices in ("auto", "-1"):
        count = torch.cuda.device_count() if on_gpu else 1
    elif "," in devices or devices.startswith("["):
        count = len([d for d in devices.strip("[]").split(",") if d.strip()])
    else:
        try:
            count = int(devices)
        except ValueError:
            raise CxrlabError(
                f"--devices {config.devices}: not a number, a list like 0,1, or auto"
            ) from None
        if count < 1:
            raise CxrlabError(f"--devices {config.devices}: must be at least 1 (or auto)")
    return count * config.num_nodes


def subset_logits(
    model: CxrClassifier,
    prepared: PreparedData,
    name: str,
    *,
    feats: dict[str, np.ndarray] | None,
    device: torch.device,
    batch_size: int,
    progress: bool,
) -> np.ndarray:
    """The model's logits for the films of one subset (frozen mode: its head on the cached
    features)."""
    if feats is not None:
        with torch.no_grad():
            return model.head(torch.from_numpy(feats[name])).double().numpy()
    dataset = CachedImageDataset(prepared.cache, prepared.rows[name])
    return predict_logits(
        model,
        dataset,
        batch_size=batch_size,
        device=device,
        progress=progress,
        description=f"Predicting {name}",
    )


def calibrate_and_test(
    run_dir: Path,
    model: CxrClassifier,
    config: RunConfig,
    prepared: PreparedData,
    logits: dict[str, np.ndarray],
    metrics: dict,
) -> None:
    """Fit the temperature (and the operating point of ``config.target_recall``) on the validation
    logits, save ``model.pt`` with them, write ``val_predictions.csv`` and ``test_predictions.csv``
    (calibrated), and put the test metrics, the calibration and the operating point into
    ``metrics``."""
    classes = prepared.classes
    y_val = prepared.labels("val")
    temperature = fit_temperature(logits["val"], y_val)
    val_probs = softmax(logits["val"], temperature)
    point = None
    if config.target_recall:
        point = choose_operating_point(
            val_probs, y_val, classes, *parse_target_recall(config.target_recall, classes)
        )
    save_checkpoint(
        model,
        RunDir(run_dir).model,
        image_size=config.image_size,
        resize=config.resize,
        tta=model.tta,
        config=asdict(config),
        temperature=temperature,
        operating_point=asdict(point) if point else None,
    )

    def paths(subset: str) -> list[str]:
        return [prepared.cache.paths[r] for r in prepared.rows[subset]]

    write_predictions(
        RunDir(run_dir).val_predictions, paths("val"), y_val, val_probs, classes, point
    )
    calibration = {
        "temperature": temperature,
        "val": asdict(CalibrationEffect.of(logits["val"], y_val, temperature)),
    }
    if point is not None:
        metrics["operating_point"] = asdict(point)
    if "test" in logits:
        y_true = prepared.labels("test")
        probs = softmax(logits["test"], temperature)
        calibration["test"] = asdict(CalibrationEffect.of(logits["test"], y_true, temperature))
        metrics["test"] = classification_metrics(y_true, probs, classes)
        metrics["intervals"] = {
            k: asdict(v) for k, v in headline_intervals(y_true, probs, classes).items()
        }
        write_predictions(
            RunDir(run_dir).test_predictions, paths("test"), y_true, probs, classes, point
        )
        if point is not None:
            metrics["operating_point"]["test"] = asdict(
                OperatingResult.of(point, y_true, probs, classes)
            )
    metrics["calibration"] = calibration


def is_calibrated(metrics: dict, target_recall: str | None = None) -> bool:
    """Whether a finished run (its ``metrics.json``) has its temperature (and, when asked, that
    operating point)."""
    wanted = target_recall is None or run_target(metrics) == target_name(
        *parse_target_recall(target_recall)
    )
    return "calibration" in metrics and wanted


def calibrate_run(
    run_dir: Path,
    data: Path,
    *,
    target_recall: str | None = None,
    cache_root: Path | None = None,
    workers: int = 2,
    device: str = "auto",
    progress: bool = True,
) -> RunResult:
    """Calibrate a finished run (one made before calibration existed), or give it the operating
    point ``target_recall``: the temperature and the threshold are fitted on the run's own
    validation split, ``model.pt``, the predictions and ``metrics.json`` are rewritten. The model
    and its test split are those of the run; nothing is trained or selected."""
    from cxrlab.models.checkpoint import load_checkpoint

    run_dir = Path(run_dir)
    result = RunResult.load(run_dir)
    config = result.config.updated(target_recall=target_recall)
    model = load_checkpoint(RunDir(run_dir).model)
    busy = f"{run_dir}: another cxrlab process is writing this run; wait for it"
    with locked(run_dir, busy=busy):
        prepared = prepare_data(
            data,
            config,
            split_file=RunDir(run_dir).split,
            cache_root=cache_root,
            workers=workers,
            progress=progress,
        )
        if prepared.classes != list(model.classes):
            raise CxrlabError(
                f"{data}: classes {prepared.classes} are not the run's {list(model.classes)} "
                "(is this the run's dataset?)"
            )
        if config.target_recall:
            parse_target_recall(config.target_recall, prepared.classes)
        torch_device = pick_device(device)
        logits = {
            name: subset_logits(
                model,
                prepared,
                name,
                feats=None,
                device=torch_device,
                batch_size=64,
                progress=progress,
            )
            for name in ("val", "test")
            if name in prepared.rows and len(prepared.rows[name])
        }
        metrics = dict(result.metrics)
        calibrate_and_test(run_dir, model, config, prepared, logits, metrics)
        config.save(RunDir(run_dir).config)
        atomic_write_text(RunDir(run_dir).metrics, json.dumps(metrics, indent=2) + "\n")
    return RunResult(run_dir, config, metrics)


def train_run(
    data: Path,
    config: RunConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    cache_root: Path | None = None,
    workers: int = 2,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> RunResult:
    """Train ``config`` on ``data`` into ``run_dir``, then test the chosen checkpoint once.

    With ``resume``, the run's own saved config and split are used and training continues
    from ``checkpoints/last.ckpt`` with every random generator as it was there, so the result is
    the one an uninterrupted run gives; a finished run is returned as it is. A run that fails
    before its first epoch is finished leaves nothing behind (a killed one is recognised and
    replaced by the next run into the folder). One process at a time trains into a folder.
    """
    run_dir = Path(run_dir)
    config_file, last = RunDir(run_dir).config, RunDir(run_dir).last_checkpoint
    if launched_rank() != 0:  # a DDP process started by Lightning: rank 0 owns the run folder
        config = RunConfig.load(config_file) if resume else config
        return _fit_and_test(
            data,
            config,
            run_dir,
            resume=resume,
            worker=True,
            cache_root=cache_root,
            workers=workers,
            progress=False,
            say=say,
        )
    if resume:
        if not config_file.is_file():
            raise CxrlabError(f"--resume: {run_dir} holds no run to resume (no config.json)")
        config = RunConfig.load(config_file)
        if is_finished(run_dir):
            return RunResult.load(run_dir)
    check_runnable(config)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    busy = (
        f"{run_dir}: another cxrlab process is training into this folder; "
        "wait for it, or choose another --out"
    )
    with locked(run_dir, busy=busy):
        if resume:
            if not last.is_file():
                raise CxrlabError(
                    f"--resume: the run in {run_dir} never finished an epoch, "
                    "so there is nothing to resume; start it again without --resume"
                )
            safe_load(
                last, "--resume"
            )  # a damaged checkpoint is named here, not deep inside Lightning
        elif is_resumable(run_dir):
            raise CxrlabError(
                f"{run_dir}: a run already exists here; "
                "pass --resume to continue it, or another --out"
            )
        elif config_file.is_file():
            discard_unstarted(run_dir)
            say(f"note: {run_dir} held a run that failed before its first epoch; it is replaced")
        try:
            return _fit_and_test(
                data,
                config,
                run_dir,
                resume=resume,
                worker=False,
                cache_root=cache_root,
                workers=workers,
                progress=progress,
                say=say,
            )
        except BaseException:
            if not last.is_file():  # failed before its first epoch: leave nothing
                discard_unstarted(run_dir)
                if created and not any(run_dir.iterdir()):
                    run_dir.rmdir()
            raise


def _fit_and_test(
    data: Path,
    config: RunConfig,
    run_dir: Path,
    *,
    resume: bool,
    worker: bool,
    cache_root: Path | None,
    workers: int,
    progress: bool,
    say: Callable[[str], None],
) -> RunResult:
    """Prepare the data, fit, choose on validation, test once, write the run folder."""
    config_file, last = RunDir(run_dir).config, RunDir(run_dir).last_checkpoint
    prepared = prepare_data(
        data,
        config,
        split_file=RunDir(run_dir).split if resume or worker else None,
        cache_root=cache_root,
        workers=workers,
        progress=progress,
    )
    if not worker:
        for reason in list(prepared.skipped.values())[:10]:
            say(f"skipped {reason}")
        if len(prepared.skipped) > 10:
            say(
                f"skipped {len(prepared.skipped) - 10} more unreadable file(s) "
                "(listed in metrics.json)"
            )
    if not worker and not resume:
        config.save(config_file)
        save_split(RunDir(run_dir).split, prepared.subsets)
    classes = prepared.classes
    if config.target_recall:  # its class is checked before any training
        parse_target_recall(config.target_recall, classes)

    quiet_lightning()
    L.seed_everything(config.seed, workers=True, verbose=False)
    model = create_model(
        config.model, classes, pretrained=config.pretrained, weights=config.weights
    )
    weights = (
        class_weights(prepared.labels("train"), len(classes))
        if config.balance == "weights"
        else None
    )
    device = pick_device("cpu" if config.accelerator == "cpu" else "auto")

    timings: dict[str, float] = {}
    feats: dict[str, np.ndarray] | None = (
        None  # frozen mode: the backbone's features of each subset
    )
    if config.mode == "frozen":
        for p in model.backbone_parameters():
            p.requires_grad_(False)
        started = time.perf_counter()
        origin = config.weights or (
            "imagenet" if config.pretrained else f"scratch-seed{config.seed}"
        )
        key = f"{config.model}|{origin}"
        feats = {
            name: cached_features(
                model, prepared.cache, prepared.rows[name], key, device=device, progress=progress
            )
            for name in ("train", "val", "test")
            if name in prepared.rows
        }
        timings["features_s"] = time.perf_counter() - started

        def subset(name: str) -> TensorDataset:
            return TensorDataset(
                torch.from_numpy(feats[name]), torch.from_numpy(prepared.labels(name))
            )

        net: torch.nn.Module = model.head
        train_set, val_set = subset("train"), subset("val")
    else:
        net = model
        if config.channels_last:
            net = net.to(memory_format=torch.channels_last)
        train_set = CachedImageDataset(
            prepared.cache, prepared.rows["train"], transform=loader_augmentation(config)
        )
        val_set = CachedImageDataset(prepared.cache, prepared.rows["val"])

    module = ClassifierModule(net, config, len(classes), weights)
    datamodule = CxrDataModule(train_set, val_set, prepared.labels("train"), config)
    checkpoints = ModelCheckpoint(
        dirpath=RunDir(run_dir).checkpoints, filename="best", monitor="val_macro_f1", mode="max"
    )
    latest = ModelCheckpoint(
        dirpath=RunDir(run_dir).checkpoints, filename="last", enable_version_counter=False
    )  # every epoch
    callbacks: list[Callback] = [
        checkpoints,
        latest,
        EarlyStopping(monitor="val_macro_f1", mode="max", patience=config.patience),
        HistoryWriter(RunDir(run_dir).history),
    ]
    if progress:
        callbacks.append(RichProgressBar())
    trainer = build_trainer(
        config,
        device,
        callbacks=callbacks,
        logger=_loggers(config, run_dir),
        progress=progress,
        root=run_dir,
        log_every_n_steps=min(10, max(1, len(train_set) // config.batch_size)),
    )
    trainer.fit(
        module,
        datamodule=datamodule,
        ckpt_path=last if resume and last.is_file() else None,
        weights_only=True,
    )
    if not trainer.is_global_zero:
        return RunResult(run_dir, config, {})

    # the callback's best, or (a resumed run whose folder was moved: the remembered path is gone)
    # its copy here
    candidates = [Path(checkpoints.best_model_path)] if checkpoints.best_model_path else []
    best = next(
        (p for p in [*candidates, RunDir(run_dir).checkpoints / "best.ckpt"] if p.is_file()), last
    )
    state = safe_load(best, "Lightning checkpoint")["state_dict"]
    module.load_state_dict(state)
    if module.ema is not None:
        net.load_state_dict(module.ema.module.state_dict())
    # (ddp_spawn trains in child processes: then the history comes back through the last checkpoint)
    history = module.history or safe_load(last, "Lightning checkpoint").get("cxrlab_history", [])
    best_epoch = int(np.nanargmax([row["val_macro_f1"] for row in history])) if history else -1
    timings["train_s"] = float(sum(row["epoch_time_s"] for row in history))
    model.eval()
    model.tta = (
        config.tta and config.mode == "finetune"
    )  # frozen mode tests cached features: no views

    metrics: dict[str, object] = {
        "run": config.run_name,
        "description": config.describe(),
        "classes": classes,
        "sizes": {name: int(len(r)) for name, r in prepared.rows.items()},
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "best_val_macro_f1": float(history[best_epoch]["val_macro_f1"]) if history else math.nan,
        "parameters": count_parameters(model),
        "trainable_parameters": count_parameters(net, trainable_only=True),
        "timings": timings,
        "training_processes": trainer.world_size,  # > 1: DDP
        "skipped": prepared.skipped,
    }
    batch_size = max(64, config.batch_size)
    logits = {
        "val": subset_logits(
            model,
            prepared,
            "val",
            feats=feats,
            device=device,
            batch_size=batch_size,
            progress=progress,
        )
    }
    if "test" in prepared.rows and len(
        prepared.rows["test"]
    ):  # the test split, once, with the checkpoint chosen on validation
        started = time.perf_counter()
        logits["test"] = subset_logits(
            model,
            prepared,
            "test",
            feats=feats,
            device=device,
            batch_size=batch_size,
            progress=progress,
        )
        timings["test_s"] = time.perf_counter() - started
    calibrate_and_test(run_dir, model, config, prepared, logits, metrics)
    if (
        model.tta and "test" in logits
    ):  # the same checkpoint without test-time augmentation, for the ablation
        model.tta = False
        plain = subset_logits(
            model,
            prepared,
            "test",
            feats=None,
            device=device,
            batch_size=batch_size,
            progress=progress,
        )
        metrics["test_without_tta"] = classification_metrics(
            prepared.labels("test"), softmax(plain, metrics["calibration"]["temperature"]), classes
        )
        model.tta = True
    metrics["inference_img_per_s"] = inference_speed(model, config.image_size, device=device)
    metrics["inference_device"] = device.type
    atomic_write_text(
        RunDir(run_dir).metrics, json.dumps(metrics, indent=2) + "\n"
    )  # last: it marks the run finished
    return RunResult(run_dir, config, metrics)
