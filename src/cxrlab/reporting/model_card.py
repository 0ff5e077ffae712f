"""``MODEL_CARD.md`` of a run: what the model is for, what it was trained and tested on, and how
far it can be trusted off its own test split.

After Mitchell et al. (2019), with the CLAIM / TRIPOD+AI items that apply to a research model:
intended use, training data and what the audit knows about its sources, the shortcut check, test
metrics with 95% intervals, every external evaluation with its gap to the own test split, the
robustness probes, calibration, and known limitations in plain words. It is written from the
run folder's own files (``config.json``, ``metrics.json``, ``robustness.json``, ``gradcam.json``,
``external/*/metrics.json``, and the audit beside the manifest the run used), so it is rewritten
whenever one of them changes (``cxrlab train``, ``compare``, ``explain``, ``evaluate``).
"""

from __future__ import annotations

import json
from pathlib import Path

from cxrlab.evaluation.calibration import OperatingResult
from cxrlab.evaluation.external import EXTERNAL_DIR, Evaluation, load_evaluation
from cxrlab.evaluation.metrics import Interval
from cxrlab.evaluation.robustness import probe_reading
from cxrlab.fileio import atomic_write_text, markdown_escape, read_text

MODEL_CARD = "MODEL_CARD.md"
KAGGLE_CLASSES = ["COVID19", "NORMAL", "PNEUMONIA"]
KAGGLE_CONFOUND = (
    " On the Kaggle COVID-19 / pneumonia set every NORMAL and PNEUMONIA film is a child from one hospital and "
    "every COVID19 film an adult from elsewhere: 'adult film' alone predicts COVID19."
)
LARGE_GAP = 0.10  # a balanced-accuracy drop off the own test split that the card calls a failure to transfer
CALIBRATION_HOLDS = 0.05  # an ECE above this on an external set: the calibration does not carry over


def _json(path: Path) -> dict | None:
    try:
        return json.loads(read_text(path)) if path.is_file() else None
    except ValueError:
        return None


def _ci(raw: dict | Interval | None) -> str:
    """``0.951 [0.938, 0.962]`` (:class:`Interval`'s own form); a dash when missing."""
    if raw is None:
        return "–"
    return str(raw if isinstance(raw, Interval) else Interval(**raw))


def _audit_of(config: dict) -> dict | None:
    """The audit the run's manifest came from (``audit.json`` beside ``manifest.csv``)."""
    manifest = config.get("manifest")
    if not manifest:
        return None
    folder = Path(manifest) if Path(manifest).is_dir() else Path(manifest).parent
    return _json(folder / "audit.json")


def _external(run_dir: Path) -> list[Evaluation]:
    folder = run_dir / EXTERNAL_DIR
    return [load_evaluation(d) for d in sorted(folder.glob("*")) if (d / "metrics.json").is_file()] if folder.is_dir() else []


def model_card(run_dir: Path) -> str:
    """The card's Markdown for the finished run in ``run_dir``."""
    config, metrics = _json(run_dir / "config.json") or {}, _json(run_dir / "metrics.json") or {}
    classes = [markdown_escape(c) for c in metrics.get("classes", [])]
    test, intervals = metrics.get("test") or {}, metrics.get("intervals") or {}
    audit, robustness = _audit_of(config), _json(run_dir / "robustness.json")
    external = _external(run_dir)
    lines = [
        f"# Model card: {markdown_escape(metrics.get('run', run_dir.name))}",
        "",
        "## Intended use",
        "",
        "Research and teaching: comparing CNNs on chest X-rays and studying what they learn. **Not a "
        "diagnostic device**: it has not been validated prospectively or on the population it would "
        "be used on, and no clinical decision should rest on it.",
        "",
        "## Model",
        "",
        f"- recipe: {markdown_escape(metrics.get('description', ''))}",
        f"- classes: {', '.join(classes)}",
        f"- parameters: {metrics.get('parameters', '–')} ({metrics.get('trainable_parameters', '–')} trained)",
        f"- chosen on: validation macro-F1 {metrics.get('best_val_macro_f1', float('nan')):.3f} "
        f"(epoch {metrics.get('best_epoch', -1) + 1} of {metrics.get('epochs_run', '–')}); the test split was read once",
        "",
        "## Training data",
        "",
        f"- images per subset: {', '.join(f'{k} {v}' for k, v in metrics.get('sizes', {}).items())}",
    ]
    if metrics.get("skipped"):
        lines.append(f"- unreadable files left out: {len(metrics['skipped'])}")
    if audit is not None:
        summary, shortcut = audit.get("summary", {}), audit.get("shortcut") or {}
        lines += [
            f"- audit: {summary.get('files', '–')} files; {summary.get('status', {}).get('excluded', 0)} excluded "
            f"(duplicates, leakage across splits, unreadable); {summary.get('leakage_groups', 0)} groups leaked across splits",
        ]
        if shortcut:
            lines.append(
                f"- **shortcut check: {shortcut.get('level', '?')}**: a classifier that sees only the file format "
                f"(size, aspect, file size, intensity, border) reaches balanced accuracy "
                f"{shortcut.get('cv_balanced_accuracy', float('nan')):.1%} (chance {shortcut.get('chance_balanced', float('nan')):.1%}); "
                "the classes differ in source, not only in disease"
            )
    else:
        lines.append("- audit: not known (the run used no audit manifest)")
    lines += ["", "## Test split (same sources as the training data)", ""]
    if test:
        lines += [
            f"- {test.get('n', '–')} films; accuracy {_ci(intervals.get('accuracy'))}; macro-F1 {_ci(intervals.get('macro_f1'))}; "
            f"balanced accuracy {test.get('balanced_accuracy', float('nan')):.3f}; macro AUC {test.get('macro_auc', float('nan')):.3f}",
            *(f"- recall {markdown_escape(c)}: {_ci(intervals.get(f'recall_{c}'))}" for c in metrics.get("classes", [])),
        ]
    else:
        lines.append("- not tested (the dataset has no test split)")
    lines += ["", "## Off its own test split", ""]
    if not external:
        lines.append(
            "**Not evaluated on any external set.** The test split comes from the same sources as the "
            "training data, so it cannot show whether the model learned the disease or the source. "
            "Run `cxrlab evaluate RUN DATA` on films from elsewhere before trusting it."
        )
    for ev in external:
        gap = ev.balanced_accuracy.value - ev.internal.balanced_accuracy if ev.internal else None
        recalls = "; ".join(
            f"{markdown_escape(name)} recall {_ci(result.recall)}"
            + (f" (own test {ev.internal.recall[name]:.3f})" if ev.internal else "")
            for name, result in ev.per_class.items()
        )
        lines += [
            f"- **{markdown_escape(ev.name)}** ({ev.n} films, classes {', '.join(markdown_escape(c) for c in ev.present)}): "
            f"balanced accuracy {_ci(ev.balanced_accuracy)}"
            + (f", own test split {ev.internal.balanced_accuracy:.3f}, gap {gap:+.3f}" if gap is not None else "")
            + f"; {recalls}; ECE {ev.ece:.3f}",
        ]
        for name, result in ev.per_class.items():
            wrong = {c: n for c, n in result.called.items() if c != name and n}
            if wrong:
                lines.append(
                    f"  - of {result.n} {markdown_escape(name)} films, "
                    + ", ".join(f"{n} called {markdown_escape(c)}" for c, n in wrong.items())
                )
        if gap is not None and gap < -LARGE_GAP:
            lines.append(f"  - **the model does not transfer to {markdown_escape(ev.name)}**: it loses {-gap:.2f} of balanced accuracy there")
    lines += ["", "## Calibration and operating point", "", *calibration_lines(metrics, external)]
    lines += ["", "## Robustness probes (test split)", ""]
    if robustness:
        lines += [
            f"- {markdown_escape(name)}: accuracy {v.get('accuracy', float('nan')):.3f}"
            + (f" ({-v['accuracy_drop']:+.3f} against its own preprocessing)" if "accuracy_drop" in v else "")
            for name, v in robustness.get("variants", {}).items()
        ]
        found = (robustness.get("lung_fields") or {}).get("segmented")
        lines.append(
            f"- **{probe_reading(robustness)}**"
            + (f" (lung fields found on {found:.0%} of the films, a template elsewhere)" if found is not None else "")
        )
    else:
        lines.append("- not computed (`cxrlab explain RUN --data DATA`)")
    lines += ["", "## Known limitations", ""]
    limitations = []
    if audit and (audit.get("shortcut") or {}).get("level") in ("high", "moderate"):
        limitations.append(
            "The classes of the training data come from different sources (the audit's shortcut check), so the "
            "model can score well on its own test split by recognising the source."
            + (KAGGLE_CONFOUND if metrics.get("classes") == KAGGLE_CLASSES else "")
        )
    if any(ev.internal and ev.balanced_accuracy.value - ev.internal.balanced_accuracy < -LARGE_GAP for ev in external):
        limitations.append("Measured above: its accuracy does not carry over to films from other hospitals.")
    limitations += [
        "Trained and tested on frontal films as stored in its dataset; other views, devices, ages and "
        "populations are out of scope until evaluated.",
    ]
    if not metrics.get("calibration"):
        limitations.append("Probabilities are those of the network (no calibration step): read them as scores, not as risks.")
    elif any(ev.ece_uncalibrated is not None and ev.ece > CALIBRATION_HOLDS for ev in external):
        limitations.append(
            "Probabilities were calibrated on the training hospital's validation films; on films from elsewhere they "
            "are not calibrated (ECE above): read them as scores there, not as risks."
        )
    lines += [f"- {item}" for item in limitations]
    return "\n".join(lines) + "\n"


def calibration_lines(metrics: dict, external: list[Evaluation]) -> list[str]:
    """The card's calibration section: T with ECE before and after; the operating point's rates."""
    calibration = metrics.get("calibration")
    if not calibration:
        return ["- not calibrated (a run from before cxrlab calibrated: `cxrlab calibrate RUN --data DATA`)"]
    effects = [(name, calibration[key]) for name, key in (("validation", "val"), ("test split", "test")) if calibration.get(key)]
    lines = [
        f"- temperature {calibration['temperature']:.3f}, fitted on the validation split (divides the logits; "
        + ("the network was over-confident" if calibration["temperature"] > 1 else "the network was under-confident")
        + "); `predict`, `evaluate` and the ONNX export apply it",
        *(f"- ECE on the {name}: {e['ece_before']:.3f} before, {e['ece_after']:.3f} after" for name, e in effects),
        *(
            f"- ECE on {markdown_escape(ev.name)}: {ev.ece_uncalibrated:.3f} before, {ev.ece:.3f} after"
            for ev in external
            if ev.ece_uncalibrated is not None
        ),
    ]
    point = metrics.get("operating_point")
    if point:
        label = markdown_escape(point["label"])

        def rates(where: str, result: OperatingResult | None) -> str:
            if result is None:
                return f"  - {where}: not scored"
            return f"  - {where}: sensitivity {_ci(result.sensitivity)}, specificity {_ci(result.specificity)}"

        lines += [
            f"- operating point {label} recall ≥ {point['target_recall']:g}: call {label} when p({label}) ≥ {point['threshold']:.3f} "
            f"(chosen on validation: recall {point['val_recall']:.3f}, specificity {point['val_specificity']:.3f})",
            rates("test split", OperatingResult.from_dict(point["test"]) if point.get("test") else None),
            *(rates(markdown_escape(ev.name), ev.at_point) for ev in external if ev.point and ev.point.label == point["label"]),
        ]
    return lines


def write_model_card(run_dir: Path) -> Path:
    """Write (or rewrite) ``RUN/MODEL_CARD.md``; returns its path."""
    return atomic_write_text(Path(run_dir) / MODEL_CARD, model_card(Path(run_dir)))
