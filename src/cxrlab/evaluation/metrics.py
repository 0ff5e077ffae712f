"""Classification metrics on a test split, with bootstrap confidence intervals, McNemar's test and
Holm's adjustment for several tests.

All functions take integer labels ``y_true`` of shape ``(n,)`` and class probabilities
``probs`` of shape ``(n, k)`` (rows sum to 1); predictions are ``probs.argmax(1)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
from scipy.stats import binomtest, chi2
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from cxrlab.records import ClassificationMetrics, ClassScores, Interval


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Unweighted mean of the per-class F1 over all ``n_classes`` (an absent class counts 0)."""
    return float(
        f1_score(
            y_true,
            y_pred,
            labels=list(range(n_classes)),
            average="macro",
            zero_division=0,  # pyright: ignore[reportArgumentType]  # typed from its default "warn"
        )
    )


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """ECE: confidence-weighted gap between top-class confidence and accuracy in ``bins``
    equal-width bins: torchmetrics' ``MulticlassCalibrationError``, L1 norm (float32 inside,
    so within 1e-7 of a float64 sum)."""
    import torch
    from torchmetrics.functional.classification import multiclass_calibration_error

    probs = np.asarray(probs, dtype=np.float64)
    if not len(probs):
        return 0.0
    return float(
        multiclass_calibration_error(
            torch.from_numpy(probs),
            torch.from_numpy(np.asarray(y_true, dtype=np.int64)),
            num_classes=probs.shape[1],
            n_bins=bins,
            norm="l1",
        )
    )


def roc_auc_ovr(y_true: np.ndarray, probs: np.ndarray) -> dict[int, float]:
    """One-vs-rest ROC-AUC per class (NaN where a class is absent or alone)."""
    aucs = {}
    for k in range(probs.shape[1]):
        positive = y_true == k
        aucs[k] = (
            float(roc_auc_score(positive, probs[:, k]))
            if 0 < positive.sum() < len(y_true)
            else float("nan")
        )
    return aucs


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, classes: list[str]
) -> ClassificationMetrics:
    """Accuracy, balanced accuracy, macro-F1, per-class P/R/F1 and AUC, confusion matrix, ECE."""
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    labels = list(range(len(classes)))
    y_pred = probs.argmax(axis=1)
    precision, recall, f1, support = cast(
        "tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]",
        precision_recall_fscore_support(
            y_true,
            y_pred,
            labels=labels,
            zero_division=0,  # pyright: ignore[reportArgumentType]  # typed from its default "warn"
        ),
    )
    aucs = roc_auc_ovr(y_true, probs)
    return ClassificationMetrics(
        n=int(len(y_true)),
        accuracy=float(accuracy_score(y_true, y_pred)),
        balanced_accuracy=float(balanced_accuracy_score(y_true, y_pred)),
        macro_f1=macro_f1(y_true, y_pred, len(classes)),
        macro_auc=float(np.nanmean(list(aucs.values()))),
        ece=expected_calibration_error(y_true, probs),
        per_class={
            name: ClassScores(
                float(precision[k]), float(recall[k]), float(f1[k]), aucs[k], int(support[k])
            )
            for k, name in enumerate(classes)
        },
        confusion_matrix=confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    )


def bootstrap_ci(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    statistic: Callable[[np.ndarray, np.ndarray], float],
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap over test images (resampled with replacement), seeded."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    rng = np.random.default_rng(seed)
    n = len(y_true)
    values = np.empty(n_boot)
    for b in range(n_boot):
        idx = rng.integers(0, n, n)
        values[b] = statistic(y_true[idx], y_pred[idx])
    values = values[np.isfinite(values)]
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha]) if len(values) else (np.nan, np.nan)
    return Interval(float(statistic(y_true, y_pred)), float(low), float(high))


def recall_of(label: int) -> Callable[[np.ndarray, np.ndarray], float]:
    """Statistic: recall of one class (NaN if the resample has none of it)."""

    def recall(y_true: np.ndarray, y_pred: np.ndarray) -> float:
        positive = y_true == label
        return float((y_pred[positive] == label).mean()) if positive.any() else float("nan")

    return recall


def headline_intervals(
    y_true: np.ndarray, probs: np.ndarray, classes: list[str], *, n_boot: int = 2000, seed: int = 0
) -> dict[str, Interval]:
    """95% bootstrap CIs for accuracy, macro-F1 and each class's recall."""
    y_pred = np.asarray(probs).argmax(axis=1)

    def macro_f1_of(t: np.ndarray, p: np.ndarray) -> float:
        return macro_f1(t, p, len(classes))

    def accuracy(t: np.ndarray, p: np.ndarray) -> float:
        return float((t == p).mean())

    out = {
        "accuracy": bootstrap_ci(y_true, y_pred, accuracy, n_boot=n_boot, seed=seed),
        "macro_f1": bootstrap_ci(y_true, y_pred, macro_f1_of, n_boot=n_boot, seed=seed),
    }
    for k, name in enumerate(classes):
        out[f"recall_{name}"] = bootstrap_ci(y_true, y_pred, recall_of(k), n_boot=n_boot, seed=seed)
    return out


@dataclass(frozen=True)
class McNemarResult:
    """Discordant counts and the p-value of McNemar's test (exact binomial when small)."""

    only_a_right: int
    only_b_right: int
    statistic: float
    p_value: float
    exact: bool


def mcnemar(
    y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, *, exact_below: int = 25
) -> McNemarResult:
    """McNemar's test of two classifiers on the same images.

    With fewer than ``exact_below`` discordant pairs, the exact two-sided binomial test;
    otherwise the chi-squared statistic with continuity correction, ``(|b - c| - 1)^2 / (b + c)``.
    """
    y_true, pred_a, pred_b = map(np.asarray, (y_true, pred_a, pred_b))
    right_a, right_b = pred_a == y_true, pred_b == y_true
    b = int((right_a & ~right_b).sum())
    c = int((~right_a & right_b).sum())
    if b + c == 0:
        return McNemarResult(b, c, 0.0, 1.0, True)
    if b + c < exact_below:
        return McNemarResult(
            b, c, float(min(b, c)), float(binomtest(min(b, c), b + c, 0.5).pvalue), True
        )
    stat = (abs(b - c) - 1.0) ** 2 / (b + c)
    return McNemarResult(b, c, float(stat), float(chi2.sf(stat, df=1)), False)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (monotone, capped at 1), in the input order."""
    m = len(p_values)
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
