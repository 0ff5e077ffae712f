"""Sources of a training set: what each one holds and looks like, and whether the source can
name the class.

A class that comes from one site teaches the site: in the Kaggle data every adult film is
COVID19, and in ``adult-extra`` every NORMAL film is a teaching file and every PNEUMONIA film
an NIH film. :func:`source_check` measures that risk on the films the audit kept, with the
same format-only classifier as :mod:`cxrlab.data.shortcuts`: how well the files' format tells
their source, how much knowing the source adds to guessing the class, which sources hold a
single class and which classes a single source. The result is a
:class:`~cxrlab.data.audit_records.SourceCheck` (saved in ``audit.json``).
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path
from typing import cast

import numpy as np
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from cxrlab.data.audit_records import SourceCheck, SourceProfile
from cxrlab.data.scan import ImageRecord
from cxrlab.data.shortcuts import _level, feature_matrix, format_forest


def source_profile(
    records: list[ImageRecord], kept: list[bool], classes: list[str], root: Path | str
) -> SourceProfile:
    """What one source's ``records`` hold (``kept``: not excluded by the audit)."""
    counts: dict[str, dict[str, int]] = {}
    for record in records:
        row = counts.setdefault(record.split, dict.fromkeys(classes, 0))
        row[classes[record.label]] += 1
    readable = [r for r in records if r.ok]

    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else float("nan")

    return SourceProfile(
        root=str(root),
        counts=counts,
        kept={
            c: sum(1 for r, k in zip(records, kept) if k and r.label == i)
            for i, c in enumerate(classes)
        },
        formats=dict(Counter(r.file_format for r in readable).most_common()),
        median_width=float(np.median([r.width for r in readable])) if readable else float("nan"),
        median_height=float(np.median([r.height for r in readable])) if readable else float("nan"),
        square_share=mean([float(r.width == r.height) for r in readable]),
        mean_intensity=mean([r.mean for r in readable]),
        mean_contrast=mean([r.std for r in readable]),
        border_fraction=mean([r.border_fraction for r in readable]),
    )


def cramers_v(a: np.ndarray, b: np.ndarray) -> float:
    """Cramér's V of two categorical arrays (0: independent, 1: one determines the other)."""
    from scipy.stats.contingency import association, crosstab

    table = cast(np.ndarray, crosstab(a, b).count)
    if min(table.shape) < 2:
        return 0.0
    return float(association(table, method="cramer"))


def source_check(
    records: list[ImageRecord],
    kept: list[bool],
    classes: list[str],
    roots: dict[str, Path],
    format_only: float | None,
    *,
    folds: int = 5,
    seed: int = 0,
) -> SourceCheck:
    """Profile every source and ask whether the source can name the class (see the module);
    ``format_only``: the shortcut check's CV balanced accuracy on the same training films (the
    class from the format alone), beside which the source's own contribution is measured."""
    names = list(roots)
    profiles = {
        name: source_profile(
            [r for r in records if r.source == name],
            [k for r, k in zip(records, kept) if r.source == name],
            classes,
            roots[name],
        )
        for name in names
    }
    single_class = {name: p.classes[0] for name, p in profiles.items() if len(p.classes) == 1}
    holders = {c: [n for n, p in profiles.items() if p.kept.get(c)] for c in classes}
    single_source = {c: held[0] for c, held in holders.items() if len(held) == 1}
    train = [r for r, k in zip(records, kept) if k and r.ok and r.split == "train"]
    labels = np.array([r.label for r in train])
    source_ids = np.array([names.index(r.source) for r in train])
    v = cramers_v(source_ids, labels) if len(train) else 0.0
    features = feature_matrix(train) if train else np.zeros((0, 6))

    def cv_balanced(x: np.ndarray, y: np.ndarray) -> float | None:
        counts = np.bincount(y) if len(y) else np.zeros(1, np.int64)
        present = counts[counts > 0]
        k = int(min(folds, present.min())) if len(present) else 0
        if len(present) < 2 or k < 2:
            return None
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        predicted = cross_val_predict(format_forest(seed), x, y, cv=splitter)
        with warnings.catch_warnings():  # a fold may call a class absent from the labels
            warnings.simplefilter("ignore", UserWarning)
            return float(balanced_accuracy_score(y, predicted))

    one_hot = np.eye(len(names))[source_ids] if len(train) else np.zeros((0, len(names)))
    format_source = cv_balanced(features, source_ids)
    with_source = cv_balanced(np.hstack([features, one_hot]), labels)
    chance = 1.0 / len(names)
    told = _level(format_source, chance) if format_source is not None else "low"
    if single_class:  # a site that is one class: high when the files also tell the site
        level = "high" if told != "low" else "moderate"
    else:  # the files tell the site, and the sites differ in their classes
        level = "moderate" if told != "low" and v >= 0.1 else "low"
    return SourceCheck(
        sources=profiles,
        single_class=single_class,
        single_source=single_source,
        cramers_v=v,
        format_predicts_source=format_source,
        source_chance=chance,
        format_only=format_only,
        source_and_format=with_source,
        level=level,
        explanation=_explain(single_class, single_source, format_source, chance, v),
    )


def _explain(
    single_class: dict[str, str],
    single_source: dict[str, str],
    format_source: float | None,
    chance: float,
    v: float,
) -> list[str]:
    lines = []
    for name, cls in single_class.items():
        lines.append(
            f"Source {name} holds only {cls} films: a model can learn what marks {name}'s films "
            f"(framing, scanner, processing) as {cls}."
        )
    for cls, name in single_source.items():
        if name not in single_class:
            lines.append(f"Every {cls} film comes from {name}: {cls} is that source's class.")
    if format_source is not None:
        lines.append(
            f"File format alone tells the source with balanced accuracy {format_source:.1%} "
            f"(chance {chance:.1%}); source and class: Cramér's V {v:.2f}."
        )
    if single_class or single_source:
        lines.append(
            "Compare results per source (metrics.json per_source), balance by source "
            "(cxrlab train --balance source), and check models on films from elsewhere."
        )
    return lines
