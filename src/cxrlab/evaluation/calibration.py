"""Calibrated probabilities and an operating point, both chosen on the validation split.

**Temperature scaling** (Guo et al., ICML 2017): one scalar ``T > 0`` divides the logits before
the softmax, ``p = softmax(z / T)``, fitted on the validation split by minimising the negative
log-likelihood. It changes how confident the model says it is, never which class it picks
(accuracy, recall and AUC stay as they are); ``T > 1`` softens an over-confident model. The run
stores ``T`` in ``model.pt``; ``predict``, ``evaluate`` and the ONNX export apply it.

**An operating point** (``--target-recall COVID19=0.95``): the threshold on the calibrated
probability of one class that reaches that recall on the validation split. A film is called
that class when its probability reaches the threshold, and otherwise the most probable of the
other classes. Its sensitivity and specificity (that class against the rest) are then reported
on the test split and every external set: on films from elsewhere a threshold chosen on the
training hospital's films need not keep its promise, and the report shows whether it does.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from cxrlab.errors import ConfigError, CxrlabError
from cxrlab.evaluation.metrics import bootstrap_ci, expected_calibration_error
from cxrlab.records import (
    CalibrationEffect,
    OperatingPoint,
    OperatingResult,
    Reliability,
)

LOG_T_BOUNDS = (-4.0, 4.0)  # T between 0.018 and 55: far beyond any fitted value seen
RELIABILITY_BINS = 10


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / temperature)`` over the last axis, in float64."""
    return np.exp(log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=-1))


def retemper(probs: np.ndarray, factor: float) -> np.ndarray:
    """Probabilities ``softmax(z)`` turned into ``softmax(z / factor)`` without the logits.

    ``log p`` equals ``z`` up to a constant per row, which the softmax ignores; so
    ``retemper(p_calibrated, 1 / T)`` gives back the uncalibrated probabilities.
    """
    return softmax(np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-300, None)), factor)


def nll(logits: np.ndarray, y_true: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes under ``softmax(logits / temperature)``."""
    log_p = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-log_p[np.arange(len(y_true)), np.asarray(y_true)].mean())


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """The ``T`` minimising :func:`nll` (a bounded 1-D search over ``log T``)."""
    if not len(y_true):
        raise CxrlabError("temperature scaling: the validation split is empty")
    found = minimize_scalar(
        lambda log_t: nll(logits, y_true, float(np.exp(log_t))),
        bounds=LOG_T_BOUNDS,
        method="bounded",
    )
    return float(np.exp(found.x))


def reliability(y_true: np.ndarray, probs: np.ndarray, bins: int = RELIABILITY_BINS) -> Reliability:
    """Top-class confidence against accuracy in ``bins`` equal-width bins (empty bins left out)."""
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == np.asarray(y_true)
    which = np.clip(
        np.digitize(confidence, np.linspace(0.0, 1.0, bins + 1)[1:-1], right=True), 0, bins - 1
    )
    kept = [b for b in range(bins) if (which == b).any()]
    return Reliability(
        [float(confidence[which == b].mean()) for b in kept],
        [float(correct[which == b].mean()) for b in kept],
        [int((which == b).sum()) for b in kept],
    )


def calibration_effect(
    logits: np.ndarray, y_true: np.ndarray, temperature: float
) -> CalibrationEffect:
    """Calibration of one set of films before and after dividing its logits by ``temperature``."""
    before, after = softmax(logits), softmax(logits, temperature)
    return CalibrationEffect(
        int(len(y_true)),
        nll(logits, y_true),
        nll(logits, y_true, temperature),
        expected_calibration_error(y_true, before),
        expected_calibration_error(y_true, after),
        reliability(y_true, before),
        reliability(y_true, after),
    )


def choose_operating_point(
    probs: np.ndarray, y_true: np.ndarray, classes: list[str], label: str, target_recall: float
) -> OperatingPoint:
    """The highest threshold on ``p(label)`` whose recall of ``label`` on these films (the
    validation split) reaches ``target_recall``: the most specific point that keeps the promise."""
    k = classes.index(label)
    positive = np.asarray(y_true) == k
    if not positive.any():
        raise ConfigError(
            "target_recall",
            f"the validation split has no {label} films",
            value=f"{label}={target_recall:g}",
        )
    scores = np.sort(probs[positive, k])[::-1]
    needed = int(
        np.ceil(target_recall * len(scores) - 1e-9)
    )  # films of the class that must be called it
    threshold = float(scores[max(needed, 1) - 1])
    point = OperatingPoint(label, float(target_recall), threshold, 0.0, 0.0, int(positive.sum()))
    decided = point.decide(probs, classes) == k
    specificity = float((~decided[~positive]).mean()) if (~positive).any() else float("nan")
    return OperatingPoint(
        label,
        float(target_recall),
        threshold,
        float(decided[positive].mean()),
        specificity,
        int(positive.sum()),
    )


def operating_result(
    point: OperatingPoint,
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    *,
    n_boot: int = 2000,
) -> OperatingResult:
    """The operating point on these films: its sensitivity and specificity (``label`` against the
    rest) with bootstrap intervals, and how many films it calls ``label``."""
    k = classes.index(point.label)
    truth, decided = (
        (np.asarray(y_true) == k).astype(np.int64),
        (point.decide(probs, classes) == k).astype(np.int64),
    )

    # recall of 1 (sensitivity) or of 0 (specificity), NaN when absent
    def rate(of: int) -> Callable[[np.ndarray, np.ndarray], float]:
        return lambda t, d: float((d[t == of] == of).mean()) if (t == of).any() else float("nan")

    return OperatingResult(
        bootstrap_ci(truth, decided, rate(1), n_boot=n_boot) if truth.any() else None,
        bootstrap_ci(truth, decided, rate(0), n_boot=n_boot) if (truth == 0).any() else None,
        int(decided.sum()),
        int(len(truth)),
    )
