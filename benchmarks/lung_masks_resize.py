"""Benchmark: film-size lung masks resized a strip at a time against the whole-film resize.

    uv run python benchmarks/lung_masks_resize.py

``LungSegmenter.mask`` resizes the segmenter's probability map to the film's size a strip of
rows at a time (:func:`cxrlab.lungs.segment.threshold_resized`, bounded memory on any film).
This compares its masks with those of the whole-film resize it replaced (``F.interpolate``,
bilinear, then the same threshold and :func:`clean_mask`) on real films at their own size:
every 6th Kaggle test film, every 3rd adult-extra film, 20 Kaggle test films enlarged to random
sizes of 0.9-4.2 kpx (seed 1) and one enlarged to 8900 x 8900. Printed: mask pixels that differ,
and films whose plausibility differs (the lung box that ``--crop lungs`` cuts is found at the
segmenter's input size, with no resize). A missing data folder is skipped with a message.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cxrlab.data.reader import decode_image
from cxrlab.evaluation.predict import expand_image_paths
from cxrlab.lungs import default_segmenter
from cxrlab.lungs.segment import clean_mask, plausible

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
KAGGLE_TEST = DATA / "chest-xray-covid19-pneumonia" / "Data" / "test"
ADULT_EXTRA = DATA / "adult-extra"


def films() -> list[tuple[str, np.ndarray]]:
    """The films of the module docstring, listed as ``cxrlab segment`` lists a folder."""
    kaggle, extra = expand_image_paths([KAGGLE_TEST]), expand_image_paths([ADULT_EXTRA])
    out = [(str(p), decode_image(p).pixels) for p in kaggle[::6] + extra[::3]]
    rng = np.random.default_rng(1)
    for path in kaggle[::60][:20]:
        height, width = (int(n) for n in rng.integers(900, 4200, 2))
        grey = Image.open(path).convert("L")
        out.append((f"{path} at {height}x{width}", np.asarray(grey.resize((width, height)))))
    grey = Image.open(kaggle[0]).convert("L")
    out.append((f"{kaggle[0]} at 8900x8900", np.asarray(grey.resize((8900, 8900)))))
    return out


def main() -> None:
    if not KAGGLE_TEST.is_dir() or not ADULT_EXTRA.is_dir():
        print(f"skipped: {KAGGLE_TEST} or {ADULT_EXTRA} not found (place ../shared/data beside)")
        return
    segmenter = default_segmenter()
    differing = pixels = plausibility = 0
    chosen = films()
    for name, film in chosen:
        probability = segmenter.probabilities([film])[0]
        strips = segmenter.mask(film, probability)
        whole = F.interpolate(
            torch.from_numpy(probability)[None, None],
            size=film.shape,
            mode="bilinear",
            align_corners=False,
        )[0, 0].numpy()
        reference = clean_mask(whole >= segmenter.meta.threshold)
        changed = int((strips != reference).sum())
        if changed:
            print(f"{name}: {changed} of {film.size} pixels differ")
        differing, pixels = differing + changed, pixels + film.size
        plausibility += plausible(strips) != plausible(reference)
    print(
        f"{len(chosen)} films: {differing} of {pixels} mask pixels differ; "
        f"plausibility differs on {plausibility}"
    )


if __name__ == "__main__":
    main()
