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


def test_markdown_templates_escape_every_value() -> None:
    from cxrlab.reporting.model_card import SingleClassSource
    from cxrlab.reporting.render import render_markdown

    item = SingleClassSource("a_b*", "C|D")
    assert render_markdown("limitation.md", item=item).startswith(
        "Every film of the training source a\\_b\\* is C\\|D: the model can call a film C\\|D"
    )


def _card_records(classes: list[str], level: str, sources: dict[str, str] | None):
    """A RunMetrics and an AuditReport whose shortcut check has ``level``; ``sources``: the
    source check's classes held by one source (None: a training set of one source)."""
    from cxrlab.data.audit_records import (
        AuditConfig,
        AuditReport,
        AuditSummary,
        ShortcutReport,
        SourceCheck,
    )
    from cxrlab.records import RunMetrics

    recall = {c: 0.9 - 0.1 * k for k, c in enumerate(classes)}
    shortcut = ShortcutReport(
        n_train=90, folds=5, majority_rate=0.4, chance_balanced=1 / len(classes),
        cv_accuracy=0.8, cv_balanced_accuracy=0.8, test_accuracy=None,
        test_balanced_accuracy=None, per_class_recall=recall, single_feature={"aspect": 0.7},
        level=level, explanation=[],
    )  # fmt: skip
    check = (
        None
        if sources is None
        else SourceCheck(
            sources={},
            single_class={},
            single_source=sources,
            cramers_v=0.6,
            format_predicts_source=0.9,
            source_chance=0.5,
            format_only=0.8,
            source_and_format=0.9,
            level="high",
            explanation=[],
        )  # fmt: skip
    )
    summary = AuditSummary(
        files=100, status={"ok": 100}, kept_per_split={"train": 100}, unreadable={},
        too_small=0, exact_duplicate_groups=0, exact_duplicate_files=0,
        near_duplicate_groups=0, near_duplicate_files=0, leakage_groups=0, leakage_files=0,
        label_conflict_groups=0, excluded_as_duplicate=0, excluded_as_leakage=0,
        shortcut_level=level,
    )  # fmt: skip
    audit = AuditReport("x", classes, AuditConfig(), summary, shortcut, [], [], check)
    metrics = RunMetrics(
        run="r", description="d", classes=classes, sizes={}, best_epoch=0, epochs_run=1,
        best_val_macro_f1=0.9, parameters=1, trainable_parameters=1, timings={},
        training_processes=1, skipped={}, inference_img_per_s=1.0, inference_device="cpu",
    )  # fmt: skip
    return metrics, audit


def test_the_card_says_of_the_sources_only_what_the_audit_found() -> None:
    from cxrlab.reporting.model_card import limitation_lines

    kaggle = ["COVID19", "NORMAL", "PNEUMONIA"]
    metrics, audit = _card_records(kaggle, "high", {"COVID19": "main", "PNEUMONIA": "main"})
    text = " ".join(limitation_lines(metrics, audit, []))
    assert "the model can score well on its own test split by recognising the source" in text
    assert "the file format alone recalls COVID19 90%, NORMAL 80%, PNEUMONIA 70%" in text
    assert "Every COVID19 and PNEUMONIA film comes from the source main" in text
    # another dataset, one source: the format's recall, no source sentence, nothing of Kaggle
    metrics, audit = _card_records(["cat", "dog"], "moderate", None)
    text = " ".join(limitation_lines(metrics, audit, []))
    assert "recalls cat 90%, dog 80%" in text and "comes from the source" not in text
    for word in ("Kaggle", "child", "adult", "hospital", "COVID19"):
        assert word not in text
    # a low level or no audit: no claim about the sources at all
    for audit in (_card_records(kaggle, "low", None)[1], None):
        text = " ".join(limitation_lines(metrics, audit, []))
        assert "source" not in text and "format" not in text
