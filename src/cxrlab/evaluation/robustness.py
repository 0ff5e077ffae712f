"""Robustness to image format: test accuracy when the films are made square another way,
rotated slightly or darkened.

In the chest X-ray data the COVID19 films are adult films of other sizes and aspect ratios
than the pediatric NORMAL/PNEUMONIA ones, so how an image is made square (squashed, or
padded with black bars) can itself tell the classes apart. A model that learned such a
format shortcut loses accuracy when the format changes while the anatomy does not; a model
that looks at the lungs should hardly notice.

Variants (:data:`VARIANTS`, in report order), all at the model's image size ``S``:

* ``squash`` — the original file resized to S x S ignoring the aspect ratio (the cache's
  ``squash`` mode);
* ``pad`` — aspect ratio kept, padded with black to a square (the cache's ``pad`` mode);
* ``rotate+10`` / ``rotate-10`` — the model's own preprocessing, then rotated by +10 / -10
  degrees (positive = counter-clockwise) about the image centre, bilinear, corners black;
* ``darken`` — the model's own preprocessing, then every intensity multiplied by 0.6.

The *reference* is the variant equal to the model's own resize mode (``spec.resize``): its
accuracy is what the model gets as trained, and every variant's ``accuracy_drop`` is the
reference accuracy minus its own (0 for the reference, positive = worse).

Each file is decoded once (:func:`load_variant_images`) and both square versions are kept,
so several models of one comparison can share one decode through ``images=``.
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

from cxrlab.data.cache import RESIZE_MODES, CacheSpec, resize_square
from cxrlab.data.reader import decode_image
from cxrlab.errors import CxrlabError, ImageReadError
from cxrlab.evaluation.metrics import classification_metrics
from cxrlab.evaluation.predict import predict_probs
from cxrlab.progress import track

ROTATION_DEGREES = 10.0
DARKEN_FACTOR = 0.6
READABLE = "readable"  # key of the per-file boolean mask in load_variant_images' result


@dataclass(frozen=True)
class Variant:
    """One way of presenting the test images: which square version it starts from (``None``:
    the model's own resize mode) and what is done to it afterwards (floats 0..1)."""

    name: str
    description: str
    source: str | None
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None


def _rotate(degrees: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def rotate(images: torch.Tensor) -> torch.Tensor:
        return TF.rotate(
            images, degrees, interpolation=InterpolationMode.BILINEAR, expand=False, fill=0.0
        )

    return rotate


def _darken(images: torch.Tensor) -> torch.Tensor:
    return images * DARKEN_FACTOR


VARIANT_LIST = (
    Variant("squash", "resized to a square ignoring the aspect ratio (stretched)", "squash"),
    Variant("pad", "aspect ratio kept, padded with black bars to a square", "pad"),
    Variant(
        "rotate+10",
        f"the model's own preprocessing, rotated {ROTATION_DEGREES:g}° counter-clockwise about "
        "the centre (bilinear, black corners)",
        None,
        _rotate(ROTATION_DEGREES),
    ),
    Variant(
        "rotate-10",
        f"the model's own preprocessing, rotated {ROTATION_DEGREES:g}° clockwise about the "
        "centre (bilinear, black corners)",
        None,
        _rotate(-ROTATION_DEGREES),
    ),
    Variant(
        "darken",
        f"the model's own preprocessing, every intensity multiplied by {DARKEN_FACTOR:g}",
        None,
        _darken,
    ),
)
# name: description, in report order
VARIANTS: dict[str, str] = {v.name: v.description for v in VARIANT_LIST}
_BY_NAME = {v.name: v for v in VARIANT_LIST}


def apply_variant(name: str, images: torch.Tensor) -> torch.Tensor:
    """The pixel operation of variant ``name`` on float images ``(..., S, S)`` in 0..1
    (identity for ``squash`` and ``pad``, whose difference lies in the decode)."""
    if name not in _BY_NAME:
        raise CxrlabError(f"robustness: unknown variant '{name}' (one of {', '.join(VARIANTS)})")
    transform = _BY_NAME[name].transform
    return transform(images) if transform is not None else images


def load_variant_images(
    paths: list[Path], spec: CacheSpec, *, progress: bool = True
) -> dict[str, np.ndarray]:
    """Decode each file once and make it square both ways, at ``spec.image_size``.

    Returns ``{"squash": uint8 (N, S, S), "pad": uint8 (N, S, S), "readable": bool (N,)}`` in
    the order of ``paths``; a file that cannot be decoded has black rows and ``readable`` False.
    Pass the result as ``images=`` to :func:`robustness_eval` to share it between models of
    the same image size.
    """
    size = spec.image_size
    n = len(paths)
    out = {mode: np.zeros((n, size, size), dtype=np.uint8) for mode in RESIZE_MODES}
    readable = np.zeros(n, dtype=bool)
    specs = {mode: CacheSpec(size, mode) for mode in RESIZE_MODES}
    for i, path in enumerate(
        track(paths, total=n, description=f"Decoding {n} images at {size}px", enabled=progress)
    ):
        try:
            pixels = decode_image(path, draft_size=size).pixels
        except ImageReadError:
            continue
        for mode in RESIZE_MODES:
            out[mode][i] = resize_square(pixels, specs[mode])
        readable[i] = True
    out[READABLE] = readable
    return out


class _VariantDataset(Dataset):
    """``(float image (1, S, S) in 0..1 after the variant's transform, 0)`` per row."""

    def __init__(self, squares: np.ndarray, variant: Variant) -> None:
        self.squares = squares
        self.variant = variant

    def __len__(self) -> int:
        return len(self.squares)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(np.array(self.squares[i], dtype=np.float32)).div_(255.0)[None]
        return apply_variant(self.variant.name, image), 0


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
    progress: bool = True,
    images: dict[str, np.ndarray] | None = None,
) -> dict:
    """Accuracy, macro-F1 and per-class recall of ``model`` on every variant of the images.

    ``spec`` is the model's own preprocessing (image size and resize mode). ``images``, when
    given, is the result of :func:`load_variant_images` for the same ``paths`` and size.
    Unreadable files are left out (with their labels) and counted in ``unreadable``;
    ``n_images`` is the number of images evaluated. Returns a JSON-ready dict::

        {"reference": spec.resize, "image_size": S, "n_images": N, "unreadable": k,
         "variants": {name: {"description", "accuracy", "macro_f1", "recall": {class: r},
                             "accuracy_drop"}}}
    """
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(paths):
        raise CxrlabError(f"robustness: {len(paths)} paths but {len(labels)} labels")
    if images is None:
        images = load_variant_images(paths, spec, progress=progress)
    readable = _check_images(images, len(paths), spec.image_size)
    if not readable.any():
        raise CxrlabError("robustness: none of the test images could be decoded")
    y_true = labels[readable]
    results: dict[str, dict] = {}
    for variant in VARIANT_LIST:
        source = variant.source or spec.resize
        squares = images[source][readable]
        probs = predict_probs(
            model,
            _VariantDataset(squares, variant),
            batch_size=batch_size,
            device=device,
            progress=progress,
            description=f"Robustness: {variant.name}",
        )
        metrics = classification_metrics(y_true, probs, classes)
        results[variant.name] = {
            "description": variant.description,
            "accuracy": float(metrics["accuracy"]),
            "macro_f1": float(metrics["macro_f1"]),
            "recall": {c: float(metrics["per_class"][c]["recall"]) for c in classes},
        }
    reference = results[spec.resize]["accuracy"]
    for values in results.values():
        values["accuracy_drop"] = float(reference - values["accuracy"])
    return {
        "reference": spec.resize,
        "image_size": int(spec.image_size),
        "n_images": int(readable.sum()),
        "unreadable": int((~readable).sum()),
        "variants": results,
    }
