"""Shortcut check: can features that are not disease predict the label?

A random forest is fitted on file-format features only (width, height, aspect ratio,
file size, mean intensity, black border) with stratified cross-validation on the
training split, then, if there is a test split, trained on train and scored on test.
Its accuracy is reported next to the majority-class rate and its balanced accuracy next
to chance; each feature is also scored alone, to say *which* format property leaks.
The result is a :class:`~cxrlab.data.audit_records.ShortcutReport` (saved in ``audit.json``).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.tree import DecisionTreeClassifier

from cxrlab.data.audit_records import ShortcutReport
from cxrlab.data.scan import ImageRecord

FEATURES = ("width", "height", "aspect", "file_size", "mean_intensity", "border_fraction")


def feature_matrix(records: list[ImageRecord]) -> np.ndarray:
    """One row per record, columns in :data:`FEATURES` order."""
    return np.array(
        [[r.width, r.height, r.aspect, r.file_size, r.mean, r.border_fraction] for r in records],
        dtype=np.float64,
    )


def format_forest(seed: int) -> RandomForestClassifier:
    """The format-only classifier of the shortcut check (and of the audit's source check)."""
    return RandomForestClassifier(
        n_estimators=200,
        min_samples_leaf=2,
        class_weight="balanced",
        random_state=seed,
        n_jobs=2,
    )


def _level(balanced: float, chance: float) -> str:
    headroom = 1.0 - chance
    if balanced >= chance + 0.5 * headroom:
        return "high"
    if balanced >= chance + 0.2 * headroom:
        return "moderate"
    return "low"


def _explain(records: list[ImageRecord], classes: list[str], best: str) -> list[str]:
    """Plain-language reasons, from the data: dominant exact sizes per class, then the best
    feature."""
    labels = np.array([r.label for r in records])
    sizes = [(r.width, r.height) for r in records]
    dominant = []
    for label in range(len(classes)):
        in_class = [s for s, y in zip(sizes, labels) if y == label]
        if in_class:
            size, count = Counter(in_class).most_common(1)[0]
            if count / len(in_class) >= 0.25 and size not in dominant:
                dominant.append(size)
    lines = []
    for w, h in dominant:
        shares = ", ".join(
            f"{name} {np.mean([s == (w, h) for s, y in zip(sizes, labels) if y == k]):.0%}"
            for k, name in enumerate(classes)
            if (labels == k).any()
        )
        lines.append(f"Exactly {w}x{h} pixels: {shares} of the images.")
    if dominant:
        lines.append(
            "Exact image sizes differ by class: the classes come from sources with different "
            "file formats, so size and aspect ratio reveal the source, not the disease. "
            "Resize every image to one fixed square before training (cxrlab's cache does)."
        )
    values = feature_matrix(records)[:, FEATURES.index(best)]
    medians = ", ".join(
        f"{name} {np.median(values[labels == k]):.3g}"
        for k, name in enumerate(classes)
        if (labels == k).any()
    )
    lines.append(f"Strongest single feature: {best} (median by class: {medians}).")
    return lines


def shortcut_check(
    train: list[ImageRecord],
    classes: list[str],
    test: list[ImageRecord] | None = None,
    *,
    folds: int = 5,
    seed: int = 0,
) -> ShortcutReport | None:
    """Fit format-only classifiers on readable ``train`` records; None if there are too few."""
    train = [r for r in train if r.ok]
    labels = np.array([r.label for r in train])
    counts = np.bincount(labels, minlength=len(classes)) if len(labels) else np.zeros(1)
    present = counts[counts > 0]
    folds = int(min(folds, present.min())) if len(present) else 0
    if len(present) < 2 or folds < 2:
        return None
    features = feature_matrix(train)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)

    predicted = cross_val_predict(format_forest(seed), features, labels, cv=splitter)
    single = {}
    for k, name in enumerate(FEATURES):
        tree = DecisionTreeClassifier(max_depth=4, class_weight="balanced", random_state=seed)
        guess = cross_val_predict(tree, features[:, [k]], labels, cv=splitter)
        single[name] = float(balanced_accuracy_score(labels, guess))
    chance = 1.0 / len(present)
    balanced = float(balanced_accuracy_score(labels, predicted))
    test_acc = test_bal = None
    test = [r for r in (test or []) if r.ok]
    if test:
        model = format_forest(seed).fit(features, labels)
        test_labels = np.array([r.label for r in test])
        test_pred = model.predict(feature_matrix(test))
        test_acc = float(accuracy_score(test_labels, test_pred))
        test_bal = float(balanced_accuracy_score(test_labels, test_pred))
    level = _level(balanced, chance)
    best = max(single, key=single.__getitem__)
    return ShortcutReport(
        n_train=len(train),
        folds=folds,
        majority_rate=float(present.max() / present.sum()),
        chance_balanced=chance,
        cv_accuracy=float(accuracy_score(labels, predicted)),
        cv_balanced_accuracy=balanced,
        test_accuracy=test_acc,
        test_balanced_accuracy=test_bal,
        per_class_recall={
            classes[k]: float(np.mean(predicted[labels == k] == k))
            for k in range(len(classes))
            if (labels == k).any()
        },
        single_feature=single,
        level=level,
        explanation=_explain(train, classes, best) if level != "low" else [],
    )
