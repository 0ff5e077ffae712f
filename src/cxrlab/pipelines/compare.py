"""Compare several models under one protocol: audit, analyse, train each, test each, report.

``plan_runs`` turns model names and modes into one :class:`RunConfig` per run: ``frozen``
uses the ``frozen`` preset and needs ImageNet weights (a model without them is skipped,
since a frozen random backbone says nothing); ``finetune`` uses the ``finetune`` preset when
the model has ImageNet weights and the ``scratch`` preset otherwise. Every run of one
comparison shares the cache, the audit manifest and the split seed, so all models see the
same training, validation and test images.

A comparison folder can be re-run: finished runs are reused, unfinished ones resumed, and a
run folder holding a different recipe is refused rather than overwritten.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from cxrlab.artifacts import RunDir
from cxrlab.config import PRESETS, RUNTIME_FIELDS, RecipeFile, RunConfig, resolve
from cxrlab.data.analyze import analyze_dataset
from cxrlab.data.audit import AuditConfig, run_audit
from cxrlab.data.discover import discover_sources
from cxrlab.errors import ConfigError
from cxrlab.evaluation.external import evaluate_model, external_films, is_current
from cxrlab.pipelines.calibrate import calibrate_run
from cxrlab.pipelines.diagnose import diagnose_run, has_diagnostics
from cxrlab.reporting.model_card import write_model_card
from cxrlab.training.run import RunResult, is_resumable, train_run
from cxrlab.training.testing import is_calibrated
from cxrlab.training.trainer import check_runnable

COMPARE_MODES = ("frozen", "finetune", "both")
# Set per run by the comparison itself (its models, modes, weights files, pretrained and seeds).
PER_RUN_FIELDS = frozenset({"model", "mode", "weights", "pretrained", "seed"})
# Fields of the data and the machine, the same for frozen and fine-tuned runs.
SHARED_FIELDS = (
    frozenset(
        {
            "image_size",
            "resize",
            "crop",
            "val_fraction",
            "balance",
            "target_recall",
            "precision",
            "manifest",
            "sources",
            "source_name",
            "source_test_fraction",
            "source_split_seed",
            "source_train_fraction",
        }
    )
    | RUNTIME_FIELDS
)


def plan_runs(
    models: Sequence[str],
    mode: str,
    *,
    weights: dict[str, str] | None = None,
    pretrained: bool = True,
    seeds: Sequence[int] = (0,),
    file: RecipeFile | None = None,
    typed: Mapping[str, object] | None = None,
    head_epochs: int | None = None,
) -> tuple[list[RunConfig], list[str]]:
    """Configs to run, and notes on requested runs that were skipped.

    Each run resolves as any run does (:func:`~cxrlab.config.resolve`: its preset < ``file`` <
    ``typed``), but a frozen run takes only the data and machine fields (``SHARED_FIELDS``) of
    the file and of ``typed``: a fine-tuning recipe's epochs or learning rate mean nothing to a
    linear head, whose epochs are ``head_epochs``.
    """
    if mode not in COMPARE_MODES:
        raise ConfigError("mode", f"'{mode}' is not one of {', '.join(COMPARE_MODES)}")
    if not models:
        raise ConfigError("model", "name at least one model")
    if file and (per_run := sorted(PER_RUN_FIELDS & set(file.fields))):
        raise ConfigError(
            "config_file",
            f"{', '.join(per_run)} is set per run by compare ({{model}}, {{mode}}, {{weights}}, "
            "{pretrained}, {seed}); leave it out of the file",
            value=file.path,
        )
    typed = dict(typed or {})
    weights = weights or {}
    unknown = set(weights) - set(models)
    if unknown:
        raise ConfigError("weights", f"{', '.join(sorted(unknown))} is not among {{model}}")
    modes = ("frozen", "finetune") if mode == "both" else (mode,)
    frozen_typed = {k: v for k, v in typed.items() if k in SHARED_FIELDS}
    frozen_typed |= {"epochs": head_epochs} if head_epochs else {}
    configs, notes = [], []
    # seed by seed, every model within a seed: a comparison cut short still holds paired runs
    for seed in seeds:
        for model in models:
            local = weights.get(model)
            has_imagenet = local is not None or pretrained
            source = dict(model=model, weights=local, pretrained=has_imagenet, seed=seed)
            for run_mode in modes:
                if run_mode == "frozen" and not has_imagenet:
                    if seed == seeds[0]:
                        notes.append(
                            f"{model}: frozen mode skipped "
                            "(no ImageNet weights: a frozen random backbone is meaningless)"
                        )
                    continue
                if run_mode == "frozen":
                    recipe, layer = "frozen", file.only(SHARED_FIELDS) if file else None
                else:  # a model with a recipe of its own (proposed) trains by it
                    recipe = (
                        model if model in PRESETS else "finetune" if has_imagenet else "scratch"
                    )
                    layer = file
                run_typed = frozen_typed if run_mode == "frozen" else typed
                configs.append(resolve(recipe, file=layer, typed=source | run_typed).config)
    names = [c.run_name for c in configs]
    if len(set(names)) != len(names):
        raise ConfigError("model", "the same model is named twice")
    for config in configs:  # every model and size checked before the first run starts
        check_runnable(config)
    return configs, notes


def _same_recipe(a: RunConfig, b: RunConfig) -> bool:
    # how it runs, not what it computes; and the operating point, which calibration sets on a
    # finished run
    ignore = RUNTIME_FIELDS | {"target_recall"}
    left, right = asdict(a), asdict(b)
    return all(left[k] == right[k] for k in left if k not in ignore)


def run_comparison(
    data: Path,
    configs: Sequence[RunConfig],
    out: Path,
    *,
    manifest: Path | None = None,
    audit: bool = True,
    cache_root: Path | None = None,
    workers: int = 2,
    command: str | None = None,
    diagnose: bool = True,
    external: dict[str, Path] | None = None,
    say: Callable[[str], None] = print,
) -> Path:
    """Audit and analyse ``data``, train and test every config, diagnose each run (robustness,
    Grad-CAM; :mod:`cxrlab.pipelines.diagnose`), write the report; return its path."""
    from cxrlab.data.scan import scan_dataset
    from cxrlab.reporting.report import write_report

    for config in configs:
        if str(config.devices) not in ("auto", "1") or config.num_nodes > 1:
            raise ConfigError(
                "devices",
                "compare trains in one process; for DDP train each model by itself "
                "(cxrlab train) with several devices",
                value=config.devices,
            )
    first = configs[0] if configs else RunConfig()
    index = discover_sources(data, first.sources, source_name=first.source_name)
    for folder in (
        external or {}
    ).values():  # a class the models do not know fails now, not after training
        external_films(folder, index.classes, None)
    out.mkdir(parents=True, exist_ok=True)
    if manifest is None and audit:
        say("Auditing the data (duplicates, leakage, unreadable files) ...")
        audited = run_audit(index, out / "audit", AuditConfig(workers=workers))
        manifest = out / "audit" / "manifest.csv"
        records = audited.records
        excluded = audited.summary.status["excluded"]
        say(f"Audit: {excluded} file(s) excluded from training (see {out / 'audit' / 'audit.md'})")
    else:
        records = scan_dataset(index, workers=workers)
    analyze_dataset(index, records, out / "analysis")

    run_dirs = []
    for position, config in enumerate(configs, 1):
        config = config.updated(manifest=str(manifest) if manifest else None)
        run_dir = out / "runs" / config.run_name
        saved = RunDir(run_dir).config
        resume = is_resumable(
            run_dir
        )  # a folder left by a run that failed before its first epoch is replaced
        if resume and not _same_recipe(RunConfig.load(saved), config):
            raise ConfigError(
                "run_dir",
                "holds a run with another recipe; choose another folder or delete that one",
                value=run_dir,
            )
        state = (
            "reusing finished"
            if RunDir(run_dir).is_finished
            else ("resuming" if resume else "training")
        )
        say(f"[{position}/{len(configs)}] {state} {config.describe()}")
        result: RunResult = train_run(
            data,
            config,
            run_dir,
            resume=resume,
            cache_root=cache_root,
            workers=workers,
            say=say,
        )
        assert result.metrics is not None  # trained (or loaded) and tested in this process
        if not is_calibrated(
            result.metrics, config.target_recall
        ):  # a run made before cxrlab calibrated, or a new operating point
            say("    calibrating on the validation split ...")
            result = calibrate_run(
                run_dir,
                data,
                target_recall=config.target_recall,
                cache_root=cache_root,
                workers=workers,
            )
        assert result.metrics is not None  # calibrate_run tests it again
        test = result.metrics.test
        if test is not None:
            say(f"    test accuracy {test.accuracy:.3f}, macro-F1 {test.macro_f1:.3f} ({run_dir})")
            if diagnose and not has_diagnostics(run_dir):
                say("    robustness and Grad-CAM on the test films ...")
                diagnose_run(run_dir, data)
            for name, folder in (
                external or {}
            ).items():  # scored once per finished model, never used to select
                if not is_current(RunDir(run_dir).external(name).root, result.metrics):
                    found, _ = evaluate_model(run_dir, folder, name=name)
                    say(
                        f"    on {name}: balanced accuracy {found.balanced_accuracy} "
                        f"over {', '.join(found.present)}"
                    )
            write_model_card(run_dir)
        run_dirs.append(run_dir)
    report = write_report(
        run_dirs,
        out,
        title=f"cxrlab comparison on {index.root.name}",
        analysis_dir=out / "analysis",
        command=command,
        external=list(external or {}),
    )
    return report
