"""One training run, end to end: data → model → Lightning fit → test once → run folder.

The run folder (its files are named in :mod:`cxrlab.artifacts`) holds everything needed to
trust, repeat or resume the run: config, split, history, checkpoints, ``model.pt``, the
predictions and ``metrics.json``, written last.

Protocol: the model is chosen on validation macro-F1 (carved from train); the test split is
read once, after training, with the chosen checkpoint.

:func:`train_run` owns the run folder (its lock, ``--resume``, the clean-up of a run that
failed before its first epoch) and composes the steps, each a function of a
:class:`RunContext`: :func:`prepare` → :func:`fit` → :func:`select` → :func:`test` →
:func:`write`. What differs between frozen and fine-tuned runs is the run's
:class:`~cxrlab.training.modes.TrainingMode`.

Several devices or nodes (``devices``, ``num_nodes``, ``strategy`` in the config) train with
Lightning's DDP: Lightning starts one process per device by re-running the same command. The
first process (rank 0) writes the run folder; the others reuse its split and write nothing.
After training, rank 0 alone tests the chosen checkpoint on the whole test split, so every
test image counts exactly once (no DistributedSampler padding in the reported metrics).
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import Logger
from torch import nn

from cxrlab.artifacts import CONFIG_JSON, HISTORY_CSV, SPLIT_CSV, RunDir
from cxrlab.config import RunConfig
from cxrlab.data.split import class_weights, save_split
from cxrlab.device import pick_device
from cxrlab.errors import ConfigError, CxrlabError
from cxrlab.evaluation.calibration import softmax
from cxrlab.evaluation.metrics import classification_metrics
from cxrlab.evaluation.predict import inference_speed
from cxrlab.fileio import atomic_write_text, locked
from cxrlab.models.registry import CxrClassifier, create_model
from cxrlab.models.tta import with_tta
from cxrlab.models.weights import safe_load
from cxrlab.progress import progress_bars, shown
from cxrlab.records import HistoryRow, RunMetrics, parse_target_recall
from cxrlab.training.datamodule import CxrDataModule
from cxrlab.training.modes import TrainingMode, training_mode
from cxrlab.training.module import ClassifierModule
from cxrlab.training.prepared import PreparedData, prepare_data, subset_logits
from cxrlab.training.testing import calibrate_and_test
from cxrlab.training.trainer import (
    HistoryWriter,
    build_trainer,
    check_runnable,
    count_parameters,
    launched_rank,
    make_loggers,
    quiet_lightning,
)


@dataclass
class RunResult:
    """Where a finished run lives and its headline numbers."""

    run_dir: Path
    config: RunConfig
    metrics: RunMetrics | None  # None in a DDP worker process (rank 0 tests and writes)

    @classmethod
    def load(cls, run_dir: Path) -> RunResult:
        files = RunDir(run_dir)
        files.check_finished()
        return cls(run_dir, RunConfig.load(files.config), RunMetrics.load(files.metrics))


@dataclass(frozen=True)
class RunContext:
    """What every step of one run reads: its data, recipe and folder, and how it reports."""

    data: Path
    config: RunConfig
    run_dir: Path
    resume: bool = False  # continue from checkpoints/last.ckpt, with the saved split
    worker: bool = False  # a DDP process of rank > 0: it trains beside rank 0 and writes nothing
    cache_root: Path | None = None  # where the decode-once image cache lives (None: the default)
    workers: int = 2  # processes that decode images into the cache
    say: Callable[[str], None] = print  # where notes for the user go

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "run_dir", Path(self.run_dir))

    @property
    def files(self) -> RunDir:
        """The run folder's files."""
        return RunDir(self.run_dir)

    @property
    def mode(self) -> TrainingMode:
        """How this run trains (frozen backbone or fine-tuning)."""
        return training_mode(self.config)


def is_finished(run_dir: Path) -> bool:
    return RunDir(run_dir).is_finished


def is_resumable(run_dir: Path) -> bool:
    """A run that finished at least one epoch (a folder with only a config failed before that)."""
    return RunDir(run_dir).config.is_file() and (
        is_finished(run_dir) or RunDir(run_dir).last_checkpoint.is_file()
    )


RUN_FILES = (CONFIG_JSON, SPLIT_CSV, HISTORY_CSV, "checkpoints", "logs")  # before epoch 1 ends


def discard_unstarted(run_dir: Path) -> None:
    """Remove what a run that never finished an epoch wrote: cxrlab's own files, nothing else."""
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def train_run(
    data: Path,
    config: RunConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    cache_root: Path | None = None,
    workers: int = 2,
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
        worker = RunContext(
            data,
            config,
            run_dir,
            resume=resume,
            worker=True,
            cache_root=cache_root,
            workers=workers,
            say=say,
        )
        with progress_bars(False):  # rank 0 shows the bars
            return _steps(worker)
    if resume:
        if not config_file.is_file():
            raise ConfigError("resume", f"{run_dir} holds no run to resume (no config.json)")
        config = RunConfig.load(config_file)
        if is_finished(run_dir):
            return RunResult.load(run_dir)
    check_runnable(config)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    busy = (
        f"{run_dir}: another cxrlab process is training into this folder; "
        "wait for it, or train into another folder"
    )
    with locked(run_dir, busy=busy):
        if resume:
            if not last.is_file():
                raise ConfigError(
                    "resume",
                    f"the run in {run_dir} never finished an epoch, "
                    "so there is nothing to resume; start it again without {resume}",
                )
            try:  # a damaged checkpoint is named here, not deep inside Lightning
                safe_load(last, "the last checkpoint")
            except CxrlabError as exc:
                raise ConfigError("resume", str(exc)) from None
        elif is_resumable(run_dir):
            raise ConfigError(
                "run_dir",
                "a run already exists here; pass {resume} to continue it, or choose another folder",
                value=run_dir,
            )
        elif config_file.is_file():
            discard_unstarted(run_dir)
            say(f"note: {run_dir} held a run that failed before its first epoch; it is replaced")
        ctx = RunContext(
            data,
            config,
            run_dir,
            resume=resume,
            cache_root=cache_root,
            workers=workers,
            say=say,
        )
        try:
            return _steps(ctx)
        except BaseException:
            if not last.is_file():  # failed before its first epoch: leave nothing
                discard_unstarted(run_dir)
                if created and not any(run_dir.iterdir()):
                    run_dir.rmdir()
            raise


def _steps(ctx: RunContext) -> RunResult:
    """The run in five steps: prepare → fit → select → test → write."""
    prepared = prepare(ctx)
    fitted = fit(ctx, prepared)
    if not fitted.trainer.is_global_zero:  # a DDP worker: rank 0 selects, tests and writes
        return RunResult(ctx.run_dir, ctx.config, None)
    history = select(ctx, fitted)
    return write(ctx, test(ctx, fitted, prepared, history))


def prepare(ctx: RunContext) -> PreparedData:
    """Cache and split the data (a resumed run or a DDP worker reuses the saved split); a new
    run saves its config and split; unreadable files are reported."""
    files = ctx.files
    prepared = prepare_data(
        ctx.data,
        ctx.config,
        split_file=files.split if ctx.resume or ctx.worker else None,
        cache_root=ctx.cache_root,
        workers=ctx.workers,
    )
    if not ctx.worker:
        for reason in list(prepared.skipped.values())[:10]:
            ctx.say(f"skipped {reason}")
        if len(prepared.skipped) > 10:
            ctx.say(
                f"skipped {len(prepared.skipped) - 10} more unreadable file(s) "
                "(listed in metrics.json)"
            )
    if not ctx.worker and not ctx.resume:
        ctx.config.save(files.config)
        save_split(files.split, prepared.subsets, prepared.index.source_of)
    if ctx.config.target_recall:  # its class is checked before any training
        parse_target_recall(ctx.config.target_recall, prepared.classes)
    return prepared


@dataclass
class Learner:
    """What :func:`fit` trains: the classifier, the part of it that learns (its ``net``) as a
    LightningModule, and the data it learns from as a LightningDataModule."""

    model: CxrClassifier  # the whole classifier (tested and saved)
    net: nn.Module  # what trains: the model, or its head in frozen mode
    module: ClassifierModule
    datamodule: CxrDataModule
    device: torch.device
    features: dict[str, np.ndarray] | None  # frozen mode: the backbone's features of each subset
    timings: dict[str, float]


@dataclass
class Fitted:
    """What :func:`fit` leaves for selection and testing."""

    learner: Learner
    trainer: L.Trainer
    best_path: str  # the best checkpoint the callback saw ("" when none)


def fit(ctx: RunContext, prepared: PreparedData) -> Fitted:
    """Build the model and fit it with Lightning (resuming from ``last.ckpt`` when asked);
    checkpoints, early stopping and ``history.csv`` are written every epoch."""
    learner = build_learner(ctx, prepared)
    files = ctx.files
    best = ModelCheckpoint(  # its weights only: select() reads no more, last.ckpt resumes
        dirpath=files.checkpoints,
        filename="best",
        monitor="val_macro_f1",
        mode="max",
        save_weights_only=True,
    )
    latest = ModelCheckpoint(
        dirpath=files.checkpoints, filename="last", enable_version_counter=False
    )  # every epoch
    callbacks: list[Callback] = [
        best,
        latest,
        EarlyStopping(monitor="val_macro_f1", mode="max", patience=ctx.config.patience),
        HistoryWriter(files.history),
    ]
    if shown():
        callbacks.append(RichProgressBar())
    trainer = fit_learner(
        ctx, learner, callbacks=callbacks, logger=make_loggers(ctx.config, ctx.run_dir)
    )
    return Fitted(learner, trainer, best.best_model_path)


def build_learner(ctx: RunContext, prepared: PreparedData) -> Learner:
    """The first half of :func:`fit`: seed every generator, create the model and ready it and
    its data as the run's mode says (frozen mode computes the backbone's features here)."""
    config = ctx.config
    quiet_lightning()
    L.seed_everything(config.seed, workers=True, verbose=False)
    classes = prepared.classes
    model = create_model(
        config.model, classes, pretrained=config.pretrained, weights=config.weights
    )
    weights = (
        class_weights(prepared.labels("train"), len(classes))
        if config.balance == "weights"
        else None
    )
    device = pick_device("cpu" if config.accelerator == "cpu" else "auto")
    sets = ctx.mode.training_sets(model, prepared, device)
    module = ClassifierModule(sets.net, config, len(classes), weights)
    datamodule = CxrDataModule(
        sets.train,
        sets.val,
        prepared.labels("train"),
        config,
        train_sources=prepared.source_ids("train") if config.balance == "source" else None,
    )
    return Learner(model, sets.net, module, datamodule, device, sets.features, sets.timings)


def fit_learner(
    ctx: RunContext,
    learner: Learner,
    *,
    callbacks: list[Callback],
    logger: list[Logger] | bool,
    **trainer_args: Any,
) -> L.Trainer:
    """The second half of :func:`fit`: fit ``learner`` with the run's Lightning Trainer, rooted
    in ``ctx.run_dir`` (``trainer_args``: extra Trainer arguments, e.g. a benchmark's batch
    limits), continuing from ``last.ckpt`` when ``ctx.resume``; return the Trainer."""
    config = ctx.config
    batches = len(cast("Sized", learner.datamodule.train_set)) // config.batch_size
    trainer = build_trainer(
        config,
        learner.device,
        callbacks=callbacks,
        logger=logger,
        root=ctx.run_dir,
        **({"log_every_n_steps": min(10, max(1, batches))} | trainer_args),
    )
    last = ctx.files.last_checkpoint
    trainer.fit(
        learner.module,
        datamodule=learner.datamodule,
        ckpt_path=last if ctx.resume and last.is_file() else None,
        weights_only=True,
    )
    return trainer


def select(ctx: RunContext, fitted: Fitted) -> list[HistoryRow]:
    """Load the epoch with the best validation macro-F1 (its EMA weights when the recipe keeps
    an EMA) into the model; return the epoch history."""
    files = ctx.files
    last = files.last_checkpoint
    module = fitted.learner.module
    # the callback's best, or (a resumed run whose folder was moved: the remembered path is gone)
    # its copy here
    candidates = [Path(fitted.best_path)] if fitted.best_path else []
    best = next((p for p in [*candidates, files.checkpoints / "best.ckpt"] if p.is_file()), last)
    module.load_state_dict(safe_load(best, "Lightning checkpoint")["state_dict"])
    if module.ema is not None:
        fitted.learner.net.load_state_dict(module.ema.module.state_dict())
    # (ddp_spawn trains in child processes: then the history comes back through the last checkpoint)
    history = module.history or safe_load(last, "Lightning checkpoint").get("cxrlab_history", [])
    return [HistoryRow.from_dict(row) for row in history]


def test(
    ctx: RunContext, fitted: Fitted, prepared: PreparedData, history: list[HistoryRow]
) -> RunMetrics:
    """Calibrate on validation, test the chosen model once (and once more without test-time
    augmentation, for the ablation), measure its speed; write ``model.pt`` and the predictions
    files; return ``metrics.json``'s content."""
    config, learner = ctx.config, fitted.learner
    model, device, timings = learner.model, learner.device, learner.timings
    best_epoch = int(np.nanargmax([row.val_macro_f1 for row in history])) if history else -1
    timings["train_s"] = float(sum(row.epoch_time_s for row in history))
    model.eval()
    tta = ctx.mode.tta
    tested = with_tta(model, tta)

    def logits_of(
        subset: str,
        features: dict[str, np.ndarray] | None = learner.features,
        net: nn.Module = tested,
    ) -> np.ndarray:
        return subset_logits(
            net,
            prepared,
            subset,
            feats=features,
            device=device,
            batch_size=max(64, config.batch_size),
        )

    logits = {"val": logits_of("val")}
    if "test" in prepared.rows and len(prepared.rows["test"]):
        started = time.perf_counter()  # the test split, once, with the checkpoint chosen on val
        logits["test"] = logits_of("test")
        timings["test_s"] = time.perf_counter() - started
    metrics = RunMetrics(
        run=config.run_name,
        description=config.describe(),
        classes=prepared.classes,
        sizes={name: int(len(r)) for name, r in prepared.rows.items()},
        best_epoch=best_epoch,
        epochs_run=len(history),
        best_val_macro_f1=float(history[best_epoch].val_macro_f1) if history else math.nan,
        parameters=count_parameters(model),
        trainable_parameters=count_parameters(learner.net, trainable_only=True),
        timings=timings,
        training_processes=fitted.trainer.world_size,
        skipped=prepared.skipped,
        inference_img_per_s=inference_speed(tested, config.image_size, device=device),
        inference_device=device.type,
        sources=prepared.source_counts(),
    )
    metrics = calibrate_and_test(ctx.run_dir, model, config, prepared, logits, metrics, tta=tta)
    if tta and "test" in logits:  # the same checkpoint without test-time augmentation
        plain = logits_of("test", None, model)
        metrics.test_without_tta = classification_metrics(
            prepared.labels("test"), softmax(plain, metrics.temperature), prepared.classes
        )
    return metrics


def write(ctx: RunContext, metrics: RunMetrics) -> RunResult:
    """Write ``metrics.json``, atomically and last: a folder holding it is a finished run."""
    atomic_write_text(ctx.files.metrics, metrics.to_json())
    return RunResult(ctx.run_dir, ctx.config, metrics)
