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

from cxrlab.artifacts import ExternalDir, RunDir
from cxrlab.data.audit_records import AuditReport
from cxrlab.diagnostics import Robustness, probe_reading
from cxrlab.evaluation.external import load_evaluation
from cxrlab.fileio import atomic_write_text, markdown_escape, read_text
from cxrlab.records import Evaluation, Interval, OperatingResult, RunMetrics

KAGGLE_CLASSES = ["COVID19", "NORMAL", "PNEUMONIA"]
KAGGLE_CONFOUND = (
    " On the Kaggle COVID-19 / pneumonia set every NORMAL and PNEUMONIA film is a child from one "
    "hospital and every COVID19 film an adult from elsewhere: 'adult film' alone predicts COVID19."
)
LARGE_GAP = 0.10  # a balanced-accuracy drop off the own test split: a failure to transfer
CALIBRATION_HOLDS = 0.05  # an ECE above this on an external set: the calibration does not carry
INTENDED_USE = (
    "Research and teaching: comparing CNNs on chest X-rays and studying what they learn. **Not a "
    "diagnostic device**: it has not been validated prospectively or on the population it would "
    "be used on, and no clinical decision should rest on it."
)
NOT_EVALUATED = (
    "**Not evaluated on any external set.** The test split comes from the same sources as the "
    "training data, so it cannot show whether the model learned the disease or the source. "
    "Run `cxrlab evaluate RUN DATA` on films from elsewhere before trusting it."
)
NOT_CALIBRATED = (
    "- not calibrated (a run from before cxrlab calibrated: `cxrlab calibrate RUN --data DATA`)"
)


def _json(path: Path) -> dict | None:
    try:
        return json.loads(read_text(path)) if path.is_file() else None
    except ValueError:
        return None


def _ci(interval: Interval | None) -> str:
    """``0.951 [0.938, 0.962]`` (:class:`Interval`'s own form); a dash when missing."""
    return "–" if interval is None else str(interval)


def _audit_of(config: dict) -> AuditReport | None:
    """The audit the run's manifest came from (``audit.json`` beside ``manifest.csv``); None
    when the run used no manifest or there is no ``audit.json`` beside it, an error naming the
    file when there is one that does not load."""
    manifest = config.get("manifest")
    if not manifest:
        return None
    folder = Path(manifest) if Path(manifest).is_dir() else Path(manifest).parent
    return AuditReport.load_optional(folder / "audit.json")


def _external(run_dir: Path) -> list[Evaluation]:
    folder = RunDir(run_dir).externals
    if not folder.is_dir():
        return []
    return [
        load_evaluation(d) for d in sorted(folder.glob("*")) if ExternalDir(d).metrics.is_file()
    ]


def _gap(ev: Evaluation) -> float | None:
    """Balanced accuracy on the external set minus that on the own test split."""
    return ev.balanced_accuracy.value - ev.internal.balanced_accuracy if ev.internal else None


def model_lines(metrics: RunMetrics) -> list[str]:
    """The recipe, classes, size and how the checkpoint was chosen."""
    classes = [markdown_escape(c) for c in metrics.classes]
    epoch = f"epoch {metrics.best_epoch + 1} of {metrics.epochs_run}"
    return [
        f"- recipe: {markdown_escape(metrics.description)}",
        f"- classes: {', '.join(classes)}",
        f"- parameters: {metrics.parameters} ({metrics.trainable_parameters} trained)",
        (
            f"- chosen on: validation macro-F1 {metrics.best_val_macro_f1:.3f} "
            f"({epoch}); the test split was read once"
        ),
    ]


def source_lines(metrics: RunMetrics) -> list[str]:
    """Each training source (of several) with its films per class, a warning for a source of
    one class; nothing for a run on one source."""
    if len(metrics.sources) < 2:
        return []
    single = metrics.single_class_sources()
    lines = []
    for name, row in metrics.source_totals().items():
        counts = ", ".join(f"{markdown_escape(c)} {n}" for c, n in row.items() if n)
        warning = (
            f" — **only {markdown_escape(single[name])}: the model can learn this source's look "
            f"as {markdown_escape(single[name])}**"
            if name in single
            else ""
        )
        lines.append(f"- source {markdown_escape(name)}: {counts}{warning}")
    return lines


def sources_sentence(metrics: RunMetrics) -> str | None:
    """The training sources in one sentence (what ``cxrlab serve`` shows beside every answer)."""
    if not metrics.sources:
        return None
    parts = [
        f"{name} ({', '.join(f'{c} {n}' for c, n in row.items() if n)})"
        for name, row in metrics.source_totals().items()
    ]
    return "Trained on films from: " + "; ".join(parts) + "."


def training_data_lines(metrics: RunMetrics, audit: AuditReport | None) -> list[str]:
    """Images per subset and per source, unreadable files, and what the audit knows of the
    sources."""
    sizes = ", ".join(f"{k} {v}" for k, v in metrics.sizes.items())
    lines = [f"- images per subset: {sizes}", *source_lines(metrics)]
    if metrics.skipped:
        lines.append(f"- unreadable files left out: {len(metrics.skipped)}")
    if audit is None:
        return [*lines, "- audit: not known (the run used no audit manifest)"]
    summary, shortcut = audit.summary, audit.shortcut
    excluded = summary.status.get("excluded", 0)
    lines.append(
        f"- audit: {summary.files} files; {excluded} excluded (duplicates, leakage across splits, "
        f"unreadable); {summary.leakage_groups} groups leaked across splits"
    )
    if shortcut:
        lines.append(
            f"- **shortcut check: {shortcut.level}**: a classifier that sees only the file format "
            "(size, aspect, file size, intensity, border) reaches balanced accuracy "
            f"{shortcut.cv_balanced_accuracy:.1%} (chance {shortcut.chance_balanced:.1%}); "
            "the classes differ in source, not only in disease"
        )
    if audit.sources is not None:
        check = audit.sources
        told = (
            "n/a" if check.format_predicts_source is None else f"{check.format_predicts_source:.1%}"
        )
        lines.append(
            f"- **source check: {check.level}**: the file format tells the source with balanced "
            f"accuracy {told} (chance {check.source_chance:.1%}); source and class: "
            f"Cramér's V {check.cramers_v:.2f}"
        )
    return lines


def per_source_lines(metrics: RunMetrics) -> list[str]:
    """Each source's test films scored on their own (several sources only)."""
    lines = []
    for name, scores in metrics.per_source.items():
        recalls = "; ".join(
            f"recall {markdown_escape(c)} {_ci(r.recall)}" for c, r in scores.per_class.items()
        )
        lines.append(
            f"- source {markdown_escape(name)}: {scores.n} films "
            f"({', '.join(map(markdown_escape, scores.present))}); balanced accuracy "
            f"{_ci(scores.balanced_accuracy)}; {recalls}"
        )
    return lines


def test_split_lines(metrics: RunMetrics) -> list[str]:
    """The test split's headline numbers with their intervals, each class's recall, and each
    source's test films on their own."""
    test, intervals = metrics.test, metrics.intervals
    if test is None:
        return ["- not tested (the dataset has no test split)"]
    return [
        (
            f"- {test.n} films; accuracy {_ci(intervals.get('accuracy'))}; "
            f"macro-F1 {_ci(intervals.get('macro_f1'))}; "
            f"balanced accuracy {test.balanced_accuracy:.3f}; "
            f"macro AUC {test.macro_auc:.3f}"
        ),
        *(
            f"- recall {markdown_escape(c)}: {_ci(intervals.get(f'recall_{c}'))}"
            for c in metrics.classes
        ),
        *per_source_lines(metrics),
    ]


def external_lines(external: list[Evaluation]) -> list[str]:
    """Per external set: balanced accuracy and its gap, each class's recall, how its films are
    called, and whether the model transfers."""
    if not external:
        return [NOT_EVALUATED]
    lines = []
    for ev in external:
        gap = _gap(ev)
        recalls = "; ".join(
            f"{markdown_escape(name)} recall {_ci(result.recall)}"
            + (f" (own test {ev.internal.recall[name]:.3f})" if ev.internal else "")
            for name, result in ev.per_class.items()
        )
        present = ", ".join(markdown_escape(c) for c in ev.present)
        own = (
            ""
            if gap is None
            else (f", own test split {ev.internal.balanced_accuracy:.3f}, gap {gap:+.3f}")
        )
        lines.append(
            f"- **{markdown_escape(ev.name)}** ({ev.n} films, classes {present}): "
            f"balanced accuracy {_ci(ev.balanced_accuracy)}{own}; {recalls}; ECE {ev.ece:.3f}"
        )
        for name, result in ev.per_class.items():
            wrong = {c: n for c, n in result.called.items() if c != name and n}
            if wrong:
                lines.append(
                    f"  - of {result.n} {markdown_escape(name)} films, "
                    + ", ".join(f"{n} called {markdown_escape(c)}" for c, n in wrong.items())
                )
        if gap is not None and gap < -LARGE_GAP:
            lines.append(
                f"  - **the model does not transfer to {markdown_escape(ev.name)}**: it loses "
                f"{-gap:.2f} of balanced accuracy there"
            )
    return lines


def robustness_lines(robustness: Robustness | None) -> list[str]:
    """Accuracy on each variant of the test films and what the lung probes say."""
    if robustness is None:
        return ["- not computed (`cxrlab explain RUN --data DATA`)"]
    lines = [
        f"- {markdown_escape(name)}: accuracy {v.accuracy:.3f} "
        f"({-v.accuracy_drop:+.3f} against its own preprocessing)"
        for name, v in robustness.variants.items()
    ]
    found = robustness.lung_fields
    where = (
        ""
        if found is None
        else f" (lung fields found on {found.segmented:.0%} of the films, a template elsewhere)"
    )
    lines.append(f"- **{probe_reading(robustness)}**{where}")
    return lines


def _worst_confusion(ev: Evaluation) -> str:
    """``; of its 400 NORMAL films, 324 were called COVID19``: the class most often called
    another, on an external set (empty when every film is called its own class)."""
    wrong = [
        (n, name, other)
        for name, result in ev.per_class.items()
        for other, n in result.called.items()
        if other != name and n
    ]
    if not wrong:
        return ""
    n, name, other = max(wrong)
    total = ev.per_class[name].n
    return (
        f"; of its {total} {markdown_escape(name)} films, {n} were called {markdown_escape(other)}"
    )


def limitation_lines(
    metrics: RunMetrics, audit: AuditReport | None, external: list[Evaluation]
) -> list[str]:
    """Known limitations, one plain sentence each: sources, transfer, scope, calibration."""
    limitations = []
    if audit and audit.shortcut and audit.shortcut.level in ("high", "moderate"):
        limitations.append(
            "The classes of the training data come from different sources (the audit's shortcut "
            "check), so the model can score well on its own test split by recognising the source."
            + (KAGGLE_CONFOUND if metrics.classes == KAGGLE_CLASSES else "")
        )
    for name, cls in metrics.single_class_sources().items():
        limitations.append(
            f"Every film of the training source {markdown_escape(name)} is {markdown_escape(cls)}:"
            f" the model can call a film {markdown_escape(cls)} because it looks like "
            f"{markdown_escape(name)}'s films (framing, scanner, processing), not because of "
            "the disease."
        )
    for ev in external:
        if ev.internal and _gap(ev) < -LARGE_GAP:
            limitations.append(
                f"Measured on {markdown_escape(ev.name)} ({ev.n} films from elsewhere): its "
                "accuracy does not carry over to films from other hospitals (balanced accuracy "
                f"{ev.balanced_accuracy.value:.2f} there, {ev.internal.balanced_accuracy:.2f} on "
                f"its own test split{_worst_confusion(ev)})."
            )
    limitations.append(
        "Trained and tested on frontal films as stored in its dataset; other views, devices, ages "
        "and populations are out of scope until evaluated."
    )
    if metrics.calibration is None:
        limitations.append(
            "Probabilities are those of the network (no calibration step): read them as scores, "
            "not as risks."
        )
    elif off := [
        ev for ev in external if ev.ece_uncalibrated is not None and ev.ece > CALIBRATION_HOLDS
    ]:
        eces = ", ".join(f"ECE {ev.ece:.2f} on {markdown_escape(ev.name)}" for ev in off)
        limitations.append(
            "Probabilities were calibrated on the training hospital's validation films; on films "
            f"from elsewhere they are not calibrated ({eces}): read them as scores there, not "
            "as risks."
        )
    return limitations


def _card_sources(run_dir: Path) -> tuple[RunMetrics, AuditReport | None, list[Evaluation]]:
    """What a card is written from: the run's metrics, its audit (if known), its external sets."""
    files = RunDir(run_dir)
    config = _json(files.config) or {}
    return RunMetrics.load(files.metrics), _audit_of(config), _external(run_dir)


def training_sources(run_dir: Path) -> str | None:
    """The run's training sources in one sentence, with their films per class (None for a run
    from before sources were recorded): what ``cxrlab serve`` shows beside every answer."""
    return sources_sentence(RunMetrics.load(RunDir(run_dir).metrics))


def known_limitations(run_dir: Path) -> list[str]:
    """The card's known limitations of the run in ``run_dir``, one plain sentence each (what
    ``cxrlab serve`` shows beside every answer)."""
    return limitation_lines(*_card_sources(run_dir))


def model_card(run_dir: Path) -> str:
    """The card's Markdown for the finished run in ``run_dir``."""
    files = RunDir(run_dir)
    metrics, audit, external = _card_sources(run_dir)
    lines = [
        f"# Model card: {markdown_escape(metrics.run)}",
        "",
        "## Intended use",
        "",
        INTENDED_USE,
        "",
        "## Model",
        "",
        *model_lines(metrics),
        "",
        "## Training data",
        "",
        *training_data_lines(metrics, audit),
        "",
        "## Test split (same sources as the training data)",
        "",
        *test_split_lines(metrics),
        "",
        "## Off its own test split",
        "",
        *external_lines(external),
        "",
        "## Calibration and operating point",
        "",
        *calibration_lines(metrics, external),
        "",
        "## Robustness probes (test split)",
        "",
        *robustness_lines(Robustness.load_optional(files.robustness)),
        "",
        "## Known limitations",
        "",
        *(f"- {item}" for item in limitation_lines(metrics, audit, external)),
    ]
    return "\n".join(lines) + "\n"


def calibration_lines(metrics: RunMetrics, external: list[Evaluation]) -> list[str]:
    """The card's calibration section: T with ECE before and after; the operating point's rates."""
    calibration = metrics.calibration
    if calibration is None:
        return [NOT_CALIBRATED]
    splits = (("validation", calibration.val), ("test split", calibration.test))
    effects = [(name, effect) for name, effect in splits if effect is not None]
    temperature = calibration.temperature
    confidence = "over-confident" if temperature > 1 else "under-confident"
    lines = [
        (
            f"- temperature {temperature:.3f}, fitted on the validation split (divides the "
            f"logits; the network was {confidence}); `predict`, `evaluate` and the ONNX export "
            "apply it"
        ),
        *(
            f"- ECE on the {name}: {e.ece_before:.3f} before, {e.ece_after:.3f} after"
            for name, e in effects
        ),
        *(
            f"- ECE on {markdown_escape(ev.name)}: {ev.ece_uncalibrated:.3f} before, "
            f"{ev.ece:.3f} after"
            for ev in external
            if ev.ece_uncalibrated is not None
        ),
    ]
    point = metrics.operating_point
    if point:
        label = markdown_escape(point.label)

        def rates(where: str, result: OperatingResult | None) -> str:
            if result is None:
                return f"  - {where}: not scored"
            return (
                f"  - {where}: sensitivity {_ci(result.sensitivity)}, "
                f"specificity {_ci(result.specificity)}"
            )

        lines += [
            (
                f"- operating point {label} recall ≥ {point.target_recall:g}: call {label} "
                f"when p({label}) ≥ {point.threshold:.3f} (chosen on validation: recall "
                f"{point.val_recall:.3f}, specificity {point.val_specificity:.3f})"
            ),
            rates("test split", point.test),
            *(
                rates(markdown_escape(ev.name), ev.at_point)
                for ev in external
                if ev.point and ev.point.label == point.label
            ),
        ]
    return lines


def write_model_card(run_dir: Path) -> Path:
    """Write (or rewrite) ``RUN/MODEL_CARD.md``; returns its path."""
    return atomic_write_text(RunDir(run_dir).model_card, model_card(Path(run_dir)))
