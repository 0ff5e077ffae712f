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

import math
import shutil
import time
from collections.abc import Callable, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, RichProgressBar
from torch import nn

from cxrlab.artifacts import CONFIG_JSON, HISTORY_CSV, SPLIT_CSV, RunDir
from cxrlab.config import RunConfig
from cxrlab.data.split import class_weights, save_split
from cxrlab.device import pick_device
from cxrlab.errors import CxrlabError
from cxrlab.evaluation.calibration import (
    softmax,
)
from cxrlab.evaluation.metrics import classification_metrics
from cxrlab.evaluation.predict import (
    inference_speed,
)
from cxrlab.fileio import atomic_write_text, locked
from cxrlab.models.registry import CxrClassifier, create_model
from cxrlab.models.tta import with_tta
from cxrlab.models.weights import safe_load
from cxrlab.records import HistoryRow, RunMetrics, parse_target_recall
from cxrlab.training.datamodule import CxrDataModule
from cxrlab.training.modes import training_mode
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
        if not files.is_finished:
            raise CxrlabError(
                f"{run_dir}: no metrics.json (the run has not finished; resume it with --resume)"
            )
        return cls(run_dir, RunConfig.load(files.config), RunMetrics.load(files.metrics))


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
    """The run in five steps: prepare → fit → select → test → write."""
    prepared = _prepare(
        data,
        config,
        run_dir,
        resume=resume,
        worker=worker,
        cache_root=cache_root,
        workers=workers,
        progress=progress,
        say=say,
    )
    fitted = _fit(config, run_dir, prepared, resume=resume, progress=progress)
    if not fitted.trainer.is_global_zero:  # a DDP worker: rank 0 selects, tests and writes
        return RunResult(run_dir, config, None)
    history = _select(fitted, run_dir)
    metrics = _test(fitted, config, run_dir, prepared, history, progress=progress)
    atomic_write_text(RunDir(run_dir).metrics, metrics.to_json())  # last
    return RunResult(run_dir, config, metrics)


def _prepare(
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
) -> PreparedData:
    """Cache and split the data (a resumed run or a DDP worker reuses the saved split); a new
    run saves its config and split; unreadable files are reported."""
    files = RunDir(run_dir)
    prepared = prepare_data(
        data,
        config,
        split_file=files.split if resume or worker else None,
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
        config.save(files.config)
        save_split(files.split, prepared.subsets, prepared.index.source_of)
    if config.target_recall:  # its class is checked before any training
        parse_target_recall(config.target_recall, prepared.classes)
    return prepared


@dataclass
class Fitted:
    """What :func:`_fit` leaves for selection and testing."""

    model: CxrClassifier  # the whole classifier (tested and saved)
    net: torch.nn.Module  # what was trained: the model, or its head in frozen mode
    module: ClassifierModule
    trainer: L.Trainer
    best_path: str  # the best checkpoint the callback saw ("" when none)
    device: torch.device
    feats: dict[str, np.ndarray] | None  # frozen mode: the backbone's features of each subset
    timings: dict[str, float]


def _fit(
    config: RunConfig, run_dir: Path, prepared: PreparedData, *, resume: bool, progress: bool
) -> Fitted:
    """Build the model and fit it with Lightning (resuming from ``last.ckpt`` when asked);
    checkpoints, early stopping and ``history.csv`` are written every epoch."""
    files = RunDir(run_dir)
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
    sets = training_mode(config).training_sets(model, prepared, device, progress=progress)
    net, train_set, feats, timings = sets.net, sets.train, sets.features, sets.timings
    module = ClassifierModule(net, config, len(classes), weights)
    datamodule = CxrDataModule(
        train_set,
        sets.val,
        prepared.labels("train"),
        config,
        train_sources=prepared.source_ids("train") if config.balance == "source" else None,
    )
    best = ModelCheckpoint(
        dirpath=files.checkpoints, filename="best", monitor="val_macro_f1", mode="max"
    )
    latest = ModelCheckpoint(
        dirpath=files.checkpoints, filename="last", enable_version_counter=False
    )  # every epoch
    callbacks: list[Callback] = [
        best,
        latest,
        EarlyStopping(monitor="val_macro_f1", mode="max", patience=config.patience),
        HistoryWriter(files.history),
    ]
    if progress:
        callbacks.append(RichProgressBar())
    trainer = build_trainer(
        config,
        device,
        callbacks=callbacks,
        logger=make_loggers(config, run_dir),
        progress=progress,
        root=run_dir,
        log_every_n_steps=min(10, max(1, len(cast("Sized", train_set)) // config.batch_size)),
    )
    last = files.last_checkpoint
    trainer.fit(
        module,
        datamodule=datamodule,
        ckpt_path=last if resume and last.is_file() else None,
        weights_only=True,
    )
    return Fitted(model, net, module, trainer, best.best_model_path, device, feats, timings)


def _select(fitted: Fitted, run_dir: Path) -> list[HistoryRow]:
    """Load the epoch with the best validation macro-F1 (its EMA weights when the recipe keeps
    an EMA) into the model; return the epoch history."""
    files = RunDir(run_dir)
    last = files.last_checkpoint
    # the callback's best, or (a resumed run whose folder was moved: the remembered path is gone)
    # its copy here
    candidates = [Path(fitted.best_path)] if fitted.best_path else []
    best = next((p for p in [*candidates, files.checkpoints / "best.ckpt"] if p.is_file()), last)
    fitted.module.load_state_dict(safe_load(best, "Lightning checkpoint")["state_dict"])
    if fitted.module.ema is not None:
        fitted.net.load_state_dict(fitted.module.ema.module.state_dict())
    # (ddp_spawn trains in child processes: then the history comes back through the last checkpoint)
    history = fitted.module.history or safe_load(last, "Lightning checkpoint").get(
        "cxrlab_history", []
    )
    return [HistoryRow.from_dict(row) for row in history]


def _test(
    fitted: Fitted,
    config: RunConfig,
    run_dir: Path,
    prepared: PreparedData,
    history: list[HistoryRow],
    *,
    progress: bool,
) -> RunMetrics:
    """Calibrate on validation, test the chosen model once (and once more without test-time
    augmentation, for the ablation), measure its speed; return ``metrics.json``'s content."""
    model, device, feats, timings = fitted.model, fitted.device, fitted.feats, fitted.timings
    best_epoch = int(np.nanargmax([row.val_macro_f1 for row in history])) if history else -1
    timings["train_s"] = float(sum(row.epoch_time_s for row in history))
    model.eval()
    tta = training_mode(config).tta
    tested = with_tta(model, tta)

    def logits_of(
        subset: str, features: dict[str, np.ndarray] | None = feats, net: nn.Module = tested
    ) -> np.ndarray:
        return subset_logits(
            net,
            prepared,
            subset,
            feats=features,
            device=device,
            batch_size=max(64, config.batch_size),
            progress=progress,
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
        trainable_parameters=count_parameters(fitted.net, trainable_only=True),
        timings=timings,
        training_processes=fitted.trainer.world_size,
        skipped=prepared.skipped,
        inference_img_per_s=inference_speed(tested, config.image_size, device=device),
        inference_device=device.type,
        sources=prepared.source_counts(),
    )
    metrics = calibrate_and_test(run_dir, model, config, prepared, logits, metrics, tta=tta)
    if tta and "test" in logits:  # the same checkpoint without test-time augmentation
        plain = logits_of("test", None, model)
        metrics.test_without_tta = classification_metrics(
            prepared.labels("test"), softmax(plain, metrics.temperature), prepared.classes
        )
    return metrics
