"""Test-time augmentation: average the class probabilities over a few small views of each film.

The views stay inside the training augmentation's range (±7° rotation, 0.9–1.1 scale) and
never flip (the heart is on the left). Probabilities are averaged and returned as log
probabilities, so ``softmax(output)`` is the mean probability over views.
"""

from __future__ import annotations

import math

import torch
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
    forward, images: torch.Tensor, views: tuple[tuple[float, float], ...] = TTA_VIEWS
) -> torch.Tensor:
    """Log of the mean softmax of ``forward`` over ``views`` of ``images``."""
    probs = torch.stack(
        [torch.softmax(forward(affine_view(images, d, z)).float(), dim=1) for d, z in views]
    )
    return probs.mean(0).clamp_min(1e-12).log()
