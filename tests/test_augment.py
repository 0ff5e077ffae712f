"""The batched (on-device) X-ray augmentation draws the loader augmentation's distribution."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cxrlab.config import RunConfig
from cxrlab.data.synthetic import make_demo_dataset
from cxrlab.errors import CxrlabError
from cxrlab.training.augment import BatchXrayAugmentation, xray_augmentation
from cxrlab.training.run import train_run


def square_films(n: int = 64, size: int = 48) -> torch.Tensor:
    images = torch.zeros(n, 1, size, size)
    images[:, :, 16:32, 16:32] = 0.8  # a bright square in the centre
    return images


def centroid_and_area(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    size = images.shape[-1]
    coords = torch.arange(size, dtype=torch.float32)
    mask = (images[:, 0] > 0.3).float()
    area = mask.sum((1, 2))
    cy = (mask.sum(2) * coords).sum(1) / area
    cx = (mask.sum(1) * coords).sum(1) / area
    return torch.stack([cx, cy], 1), area


def test_no_range_is_the_identity() -> None:
    images = torch.rand(4, 1, 32, 32)
    still = BatchXrayAugmentation(degrees=0, translate=0, scale=(1, 1), jitter=0)
    torch.testing.assert_close(still(images), images, atol=1e-4, rtol=0)


def test_each_film_gets_its_own_draw_within_the_ranges() -> None:
    torch.manual_seed(0)
    images = square_films()
    out = BatchXrayAugmentation(jitter=0)(images)
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    centre, area = centroid_and_area(out)
    shift = (centre - 23.5).abs()
    assert (
        shift.max() <= 0.06 * 48 * 1.2 + 1
    )  # translate 6% of the side (plus scaling about the centre)
    assert shift.std() > 0.3  # films do not all move alike
    assert ((area / 256) > 0.9**2 * 0.85).all() and ((area / 256) < 1.1**2 * 1.15).all()


def test_matches_the_loader_augmentation_in_distribution() -> None:
    torch.manual_seed(1)
    images = square_films(256)
    batched = BatchXrayAugmentation()(images)
    loader = torch.stack([xray_augmentation()(image) for image in images])
    for a, b in zip(centroid_and_area(batched), centroid_and_area(loader)):
        assert a.float().mean().item() == pytest.approx(b.float().mean().item(), rel=0.05, abs=0.5)
        assert a.float().std().item() == pytest.approx(b.float().std().item(), rel=0.35, abs=0.3)
    assert batched.mean().item() == pytest.approx(loader.mean().item(), rel=0.05)


def test_training_with_device_augmentation_and_channels_last(tmp_path: Path) -> None:
    root = make_demo_dataset(
        tmp_path / "data", train_per_class=6, test_per_class=2, size=40, defects=False
    )
    config = RunConfig(
        model="resnet18",
        pretrained=False,
        image_size=32,
        epochs=1,
        batch_size=4,
        val_fraction=0.25,
        augment_on="device",
        channels_last=True,
    )
    result = train_run(root, config, tmp_path / "run", cache_root=tmp_path / "cache", workers=1)
    assert result.metrics.test.n == 6
    with pytest.raises(CxrlabError, match="augment_on"):
        RunConfig(augment_on="gpu")
