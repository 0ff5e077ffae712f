from __future__ import annotations

import numpy as np
import pytest

from cxrlab.evaluation.metrics import (
    bootstrap_ci,
    classification_metrics,
    expected_calibration_error,
    headline_intervals,
    mcnemar,
    recall_of,
)

CLASSES = ["COVID19", "NORMAL", "PNEUMONIA"]
# 8 images; predictions are the argmax of these rows
Y = np.array([0, 0, 1, 1, 1, 2, 2, 2])
P = np.array(
    [
        [0.9, 0.05, 0.05],  # 0 -> 0 right
        [0.2, 0.7, 0.1],  # 0 -> 1 wrong
        [0.1, 0.8, 0.1],  # 1 -> 1 right
        [0.1, 0.6, 0.3],  # 1 -> 1 right
        [0.1, 0.3, 0.6],  # 1 -> 2 wrong
        [0.1, 0.1, 0.8],  # 2 -> 2 right
        [0.2, 0.2, 0.6],  # 2 -> 2 right
        [0.6, 0.1, 0.3],  # 2 -> 0 wrong
    ]
)


def test_metrics_against_hand_computation() -> None:
    m = classification_metrics(Y, P, CLASSES)
    assert m.accuracy == pytest.approx(5 / 8)
    # recalls: COVID19 1/2, NORMAL 2/3, PNEUMONIA 2/3
    assert m.balanced_accuracy == pytest.approx((1 / 2 + 2 / 3 + 2 / 3) / 3)
    assert m.confusion_matrix == [[1, 1, 0], [0, 2, 1], [1, 0, 2]]
    pc = m.per_class
    # precision: COVID19 1/2 (one of two predicted 0), NORMAL 2/3, PNEUMONIA 2/3
    assert pc["COVID19"].precision == pytest.approx(1 / 2)
    assert pc["NORMAL"].precision == pytest.approx(2 / 3)
    assert pc["PNEUMONIA"].recall == pytest.approx(2 / 3)
    f1 = [2 * 0.5 * 0.5 / 1.0, 2 / 3, 2 / 3]
    assert m.macro_f1 == pytest.approx(np.mean(f1))
    # COVID19 vs rest AUC: positives scores {0.9, 0.2}, negatives {0.1,0.1,0.1,0.1,0.2,0.6}
    # pairs won: 0.9 beats 6; 0.2 beats 4, ties 1 (0.5) -> (6 + 4.5) / 12
    assert pc["COVID19"].auc == pytest.approx(10.5 / 12)
    assert pc["NORMAL"].support == 3


def test_ece_by_hand() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    # bin 0.9: accuracy 1, confidence 0.9 -> gap 0.1; bin 0.6: predicted 1, both right -> gap 0.4
    assert expected_calibration_error(y, p) == pytest.approx(0.5 * 0.1 + 0.5 * 0.4)
    assert expected_calibration_error(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]])) == 0.0


def hand_written_ece(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """cxrlab's ECE before it used torchmetrics: equal-width bins, confidence-weighted gaps."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    which = np.clip(
        np.digitize(confidence, np.linspace(0, 1, bins + 1)[1:-1], right=True), 0, bins - 1
    )
    return float(
        sum(
            (which == b).mean() * abs(correct[which == b].mean() - confidence[which == b].mean())
            for b in range(bins)
            if (which == b).any()
        )
    )


@pytest.mark.parametrize("seed", range(5))
def test_ece_from_torchmetrics_equals_the_hand_written_one(seed: int) -> None:
    """The swap to torchmetrics changes no number beyond 1e-6 (torchmetrics works in float32)
    on random films, 3 or 4 classes (its bins differ only for a confidence exactly on an inner
    bin edge)."""
    rng = np.random.default_rng(seed)
    k = 3 + seed % 2
    logits = rng.normal(size=(500, k)) * (1 + seed)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = rng.integers(0, k, 500)
    for bins in (10, 15):
        assert expected_calibration_error(y, probs, bins) == pytest.approx(
            hand_written_ece(y, probs, bins), abs=1e-6
        )


def test_bootstrap_interval_contains_estimate_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(0)

    def width(n: int) -> float:
        y = rng.integers(0, 2, n)
        pred = np.where(rng.random(n) < 0.8, y, 1 - y)
        ci = bootstrap_ci(y, pred, lambda t, p: float((t == p).mean()), n_boot=500)
        assert ci.low <= ci.value <= ci.high
        return ci.high - ci.low

    assert width(2000) < width(100) / 2
    same = [bootstrap_ci(Y, P.argmax(1), recall_of(0), n_boot=200, seed=3) for _ in range(2)]
    assert same[0] == same[1]  # seeded


def test_headline_intervals_names() -> None:
    intervals = headline_intervals(Y, P, CLASSES, n_boot=200)
    assert set(intervals) == {
        "accuracy",
        "macro_f1",
        "recall_COVID19",
        "recall_NORMAL",
        "recall_PNEUMONIA",
    }
    assert intervals["accuracy"].value == pytest.approx(5 / 8)


def test_mcnemar_exact_and_chi2_by_hand() -> None:
    y = np.zeros(40, dtype=int)
    a = np.zeros(40, dtype=int)
    b = np.zeros(40, dtype=int)
    a[:2] = 1  # a wrong on 2 where b right
    b[2:10] = 1  # b wrong on 8 where a right
    result = mcnemar(y, a, b)
    assert (result.only_a_right, result.only_b_right) == (8, 2) and result.exact
    # exact two-sided binomial: 2 * P(X <= 2 | n=10, 0.5) = 2 * 56/1024
    assert result.p_value == pytest.approx(2 * 56 / 1024)
    big_a = np.zeros(200, dtype=int)
    big_b = np.zeros(200, dtype=int)
    big_a[:10] = 1
    big_b[10:40] = 1
    chi = mcnemar(np.zeros(200, dtype=int), big_a, big_b)
    assert not chi.exact and chi.statistic == pytest.approx((abs(30 - 10) - 1) ** 2 / 40)
    assert mcnemar(y, a, a).p_value == 1.0
