"""The Lightning side of a run: the Trainer, its loggers and checkpoint I/O, the epoch history
file, and the checks that refuse what cannot run here (before any caching or training)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from cxrlab.artifacts import RunDir
from cxrlab.config import RunConfig
from cxrlab.errors import ConfigError
from cxrlab.fileio import atomic_open
from cxrlab.models.registry import check_model
from cxrlab.progress import shown
from cxrlab.records import HistoryRow, write_history
from cxrlab.training.module import ClassifierModule


class HistoryWriter(Callback):
    """Rewrite ``history.csv`` after every epoch (so a killed run keeps its curves); its
    columns are :class:`~cxrlab.records.HistoryRow`'s fields."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            write_history(
                self.path,
                [HistoryRow.from_dict(row) for row in cast(ClassifierModule, pl_module).history],
            )


def make_loggers(config: RunConfig, run_dir: Path) -> list[Logger]:
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
        raise ConfigError(
            "logger",
            f"the {config.logger} package is not installed (pip install {config.logger})",
            value=config.logger,
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
    root: Path,
    **overrides: Any,
) -> L.Trainer:
    """The Lightning Trainer of a run (``overrides``: extra Trainer arguments, e.g. for
    benchmarks)."""
    settings: dict[str, Any] = dict(
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
        enable_progress_bar=shown(),
        enable_model_summary=False,
        default_root_dir=root,
        plugins=[AtomicCheckpointIO()],
    )
    return L.Trainer(**(settings | overrides))


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


def check_runnable(config: RunConfig) -> None:
    """Refuse, before any caching or training, what cannot run here: an unknown model, images too
    small for it, a GPU that is not there, a global batch that the processes cannot share."""
    check_model(config.model, config.image_size)
    if config.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            "accelerator",
            "no CUDA GPU is available here; use {accelerator} cpu or auto",
            value=config.accelerator,
        )
    from lightning.pytorch.strategies import StrategyRegistry

    if config.strategy != "auto" and config.strategy not in StrategyRegistry:
        raise ConfigError(
            "strategy",
            "not a Lightning strategy (e.g. auto, ddp, ddp_spawn, fsdp)",
            value=config.strategy,
        )
    processes = planned_processes(config)
    if config.batch_size % processes:
        raise ConfigError(
            "batch_size",
            f"not divisible by the {processes} training processes "
            f"({{devices}} {config.devices} x {{num_nodes}} {config.num_nodes}); "
            "the batch is split evenly over them",
            value=config.batch_size,
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
            raise ConfigError(
                "devices", "not a number, a list like 0,1, or auto", value=config.devices
            ) from None
        if count < 1:
            raise ConfigError("devices", "must be at least 1 (or auto)", value=config.devices)
    return count * config.num_nodes
