"""What a run's ``metrics.json`` holds, as typed records every stage reads and writes.

``training`` builds a :class:`RunMetrics` and saves it; ``reporting``, the model card, ``evaluate``
and the CLI load it and read attributes, never string keys. Loading is strict: a key the record
does not know, a missing required key or a value of the wrong type is an error naming the file
(:meth:`RunMetrics.load`), not a silent default.

The records are plain dataclasses (saved with :func:`dataclasses.asdict`); pydantic only checks
and builds them from JSON. The numbers are computed in :mod:`cxrlab.evaluation`; this module
imports neither torch nor Lightning, so that reports and tools read runs without the training
stack. :class:`JsonRecord` and :func:`parse` serve the other files' records too
(:mod:`cxrlab.diagnostics`, :mod:`cxrlab.data.summary`, :mod:`cxrlab.data.audit_records`).

The other things a run stores have their one schema here too: :class:`ModelMeta` is what
``model.pt`` keeps beside the weights (read with :meth:`ModelMeta.from_extra`, old checkpoints
included), and :class:`HistoryRow` is one line of ``history.csv`` (its fields are the columns).
``config.json`` is :class:`cxrlab.config.RunConfig` (also torch-free).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, Self, TypeVar, get_args

import numpy as np
from pydantic import ConfigDict, TypeAdapter, ValidationError

from cxrlab.artifacts import read_json
from cxrlab.errors import ConfigError, CxrlabError
from cxrlab.fileio import atomic_open, csv_dict_reader, csv_dict_writer, open_text

STRICT = ConfigDict(extra="forbid")  # an unknown key is an error, not dropped
T = TypeVar("T")

# How a film is brought to the model's square input (cxrlab.data.cache.CacheSpec): stretched
# (squash) or padded with black (pad); cut to its lung box first (lungs) or not (none).
Resize = Literal["squash", "pad"]
Crop = Literal["none", "lungs"]
RESIZE_MODES: tuple[Resize, ...] = get_args(Resize)
CROPS: tuple[Crop, ...] = get_args(Crop)


class JsonRecord:
    """A record saved as one JSON file: :meth:`to_json` writes it (``asdict``, indented), and
    :meth:`load` / :meth:`from_dict` read it strictly (:func:`parse`). Mixed into dataclasses."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: Path | str) -> Self:
        return parse(cls, data, where)

    @classmethod
    def load(cls, path: Path) -> Self:
        return parse(cls, read_json(path), path)

    @classmethod
    def load_optional(cls, path: Path) -> Self | None:
        """The record in ``path``; None when there is no such file (older runs lack some)."""
        return cls.load(path) if path.is_file() else None


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap percentile interval."""

    __pydantic_config__ = STRICT
    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


@dataclass(frozen=True)
class ClassScores:
    """One class on one set of films: precision, recall, F1 and one-vs-rest AUC (NaN where
    undefined), and how many films of it there are."""

    __pydantic_config__ = STRICT
    precision: float
    recall: float
    f1: float
    auc: float
    support: int


@dataclass(frozen=True)
class ClassificationMetrics:
    """Argmax decisions on one set of films (``evaluation.metrics.classification_metrics``)."""

    __pydantic_config__ = STRICT
    n: int
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    macro_auc: float
    ece: float
    per_class: dict[str, ClassScores]
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted


@dataclass(frozen=True)
class Reliability:
    """A reliability diagram's bins: mean top-class confidence, accuracy and films per bin."""

    __pydantic_config__ = STRICT
    confidence: list[float]
    accuracy: list[float]
    count: list[int]


@dataclass(frozen=True)
class CalibrationEffect:
    """Calibration of one set of films before and after temperature scaling."""

    __pydantic_config__ = STRICT
    n: int
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    reliability_before: Reliability
    reliability_after: Reliability


@dataclass(frozen=True)
class RunCalibration:
    """The temperature fitted on validation, and its effect there and on the test split."""

    __pydantic_config__ = STRICT
    temperature: float
    val: CalibrationEffect
    test: CalibrationEffect | None = None


def target_name(label: str, recall: float) -> str:
    """``COVID19=0.95``: how an operating point's target is written on the command line."""
    return f"{label}={recall:g}"


def parse_target_recall(text: str, classes: list[str] | None = None) -> tuple[str, float]:
    """``"COVID19=0.95"`` into ``("COVID19", 0.95)``; the class must be one of ``classes`` when
    given."""
    name, sep, value = str(text).rpartition("=")
    try:
        recall = float(value)
    except ValueError:
        recall = float("nan")
    if not sep or not name or not 0.0 < recall <= 1.0:
        raise ConfigError(
            "target_recall",
            "write CLASS=RECALL with RECALL in (0, 1], e.g. {target_recall} COVID19=0.95",
            value=text,
        )
    if classes is not None and name not in classes:
        raise ConfigError(
            "target_recall",
            f"{name} is not one of the model's classes ({', '.join(classes)})",
            value=text,
        )
    return name, recall


@dataclass(frozen=True)
class OperatingPoint:
    """Call ``label`` when its probability reaches ``threshold`` (chosen on validation for
    ``target_recall``); otherwise the most probable other class."""

    __pydantic_config__ = STRICT
    label: str
    target_recall: float
    threshold: float
    val_recall: float
    val_specificity: float
    val_positives: int

    @property
    def target(self) -> str:
        return target_name(self.label, self.target_recall)

    def decide(self, probs: np.ndarray, classes: list[str]) -> np.ndarray:
        """The class index decided for each row of ``probs``."""
        k = classes.index(self.label)
        others = np.asarray(probs, dtype=np.float64).copy()
        others[:, k] = -np.inf
        return np.where(probs[:, k] >= self.threshold, k, others.argmax(axis=1))


@dataclass(frozen=True)
class OperatingResult:
    """An operating point on one set of films: ``label`` against the rest."""

    __pydantic_config__ = STRICT
    sensitivity: Interval | None  # None when the set has no films of the class
    specificity: Interval | None  # None when it has only films of the class
    called: int  # films called the class
    n: int


@dataclass(frozen=True)
class RunOperatingPoint(OperatingPoint):
    """A run's operating point and how it did on the run's test split."""

    test: OperatingResult | None = None


@dataclass(frozen=True)
class ClassResult:
    """One class present in an external set."""

    __pydantic_config__ = STRICT
    n: int
    recall: Interval
    precision: Interval  # NaN when the model never predicts the class
    called: dict[str, int]  # films of this class called each of the model's classes
    auc: float | None  # one-vs-rest, where the set has films of other classes too


@dataclass(frozen=True)
class SetScores:
    """A model on one set of films that may hold only some of its classes (a source's test films,
    an external set: ``evaluation.external.score``): balanced accuracy over the present classes,
    each present class's recall and precision with 95% bootstrap intervals, and where its films
    went."""

    __pydantic_config__ = STRICT
    present: list[str]  # the classes that have films in the set
    n: int
    accuracy: Interval
    balanced_accuracy: Interval  # over the present classes
    macro_f1: float | None  # only when every class is present
    macro_auc: float | None
    ece: float
    per_class: dict[str, ClassResult]


@dataclass
class RunMetrics(JsonRecord):
    """``metrics.json``: a finished run's description, sizes, timings and test results.

    ``test``, ``intervals`` and the test parts of ``calibration`` and ``operating_point`` are
    absent when the split has no test films; ``calibration`` is absent in runs from before
    calibration (``cxrlab calibrate`` adds it); ``test_without_tta`` only with test-time
    augmentation.
    """

    __pydantic_config__ = STRICT
    run: str
    description: str
    classes: list[str]
    sizes: dict[str, int]  # films per subset (train, val, test)
    best_epoch: int  # 0-based; -1 when no epoch was run
    epochs_run: int
    best_val_macro_f1: float
    parameters: int
    trainable_parameters: int
    timings: dict[str, float]  # seconds: features_s, train_s, test_s
    training_processes: int  # > 1: DDP
    skipped: dict[str, str]  # files of the split that could not be decoded: why
    inference_img_per_s: float
    inference_device: str
    calibration: RunCalibration | None = None
    operating_point: RunOperatingPoint | None = None
    test: ClassificationMetrics | None = None
    intervals: dict[str, Interval] = field(default_factory=dict)  # accuracy, macro_f1, recall_C
    test_without_tta: ClassificationMetrics | None = None
    # several training sources (--add-source): films per source, subset and class, and the test
    # films of each source scored on their own
    sources: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    per_source: dict[str, SetScores] = field(default_factory=dict)

    @property
    def temperature(self) -> float:
        """The calibration temperature (1 for a run from before calibration)."""
        return self.calibration.temperature if self.calibration else 1.0

    @property
    def target(self) -> str | None:
        """The target (``COVID19=0.95``) of the run's operating point, if it has one."""
        return self.operating_point.target if self.operating_point else None

    def source_totals(self) -> dict[str, dict[str, int]]:
        """Films each source gave, per class, over all subsets (``sources`` summed)."""
        return {
            name: {c: sum(row.get(c, 0) for row in subsets.values()) for c in self.classes}
            for name, subsets in self.sources.items()
        }

    def single_class_sources(self) -> dict[str, str]:
        """Training sources (of several) that gave films of one class only: ``{source: class}``."""
        if len(self.sources) < 2:
            return {}
        held = {n: [c for c, k in row.items() if k] for n, row in self.source_totals().items()}
        return {n: classes[0] for n, classes in held.items() if len(classes) == 1}


@dataclass(frozen=True)
class Internal:
    """The same headline numbers on the run's own test split, for the side-by-side gap."""

    __pydantic_config__ = STRICT
    n: int
    recall: dict[str, float]  # per present class
    balanced_accuracy: float  # over the external set's present classes
    at_point: OperatingResult | None = None  # the same operating point on the test split


@dataclass(frozen=True)
class Evaluation(SetScores, JsonRecord):
    """``RUN/external/<NAME>/metrics.json``: a model scored on one labelled set (``cxrlab
    evaluate``): its :class:`SetScores` (``ece`` of the calibrated probabilities, the model's
    temperature) and where they come from; ``internal`` is the run's own test split, when
    known."""

    __pydantic_config__ = STRICT
    name: str
    data: str
    split: str
    arch: str
    classes: list[str]  # the model's classes
    skipped: dict[str, str] = field(default_factory=dict)  # unreadable file: why
    internal: Internal | None = None
    temperature: float = 1.0  # the model's, applied to every probability here
    ece_uncalibrated: float | None = None  # the same films without the temperature
    point: OperatingPoint | None = None  # applied (chosen on the run's validation split)
    at_point: OperatingResult | None = None  # its sensitivity and specificity on this set

    @property
    def absent(self) -> list[str]:
        return [c for c in self.classes if c not in self.present]


def parse(kind: type[T], data: Any, where: Path | str) -> T:
    """``data`` (parsed JSON) as a ``kind`` record; an error naming ``where`` and the first bad
    key when it does not fit (unknown, missing or of the wrong type)."""
    try:
        return TypeAdapter(kind).validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "(top level)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        reason = {
            "extra_forbidden": "unknown key",
            "unexpected_keyword_argument": "unknown key",
            "missing": "missing key",
            "missing_argument": "missing key",
        }.get(first["type"], first["msg"])
        raise CxrlabError(f"{where}: {key}: {reason}{more}") from None


@dataclass(frozen=True)
class ModelMeta:
    """What a model checkpoint (``model.pt``) stores beside its weights: what it is, how its
    films must be prepared, and how its logits are read (after timm's ``PretrainedCfg``).

    ``arch`` and ``classes`` sit at the checkpoint's top level, the rest in its ``extra`` dict
    (:meth:`extra`, :meth:`from_extra`). A checkpoint from before a key was stored (or that
    stored it as null) gets the default given here: 224 px, squashed, no crop, no test-time
    augmentation, no run config, ``T = 1`` and no operating point (not calibrated). The run's
    training sources are those of its ``config`` (``sources``, ``source_name``).
    """

    __pydantic_config__ = STRICT
    arch: str
    classes: tuple[str, ...]
    image_size: int = 224
    resize: Resize = "squash"
    crop: Crop = "none"
    tta: bool = False  # the logits were test-time augmented (the mean over a few views)
    config: dict[str, Any] | None = None  # the run's RunConfig, as config.json holds it
    temperature: float = 1.0  # divides the logits before the softmax
    operating_point: OperatingPoint | None = None

    TOP_LEVEL: ClassVar[tuple[str, ...]] = ("arch", "classes")

    @classmethod
    def of(cls, model: Any, **meta: Any) -> ModelMeta:
        """The meta of ``model`` (a ``CxrClassifier``: its arch and classes) with ``meta``."""
        return cls(model.arch, tuple(model.classes), **meta)

    def extra(self) -> dict[str, Any]:
        """The checkpoint's ``extra`` dict (plain values, loadable with ``weights_only``)."""
        extra = {f.name: getattr(self, f.name) for f in fields(self)}
        point = self.operating_point
        extra["operating_point"] = asdict(point) if point is not None else None
        return {k: v for k, v in extra.items() if k not in self.TOP_LEVEL}

    @classmethod
    def from_extra(
        cls, extra: dict[str, Any], where: Path | str, *, arch: str, classes: Sequence[str]
    ) -> ModelMeta:
        """The meta of a checkpoint in ``where`` whose top level names ``arch`` and ``classes``:
        a missing or null key takes its default (see the class); an unknown key or a value of
        the wrong type is an error naming ``where``."""
        given = {k: v for k, v in dict(extra).items() if v is not None}
        return parse(cls, {"arch": arch, "classes": list(classes), **given}, where)


@dataclass(frozen=True)
class HistoryRow:
    """One epoch of training, one line of ``history.csv``: the fields in order are its columns.

    ``epoch`` counts from 0; a number a run did not measure (no training batch, or a column
    from after its history was written) is NaN."""

    epoch: int
    lr: float
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    val_macro_f1: float
    epoch_time_s: float
    val_n: float

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> HistoryRow:
        """A row from numbers by column name (a column the row lacks: NaN)."""
        return cls(
            int(row["epoch"]),
            *(float(row[k]) if k in row else math.nan for k in cls.columns()[1:]),
        )

    def csv_row(self) -> dict[str, int | str]:
        """The row as written: ``epoch`` as an integer, the rest with 6 significant digits."""
        return {
            k: (self.epoch if k == "epoch" else f"{getattr(self, k):.6g}") for k in self.columns()
        }


def write_history(path: Path, history: Sequence[HistoryRow]) -> None:
    """Write ``history.csv`` whole (atomically: a kill mid-write keeps the previous file)."""
    with atomic_open(path, newline="") as handle:
        writer = csv_dict_writer(handle, HistoryRow.columns())
        writer.writeheader()
        for row in history:
            writer.writerow(row.csv_row())


def read_history(path: Path) -> list[HistoryRow]:
    """``history.csv``: one :class:`HistoryRow` per epoch; a file that is not one is an error
    naming it."""
    with open_text(path) as handle:
        try:
            return [HistoryRow.from_dict(row) for row in csv_dict_reader(handle)]
        except (KeyError, TypeError, ValueError, csv.Error) as exc:
            raise CxrlabError(f"{path}: not a history.csv ({exc!r})") from None
