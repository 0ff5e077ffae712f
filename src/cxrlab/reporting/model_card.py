"""``MODEL_CARD.md`` of a run: what the model is for, what it was trained and tested on, and how
far it can be trusted off its own test split.

After Mitchell et al. (2019), with the CLAIM / TRIPOD+AI items that apply to a research model:
intended use, training data and what the audit knows about its sources, the shortcut check, test
metrics with 95% intervals, every external evaluation with its gap to the own test split, the
robustness probes, calibration, and known limitations in plain words. It is written from the
run folder's own files (``config.json``, ``metrics.json``, ``robustness.json``, ``gradcam.json``,
``external/*/metrics.json``, and the audit beside the manifest the run used), so it is rewritten
whenever one of them changes (``cxrlab train``, ``compare``, ``explain``, ``evaluate``).

The card is the template ``templates/model_card.md`` (its known limitations ``limitation.md``,
also what ``cxrlab serve`` shows); here the run's records become a typed :class:`Card`. What the
card says about the data's sources comes from the run's own records only (the audit's shortcut
and source checks, the sources in ``metrics.json``): where the run has no audit, it says so and
claims nothing about its sources.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from cxrlab.artifacts import ExternalDir, RunDir
from cxrlab.config import RunConfig
from cxrlab.data.audit_records import AuditReport, ShortcutReport, SourceCheck
from cxrlab.diagnostics import Robustness, probe_reading
from cxrlab.evaluation.external import load_evaluation
from cxrlab.fileio import atomic_write_text
from cxrlab.records import (
    CalibrationEffect,
    Evaluation,
    OperatingResult,
    RunMetrics,
    RunOperatingPoint,
)
from cxrlab.reporting.render import render_markdown

LARGE_GAP = 0.10  # a balanced-accuracy drop off the own test split: a failure to transfer
CALIBRATION_HOLDS = 0.05  # an ECE above this on an external set: the calibration does not carry
SHORTCUT_FOUND = ("high", "moderate")  # shortcut-check levels that make the classes' sources a risk


def _audit_of(config: RunConfig | None) -> AuditReport | None:
    """The audit the run's manifest came from (``audit.json`` beside ``manifest.csv``); None
    when the run used no manifest (or its config is not known) or there is no ``audit.json``
    beside it, an error naming the file when there is one that does not load."""
    manifest = config.manifest if config is not None else None
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


@dataclass(frozen=True)
class TrainingSource:
    """A training source (of several): its films per class (classes it gave none of left out)
    and, when it gave one class only, that class."""

    name: str
    counts: dict[str, int]
    only: str | None


@dataclass(frozen=True)
class AuditFacts:
    """What the audit beside the run's manifest says: its counts, the shortcut check and (a
    training set of several sources) the source check."""

    files: int
    excluded: int
    leakage_groups: int
    shortcut: ShortcutReport | None
    sources: SourceCheck | None

    @property
    def shortcut_found(self) -> bool:
        """The format alone tells the classes apart (the shortcut check's level)."""
        return self.shortcut is not None and self.shortcut.level in SHORTCUT_FOUND

    @classmethod
    def of(cls, audit: AuditReport) -> AuditFacts:
        summary = audit.summary
        return cls(
            files=summary.files,
            excluded=summary.status.get("excluded", 0),
            leakage_groups=summary.leakage_groups,
            shortcut=audit.shortcut,
            sources=audit.sources,
        )


@dataclass(frozen=True)
class Miscalled:
    """Films of one class of an external set called another class."""

    name: str  # the true class
    n: int  # its films
    called: dict[str, int]  # other class: films called it (none left out)


@dataclass(frozen=True)
class ExternalFacts:
    """One external evaluation with its gap to the own test split (None without the internal
    reference) and the films called another class."""

    evaluation: Evaluation
    gap: float | None
    miscalled: list[Miscalled]

    @property
    def fails(self) -> bool:
        """The model does not transfer: it loses more than :data:`LARGE_GAP` there."""
        return self.gap is not None and self.gap < -LARGE_GAP

    @classmethod
    def of(cls, ev: Evaluation) -> ExternalFacts:
        miscalled = [
            Miscalled(name, result.n, wrong)
            for name, result in ev.per_class.items()
            if (wrong := {c: n for c, n in result.called.items() if c != name and n})
        ]
        return cls(ev, _gap(ev), miscalled)


@dataclass(frozen=True)
class CalibrationFacts:
    """The temperature with the ECE it changed, on the run's splits and its external sets, and
    the operating point's rates: on the test split, then on each external set that scored the
    same point."""

    temperature: float
    effects: list[tuple[str, CalibrationEffect]]
    external: list[Evaluation]  # those scored with and without the temperature
    point: RunOperatingPoint | None
    rates: list[tuple[str, OperatingResult | None]]


def calibration_facts(metrics: RunMetrics, external: list[Evaluation]) -> CalibrationFacts | None:
    """The card's calibration section (None for a run from before cxrlab calibrated)."""
    calibration = metrics.calibration
    if calibration is None:
        return None
    splits = (("validation", calibration.val), ("test split", calibration.test))
    point = metrics.operating_point
    rates = (
        [
            ("test split", point.test),
            *(
                (ev.name, ev.at_point)
                for ev in external
                if ev.point and ev.point.label == point.label
            ),
        ]
        if point
        else []
    )
    return CalibrationFacts(
        temperature=calibration.temperature,
        effects=[(name, effect) for name, effect in splits if effect is not None],
        external=[ev for ev in external if ev.ece_uncalibrated is not None],
        point=point,
        rates=rates,
    )


@dataclass(frozen=True)
class Limitation:
    """A known limitation, one plain sentence (``limitation.md`` writes it by ``kind``)."""

    kind: ClassVar[str]


@dataclass(frozen=True)
class SourceShortcut(Limitation):
    """The audit's shortcut check found the classes told apart by the file format: how well
    the format alone recalls each class, and (several sources) the classes that come from one
    source only (the audit's source check)."""

    kind: ClassVar[str] = "source_shortcut"
    format_recall: dict[str, float]
    one_source: dict[str, list[str]]  # source: the classes all of whose films come from it


@dataclass(frozen=True)
class SingleClassSource(Limitation):
    """Every film of a training source is one class."""

    kind: ClassVar[str] = "single_class_source"
    source: str
    cls: str


@dataclass(frozen=True)
class NoTransfer(Limitation):
    """An external set on which the model loses more than :data:`LARGE_GAP`, with the class
    most often called another there (None when every film is called its own class)."""

    kind: ClassVar[str] = "no_transfer"
    name: str
    n: int
    there: float
    own: float
    worst: Miscalled | None


@dataclass(frozen=True)
class Scope(Limitation):
    """Frontal films as stored in the dataset; nothing else evaluated."""

    kind: ClassVar[str] = "scope"


@dataclass(frozen=True)
class Uncalibrated(Limitation):
    """The network's own probabilities (no calibration step)."""

    kind: ClassVar[str] = "uncalibrated"


@dataclass(frozen=True)
class CalibrationOff(Limitation):
    """External sets on which the calibrated ECE is above :data:`CALIBRATION_HOLDS`."""

    kind: ClassVar[str] = "calibration_off"
    eces: dict[str, float]  # external set: its ECE


def _worst_confusion(ev: Evaluation) -> Miscalled | None:
    """The class most often called another on an external set, with that one other class
    (``of its 400 NORMAL films, 324 were called COVID19``); None when every film is called its
    own class."""
    wrong = [
        (n, name, other)
        for name, result in ev.per_class.items()
        for other, n in result.called.items()
        if other != name and n
    ]
    if not wrong:
        return None
    n, name, other = max(wrong)
    return Miscalled(name, ev.per_class[name].n, {other: n})


def _one_source(check: SourceCheck | None) -> dict[str, list[str]]:
    """``{source: [classes]}``: the classes all of whose training films come from one source
    (the audit's source check; empty for a training set of one source)."""
    found: dict[str, list[str]] = {}
    for cls, source in (check.single_source if check else {}).items():
        found.setdefault(source, []).append(cls)
    return found


def limitations(
    metrics: RunMetrics, audit: AuditReport | None, external: list[Evaluation]
) -> list[Limitation]:
    """Known limitations: sources, transfer, scope, calibration."""
    found: list[Limitation] = []
    if audit and AuditFacts.of(audit).shortcut_found:
        assert audit.shortcut is not None  # the shortcut found
        found.append(SourceShortcut(audit.shortcut.per_class_recall, _one_source(audit.sources)))
    found += [SingleClassSource(n, c) for n, c in metrics.single_class_sources().items()]
    found += [
        NoTransfer(
            ev.name,
            ev.n,
            ev.balanced_accuracy.value,
            ev.internal.balanced_accuracy,
            _worst_confusion(ev),
        )
        for ev in external
        if ev.internal and ExternalFacts.of(ev).fails  # (a gap, so an internal reference)
    ]
    found.append(Scope())
    if metrics.calibration is None:
        found.append(Uncalibrated())
    elif off := {
        ev.name: ev.ece
        for ev in external
        if ev.ece_uncalibrated is not None and ev.ece > CALIBRATION_HOLDS
    }:
        found.append(CalibrationOff(off))
    return found


def limitation_lines(
    metrics: RunMetrics, audit: AuditReport | None, external: list[Evaluation]
) -> list[str]:
    """Known limitations, one plain sentence each (Markdown): sources, transfer, scope,
    calibration."""
    return [
        render_markdown("limitation.md", item=item)
        for item in limitations(metrics, audit, external)
    ]


@dataclass(frozen=True)
class Card:
    """Everything ``model_card.md`` writes, from the run's records."""

    metrics: RunMetrics
    sources: list[TrainingSource]  # several sources only
    audit: AuditFacts | None
    external: list[ExternalFacts]
    calibration: CalibrationFacts | None
    robustness: Robustness | None
    probe_reading: str
    limitations: list[str]

    @classmethod
    def of(
        cls,
        metrics: RunMetrics,
        audit: AuditReport | None,
        external: list[Evaluation],
        robustness: Robustness | None,
    ) -> Card:
        single = metrics.single_class_sources()
        sources = [
            TrainingSource(name, {c: n for c, n in row.items() if n}, single.get(name))
            for name, row in metrics.source_totals().items()
        ]
        return cls(
            metrics=metrics,
            sources=sources if len(metrics.sources) >= 2 else [],
            audit=AuditFacts.of(audit) if audit is not None else None,
            external=[ExternalFacts.of(ev) for ev in external],
            calibration=calibration_facts(metrics, external),
            robustness=robustness,
            probe_reading=probe_reading(robustness),
            limitations=limitation_lines(metrics, audit, external),
        )


def sources_sentence(metrics: RunMetrics) -> str | None:
    """The training sources in one sentence (what ``cxrlab serve`` shows beside every answer)."""
    if not metrics.sources:
        return None
    parts = [
        f"{name} ({', '.join(f'{c} {n}' for c, n in row.items() if n)})"
        for name, row in metrics.source_totals().items()
    ]
    return "Trained on films from: " + "; ".join(parts) + "."


def _card_sources(run_dir: Path) -> tuple[RunMetrics, AuditReport | None, list[Evaluation]]:
    """What a card is written from: the run's metrics, its audit (if known), its external sets."""
    files = RunDir(run_dir)
    # config.json through its one reader: a broken one is an error naming it; a folder without
    # one (a model.pt beside a metrics.json, no run config) has no known audit
    config = RunConfig.load(files.config) if files.config.is_file() else None
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
    metrics, audit, external = _card_sources(run_dir)
    robustness = Robustness.load_optional(RunDir(run_dir).robustness)
    card = Card.of(metrics, audit, external, robustness)
    return render_markdown("model_card.md", card=card) + "\n"


def write_model_card(run_dir: Path) -> Path:
    """Write (or rewrite) ``RUN/MODEL_CARD.md``; returns its path."""
    return atomic_write_text(RunDir(run_dir).model_card, model_card(Path(run_dir)))
