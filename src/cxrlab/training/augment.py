"""Augmentations suited to chest films, on ``(1, S, S)`` tensors in 0..1.

Small rotations, shifts and scaling (patients are positioned slightly differently), and
brightness and contrast (exposure differs between machines). No vertical flips (a film is
never upside down) and no horizontal flips by default (the heart is on the left; a mirrored
film is anatomically wrong, and the side markers would read backwards).

Two implementations of the same distribution: :func:`xray_augmentation`, per image in the
data loader (torchvision v2), and :class:`BatchXrayAugmentation`, one batched ``grid_sample``
on the training device after the batch is moved there (``RunConfig.augment_on="device"``),
which takes the work off the loader processes when loading is the bound. Which of them a run
uses is its training mode's choice (:mod:`cxrlab.training.modes`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.transforms import v2

if TYPE_CHECKING:
    from cxrlab.config import RunConfig

DEGREES, TRANSLATE, SCALE, JITTER = 7.0, 0.06, (0.9, 1.1), 0.2


def xray_augmentation(
    degrees: float = DEGREES,
    translate: float = TRANSLATE,
    scale: tuple[float, float] = SCALE,
    jitter: float = JITTER,
) -> v2.Compose:
    """Random affine (rotation, shift, scale) then brightness/contrast jitter."""
    return v2.Compose(
        [
            v2.RandomAffine(
                degrees=degrees,  # pyright: ignore[reportArgumentType]  # a float is a number
                translate=(translate, translate),
                scale=scale,
            ),
            v2.ColorJitter(brightness=jitter, contrast=jitter),  # clamps to 0..1
        ]
    )


def loader_augmentation(config: RunConfig) -> v2.Compose | None:
    """The per-image augmentation a run's training loader applies (None: none, or on the device)."""
    return xray_augmentation() if config.augment and config.augment_on == "loader" else None


class BatchXrayAugmentation(nn.Module):
    """The distribution of :func:`xray_augmentation`, drawn per image, applied to a whole batch
    ``(B, C, S, S)`` at once on its device (zero fill outside the film, values clamped to 0..1)."""

    def __init__(
        self,
        degrees: float = DEGREES,
        translate: float = TRANSLATE,
        scale: tuple[float, float] = SCALE,
        jitter: float = JITTER,
    ) -> None:
        super().__init__()
        self.degrees, self.translate, self.scale, self.jitter = degrees, translate, scale, jitter

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n, device = images.shape[0], images.device

        def uniform(low: float, high: float) -> torch.Tensor:
            return torch.empty(n, device=device).uniform_(low, high)

        angle = uniform(-self.degrees, self.degrees) * (math.pi / 180)
        scale = uniform(*self.scale)
        shift = (
            torch.stack(
                [
                    uniform(-self.translate, self.translate),
                    uniform(-self.translate, self.translate),
                ],
                1,
            )
            * 2
        )  # normalised coords
        cos, sin = torch.cos(angle), torch.sin(angle)
        # affine_grid maps output to input coordinates: the inverse of "scale, rotate, then shift".
        inverse = torch.stack(
            [torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1
        ) / scale.view(n, 1, 1)
        theta = torch.cat([inverse, -(inverse @ shift.unsqueeze(2))], 2)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        out = F.grid_sample(
            images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        brightness = uniform(1 - self.jitter, 1 + self.jitter).view(n, 1, 1, 1)
        contrast = uniform(1 - self.jitter, 1 + self.jitter).view(n, 1, 1, 1)
        out = (out * brightness).clamp_(0, 1)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        return ((out - mean) * contrast + mean).clamp_(0, 1).to(images.dtype)
