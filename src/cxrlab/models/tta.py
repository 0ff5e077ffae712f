"""Test-time augmentation: average the class probabilities over a few small views of each film.

The views stay inside the training augmentation's range (±7° rotation, 0.9–1.1 scale) and
never flip (the heart is on the left). Probabilities are averaged and returned as log
probabilities, so ``softmax(output)`` is the mean probability over views.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import torch
from torch import nn
from torch.nn import functional as F

# (rotation in degrees, zoom): identity, zoom in, rotate each way.
TTA_VIEWS: tuple[tuple[float, float], ...] = ((0.0, 1.0), (0.0, 1.08), (5.0, 1.0), (-5.0, 1.0))


def affine_view(images: torch.Tensor, degrees: float, zoom: float) -> torch.Tensor:
    """``images`` rotated by ``degrees`` and zoomed by ``zoom`` about the centre (zeros outside)."""
    if degrees == 0.0 and zoom == 1.0:
        return images
    angle = math.radians(degrees)
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    theta = torch.tensor(
        [[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=images.dtype, device=images.device
    )
    grid = F.affine_grid(
        theta.expand(images.shape[0], 2, 3), list(images.shape), align_corners=False
    )
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def tta_log_probs(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    views: tuple[tuple[float, float], ...] = TTA_VIEWS,
) -> torch.Tensor:
    """Log of the mean softmax of ``forward`` over ``views`` of ``images``."""
    probs = torch.stack(
        [torch.softmax(forward(affine_view(images, d, z)).float(), dim=1) for d, z in views]
    )
    return probs.mean(0).clamp_min(1e-12).log()


class TestTimeAugmentation(nn.Module):
    """``model`` with test-time augmentation: in eval mode its output is the log of the mean
    softmax over ``views``; in training mode it is ``model``'s own output (one view). The model
    itself knows nothing of it: training, Grad-CAM and the ONNX export see the single view."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(
        self, model: nn.Module, views: tuple[tuple[float, float], ...] = TTA_VIEWS
    ) -> None:
        super().__init__()
        self.model, self.views = model, views

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.model(images)
        return tta_log_probs(self.model, images, self.views)

    @property
    def classes(self) -> list[str]:
        return list(cast("list[str]", self.model.classes))


def with_tta(model: nn.Module, tta: bool) -> nn.Module:
    """What testing and prediction run: ``model``, or ``model`` under test-time augmentation
    (a run's ``tta``, stored in its checkpoint)."""
    return TestTimeAugmentation(model) if tta else model
