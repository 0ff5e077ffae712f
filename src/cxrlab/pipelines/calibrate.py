"""``cxrlab calibrate``: give a finished run its temperature (and an operating point) after the
fact, on its own validation split."""

from __future__ import annotations

from pathlib import Path

from cxrlab.artifacts import RunDir
from cxrlab.device import pick_device
from cxrlab.fileio import atomic_write_text, locked
from cxrlab.records import parse_target_recall
from cxrlab.training.prepared import prepare_run_data, subset_logits
from cxrlab.training.run import RunResult
from cxrlab.training.testing import calibrate_and_test


def calibrate_run(
    run_dir: Path,
    data: Path,
    *,
    target_recall: str | None = None,
    cache_root: Path | None = None,
    workers: int = 2,
    device: str = "auto",
) -> RunResult:
    """Calibrate a finished run (one made before calibration existed), or give it the operating
    point ``target_recall``: the temperature and the threshold are fitted on the run's own
    validation split, ``model.pt``, the predictions and ``metrics.json`` are rewritten. The model
    and its test split are those of the run; nothing is trained or selected."""
    from cxrlab.models.checkpoint import load_model
    from cxrlab.models.tta import with_tta

    run_dir = Path(run_dir)
    result = RunResult.load(run_dir)
    config = result.config.updated(target_recall=target_recall)
    model, meta = load_model(RunDir(run_dir).model)
    tta = meta.tta
    busy = f"{run_dir}: another cxrlab process is writing this run; wait for it"
    with locked(run_dir, busy=busy):
        prepared = prepare_run_data(
            data,
            config,
            RunDir(run_dir).split,
            model.classes,
            cache_root=cache_root,
            workers=workers,
        )
        if config.target_recall:
            parse_target_recall(config.target_recall, prepared.classes)
        torch_device = pick_device(device)
        logits = {
            name: subset_logits(
                with_tta(model, tta),
                prepared,
                name,
                feats=None,
                device=torch_device,
                batch_size=64,
            )
            for name in ("val", "test")
            if name in prepared.rows and len(prepared.rows[name])
        }
        assert result.metrics is not None  # RunResult.load read metrics.json
        metrics = calibrate_and_test(
            run_dir, model, config, prepared, logits, result.metrics, tta=tta
        )
        config.save(RunDir(run_dir).config)
        atomic_write_text(RunDir(run_dir).metrics, metrics.to_json())
    return RunResult(run_dir, config, metrics)
