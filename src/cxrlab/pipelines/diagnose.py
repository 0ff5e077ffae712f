"""Diagnostics of a finished run: robustness to image format and where Grad-CAM looks.

Written into the run folder, next to ``metrics.json``:

    robustness.json   test accuracy on squashed / padded / rotated / darkened films, and the
                      shortcut probes: lung fields hidden / only the lungs kept, with the
                      share of films whose lungs were found (:mod:`cxrlab.evaluation.robustness`)
    gradcam.json      share of Grad-CAM mass in the lung fields, on the border, elsewhere
                      (:mod:`cxrlab.evaluation.gradcam`, :mod:`cxrlab.lungs`)
    gradcam.png       Grad-CAM overlays of right and wrong test films of each class

Only the test files of the run's own ``split.csv`` are read, with the checkpoint in
``model.pt`` (the one chosen on validation). ``cxrlab train`` and ``cxrlab compare`` write
them after training; ``cxrlab explain RUN...`` adds them to older runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrlab.artifacts import DIAGNOSTIC_FILES, RunDir
from cxrlab.data.cache import CacheSpec
from cxrlab.data.discover import DatasetIndex, discover_sources
from cxrlab.data.split import load_split
from cxrlab.device import pick_device
from cxrlab.diagnostics import GradcamSummary, Robustness
from cxrlab.errors import CxrlabError
from cxrlab.evaluation.gradcam import gradcam_summary
from cxrlab.evaluation.robustness import READABLE, load_variant_images, robustness_eval
from cxrlab.fileio import atomic_write_text

# Decoded test films shared by the runs of one process (one comparison): {(paths, spec): images}.
_DECODED: dict[tuple[tuple[str, ...], CacheSpec], dict[str, np.ndarray]] = {}


@dataclass(frozen=True)
class Diagnostics:
    """What :func:`diagnose_run` wrote: ``robustness.json`` and ``gradcam.json``."""

    robustness: Robustness
    gradcam: GradcamSummary


def has_diagnostics(run_dir: Path) -> bool:
    return all((run_dir / name).is_file() for name in DIAGNOSTIC_FILES)


def gradcam_sample(
    labels: np.ndarray, readable: np.ndarray, per_class: int | None, seed: int = 0
) -> np.ndarray:
    """Indices of up to ``per_class`` readable films of each class (all when ``None``), sorted."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        rows = np.flatnonzero((labels == label) & readable)
        chosen.append(
            rows
            if per_class is None or len(rows) <= per_class
            else rng.choice(rows, per_class, replace=False)
        )
    return np.sort(np.concatenate(chosen))


def run_files(run_dir: Path, data: Path) -> DatasetIndex:
    """The films of a finished run: ``data`` and the sources its config adds (``split.csv`` keys
    resolve through :meth:`~cxrlab.data.discover.DatasetIndex.path_of`)."""
    from cxrlab.config import RunConfig

    config = RunConfig.load(RunDir(run_dir).config)
    return discover_sources(data, config.sources, source_name=config.source_name)


def diagnose_run(
    run_dir: Path,
    data: Path,
    *,
    device: str = "auto",
    gradcam_per_class: int | None = 100,
) -> Diagnostics:
    """Write the diagnostics of the finished run in ``run_dir``; ``data`` is its dataset root.

    Robustness uses every test film; Grad-CAM (a backward pass per film) a seeded sample of
    ``gradcam_per_class`` films per class, the same films for every run of one split."""
    from cxrlab.models.checkpoint import load_model
    from cxrlab.models.tta import with_tta

    run_dir, data = Path(run_dir), Path(data)
    files = RunDir(run_dir)
    if not files.model.is_file():
        raise CxrlabError(f"{run_dir}: no model.pt (the run has not finished)")
    model, meta = load_model(files.model)
    test = load_split(files.split).get("test", [])
    if not test:
        raise CxrlabError(f"{run_dir}: the run has no test split to diagnose")
    films = run_files(run_dir, data)
    paths = [films.path_of(key) for key, _ in test]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise CxrlabError(
            f"{missing[0]}: test file of {run_dir.name} not found (is {data} the run's dataset?)"
        )
    classes = list(model.classes)
    labels = np.array([classes.index(name) for _, name in test], dtype=np.int64)
    spec = CacheSpec.of_model(meta)
    key = (tuple(map(str, paths)), CacheSpec(spec.image_size, crop=spec.crop))
    if key not in _DECODED:
        _DECODED.clear()  # keep one decoded test set in memory
        _DECODED[key] = load_variant_images(paths, spec)
    images = _DECODED[key]
    target = pick_device(device)

    robustness = robustness_eval(  # as the run tests: with its test-time augmentation, if any
        with_tta(model, meta.tta),
        paths,
        labels,
        classes,
        spec,
        images=images,
        device=target,
    )
    atomic_write_text(files.robustness, robustness.to_json())
    sample = gradcam_sample(labels, images[READABLE], per_class=gradcam_per_class)
    gradcam = gradcam_summary(
        model,
        images[spec.resize][sample],
        labels[sample],
        classes,
        out_png=files.gradcam_png,
        device=target,
        title=f"Grad-CAM, {run_dir.name}: rows = true class; right, then wrong",
    )
    atomic_write_text(files.gradcam, gradcam.to_json())
    return Diagnostics(robustness, gradcam)
