"""The report's one table model and number formats.

A :class:`Table` (headers and rows of :class:`Cell`) is built once and rendered to HTML (the
``table.html`` template) or Markdown. The CSV files hold raw numbers instead, one dict per row
(:func:`csv_number`, :func:`write_csv`). Every number read from a run's files goes through
:func:`number` first: a missing value is NaN, shown as a dash in a table and left empty in a CSV.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import SupportsFloat, SupportsInt

import numpy as np
from markupsafe import Markup

from cxrlab.fileio import atomic_open, csv_dict_writer, markdown_escape, markdown_table
from cxrlab.records import Interval
from cxrlab.reporting.render import render

MISSING = "–"
NOT_COMPUTED = "not computed"  # a run without robustness or Grad-CAM results


def number(value: SupportsFloat | None) -> float:
    """``value`` as a float; NaN when missing (None)."""
    return float(value) if value is not None else math.nan


def fmt(value: SupportsFloat | None, digits: int = 3) -> str:
    """A number with ``digits`` decimals; a dash when missing or NaN."""
    if value is None or not math.isfinite(float(value)):
        return MISSING
    return f"{float(value):.{digits}f}"


def fmt_p(p: float | None) -> str:
    """A p-value: three decimals, scientific notation below 0.001."""
    if p is None or not math.isfinite(p):
        return MISSING
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def fmt_count(n: SupportsInt | None) -> str:
    """A parameter count, three significant digits: ``11.2 M``, ``3.84 k``, ``512``."""
    if n is None:
        return MISSING
    n = int(n)
    return f"{n / 1e6:.3g} M" if n >= 1e6 else f"{n / 1e3:.3g} k" if n >= 1e3 else str(n)


def fmt_change(value: SupportsFloat | None) -> str:
    """A signed change with a true minus sign: ``+0.012``, ``−0.015``, ``0.000``; a dash when
    missing."""
    change = number(value)
    if not math.isfinite(change):
        return MISSING
    if round(change, 3) == 0:
        return "0.000"
    return f"{change:+.3f}".replace("-", "−")


def fmt_percent(value: SupportsFloat | None) -> str:
    """A share as a whole percentage: ``81%``; a dash when missing."""
    share = number(value)
    return f"{100 * share:.0f}%" if math.isfinite(share) else MISSING


def csv_number(value: SupportsFloat | None) -> str:
    """Six significant digits; empty when missing or NaN."""
    found = number(value)
    return f"{found:.6g}" if math.isfinite(found) else ""


def interval_fields(key: str, interval: Interval) -> dict[str, str]:
    """The CSV columns ``key``, ``key_low`` and ``key_high`` of a bootstrap interval."""
    return {
        key: csv_number(interval.value),
        f"{key}_low": csv_number(interval.low),
        f"{key}_high": csv_number(interval.high),
    }


@dataclass
class Cell:
    """A table cell: text, an optional bracketed note (a CI, a detail) shown smaller, bold."""

    text: str
    note: str = ""
    bold: bool = False

    @property
    def plain(self) -> str:
        """Text and note on one line, e.g. ``0.951 [0.938, 0.962]``."""
        return f"{self.text} {self.note}".strip()


def interval_cell(interval: Interval | None) -> Cell:
    """The value with its 95% CI as the note: ``0.951 [0.938, 0.962]``; a dash when None."""
    if interval is None:
        return Cell(MISSING)
    return Cell(fmt(interval.value), f"[{fmt(interval.low)}, {fmt(interval.high)}]")


def best(values: Sequence[float], higher_is_better: bool) -> np.ndarray:
    """Which values are the best (ties included); none when all finite values are equal."""
    array = np.asarray(values, dtype=np.float64)
    finite = array[np.isfinite(array)]
    if finite.size == 0 or np.allclose(finite, finite[0], rtol=1e-9, atol=1e-12):
        return np.zeros(array.shape, dtype=bool)
    top = finite.max() if higher_is_better else finite.min()
    return np.isfinite(values) & np.isclose(values, top, rtol=1e-9, atol=1e-12)


@dataclass
class Table:
    """Headers and rows of cells, rendered to HTML or Markdown; ``text`` columns align left."""

    headers: list[str]
    rows: list[list[Cell]]
    text: tuple[int, ...] = (0,)

    def bold_best(self, column: int, values: Sequence[float], higher_is_better: bool) -> None:
        """Bold the best of ``values`` (one per row) in ``column``; nothing when all are equal
        (a single row included)."""
        for row, is_best in zip(self.rows, best(values, higher_is_better)):
            row[column].bold = bool(is_best)

    def html(self) -> Markup:
        return render("table.html", table=self)

    def markdown(self) -> str:
        def cell(c: Cell) -> str:
            text = markdown_escape(c.plain)
            return f"**{text}**" if c.bold else text

        align = [":---" if j in self.text else "---:" for j in range(len(self.headers))]
        head = [markdown_escape(h) for h in self.headers]
        rows = ([cell(c) for c in row] for row in self.rows)
        return "\n".join(markdown_table(head, rows, align=align))


def csv_row(fields: Sequence[str], **values: object) -> dict[str, object]:
    """A CSV row with every column in ``fields``: empty unless given in ``values``."""
    return dict.fromkeys(fields, "") | values


def write_csv(path: Path, fields: Sequence[str], rows: Sequence[dict[str, object]]) -> Path:
    """Write dict rows with the columns ``fields`` to ``path`` (atomically)."""
    with atomic_open(path, newline="") as handle:
        writer = csv_dict_writer(handle, list(fields), restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path
