"""The LightningDataModule: training and validation loaders over prepared datasets.

Datasets come from :mod:`cxrlab.training.run` (cached images, or cached backbone features in
frozen mode); this module only decides how they are batched: shuffled or class-balanced
sampling for training, fixed order for validation, pinned memory when a GPU is used.

Under DDP (several processes) ``config.batch_size`` stays the global batch: each process
loads ``batch_size / world_size`` images, so a run on N devices takes the same optimiser
steps as one on a single device. Training batches come from Lightning's DistributedSampler;
validation uses an unpadded sampler (each image seen by exactly one process, none twice), and
the torchmetrics epoch metrics are summed across processes, so validation is exact.
"""

from __future__ import annotations

from collections.abc import Sized
from typing import Any, cast

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset

from cxrlab.config import RunConfig
from cxrlab.data.split import balanced_sampler


class CxrDataModule(L.LightningDataModule):
    """Loaders for one run; ``train_labels`` (and, for ``--balance source``, ``train_sources``)
    drive balanced sampling when it is asked for."""

    def __init__(
        self,
        train: Dataset,
        val: Dataset,
        train_labels: np.ndarray,
        config: RunConfig,
        *,
        train_sources: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.train_set, self.val_set = train, val
        self.train_labels = np.asarray(train_labels)
        self.train_sources = train_sources
        self.config = config

    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    @property
    def device_batch_size(self) -> int:
        """Images per process and step (the global batch split over the processes; that it divides
        evenly is checked before any process starts, in ``run.check_runnable``)."""
        return self.config.batch_size // self.world_size

    def _loader(self, dataset: Dataset, **kwargs: Any) -> DataLoader:
        workers = self.config.num_workers
        return DataLoader(
            dataset,
            batch_size=self.device_batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        if self.config.balance in ("sampler", "source"):
            sources = self.train_sources if self.config.balance == "source" else None
            sampler = balanced_sampler(self.train_labels, self.config.seed, sources)
            return self._loader(self.train_set, sampler=sampler)
        return self._loader(
            self.train_set,
            shuffle=True,
            drop_last=len(cast("Sized", self.train_set)) > self.config.batch_size,
        )

    def val_dataloader(self) -> DataLoader:
        if self.world_size > 1:
            assert self.trainer is not None  # the trainer asks for its loaders
            sampler = UnrepeatedDistributedSampler(
                self.val_set,
                num_replicas=self.world_size,
                rank=self.trainer.global_rank,
                shuffle=False,
            )
            return self._loader(self.val_set, sampler=sampler)
        return self._loader(self.val_set, shuffle=False)
