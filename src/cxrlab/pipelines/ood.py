"""``cxrlab ood``: fit a finished run's "unlike the training films" statistics on its own split
(:mod:`cxrlab.evaluation.ood`), and score folders of films against them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cxrlab.artifacts import RunDir
from cxrlab.data.cache import CacheSpec
from cxrlab.data.datasets import CachedImageDataset
from cxrlab.device import pick_device
from cxrlab.errors import CxrlabError
from cxrlab.evaluation.ood import QUANTILE, OodStats, stats_path, weights_digest


def fit_run_ood(
    run_dir: Path,
    data: Path,
    *,
    quantile: float = QUANTILE,
    cache_root: Path | None = None,
    workers: int = 2,
    device: str = "auto",
    say: Callable[[str], None] = print,
) -> OodStats:
    """Fit the statistics of the run in ``run_dir`` (its ``model.pt`` and ``split.csv``; ``data``:
    the dataset it was trained on) and write them to ``RUN/ood.npz``.

    The films are read from the dataset's cache, decoded as for training: mean and covariance
    from the ``train`` rows, the threshold from the ``val`` rows.
    """
    from cxrlab.config import RunConfig
    from cxrlab.models.checkpoint import load_model
    from cxrlab.training.frozen import extract_features
    from cxrlab.training.prepared import prepare_run_data

    files = RunDir(run_dir)
    if not files.is_finished or not files.split.is_file():
        raise CxrlabError(
            f"{run_dir}: not a finished cxrlab run folder (needs model.pt, split.csv, metrics.json)"
        )
    model, meta = load_model(files.model)
    config = RunConfig.load(files.config)
    spec = CacheSpec.of_model(meta)
    config = config.updated(image_size=spec.image_size, resize=spec.resize)
    prepared = prepare_run_data(
        data,
        config,
        files.split,
        model.classes,
        cache_root=cache_root,
        workers=workers,
    )
    for name, why in list(prepared.skipped.items())[:5]:
        say(f"skipped {name}: {why}")
    torch_device = pick_device(device)
    features = {
        name: extract_features(
            model,
            CachedImageDataset(prepared.cache, prepared.rows.get(name, [])),
            device=torch_device,
        )
        for name in ("train", "val")
    }
    stats = OodStats.fit(
        features["train"],
        features["val"],
        arch=model.arch,
        digest=weights_digest(model),
        quantile=quantile,
    )
    stats.save(stats_path(files.model))
    return stats
