"""A heuristic lung-field segmentation of frontal chest films (numpy, scipy and Pillow; no
model, nothing to download).

It is used to ask where a classifier looks (the share of its Grad-CAM mass inside the lung
fields, :mod:`cxrlab.evaluation.gradcam`) and to hide or keep only the lungs in the shortcut
probes (:mod:`cxrlab.evaluation.robustness`). It is a rough, documented heuristic, not a
validated segmentation.

On a frontal (PA/AP) chest film the lungs are the two large dark (air-filled) regions inside
the brighter body; the air outside the body is darker still and reaches the film edge. On the
thin chests of small children the lungs are hazy and reach the body outline, so at the grey
level that tells lungs from soft tissue they merge with that outside air. :func:`lung_field_mask`
therefore, for a ``uint8`` image:

1. works on a copy downsampled (antialiased) to a longer side of at most 128 px, smoothed with
   a Gaussian of ``sigma = S / 100`` (``S``: the copy's shorter side); the mask is resized back;
2. finds the body: all but the outside air, i.e. but the pixels darker than
   ``p1 + 0.3 (otsu - p1)`` that are connected to the image border (``p1``: the 1st
   percentile, ``otsu``: Otsu's threshold of the image — the grey level that maximises the
   between-class variance), with holes filled; and erodes it by a disk of radius ``0.03 S``
   (the chest wall; the image border too). Lungs are looked for only inside it, so a lung
   that reaches the thin body outline is cut there instead of being lost with the air;
3. at each threshold ``b2 + f (otsu_body - b2)``, ``f = 0.4, 0.5, ..., 1.4`` (``b2``,
   ``otsu_body``: the 2nd percentile and Otsu's threshold of the grey levels inside the body),
   takes the darker pixels inside the body, cuts thin bridges with an opening by a disk of
   radius ``0.02 S`` and labels the dark pieces;
4. for each side (image left and right) on its own: keeps the pieces of at least 0.5% of the
   image with at least 60% of their area in the side's search region (its template ellipse,
   below, scaled by 1.3), takes their convex hull as the lung (so a consolidation that splits
   a lung or bites into its edge counts as lung again) and, if that covers 2%-30% of the
   image, scores it by its Dice overlap with the side's template ellipse. Each side keeps its
   best threshold, so a denser (consolidated) lung gets its own, higher one;
5. succeeds (``ok = True``) if each side's lung overlaps its ellipse with a Dice of at least
   0.25 and is darker than a ring around it (as wide as the chest wall, inside the body) by
   at least 10% of the body's grey range (2nd to 98th percentile), and the two together cover
   8%-60% of the image. Otherwise the mask is a fixed template of two ellipses, centred at
   ``(x, y) = (0.30, 0.47)`` and ``(0.70, 0.47)`` of the width and height with semi-axes
   ``0.16`` wide and ``0.27`` tall, and ``ok = False``.

On the procedural films of :mod:`cxrlab.data.synthetic` (128 px, 20 per class) it succeeds on
every film, with a mean Dice overlap of 0.92 (NORMAL), 0.87 (PNEUMONIA) and 0.91 (COVID19)
with the generator's own lung fields (the template alone: 0.79).

Measured on real films, squashed to a square as cxrlab's cache stores them, with
``uv run python benchmarks/lung_segmentation.py`` (share of films with ``ok``; "before": the
previous heuristic, commit 640a732, which thresholded the whole central region and dropped
every dark piece touching the image border, so it lost lungs merged with the outside air):

=====================================  =====  ==============  ==============
set / class                            films  128 px (before)  224 px (before)
=====================================  =====  ==============  ==============
Kaggle test, COVID19 (adults)             59  94.9% (78.0%)   94.9% (78.0%)
Kaggle test, NORMAL (children)           309  99.7% (93.9%)   99.7% (94.8%)
Kaggle test, PNEUMONIA (children)        855  83.5% (51.8%)   83.4% (53.3%)
external-dev, COVID19 (adults)           400  94.8% (82.5%)   94.8% (83.0%)
external-dev, NORMAL (adults)            400  98.8% (93.8%)   98.8% (94.2%)
=====================================  =====  ==============  ==============

It takes about 22 ms a film at either size (before: 6-9 ms at 128 px, 21-34 ms at 224 px) on
one core of a shared 2-core machine. "Found" is the heuristic's own verdict, not a checked
segmentation: by eye, on 30 evenly spaced films per class at 224 px (the benchmark's
``--montage``), about four in five found masks follow the lungs (Kaggle COVID19 22 of 28
found, NORMAL 24 of 30, PNEUMONIA 23 of 27; external COVID19 23 of 28, NORMAL 26 of 30); the
others run past a lung into the neck, shoulder, axilla or gastric bubble, or cover only part
of it (an apex or a base).

Known limits: a dense consolidation or effusion filling a lung, a very hazy film with little
contrast, or a film that is not a frontal chest film make step 5 fail (template fallback) or
give a partial mask. :func:`lung_masks` reports which films fell back to the template, and a
summary should report that share next to any lung statistic.
"""

from __future__ import annotations

from typing import cast

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from cxrlab.errors import CxrlabError
from cxrlab.progress import track

WORK_SIZE = 128  # a larger film is segmented at this longer side, and the mask resized back
SIGMA_FRACTION = 0.01  # Gaussian sigma as a fraction of the (working) side
AIR_STEP = 0.3  # outside air: darker than p1 + AIR_STEP (Otsu - p1) and connected to the border
WALL_FRACTION = 0.03  # the body outline is eroded by this (the chest wall), fraction of the side
OPENING_FRACTION = 0.02  # radius of the opening that cuts thin bridges between dark pieces
THRESHOLD_STEPS = tuple(round(0.4 + 0.1 * k, 1) for k in range(11))  # p2 + step (Otsu - p2)
MIN_PIECE = 0.005  # smallest dark piece kept as part of a lung, fraction of the image
REGION_SCALE = 1.3  # a side's search region: its template ellipse scaled by this
IN_REGION = 0.6  # share of a piece's area that must lie in the side's search region
LUNG_AREA = (0.02, 0.30)  # allowed area of one lung (its hull), fraction of the image
MIN_DICE = 0.25  # least Dice overlap of each lung with its template ellipse
MIN_CONTRAST = 0.1  # least darkness of a lung against a ring around it, part of the body's range
COVERAGE = (0.08, 0.60)  # total lung area for success, fraction of the image
TEMPLATE_CENTRES = ((0.30, 0.47), (0.70, 0.47))  # (x, y) as fractions of the side
TEMPLATE_SEMI_AXES = (0.16, 0.27)  # (half width, half height) as fractions of the side


def _disk(radius: int) -> np.ndarray:
    """A digital disk of the given radius (a (2r+1, 2r+1) bool array)."""
    ys, xs = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return xs**2 + ys**2 <= radius**2 + radius  # the "+ radius" rounds the disk's rim outward


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values``: the bin edge that maximises the between-class variance
    (the middle one where several tie, as across empty bins between two modes).

    Pixels ``<`` the returned value form the dark class. A constant input returns its value.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return low
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(counts)[:-1].astype(np.float64)  # dark class: bins 0..i
    weight1 = counts.sum() - weight0
    sum0 = np.cumsum(counts * centres)[:-1]
    mean0 = sum0 / np.maximum(weight0, 1)
    mean1 = ((counts * centres).sum() - sum0) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    first = int(np.argmax(between))
    last = first  # empty bins between two modes tie: take the middle of the tied run
    while last + 1 < between.size and between[last + 1] == between[first]:
        last += 1
    return float(edges[1 + (first + last) // 2])


def _ellipses(height: int, width: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The template ellipses (image left, image right), semi-axes times ``scale``, bool (H, W)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    ys, xs = (ys + 0.5) / height, (xs + 0.5) / width
    rx, ry = (scale * axis for axis in TEMPLATE_SEMI_AXES)
    left, right = (
        ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0 for cx, cy in TEMPLATE_CENTRES
    )
    return left, right


def template_mask(height: int, width: int | None = None) -> np.ndarray:
    """The fallback lung template: two ellipses (see the module docstring), bool (H, W)."""
    left, right = _ellipses(height, height if width is None else width)
    return left | right


def body_interior(smooth: np.ndarray) -> np.ndarray:
    """Where a lung may lie: the body (all but the dark outside air reaching the image
    border), eroded by the chest wall (:data:`WALL_FRACTION`; the image border too)."""
    low = float(np.percentile(smooth, 1))
    air = smooth < low + AIR_STEP * (otsu_threshold(smooth) - low)
    labels, _ = cast("tuple[np.ndarray, int]", ndimage.label(air))
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    body = ndimage.binary_fill_holes(~np.isin(labels, edge[edge > 0]))
    wall = max(1, int(round(WALL_FRACTION * min(smooth.shape))))
    return ndimage.binary_erosion(body, structure=_disk(wall), border_value=0)


def lung_field_mask(image: np.ndarray) -> tuple[np.ndarray, bool]:
    """Lung fields of one frontal chest film ``(H, W)`` (uint8): ``(mask bool (H, W), ok)``.

    ``ok`` is False when the heuristic failed and the mask is the two-ellipse template.
    """
    image = np.asarray(image)
    if image.ndim != 2 or min(image.shape) < 8:
        raise CxrlabError(
            f"lung_field_mask: expected a 2-D image of at least 8x8 pixels, got shape {image.shape}"
        )
    height, width = image.shape
    work = _working_copy(image)
    mask = _segment(work)
    if mask is None:
        return template_mask(height, width), False
    if mask.shape != image.shape:
        resized = Image.fromarray(mask.astype(np.uint8) * 255).resize(
            (width, height), Image.Resampling.BILINEAR
        )
        mask = np.asarray(resized) > 127
    return mask, True


def _working_copy(image: np.ndarray) -> np.ndarray:
    """``image`` as float32, downsampled (antialiased) to a longer side of :data:`WORK_SIZE`."""
    height, width = image.shape
    scale = WORK_SIZE / max(height, width)
    if scale >= 1:
        return image.astype(np.float32)
    size = (max(8, round(width * scale)), max(8, round(height * scale)))
    resized = Image.fromarray(image).resize(size, Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def _segment(work: np.ndarray) -> np.ndarray | None:
    """Steps 2-5 of the module docstring on the working copy: the lung mask, or None."""
    height, width = work.shape
    side = min(height, width)
    smooth = ndimage.gaussian_filter(work, sigma=max(SIGMA_FRACTION * side, 0.5))
    interior = body_interior(smooth)
    if interior.mean() < COVERAGE[0]:
        return None
    values = smooth[interior]
    low, otsu = float(np.percentile(values, 2)), otsu_threshold(values)
    if otsu - low < 1.0:  # a flat body: nothing to segment
        return None
    opening = _disk(max(1, int(round(OPENING_FRACTION * side))))
    templates, regions = _ellipses(height, width), _ellipses(height, width, REGION_SCALE)
    best: list[tuple[float, np.ndarray | None]] = [(MIN_DICE, None), (MIN_DICE, None)]
    for step in THRESHOLD_STEPS:
        dark = (smooth < low + step * (otsu - low)) & interior
        dark = ndimage.binary_opening(dark, structure=opening)
        labels, count = cast("tuple[np.ndarray, int]", ndimage.label(dark))
        if not count:
            continue
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        big = sizes >= MIN_PIECE * dark.size
        big[0] = False
        for k in (0, 1):
            inside = np.bincount(labels[regions[k]], minlength=count + 1)
            pieces = (big & (inside >= IN_REGION * sizes))[labels]
            if not pieces.any():
                continue
            lung = _convex_hull(pieces)
            if not LUNG_AREA[0] <= lung.mean() <= LUNG_AREA[1]:
                continue
            score = _dice(lung, templates[k])
            if score >= best[k][0]:
                best[k] = (score, lung)
    lungs = [lung for _, lung in best]
    for lung in lungs:
        if lung is None or _contrast(smooth, lung, interior, values) < MIN_CONTRAST:
            return None
    assert lungs[0] is not None and lungs[1] is not None  # (returned above otherwise)
    mask = lungs[0] | lungs[1]
    return mask if COVERAGE[0] <= mask.mean() <= COVERAGE[1] else None


def _contrast(
    smooth: np.ndarray, lung: np.ndarray, interior: np.ndarray, body: np.ndarray
) -> float:
    """How much darker ``lung`` is than a ring around it inside the body (the ring as wide as
    the chest wall), as a fraction of the body's range (2nd to 98th percentile)."""
    spread = float(np.percentile(body, 98) - np.percentile(body, 2))
    wall = max(1, int(round(WALL_FRACTION * min(smooth.shape))))
    ring = ndimage.binary_dilation(lung, structure=_disk(wall)) & ~lung & interior
    if not ring.any() or spread <= 0:
        return 0.0
    return (float(smooth[ring].mean()) - float(smooth[lung].mean())) / spread


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def _convex_hull(mask: np.ndarray) -> np.ndarray:
    """The filled convex hull of the True pixels of ``mask`` (bool, same shape)."""
    points = np.argwhere(mask)
    try:
        hull = ConvexHull(points.astype(np.float64))
    except QhullError:  # degenerate (collinear) pieces: keep them as they are
        return mask.copy()
    canvas = Image.new("1", (mask.shape[1], mask.shape[0]), 0)
    corners = [(int(x), int(y)) for y, x in points[hull.vertices]]
    ImageDraw.Draw(canvas).polygon(corners, fill=1, outline=1)
    return np.asarray(canvas, dtype=bool) | mask


def lung_masks(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`lung_field_mask` of every image of ``images (N, S, S)``: masks (N, S, S), ok (N,)."""
    images = np.asarray(images)
    if images.ndim != 3:
        raise CxrlabError(f"lung_masks: expected images of shape (N, S, S), got {images.shape}")
    masks = np.zeros(images.shape, dtype=bool)
    ok = np.zeros(len(images), dtype=bool)
    n = len(images)
    described = track(images, total=n, description=f"Lung fields of {n} images")
    for i, image in enumerate(described):
        masks[i], ok[i] = lung_field_mask(image)
    return masks, ok
