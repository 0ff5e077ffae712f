"""Robustness to image format: test accuracy when the films are made square another way,
rotated slightly or darkened.

In the chest X-ray data the COVID19 films are adult films of other sizes and aspect ratios
than the pediatric NORMAL/PNEUMONIA ones, so how an image is made square (squashed, or
padded with black bars) can itself tell the classes apart. A model that learned such a
format shortcut loses accuracy when the format changes while the anatomy does not; a model
that looks at the lungs should hardly notice.

Variants (``VARIANTS`` of :mod:`cxrlab.diagnostics`, in report order), all at the image size ``S``:

* ``squash`` — the original file resized to S x S ignoring the aspect ratio (the cache's
  ``squash`` mode);
* ``pad`` — aspect ratio kept, padded with black to a square (the cache's ``pad`` mode);
* ``rotate+10`` / ``rotate-10`` — the model's own preprocessing, then rotated by +10 / -10
  degrees (positive = counter-clockwise) about the image centre, bilinear, corners black;
* ``darken`` — the model's own preprocessing, then every intensity multiplied by 0.6;
* ``lungs-hidden`` / ``lungs-only`` (the shortcut probes, ``PROBES``) — the model's own
  preprocessing with the lung fields, or everything outside them, replaced by mid-grey (0.5).

The probes ask whether the model reads the lungs. With the lungs hidden, a model that reads
disease should fall to chance; one that still scores far above chance reads something outside
the lungs: the source hospital, age, markers, positioning (Maguolo & Nanni 2021; DeGrave,
Janizek & Lee 2021). The lung fields are :func:`cxrlab.lungs.lung_masks` of each image as the
model sees it (its own resize mode and size): the learned segmenter's masks (or, where its
weights are unavailable, the heuristic's, whose failures are a two-ellipse template), so
``lung_fields`` records which segmenter made them and the share of films whose lungs were
found (a plausible two-lung mask), overall and per class. ``chance`` gives the
balanced accuracy of a constant guess (``1/k``, ``k`` the classes present) and the accuracy
of always guessing the majority class; ``probe_reading`` (:mod:`cxrlab.diagnostics`) says in one
line how far above chance the lungs-hidden balanced accuracy is. Every variant reports balanced
accuracy too, since the test split is imbalanced.

The *reference* is the variant equal to the model's own resize mode (``spec.resize``): its
accuracy is what the model gets as trained, and every variant's ``accuracy_drop`` is the
reference accuracy minus its own (0 for the reference, positive = worse).

Each file is decoded once (:func:`load_variant_images`) and both square versions are kept,
so several models of one comparison can share one decode through ``images=``; the lung
masks of a square version are computed on first use and kept in the same dict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from cxrlab.data.cache import RESIZE_MODES, CacheSpec, crop_film, draft_size, resize_square
from cxrlab.data.reader import decode_image
from cxrlab.diagnostics import (
    DARKEN_FACTOR,
    MID_GREY,
    ROTATION_DEGREES,
    VARIANTS,
    Chance,
    LungFields,
    Robustness,
    VariantResult,
)
from cxrlab.errors import CxrlabError, ImageReadError
from cxrlab.evaluation.metrics import classification_metrics
from cxrlab.evaluation.predict import predict_probs
from cxrlab.lungs import lung_masks, segmenter_label
from cxrlab.progress import track

READABLE = "readable"  # key of the per-file boolean mask in load_variant_images' result


@dataclass(frozen=True)
class Variant:
    """One way of presenting the test images: which square version it starts from (``None``:
    the model's own resize mode), what is done to it afterwards (floats 0..1) and, for the
    probes, which region is made mid-grey (``"lungs"`` or ``"outside"`` the lung fields). Its
    description is :data:`~cxrlab.diagnostics.VARIANTS`' (the records' vocabulary)."""

    name: str
    source: str | None
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    grey: str | None = None

    @property
    def description(self) -> str:
        return VARIANTS[self.name]


def _rotate(degrees: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def rotate(images: torch.Tensor) -> torch.Tensor:
        return TF.rotate(
            images,
            degrees,
            interpolation=InterpolationMode.BILINEAR,
            expand=False,
            fill=0.0,  # pyright: ignore[reportArgumentType]  # a number fills every channel; the stub allows a list only
        )

    return rotate


def _darken(images: torch.Tensor) -> torch.Tensor:
    return images * DARKEN_FACTOR


VARIANT_LIST = (  # in VARIANTS order
    Variant("squash", "squash"),
    Variant("pad", "pad"),
    Variant("rotate+10", None, _rotate(ROTATION_DEGREES)),
    Variant("rotate-10", None, _rotate(-ROTATION_DEGREES)),
    Variant("darken", None, _darken),
    Variant("lungs-hidden", None, grey="lungs"),
    Variant("lungs-only", None, grey="outside"),
)
_BY_NAME = {v.name: v for v in VARIANT_LIST}


def apply_variant(
    name: str, images: torch.Tensor, lungs: torch.Tensor | None = None
) -> torch.Tensor:
    """The pixel operation of variant ``name`` on float images ``(..., S, S)`` in 0..1
    (identity for ``squash`` and ``pad``, whose difference lies in the decode). The probes
    need ``lungs``: bool lung masks broadcastable to ``images`` (e.g. ``(N, 1, S, S)``)."""
    if name not in _BY_NAME:
        raise CxrlabError(f"robustness: unknown variant '{name}' (one of {', '.join(VARIANTS)})")
    variant = _BY_NAME[name]
    if variant.transform is not None:
        images = variant.transform(images)
    if variant.grey is None:
        return images
    if lungs is None:
        raise CxrlabError(f"robustness: variant '{name}' needs the lung masks of the images")
    region = lungs if variant.grey == "lungs" else ~lungs
    return images.masked_fill(region.to(device=images.device, dtype=torch.bool), MID_GREY)


def lung_fields(images: dict[str, np.ndarray], mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Lung masks ``(N, S, S)`` and segmented flags ``(N,)`` of the ``mode`` squares of
    :func:`load_variant_images`' result; computed once, then kept in ``images``."""
    masks, segmented = f"lungs-{mode}", f"segmented-{mode}"
    if masks not in images:
        images[masks], images[segmented] = lung_masks(images[mode])
    return images[masks], images[segmented]


def load_variant_images(paths: list[Path], spec: CacheSpec) -> dict[str, np.ndarray]:
    """Decode each file once and make it square both ways, at ``spec.image_size``.

    Returns ``{"squash": uint8 (N, S, S), "pad": uint8 (N, S, S), "readable": bool (N,)}`` in
    the order of ``paths``; a file that cannot be decoded has black rows and ``readable`` False.
    Pass the result as ``images=`` to :func:`robustness_eval` to share it between models of
    the same image size.
    """
    size = spec.image_size
    n = len(paths)
    out: dict[str, np.ndarray] = {
        mode: np.zeros((n, size, size), dtype=np.uint8) for mode in RESIZE_MODES
    }
    readable = np.zeros(n, dtype=bool)
    specs = {mode: CacheSpec(size, mode, spec.crop) for mode in RESIZE_MODES}
    for i, path in enumerate(track(paths, total=n, description=f"Decoding {n} images at {size}px")):
        try:
            pixels = crop_film(decode_image(path, draft_size=draft_size(spec)).pixels, spec)
        except ImageReadError:
            continue
        for mode in RESIZE_MODES:
            out[mode][i] = resize_square(pixels, specs[mode])
        readable[i] = True
    out[READABLE] = readable
    return out


class _VariantDataset(Dataset):
    """``(float image (1, S, S) in 0..1 after the variant's transform, 0)`` per row."""

    def __init__(
        self, squares: np.ndarray, variant: Variant, lungs: np.ndarray | None = None
    ) -> None:
        self.squares = squares
        self.variant = variant
        self.lungs = lungs

    def __len__(self) -> int:
        return len(self.squares)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(np.array(self.squares[i], dtype=np.float32)).div_(255.0)[None]
        if self.lungs is None:
            return apply_variant(self.variant.name, image), 0
        lungs = torch.from_numpy(np.array(self.lungs[i], dtype=bool))
        return apply_variant(self.variant.name, image, lungs), 0


def _check_images(images: dict[str, np.ndarray], n: int, size: int) -> np.ndarray:
    """The readable mask of caller-given images, after checking their shapes."""
    for mode in RESIZE_MODES:
        if mode not in images:
            raise CxrlabError(f"robustness: images has no '{mode}' array (use load_variant_images)")
        if images[mode].shape != (n, size, size):
            raise CxrlabError(
                f"robustness: '{mode}' images have shape {images[mode].shape}, expected "
                f"{(n, size, size)} (one {size}px square per path)"
            )
    readable = images.get(READABLE)
    return np.ones(n, dtype=bool) if readable is None else np.asarray(readable, dtype=bool)


def robustness_eval(
    model: nn.Module,
    paths: list[Path],
    labels: np.ndarray,
    classes: list[str],
    spec: CacheSpec,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    images: dict[str, np.ndarray] | None = None,
) -> Robustness:
    """Accuracy, balanced accuracy, macro-F1 and per-class recall of ``model`` on every
    variant of the images.

    ``spec`` is the model's own preprocessing (image size and resize mode). ``images``, when
    given, is the result of :func:`load_variant_images` for the same ``paths`` and size (the
    lung masks are added to it). Unreadable files are left out (with their labels) and counted
    in ``unreadable``; ``n_images`` is the number of images evaluated. Returns the record
    saved as ``robustness.json`` (:class:`~cxrlab.diagnostics.Robustness`): every variant's
    numbers, the chance levels and the share of films whose lung fields were found.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(paths):
        raise CxrlabError(f"robustness: {len(paths)} paths but {len(labels)} labels")
    if images is None:
        images = load_variant_images(paths, spec)
    readable = _check_images(images, len(paths), spec.image_size)
    if not readable.any():
        raise CxrlabError("robustness: none of the test images could be decoded")
    y_true = labels[readable]
    masks, segmented = lung_fields(images, spec.resize)
    masks, segmented = masks[readable], segmented[readable]
    results = {}
    for variant in VARIANT_LIST:
        source = variant.source or spec.resize
        squares = images[source][readable]
        probs = predict_probs(
            model,
            _VariantDataset(squares, variant, masks if variant.grey else None),
            batch_size=batch_size,
            device=device,
            description=f"Robustness: {variant.name}",
        )
        results[variant.name] = classification_metrics(y_true, probs, classes)
    reference = results[spec.resize].accuracy
    return Robustness(
        reference=spec.resize,
        image_size=int(spec.image_size),
        n_images=int(readable.sum()),
        unreadable=int((~readable).sum()),
        variants={
            name: VariantResult(
                description=VARIANTS[name],
                accuracy=metrics.accuracy,
                balanced_accuracy=metrics.balanced_accuracy,
                macro_f1=metrics.macro_f1,
                recall={c: metrics.per_class[c].recall for c in classes},
                accuracy_drop=float(reference - metrics.accuracy),
            )
            for name, metrics in results.items()
        },
        chance=chance_levels(y_true, classes),
        lung_fields=LungFields(
            mode=spec.resize,
            segmented=float(segmented.mean()),
            n_segmented=int(segmented.sum()),
            segmented_by_class={
                c: float(segmented[y_true == k].mean()) if (y_true == k).any() else None
                for k, c in enumerate(classes)
            },
            segmenter=segmenter_label(),
        ),
    )


def chance_levels(y_true: np.ndarray, classes: list[str]) -> Chance:
    """What guessing scores on these labels: the balanced accuracy of any constant guess
    (``1/k``, ``k`` the classes present) and the accuracy of always guessing the majority."""
    counts = np.bincount(np.asarray(y_true, dtype=np.int64), minlength=len(classes))
    majority = int(np.argmax(counts))
    return Chance(
        balanced_accuracy=1.0 / max(int((counts > 0).sum()), 1),
        accuracy=float(counts[majority] / max(counts.sum(), 1)),
        majority_class=classes[majority],
    )
