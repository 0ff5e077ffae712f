"""What ``cxrlab audit`` writes to ``audit.json``, as typed records.

:func:`cxrlab.data.audit.audit_records` judges the files and summarises them in an
:class:`AuditSummary`; the duplicate finder (:mod:`cxrlab.data.duplicates`) and the shortcut
check (:mod:`cxrlab.data.shortcuts`) produce :class:`DuplicateGroup` and
:class:`ShortcutReport` records; :func:`cxrlab.data.audit.write_audit_files` saves them all as
one :class:`AuditReport` and renders ``audit.md`` from it. The CLI, ``compare``, the model card
and the benchmark read attributes. Loading is strict, as for a run's ``metrics.json``
(:mod:`cxrlab.records`): an unknown or missing key is an error naming the file and the key.

The records hold what the audit found, not how: the computations stay in the modules named
above. Like :mod:`cxrlab.records`, this module imports neither torch nor Lightning.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from cxrlab.records import STRICT, JsonRecord

DEFAULT_THRESHOLD = 0.98  # 64x64 NCC above which two images are copies (cxrlab.data.duplicates)


@dataclass
class AuditConfig:
    """Options of one audit run (saved in audit.json). Like a run's ``config.json``, a key
    missing from a saved one reads as today's default; every other record here needs all its
    keys."""

    __pydantic_config__ = STRICT
    min_size: int = 64
    near_threshold: float = DEFAULT_THRESHOLD
    workers: int = 2
    folds: int = 5
    seed: int = 0


@dataclass
class DuplicateGroup:
    """Files that are copies of one image: dataset-relative paths, in the order the audit keeps
    them (the first is kept), with each one's split and class."""

    __pydantic_config__ = STRICT
    members: list[str]
    splits: list[str]
    classes: list[str]
    exact: bool  # all members have the same decoded pixels
    min_similarity: float  # the lowest 64x64 NCC between two members (1.0 when exact)
    cross_split: bool  # members in more than one split
    label_conflict: bool  # members with more than one class
    sources: list[str] = field(default_factory=list)  # each member's source (several-source sets)
    cross_source: bool = False  # members in more than one source: a film two sources share


@dataclass
class ShortcutReport:
    """What the format-only classifier achieves, and which features carry it
    (:func:`cxrlab.data.shortcuts.shortcut_check`)."""

    __pydantic_config__ = STRICT
    n_train: int
    folds: int
    majority_rate: float
    chance_balanced: float
    cv_accuracy: float
    cv_balanced_accuracy: float
    test_accuracy: float | None  # None without a test split
    test_balanced_accuracy: float | None
    per_class_recall: dict[str, float]  # of the all-feature classifier (CV)
    single_feature: dict[str, float]  # balanced accuracy of each feature alone (CV)
    level: str  # "low", "moderate" or "high"
    explanation: list[str]  # plain-language reasons; empty when the level is "low"


@dataclass(frozen=True)
class SourceProfile:
    """One source of a training set: its folder, files per split and class, and what its files
    look like (readable films only: formats, sizes, intensities)."""

    __pydantic_config__ = STRICT
    root: str
    counts: dict[str, dict[str, int]]  # split -> class -> files
    kept: dict[str, int]  # class -> files the audit did not exclude
    formats: dict[str, int]  # file format -> readable files
    median_width: float
    median_height: float
    square_share: float  # readable films exactly square
    mean_intensity: float  # mean over films of their mean (0..255)
    mean_contrast: float  # mean over films of their standard deviation
    border_fraction: float  # mean black border share

    @property
    def classes(self) -> list[str]:
        """The classes this source holds films of."""
        return [c for c, n in self.kept.items() if n]


@dataclass(frozen=True)
class SourceCheck:
    """Whether the source of a film, rather than its disease, can name its class
    (:func:`cxrlab.data.sources.source_check`), over the training films the audit kept.

    ``format_predicts_source``: CV balanced accuracy of the format-only classifier guessing the
    source (against ``1 / sources``): high means the files tell their site. ``source_and_format``:
    the shortcut classifier with the source added as a feature, against ``format_only``: the
    rise is what the source adds. ``single_class``: sources all of whose films are one class (a
    site that can be learnt as that class); ``single_source``: classes held by one source.
    ``level``: with a single-class source, ``high`` when the format tells the source (the
    shortcut's own rule, :func:`cxrlab.data.shortcuts._level`, against ``source_chance``) and
    ``moderate`` otherwise; without one, ``moderate`` when the format tells the source and the
    sources differ in their classes (Cramér's V >= 0.1), else ``low``."""

    __pydantic_config__ = STRICT
    sources: dict[str, SourceProfile]
    single_class: dict[str, str]  # source -> its one class
    single_source: dict[str, str]  # class -> its one source
    cramers_v: float  # association of source and class over the kept films (0 none, 1 fully)
    format_predicts_source: float | None
    source_chance: float
    format_only: float | None
    source_and_format: float | None
    level: str  # "low", "moderate" or "high"
    explanation: list[str]


@dataclass(frozen=True)
class AuditSummary:
    """Counts a person reads first. ``status``: files per status (``ok``, ``warning``,
    ``excluded``); ``kept_per_split``: files not excluded, per split present; ``unreadable``:
    files per reader error kind. Groups count duplicate groups, files their members."""

    __pydantic_config__ = STRICT
    files: int
    status: dict[str, int]
    kept_per_split: dict[str, int]
    unreadable: dict[str, int]
    too_small: int
    exact_duplicate_groups: int
    exact_duplicate_files: int
    near_duplicate_groups: int
    near_duplicate_files: int
    leakage_groups: int
    leakage_files: int
    label_conflict_groups: int
    excluded_as_duplicate: int
    excluded_as_leakage: int
    shortcut_level: str  # the shortcut check's level, "not run" without one


@dataclass(frozen=True)
class Problem:
    """A file the audit excluded or flagged (status ``excluded`` or ``warning``), and why."""

    __pydantic_config__ = STRICT
    path: str
    status: str
    reasons: list[str]  # "kind: detail", as in manifest.csv's reasons column


@dataclass(frozen=True)
class AuditReport(JsonRecord):
    """``audit.json``: the dataset folder and its classes, the options, the summary, the
    shortcut check (None when there were too few training films), every duplicate group and
    every file that is not ``ok`` (the manifest lists all files)."""

    __pydantic_config__ = STRICT
    root: str
    classes: list[str]
    config: AuditConfig
    summary: AuditSummary
    shortcut: ShortcutReport | None
    duplicate_groups: list[DuplicateGroup]
    problems: list[Problem]
    sources: SourceCheck | None = None  # a training set of several sources (--add-source)

    def to_json(self) -> str:
        # audit.json has always been written without a final newline: kept, byte for byte
        return json.dumps(asdict(self), indent=2)
