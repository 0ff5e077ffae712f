"""Where the lungs are: the learned lung segmenter, its fallback, and the lung crop.

Every part of cxrlab that needs the lung fields (the lungs-hidden and lungs-only probes, Grad-CAM's
lung share, ``--crop lungs``) asks :func:`lung_masks` or :func:`default_segmenter`:

* ``network.py``: the U-Net and its weights file, with a typed card (:class:`SegmenterMeta`);
* ``segment.py``: masks, the plausibility check ("found"), the lung box and crop;
* ``heuristic.py``: the older threshold-and-template heuristic, kept only as the fallback.

The segmenter is the shipped weights file (:data:`~cxrlab.lungs.network.SHIPPED`), or the file
named by ``$CXRLAB_LUNG_SEGMENTER``; ``CXRLAB_LUNG_SEGMENTER=heuristic`` asks for the heuristic
(to measure beside it). When the learned weights cannot be loaded, :func:`lung_masks` says so
once and uses the heuristic, and :func:`segmenter_label` names what made the masks, so every
result records it.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import numpy as np

from cxrlab.errors import CxrlabError
from cxrlab.lungs import heuristic
from cxrlab.lungs.network import SHIPPED, load_segmenter
from cxrlab.lungs.segment import LungSegmenter, crop_to_lungs, plausible

__all__ = [
    "LungSegmenter",
    "crop_to_lungs",
    "default_segmenter",
    "lung_masks",
    "plausible",
    "segmenter_file",
    "segmenter_label",
]

ENV = "CXRLAB_LUNG_SEGMENTER"
HEURISTIC = "heuristic"


def _choice() -> str:
    return os.environ.get(ENV, "") or str(SHIPPED)


@functools.cache
def _load(choice: str) -> LungSegmenter:
    return LungSegmenter(*load_segmenter(Path(choice)))


def segmenter_file() -> Path:
    """The weights file :func:`default_segmenter` loads."""
    choice = _choice()
    if choice == HEURISTIC:
        raise CxrlabError(f"{ENV}=heuristic: the lung crop needs the learned segmenter")
    return Path(choice)


def default_segmenter() -> LungSegmenter:
    """The learned segmenter (shipped, or ``$CXRLAB_LUNG_SEGMENTER``), loaded once per process;
    a one-line error when it cannot be loaded (needed: the lung crop has no fallback)."""
    return _load(str(segmenter_file()))


@functools.cache
def _available(choice: str) -> LungSegmenter | None:
    if choice == HEURISTIC:
        return None
    try:
        return _load(choice)
    except CxrlabError as exc:
        warnings.warn(
            f"the learned lung segmenter is unavailable ({exc}): lung masks come from the "
            "heuristic (cxrlab.lungs.heuristic)",
            stacklevel=3,
        )
        return None


def segmenter_label() -> str:
    """What :func:`lung_masks` uses now: the learned segmenter's label, or ``heuristic``."""
    segmenter = _available(_choice())
    return segmenter.label if segmenter is not None else HEURISTIC


def lung_masks(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lung masks ``bool (N, H, W)`` of films ``uint8 (N, H, W)`` and whether each was found (a
    plausible two-lung mask for the learned segmenter; the heuristic's own verdict for it)."""
    images = np.asarray(images)
    if images.ndim != 3:
        raise CxrlabError(f"lung_masks: expected images of shape (N, H, W), got {images.shape}")
    segmenter = _available(_choice())
    if segmenter is None:
        return heuristic.lung_masks(images)
    masks, ok = segmenter.masks(images)
    return np.asarray(masks, dtype=bool), ok
