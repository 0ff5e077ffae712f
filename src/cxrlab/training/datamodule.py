"""The LightningDataModule: training and validation loaders over prepared datasets.

Datasets come from :mod:`cxrlab.training.run` (cached images, or cached backbone features in
frozen mode); this module only decides how they are batched: shuffled or class-balanced
sampling for training, fixed order for validation, pinned memory when a GPU is used.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cxrlab.data.split import balanced_sampler
from cxrlab.training.config import RunConfig


class CxrDataModule(L.LightningDataModule):
    """Loaders for one run; ``train_labels`` drive balanced sampling when it is asked for."""

    def __init__(self, train: Dataset, val: Dataset, train_labels: np.ndarray, config: RunConfig) -> None:
        super().__init__()
        self.train_set, self.val_set = train, val
        self.train_labels = np.asarray(train_labels)
        self.config = config

    def _loader(self, dataset: Dataset, **kwargs: object) -> DataLoader:
        workers = self.config.num_workers
        return DataLoader(
            dataset,
            batch_size=self.config.batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        if self.config.balance == "sampler":
            return self._loader(self.train_set, sampler=balanced_sampler(self.train_labels, self.config.seed))
        return self._loader(self.train_set, shuffle=True, drop_last=len(self.train_set) > self.config.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)
