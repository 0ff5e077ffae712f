"""The training mode is the one switch between frozen and fine-tuned training."""

from __future__ import annotations

import pytest
import torch

from cxrlab.config import RunConfig, preset
from cxrlab.training.augment import BatchXrayAugmentation
from cxrlab.training.modes import FineTune, Frozen, training_mode
from cxrlab.training.module import ClassifierModule


def test_training_mode_follows_the_config_mode() -> None:
    everything = dict(tta=True, freeze_bn=True, augment=True, augment_on="device")
    frozen = training_mode(preset("frozen", **everything))
    assert isinstance(frozen, Frozen)
    assert not frozen.tta and not frozen.freezes_batchnorm
    assert frozen.batch_augmentation() is None
    finetune = training_mode(preset("finetune", **everything))
    assert isinstance(finetune, FineTune)
    assert finetune.tta and finetune.freezes_batchnorm
    assert isinstance(finetune.batch_augmentation(), BatchXrayAugmentation)
    plain = training_mode(preset("scratch", tta=False, augment_on="loader"))
    assert isinstance(plain, FineTune)
    assert not plain.tta and not plain.freezes_batchnorm and plain.batch_augmentation() is None
    unaugmented = training_mode(preset("finetune", augment=False, augment_on="device"))
    assert unaugmented.batch_augmentation() is None


@pytest.mark.parametrize(
    ("config", "frozen_statistics"),
    [(preset("finetune", freeze_bn=True), True), (preset("frozen", freeze_bn=True), False)],
    ids=["finetune", "frozen"],
)
def test_the_module_freezes_batchnorm_as_its_mode_says(
    config: RunConfig, frozen_statistics: bool
) -> None:
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    ClassifierModule(net, config, 4).train()
    assert net[0].training and net[1].training is not frozen_statistics
