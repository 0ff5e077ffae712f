"""Tests for the report's building blocks: the table model, number formats, the templates'
escaping, and that reporting reads run folders without the training code."""

from __future__ import annotations

import math
import os
from pathlib import Path

from conftest import modules_loaded_by
from PIL import Image

from cxrlab.reporting.render import Figure, render
from cxrlab.reporting.tables import (
    MISSING,
    Cell,
    Table,
    csv_number,
    fmt,
    fmt_change,
    fmt_percent,
    number,
)

ODD = os.fsdecode(b"run-\xe9")  # an undecodable file-name byte, as a run folder may carry


def table() -> Table:
    rows = [
        [Cell("a<b>&'c"), Cell("0.951", "[0.938, 0.962]", bold=True), Cell("0.5")],
        [Cell(ODD), Cell(MISSING), Cell("0.25", "(x|y)")],
    ]
    return Table(["run", "accuracy [CI]", "ECE"], rows)


def test_table_html_is_escaped_and_laid_out() -> None:
    assert table().html() == (
        '<div class="scroll"><table>\n'
        "<thead><tr><th>run</th><th>accuracy [CI]</th><th>ECE</th></tr></thead>\n"
        "<tbody>\n"
        '<tr><td class="text">a&lt;b&gt;&amp;&#x27;c</td>'
        '<td><strong>0.951<br><span class="ci">[0.938, 0.962]</span></strong></td>'
        "<td>0.5</td></tr>\n"
        '<tr><td class="text">run-\\xe9</td><td>–</td>'
        '<td>0.25<br><span class="ci">(x|y)</span></td></tr>\n'
        "</tbody></table></div>"
    )


def test_table_markdown_is_escaped_and_aligned() -> None:
    assert table().markdown() == (
        "| run | accuracy \\[CI\\] | ECE |\n"
        "| :--- | ---: | ---: |\n"
        "| a&lt;b&gt;&amp;'c | **0.951 \\[0.938, 0.962\\]** | 0.5 |\n"
        "| run-\\\\xe9 | – | 0.25 (x\\|y) |"
    )


def test_bold_best_marks_ties_and_skips_equal_columns() -> None:
    t = Table(["run", "a", "b"], [[Cell("x"), Cell("1"), Cell("2")] for _ in range(3)])
    t.bold_best(1, [0.5, 0.9, 0.9], higher_is_better=True)
    t.bold_best(2, [0.3, 0.3, math.nan], higher_is_better=False)  # all finite values equal
    assert [row[1].bold for row in t.rows] == [False, True, True]
    assert [row[2].bold for row in t.rows] == [False, False, False]
    single = Table(["run", "a"], [[Cell("x"), Cell("1")]])
    single.bold_best(1, [0.7], higher_is_better=True)
    assert not single.rows[0][1].bold


def test_missing_numbers_are_one_thing() -> None:
    for missing in (None, math.nan):
        assert math.isnan(number(missing))
        assert fmt(missing) == fmt_change(missing) == fmt_percent(missing) == MISSING
        assert csv_number(missing) == ""
    assert (fmt(0.95123), fmt(3.14159, 1), csv_number(1 / 3)) == ("0.951", "3.1", "0.333333")
    changes = (fmt_change(-0.015), fmt_change(0.0004), fmt_percent(0.8125))
    assert changes == ("−0.015", "0.000", "81%")


def test_figure_is_inline_with_an_escaped_caption(tmp_path: Path) -> None:
    Image.new("L", (4, 3)).save(tmp_path / "f.png")
    html = Figure(tmp_path / "f.png", 'a "b" <c>').html()
    alt = 'alt="a &quot;b&quot; &lt;c&gt;"'
    assert html.startswith(f'<figure><img {alt} src="data:image/png;base64,')
    assert html.endswith("<figcaption>a &quot;b&quot; &lt;c&gt;</figcaption></figure>")


def test_templates_escape_every_value() -> None:
    page = render("mcnemar.html", tests=[], table=table(), alpha="0.05", tested=0, skipped="")
    assert page == "<p>One run only: nothing to test.</p>"
    notes = render("runs.html", recipes={ODD: {"folder": "<x>"}})
    assert notes == '<h3>run-\\xe9</h3><dl class="meta"><dt>folder</dt><dd>&lt;x&gt;</dd></dl>'


def test_reporting_imports_no_training_code() -> None:
    """Rendering a report or a model card loads neither Lightning nor cxrlab.training."""
    found = modules_loaded_by("cxrlab.reporting.report", "cxrlab.reporting.model_card")
    assert "cxrlab.reporting.report" in found
    forbidden = ("lightning", "pytorch_lightning", "cxrlab.training")
    assert [name for name in found if name.startswith(forbidden)] == []
