"""Augmentations suited to chest films, on ``(1, S, S)`` tensors in 0..1.

Small rotations, shifts and scaling (patients are positioned slightly differently), and
brightness and contrast (exposure differs between machines). No vertical flips (a film is
never upside down) and no horizontal flips by default (the heart is on the left; a mirrored
film is anatomically wrong, and the side markers would read backwards).
"""

from __future__ import annotations

from torchvision.transforms import v2


def xray_augmentation(
    degrees: float = 7.0, translate: float = 0.06, scale: tuple[float, float] = (0.9, 1.1), jitter: float = 0.2
) -> v2.Compose:
    """Random affine (rotation, shift, scale) then brightness/contrast jitter."""
    return v2.Compose(
        [
            v2.RandomAffine(degrees=degrees, translate=(translate, translate), scale=scale),
            v2.ColorJitter(brightness=jitter, contrast=jitter),  # clamps to 0..1
        ]
    )
