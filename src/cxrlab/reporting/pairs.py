"""McNemar's test between every pair of runs on the same images, Holm-adjusted over the pairs.

Used for the test split (each run's ``test_predictions.csv``) and for each external set. Images
are matched by path; a pair whose image lists or labels differ is skipped with a note.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from markupsafe import Markup

from cxrlab.evaluation.metrics import McNemarResult, holm, mcnemar
from cxrlab.reporting.render import render
from cxrlab.reporting.tables import MISSING, Cell, Table, csv_number, csv_row, fmt_p

ALPHA = 0.05  # significance level for the Holm-adjusted McNemar p-values
MCNEMAR_FIELDS = (
    "run_a",
    "run_b",
    "n",
    "only_a_right",
    "only_b_right",
    "statistic",
    "exact",
    "p_value",
    "p_holm",
    "note",
)


class Scored(Protocol):
    """What a paired test needs of a run: its label and predictions per image path."""

    label: str
    paths: list[str]
    y_true: np.ndarray

    @property
    def y_pred(self) -> np.ndarray: ...


@dataclass
class PairTest:
    """McNemar's test of two runs on their common images (``result`` None when skipped)."""

    a: Scored
    b: Scored
    n: int = 0
    result: McNemarResult | None = None
    p_holm: float | None = None
    note: str = ""


def pair_test(a: Scored, b: Scored) -> PairTest:
    """McNemar's test of ``a`` against ``b``, images matched by path."""
    if sorted(a.paths) != sorted(b.paths):
        return PairTest(a, b, note="different test image lists: not tested")
    where = {p: i for i, p in enumerate(b.paths)}
    order = np.array([where[p] for p in a.paths], dtype=np.int64)
    if not np.array_equal(a.y_true, b.y_true[order]):
        return PairTest(a, b, note="same images with different labels: not tested")
    return PairTest(a, b, len(a.paths), mcnemar(a.y_true, a.y_pred, b.y_pred[order]))


def pair_tests(runs: Sequence[Scored]) -> list[PairTest]:
    """Every pair of runs, with Holm-adjusted p-values over the pairs that were tested."""
    tests = [pair_test(a, b) for a, b in itertools.combinations(runs, 2)]
    tested = [t for t in tests if t.result is not None]
    for t, p in zip(tested, holm([t.result.p_value for t in tested if t.result is not None])):
        t.p_holm = p
    return tests


def mcnemar_table(tests: Sequence[PairTest]) -> Table:
    """Per pair: both runs, discordant counts, the test used, p and Holm-adjusted p."""
    rows = []
    for t in tests:
        r = t.result
        if r is None:
            dashes = [Cell(MISSING)] * 3
            rows.append([Cell(t.a.label), Cell(t.b.label), *dashes, Cell(t.note), *dashes])
            continue
        differ = t.p_holm is not None and t.p_holm < ALPHA
        rows.append(
            [
                Cell(t.a.label),
                Cell(t.b.label),
                Cell(str(t.n)),
                Cell(str(r.only_a_right)),
                Cell(str(r.only_b_right)),
                Cell("exact binomial" if r.exact else "χ² (continuity corr.)"),
                Cell(fmt_p(r.p_value)),
                Cell(fmt_p(t.p_holm), bold=differ),
                Cell("yes" if differ else "no"),
            ]
        )
    headers = [
        "run A",
        "run B",
        "test images",
        "only A right",
        "only B right",
        "test",
        "p",
        "p (Holm)",
        f"differ at {ALPHA:g} (Holm)",
    ]
    return Table(headers, rows, text=(0, 1, 5, 8))


def mcnemar_rows(tests: Sequence[PairTest]) -> list[dict[str, object]]:
    """One dict per pair of runs: the rows of ``mcnemar.csv`` (numbers empty when skipped)."""
    rows = []
    for t in tests:
        row = csv_row(MCNEMAR_FIELDS, run_a=t.a.label, run_b=t.b.label, note=t.note)
        if t.result is not None:
            r = t.result
            row |= {
                "n": t.n,
                "only_a_right": r.only_a_right,
                "only_b_right": r.only_b_right,
                "statistic": csv_number(r.statistic),
                "exact": r.exact,
                "p_value": csv_number(r.p_value),
                "p_holm": csv_number(t.p_holm),
            }
        rows.append(row)
    return rows


def mcnemar_html(tests: Sequence[PairTest]) -> Markup:
    """The pairwise McNemar table with how to read it, and the pairs that were skipped."""
    skipped = [f"{t.a.label} vs {t.b.label} ({t.note})" for t in tests if t.result is None]
    return render(
        "mcnemar.html",
        tests=tests,
        table=mcnemar_table(tests),
        alpha=f"{ALPHA:g}",
        tested=sum(t.result is not None for t in tests),
        skipped="; ".join(skipped),
    )
