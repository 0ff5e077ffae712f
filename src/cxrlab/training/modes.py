"""How a run trains, by its mode: what of the model learns, on what inputs, how it is tested.

* :class:`Frozen` keeps the backbone as loaded and trains the new head on the backbone's
  features, computed once per model and cache (:func:`~cxrlab.training.frozen.cached_features`):
  no augmentation, no test-time views, BatchNorm untouched.
* :class:`FineTune` trains the whole model on augmented films (per image in the loader, or
  batched on the device), optionally channels-last; BatchNorm statistics stay as loaded with
  ``freeze_bn``; the test reads test-time augmented views with ``tta``.

:func:`training_mode` is the one place that reads ``RunConfig.mode`` for training: the steps
of :mod:`cxrlab.training.run` and the LightningModule ask the object it returns.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from cxrlab.config import RunConfig
from cxrlab.data.datasets import CachedImageDataset
from cxrlab.models.registry import CxrClassifier
from cxrlab.training.augment import BatchXrayAugmentation, loader_augmentation
from cxrlab.training.frozen import cached_features
from cxrlab.training.prepared import PreparedData


@dataclass
class TrainingSets:
    """What a mode trains (``net``: part or all of the classifier) and on what data."""

    net: nn.Module
    train: Dataset
    val: Dataset
    features: dict[str, np.ndarray] | None = None  # Frozen: the backbone's features per subset
    timings: dict[str, float] = field(default_factory=dict)  # e.g. features_s


@dataclass(frozen=True)
class TrainingMode(ABC):
    """The choices of a run that follow from its mode (``config.mode``)."""

    config: RunConfig

    @abstractmethod
    def training_sets(
        self,
        model: CxrClassifier,
        prepared: PreparedData,
        device: torch.device,
    ) -> TrainingSets:
        """Ready ``model`` for training (what learns, its memory format) and give the sets it
        trains and is validated on."""

    @property
    @abstractmethod
    def tta(self) -> bool:
        """Whether the chosen model is tested on test-time augmented views."""

    @property
    @abstractmethod
    def freezes_batchnorm(self) -> bool:
        """Whether BatchNorm statistics stay as loaded while training."""

    @abstractmethod
    def batch_augmentation(self) -> BatchXrayAugmentation | None:
        """The augmentation applied to each training batch on the device (None: none there)."""


class Frozen(TrainingMode):
    """The backbone as loaded; the new head trains on its cached features."""

    def training_sets(
        self,
        model: CxrClassifier,
        prepared: PreparedData,
        device: torch.device,
    ) -> TrainingSets:
        for p in model.backbone_parameters():
            p.requires_grad_(False)
        config = self.config
        started = time.perf_counter()
        origin = config.weights or (
            "imagenet" if config.pretrained else f"scratch-seed{config.seed}"
        )
        key = f"{config.model}|{origin}"
        features = {
            name: cached_features(model, prepared.cache, prepared.rows[name], key, device=device)
            for name in ("train", "val", "test")
            if name in prepared.rows
        }
        timings = {"features_s": time.perf_counter() - started}

        def subset(name: str) -> TensorDataset:
            return TensorDataset(
                torch.from_numpy(features[name]), torch.from_numpy(prepared.labels(name))
            )

        return TrainingSets(model.head, subset("train"), subset("val"), features, timings)

    @property
    def tta(self) -> bool:
        return False  # the test reads features: there are no views to average

    @property
    def freezes_batchnorm(self) -> bool:
        return False  # only the head trains

    def batch_augmentation(self) -> BatchXrayAugmentation | None:
        return None


class FineTune(TrainingMode):
    """The whole model trains on augmented films."""

    def training_sets(
        self,
        model: CxrClassifier,
        prepared: PreparedData,
        device: torch.device,
    ) -> TrainingSets:
        net: nn.Module = model
        if self.config.channels_last:
            net = net.to(memory_format=torch.channels_last)
        train = CachedImageDataset(
            prepared.cache, prepared.rows["train"], transform=loader_augmentation(self.config)
        )
        return TrainingSets(net, train, CachedImageDataset(prepared.cache, prepared.rows["val"]))

    @property
    def tta(self) -> bool:
        return self.config.tta

    @property
    def freezes_batchnorm(self) -> bool:
        return self.config.freeze_bn

    def batch_augmentation(self) -> BatchXrayAugmentation | None:
        on_device = self.config.augment and self.config.augment_on == "device"
        return BatchXrayAugmentation() if on_device else None


def training_mode(config: RunConfig) -> TrainingMode:
    """The training mode of ``config``: :class:`Frozen` or :class:`FineTune`."""
    return Frozen(config) if config.mode == "frozen" else FineTune(config)
