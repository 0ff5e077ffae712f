"""What ``cxrlab analyze`` writes to ``summary.json``, as typed records.

:func:`cxrlab.data.analyze.analyze_dataset` builds a :class:`DatasetSummary` and saves it
(``to_json``); ``summary.md``, the terminal table, the figures, the findings and the report's
dataset section read its attributes. Loading is strict, as for a run's ``metrics.json``
(:mod:`cxrlab.records`): an unknown or missing key is an error naming the file and the key.
Numbers that cannot be computed (no readable image in a group) are None, never NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

from cxrlab.records import STRICT, JsonRecord


@dataclass(frozen=True)
class DatasetInfo:
    """The dataset folder: where, its layout, its classes and splits (in report order)."""

    __pydantic_config__ = STRICT
    root: str
    name: str
    layout: str
    classes: list[str]
    splits: list[str]


@dataclass(frozen=True)
class Totals:
    """Files per split, per class and in all."""

    __pydantic_config__ = STRICT
    per_split: dict[str, int]
    per_class: dict[str, int]
    all: int


@dataclass(frozen=True)
class NotOk:
    """The files that do not decode: how many, by status, and the first few."""

    __pydantic_config__ = STRICT
    total: int
    by_status: dict[str, int]
    examples: list[str]  # "path (status)"


@dataclass(frozen=True)
class SideRange:
    """Widths or heights of some images, in pixels (None without images)."""

    __pydantic_config__ = STRICT
    median: float | None
    min: int | None
    max: int | None


@dataclass(frozen=True)
class CommonSize:
    """The single most frequent exact image size of a group and its share."""

    __pydantic_config__ = STRICT
    size: str  # "WxH"
    width: int
    height: int
    count: int
    share: float


@dataclass(frozen=True)
class Intensity:
    """Mean and spread over images of each image's mean intensity (0..255), and the mean of
    each image's own pixel standard deviation."""

    __pydantic_config__ = STRICT
    mean: float | None
    std: float | None
    mean_pixel_std: float | None


@dataclass(frozen=True)
class ClassStats:
    """Size, shape, intensity, border and format statistics of one class's readable images."""

    __pydantic_config__ = STRICT
    n_ok: int
    width: SideRange
    height: SideRange
    median_size: str  # "WxH", "-" without images
    square_share: float | None
    most_common_size: CommonSize | None
    median_aspect: float | None  # width / height
    intensity: Intensity
    median_border_fraction: float | None
    formats: dict[str, int]  # files per file format, most common first
    modes: dict[str, int]  # files per PIL mode, most common first
    n_files: int  # readable or not


@dataclass(frozen=True)
class SplitClassCell:
    """One class in one split: the columns of summary.md's "per split and class" table."""

    __pydantic_config__ = STRICT
    n_files: int
    n_ok: int
    share: float | None  # of the split's files
    median_size: str
    square_share: float | None
    mean_intensity: float | None


@dataclass(frozen=True)
class DatasetSummary(JsonRecord):
    """``summary.json``: what ``cxrlab analyze`` found in one dataset. ``shares`` and
    ``imbalance_ratio`` are per split and ``"all"``; ``counts`` and ``ok_counts`` are files
    (all, readable) per split and class."""

    __pydantic_config__ = STRICT
    dataset: DatasetInfo
    n_files: int
    n_ok: int
    counts: dict[str, dict[str, int]]
    ok_counts: dict[str, dict[str, int]]
    totals: Totals
    shares: dict[str, dict[str, float | None]]
    imbalance_ratio: dict[str, float | None]  # largest / smallest class; None with an empty one
    not_ok: NotOk
    per_class: dict[str, ClassStats]
    per_split_class: dict[str, dict[str, SplitClassCell]]
    findings: list[str]
    samples: list[dict[str, str]]  # the images of samples.png: class, path, size ("WxH")
    class_colours: dict[str, str]
    files: dict[str, str]  # what each written file is: key -> file name
