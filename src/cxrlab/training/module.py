"""The LightningModule: one classifier, its loss, optimiser, schedule and epoch metrics.

``net`` is either a whole :class:`~cxrlab.models.registry.CxrClassifier` (finetune mode:
backbone and head in two parameter groups, the backbone at ``lr * backbone_lr_scale``) or
just the new linear head (frozen mode, fed with cached backbone features). Epoch metrics are
torchmetrics objects, so they are exact under DDP too; each epoch's row is kept in
``history`` and travels inside Lightning checkpoints, so a resumed run keeps its curves.
Whether BatchNorm statistics stay as loaded, and whether batches are augmented on the device,
is the run's training mode's choice (:mod:`cxrlab.training.modes`).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import numpy as np
import torch
from timm.utils.model_ema import ModelEmaV3
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR
from torchmetrics import MeanMetric, Metric, SumMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from cxrlab.config import RunConfig
from cxrlab.models.registry import CxrClassifier
from cxrlab.records import HistoryRow
from cxrlab.training.modes import training_mode

if TYPE_CHECKING:
    from lightning.pytorch.core.optimizer import LightningOptimizer
    from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule: linear warm-up from ``1/warmup_steps`` to 1 over ``warmup_steps``
    steps, then cosine decay to 0 at ``total_steps`` (``LinearLR`` then ``CosineAnnealingLR``)."""
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup_steps))
    if warmup_steps == 0:
        return cosine
    linear = LinearLR(
        optimizer, start_factor=1 / warmup_steps, end_factor=1.0, total_iters=warmup_steps - 1
    )
    return SequentialLR(optimizer, [linear, cosine], milestones=[warmup_steps])


def weighted_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    class_weights: torch.Tensor,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy with each sample weighted by its true class, label smoothing unweighted.

    (PyTorch's ``cross_entropy(weight=..., label_smoothing=...)`` also weights the smoothing
    term by class, which pulls every prediction towards the rare class and ruins calibration.)
    """
    per_sample = nn.functional.cross_entropy(
        logits.float(), target, reduction="none", label_smoothing=label_smoothing
    )
    weights = class_weights[target]
    return (per_sample * weights).sum() / weights.sum().clamp_min(1e-12)


def parameter_groups(
    net: nn.Module, lr: float, backbone_lr: float, weight_decay: float
) -> list[dict]:
    """Head and backbone groups, each split into decayed weights and undecayed biases/norms."""
    if isinstance(net, CxrClassifier):
        parts = [(list(net.head_parameters()), lr), (list(net.backbone_parameters()), backbone_lr)]
    else:
        parts = [(list(net.parameters()), lr)]
    groups = []
    for params, group_lr in parts:
        params = [p for p in params if p.requires_grad]
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        groups += [
            {"params": decay, "lr": group_lr, "weight_decay": weight_decay},
            {"params": no_decay, "lr": group_lr, "weight_decay": 0.0},
        ]
    return [g for g in groups if g["params"]]


def rng_states() -> dict[str, object]:
    """Every random generator a run draws from (Python, numpy, torch, CUDA), in a form that
    ``torch.load(weights_only=True)`` reads back (tensors, tuples and numbers only)."""
    kind, keys, position, has_gauss, gauss = cast(
        "tuple[str, np.ndarray, int, int, float]", np.random.get_state()
    )
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` saved."""
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def freeze_batchnorm_statistics(net: nn.Module) -> None:
    """Put every BatchNorm layer in eval mode: running statistics stay as loaded."""
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


class ClassifierModule(L.LightningModule):
    """Cross-entropy training with validation macro-F1 as the selection metric."""

    class_weights: torch.Tensor  # a buffer

    def __init__(
        self,
        net: nn.Module,
        config: RunConfig,
        num_classes: int,
        class_weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.config = config
        self.num_classes = num_classes
        self.register_buffer(
            "class_weights", class_weights if class_weights is not None else torch.ones(num_classes)
        )
        self.train_loss, self.val_loss = MeanMetric(), MeanMetric()
        self.val_count = (
            SumMetric()
        )  # images validated this epoch, over all processes (each exactly once)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_f1 = MulticlassF1Score(num_classes, average="macro")
        self.history: list[dict[str, float]] = []
        # EMA of the weights (timm's, with decay warm-up): validated, selected and kept instead of
        # the raw weights.
        self.ema = (
            ModelEmaV3(net, decay=config.ema_decay, use_warmup=True, warmup_power=3 / 4)
            if config.ema_decay > 0
            else None
        )
        if self.ema is not None:
            self.ema.requires_grad_(False)
        self._epoch_started = time.perf_counter()
        mode = training_mode(config)
        self.freeze_bn = mode.freezes_batchnorm
        self.batch_augment = mode.batch_augmentation()

    def on_after_batch_transfer(
        self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.batch_augment is not None and self.trainer.training:
            return self.batch_augment(batch[0]), batch[1]
        return batch

    @property
    def val_metrics(self) -> tuple[Metric, ...]:
        """The epoch metrics that validation fills (reset after every validation)."""
        return (self.val_loss, self.val_acc, self.val_f1, self.val_count)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def train(self, mode: bool = True) -> ClassifierModule:
        super().train(mode)
        if mode and self.freeze_bn:
            freeze_batchnorm_statistics(self.net)
        return self

    def on_train_epoch_start(self) -> None:
        self.train()  # Lightning keeps each submodule's mode as found; this applies freeze_bn
        self._epoch_started = time.perf_counter()

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.net, step=self.global_step)

    def evaluated_net(self) -> nn.Module:
        """The weights that are validated and kept: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.net

    def loss(
        self, logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0
    ) -> torch.Tensor:
        """The head's own loss when it has one (the two-stage head), else class-weighted
        cross-entropy."""
        head = self.net.head if isinstance(self.net, CxrClassifier) else self.net
        own = getattr(head, "loss", None)
        if own is not None:
            return own(logits, target, self.class_weights)
        return weighted_cross_entropy(logits, target, self.class_weights, label_smoothing)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _index: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y, self.config.label_smoothing)
        self.train_loss.update(loss.detach(), weight=len(y))
        self.train_acc.update(logits.detach(), y)
        self.log("loss", loss.detach(), prog_bar=True, batch_size=len(y))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _index: int) -> None:
        x, y = batch
        logits = self.evaluated_net()(x).float()
        self.val_loss.update(self.loss(logits, y), weight=len(y))
        self.val_count.update(len(y))
        self.val_acc.update(logits, y)
        self.val_f1.update(logits, y)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            for metric in self.val_metrics:
                metric.reset()
            return
        row = HistoryRow(
            epoch=self.current_epoch,
            lr=float(self._optimizer().param_groups[0]["lr"]),
            train_loss=float(self.train_loss.compute())
            if self.train_loss.update_called
            else math.nan,
            train_acc=float(self.train_acc.compute()) if self.train_acc.update_called else math.nan,
            val_loss=float(self.val_loss.compute()),
            val_acc=float(self.val_acc.compute()),
            val_macro_f1=float(self.val_f1.compute()),
            epoch_time_s=time.perf_counter() - self._epoch_started,
            val_n=float(self.val_count.compute()),
        )
        for metric in (self.train_loss, self.train_acc, *self.val_metrics):
            metric.reset()
        numbers = asdict(row)  # plain values: they travel in Lightning checkpoints
        self.history.append(numbers)
        self.log_dict(
            {k: v for k, v in numbers.items() if k not in ("epoch", "val_macro_f1", "val_n")}
        )
        self.log("val_macro_f1", row.val_macro_f1, prog_bar=True)

    def _optimizer(self) -> LightningOptimizer:
        """The one optimizer of the run (:meth:`configure_optimizers`)."""
        optimizer = self.optimizers()
        assert not isinstance(optimizer, list)  # configure_optimizers gives one
        return optimizer

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        c = self.config
        groups = parameter_groups(self.net, c.lr, c.lr * c.backbone_lr_scale, c.weight_decay)
        if c.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=c.lr, momentum=0.9, nesterov=True)
        else:
            optimizer = torch.optim.AdamW(groups, lr=c.lr)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = (
            min(total - 1, round(c.warmup_epochs * total / c.epochs)) if c.warmup_epochs > 0 else 0
        )
        schedule = warmup_cosine(optimizer, warmup, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Checkpoints are written at the end of an epoch; with the generators' states there, a
        # run resumed from one draws the same shuffles and augmentations as one never stopped.
        checkpoint["cxrlab_history"] = list(self.history)
        checkpoint["cxrlab_rng"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("cxrlab_history", []))
        if "cxrlab_rng" in checkpoint:
            set_rng_states(checkpoint["cxrlab_rng"])
