"""Lung masks from the learned segmenter, the plausibility check, and the lung box and crop.

A film (``uint8 (H, W)``, any size) is squashed to the segmenter's ``input_size``, its lung
probability map is resized back (bilinear) and thresholded; :func:`clean_mask` then keeps the
two largest pieces of at least :data:`MIN_PIECE` of the film, holes filled.

**Memory.** A film's mask costs a few bytes per pixel whatever its size: the probability map is
resized and thresholded :data:`STRIP` rows at a time (:func:`threshold_resized`), pieces are
labelled in 16 bits where they fit, and holes are filled inside each piece's box.

**The stated check** (:func:`plausible`): a mask is a plausible two-lung mask when, after
cleaning, it has exactly two pieces, each covering at least :data:`MIN_LUNG` of the film, one
centred in the film's left half and the other in its right half, together covering
:data:`COVERAGE` of the film. It is what "found" means wherever cxrlab counts masks.

**The lung crop** (:func:`lung_box`, :func:`crop_to_lungs`): the box around the mask, widened
by :data:`CROP_MARGIN` of its own height and width on each side and clipped to the film, in
fractions of the film so that one box serves the film at any size. A film whose mask is not
plausible is not cropped (the whole film is kept), and the caller is told.

Everything runs on the CPU in float32, one film after another in a fixed order, so the same
film gives the same mask and crop in ``train``, ``predict``, ``evaluate`` and ``serve``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torch import nn

from cxrlab.lungs.network import IMAGENET_MEAN, IMAGENET_STD, SegmenterMeta
from cxrlab.progress import track

MIN_PIECE = 0.005  # a piece smaller than this share of the film is dropped by clean_mask
MIN_LUNG = 0.02  # the check: each of the two lungs covers at least this share of the film
COVERAGE = (0.08, 0.60)  # the check: both lungs together, share of the film
CROP_MARGIN = 0.08  # the crop: box widened by this share of its height / width on each side
BATCH = 16
STRIP = 256  # rows of a film's probability map resized at once


@dataclass(frozen=True)
class Box:
    """A crop box in fractions of the film: rows ``top..bottom``, columns ``left..right``."""

    top: float
    left: float
    bottom: float
    right: float

    def pixels(self, height: int, width: int) -> tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` in pixels of a film of that size (at least 1 x 1)."""
        top, bottom = round(self.top * height), round(self.bottom * height)
        left, right = round(self.left * width), round(self.right * width)
        return top, left, max(bottom, top + 1), max(right, left + 1)


WHOLE = Box(0.0, 0.0, 1.0, 1.0)


def _bilinear(size: int, new_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resizing one axis from ``size`` to ``new_size`` samples (bilinear, half-pixel centres as
    ``F.interpolate(..., align_corners=False)``): each new sample's two source indices and the
    weight of the second."""
    where = (np.arange(new_size) + 0.5) * (size / new_size) - 0.5
    where = np.clip(where, 0.0, size - 1)
    first = np.minimum(where.astype(np.int64), size - 1)
    second = np.minimum(first + 1, size - 1)
    return first, second, (where - first).astype(np.float32)


def threshold_resized(probability: np.ndarray, height: int, width: int, at: float) -> np.ndarray:
    """``probability`` resized (bilinear) to ``(height, width)`` and thresholded ``>= at``,
    computed :data:`STRIP` rows at a time: the film-size result is the only film-size array."""
    top, bottom, down = _bilinear(probability.shape[0], height)
    left, right, across = _bilinear(probability.shape[1], width)
    rows = probability[:, left] * (1 - across) + probability[:, right] * across  # (S, width)
    mask = np.empty((height, width), dtype=bool)
    for start in range(0, height, STRIP):
        part = slice(start, start + STRIP)
        weight = down[part, None]
        mask[part] = rows[top[part]] * (1 - weight) + rows[bottom[part]] * weight >= at
    return mask


def _labelled(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """``ndimage.label(mask)``: the pieces numbered from 1, in 16 bits where they fit (2 bytes
    per pixel), else in 32."""
    try:
        return cast("tuple[np.ndarray, int]", ndimage.label(mask, output=np.uint16))
    except RuntimeError:  # more than 65535 pieces
        return cast("tuple[np.ndarray, int]", ndimage.label(mask, output=np.int32))


def clean_mask(mask: np.ndarray) -> np.ndarray:
    """The two largest pieces of ``mask`` of at least :data:`MIN_PIECE` of it, holes filled."""
    labels, count = _labelled(mask)
    if not count:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.zeros(count + 1, dtype=np.int64)
    for start in range(0, len(labels), STRIP):  # (bincount would copy the labels to int64)
        sizes += np.bincount(labels[start : start + STRIP].ravel(), minlength=count + 1)
    sizes[0] = 0
    keep = [k for k in np.argsort(sizes)[::-1][:2] if sizes[k] >= MIN_PIECE * mask.size]
    boxes = ndimage.find_objects(labels, max_label=max(keep, default=0))
    out = np.zeros(mask.shape, dtype=bool)
    for k in keep:  # a hole of a piece lies inside the piece's box
        box = boxes[k - 1]
        assert box is not None  # (a kept piece has pixels)
        out[box] |= ndimage.binary_fill_holes(labels[box] == k)
    return out


def plausible(mask: np.ndarray) -> bool:
    """The stated check of the module docstring, on a cleaned mask."""
    labels, count = _labelled(mask)
    if count != 2 or not COVERAGE[0] <= mask.mean() <= COVERAGE[1]:
        return False
    width = mask.shape[1]
    centres = []
    for k in (1, 2):
        columns = (labels == k).sum(axis=0)  # the piece's pixels in each column
        pixels = int(columns.sum())
        if pixels / mask.size < MIN_LUNG:
            return False
        centres.append(int(columns @ np.arange(width)) / pixels + 0.5)
    return min(centres) < width / 2 < max(centres)


def lung_box(mask: np.ndarray) -> Box:
    """The crop box of a (plausible) mask, see the module docstring."""
    height, width = mask.shape
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    top, bottom = rows[0] / height, (rows[-1] + 1) / height
    left, right = cols[0] / width, (cols[-1] + 1) / width
    dy, dx = CROP_MARGIN * (bottom - top), CROP_MARGIN * (right - left)
    return Box(max(0.0, top - dy), max(0.0, left - dx), min(1.0, bottom + dy), min(1.0, right + dx))


def normalised(batch: torch.Tensor) -> torch.Tensor:
    """Grey films ``(N, 1, S, S)`` in 0..1 as the network reads them: three equal channels,
    ImageNet mean and standard deviation (training and inference alike)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (batch.expand(-1, 3, -1, -1) - mean) / std


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two bool masks (1 when both are empty)."""
    total = float(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


class LungSegmenter:
    """A loaded segmenter: :meth:`masks` of films, :meth:`box` of one film."""

    def __init__(self, network: nn.Module, meta: SegmenterMeta) -> None:
        self.network = network.eval().float().cpu()
        self.meta = meta

    @property
    def label(self) -> str:
        return self.meta.label

    def inputs(self, films: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
        """Films as the network's input batch ``(N, 3, S, S)``."""
        size = self.meta.input_size
        squares = [
            np.asarray(Image.fromarray(f).resize((size, size), Image.Resampling.BILINEAR))
            for f in films
        ]
        return normalised(torch.from_numpy(np.stack(squares)).float().div_(255.0)[:, None])

    @torch.inference_mode()
    def probabilities(self, films: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
        """Each film's lung probability map at the network's input size, ``float32 (S, S)``."""
        out: list[np.ndarray] = []
        for start in range(0, len(films), BATCH):
            logits = self.network(self.inputs(films[start : start + BATCH]))
            out.extend(torch.sigmoid(logits[:, 0]).numpy())
        return out

    def mask(self, film: np.ndarray, probability: np.ndarray | None = None) -> np.ndarray:
        """The cleaned mask of one film at its own size (bool (H, W))."""
        if probability is None:
            probability = self.probabilities([film])[0]
        height, width = film.shape
        return clean_mask(threshold_resized(probability, height, width, self.meta.threshold))

    def masks(
        self, films: Sequence[np.ndarray] | np.ndarray
    ) -> tuple[list[np.ndarray] | np.ndarray, np.ndarray]:
        """Each film's cleaned mask at its own size and whether it is :func:`plausible`; an
        ``(N, H, W)`` array in gives an ``(N, H, W)`` bool array out."""
        n = len(films)
        masks: list[np.ndarray] = []
        starts = range(0, n, BATCH)
        for start in track(starts, total=len(starts), description=f"Lung fields of {n} films"):
            chunk = films[start : start + BATCH]
            for film, probability in zip(chunk, self.probabilities(chunk)):
                masks.append(self.mask(film, probability))
        ok = np.array([plausible(m) for m in masks], dtype=bool)
        if isinstance(films, np.ndarray):
            return np.stack(masks) if masks else np.zeros(films.shape, dtype=bool), ok
        return masks, ok

    def box(self, film: np.ndarray, probability: np.ndarray | None = None) -> tuple[Box, bool]:
        """The crop box of one film, found on its mask at the network's input size (from its
        ``probability`` map when already computed), and whether the mask was plausible (if
        not, :data:`WHOLE`)."""
        size = self.meta.input_size
        if probability is None:
            probability = self.probabilities([film])[0]
        mask = clean_mask(probability >= self.meta.threshold)
        if mask.shape != (size, size) or not plausible(mask):
            return WHOLE, False
        return lung_box(mask), True


def crop_to_lungs(film: np.ndarray, segmenter: LungSegmenter) -> tuple[np.ndarray, bool]:
    """``film`` cut to its lung box (see :meth:`LungSegmenter.box`), and whether a plausible
    mask was found (if not, the film is returned whole)."""
    box, ok = segmenter.box(film)
    top, left, bottom, right = box.pixels(*film.shape)
    return np.ascontiguousarray(film[top:bottom, left:right]), ok
