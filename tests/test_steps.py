"""The steps of a run compose: prepare → fit → select → test → write, called by hand, give
what ``train_run`` gives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import pytest
from conftest import TINY, train_tiny

from cxrlab.config import RunConfig, preset
from cxrlab.training import run as steps


def scores(run_dir: Path) -> dict:
    """``metrics.json`` without what depends on the clock."""

    def strip(value: object) -> object:
        if isinstance(value, dict):
            return {
                k: strip(v)
                for k, v in value.items()
                if not k.endswith("_s") and k != "inference_img_per_s"
            }
        return value

    return cast(dict, strip(json.loads((run_dir / "metrics.json").read_text())))


@pytest.mark.parametrize(
    "config",
    [
        preset("frozen", model="resnet18", pretrained=False, epochs=4, **TINY),
        preset("scratch", model="resnet18", epochs=2, tta=True, **TINY),
    ],
    ids=["frozen", "finetune"],
)
def test_the_steps_by_hand_are_train_run(
    tiny_data: tuple[Path, Path], tmp_path: Path, config: RunConfig
) -> None:
    root, cache = tiny_data
    ctx = steps.RunContext(root, config, tmp_path / "by_hand", cache_root=cache, workers=1)
    ctx.run_dir.mkdir()
    prepared = steps.prepare(ctx)
    # frozen: train_run computes the backbone's features, the steps read them from the cache;
    # the two train alike (computing them draws nothing from torch's generator)
    whole = train_tiny(tiny_data, tmp_path / "train_run", config)
    fitted = steps.fit(ctx, prepared)
    learner = fitted.learner
    if config.mode == "frozen":
        assert learner.features is not None and set(learner.features) == {"train", "val", "test"}
        assert learner.net is learner.model.head
    else:
        assert learner.features is None and learner.net is learner.model
    history = steps.select(ctx, fitted)
    metrics = steps.test(ctx, fitted, prepared, history)
    assert not ctx.files.metrics.exists()  # write is the step that finishes the run
    result = steps.write(ctx, metrics)
    assert result.metrics is metrics and steps.is_finished(ctx.run_dir)
    assert scores(ctx.run_dir) == scores(whole.run_dir)
    assert (config.mode == "finetune") is (metrics.test_without_tta is not None)
    for name in ("test_predictions.csv", "val_predictions.csv", "split.csv", "config.json"):
        assert (ctx.run_dir / name).read_bytes() == (whole.run_dir / name).read_bytes(), name


def test_fit_in_two_halves_takes_trainer_arguments(
    tiny_data: tuple[Path, Path], tmp_path: Path
) -> None:
    """What the throughput benchmark times: the run's learner, fitted for a few batches by a
    Trainer without validation, checkpoints or loggers."""
    root, cache = tiny_data
    config = preset("scratch", model="resnet18", epochs=1, **TINY)
    ctx = steps.RunContext(root, config, tmp_path, cache_root=cache, workers=1)
    learner = steps.build_learner(ctx, steps.prepare(ctx))
    trainer = steps.fit_learner(
        ctx,
        learner,
        callbacks=[],
        logger=False,
        limit_train_batches=2,
        limit_val_batches=0,
        enable_checkpointing=False,
    )
    assert trainer.global_step == 2 and learner.module.history == []
    assert not ctx.files.checkpoints.exists() and not ctx.files.history.exists()
