"""Awkward file and class names: undecodable bytes (PEP 383) and names that look like tags.

Data files (CSV) must keep a name's original bytes, so that paths round-trip; what people read
(Markdown, HTML, the terminal) must show it visibly and inertly.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import save, smooth_image

from cxrlab.cli import run
from cxrlab.data.audit import read_manifest
from cxrlab.data.split import load_split
from cxrlab.evaluation.predictions_csv import read_predictions
from cxrlab.fileio import display_name, markdown_escape, open_text
from cxrlab.reporting.report import write_report

CAFE = os.fsdecode(b"caf\xe9.png")  # 'caf\udce9.png': the byte 0xE9 alone is not UTF-8
SHOWN = "caf\\xe9.png"  # how people see it
TAG = "<img src=x onerror=alert(2)>.png"
TAG_CLASS = "<b>|B"


def train_args(data: Path, run_dir: Path, tmp_path: Path, *extra: str) -> list[str]:
    """``cxrlab train`` for a run of seconds."""
    return [
        "train", str(data), "--preset", "smoke", "--no-pretrained", "--image-size", "32",
        "--epochs", "1", "--val-fraction", "0.3", "--no-progress",
        "--cache-dir", str(tmp_path / "cache"), "--out", str(run_dir), *extra,
    ]  # fmt: skip


def test_display_name_and_markdown_escape() -> None:
    assert display_name(CAFE) == SHOWN and display_name("Zoë.png") == "Zoë.png"
    assert markdown_escape("a|b*c_d`e[f]g\\h~") == "a\\|b\\*c\\_d\\`e\\[f\\]g\\\\h\\~"
    assert markdown_escape(TAG) == "&lt;img src=x onerror=alert(2)&gt;.png"
    assert markdown_escape(CAFE) == "caf\\\\xe9.png"  # renders as caf\xe9.png
    assert markdown_escape("two\nlines") == "two lines"  # a table cell stays one cell


def test_undecodable_file_name_audit_train_predict(
    kaggle_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    test_a = kaggle_tree / "Data" / "test" / "A"
    odd = save(test_a / CAFE, smooth_image(100))
    shutil.copy(odd, kaggle_tree / "Data" / "train" / "A" / ("copie-" + CAFE))  # a leak: excluded
    relative_odd, relative_leak = "Data/test/A/" + CAFE, "Data/train/A/copie-" + CAFE

    audit_dir = tmp_path / "audit"
    assert run(["audit", str(kaggle_tree), "--out", str(audit_dir), "--no-progress"]) == 0
    assert "copie-" + SHOWN in capsys.readouterr().out.replace("\n", "")  # the leakage panel
    assert os.fsencode(relative_leak) in (audit_dir / "manifest.csv").read_bytes()  # original bytes
    statuses = read_manifest(audit_dir)
    assert statuses[relative_leak] == "excluded" and statuses[relative_odd] == "ok"
    groups = json.loads((audit_dir / "audit.json").read_text())["duplicate_groups"]
    assert groups[0]["members"] == [relative_odd, relative_leak]
    audit_md = (audit_dir / "audit.md").read_text(encoding="utf-8")  # valid UTF-8: bytes shown
    assert markdown_escape(relative_leak) in audit_md

    run_dir = tmp_path / os.fsdecode(b"run-\xe9")  # an undecodable run folder too
    assert run(train_args(kaggle_tree, run_dir, tmp_path, "--manifest", str(audit_dir))) == 0
    assert "run-\\xe9" in capsys.readouterr().out.replace("\n", "")
    subsets = load_split(run_dir / "split.csv")
    assert (relative_odd, "A") in subsets["test"]
    assert relative_leak not in {path for items in subsets.values() for path, _ in items}
    assert os.fsencode(relative_odd) in (run_dir / "test_predictions.csv").read_bytes()
    assert relative_odd in read_predictions(run_dir / "test_predictions.csv", ["A", "B", "C"])[0]
    assert json.loads((run_dir / "metrics.json").read_text())["test"]["n"] == 7
    assert (run_dir / "robustness.json").is_file() and (run_dir / "gradcam.json").is_file()
    assert "run-\\xe9" in write_report([run_dir], tmp_path / "report").read_text(encoding="utf-8")

    (test_a / os.fsdecode(b"bad\xff.png")).write_bytes(b"not an image")
    predictions = tmp_path / "p.csv"
    model = str(run_dir / "model.pt")
    assert run(["predict", model, str(test_a), "--out", str(predictions), "--no-progress"]) == 0
    assert "bad\\xff.png" in capsys.readouterr().err.replace("\n", "")  # skipped, named visibly
    assert os.fsencode(odd) in predictions.read_bytes()
    with open_text(predictions) as handle:
        assert str(odd) in [row["path"] for row in csv.DictReader(handle)]


def test_names_are_escaped_in_markdown_and_html(kaggle_tree: Path, tmp_path: Path) -> None:
    data = kaggle_tree / "Data"
    for split in ("train", "test"):
        (data / split / "B").rename(data / split / TAG_CLASS)
    shutil.copy(data / "test" / "A" / "A(0).png", data / "train" / "A" / TAG)  # a leaked copy
    (data / "test" / "C" / TAG).write_bytes(b"")  # an unreadable file
    common = ["--no-progress", "--workers", "1"]
    assert run(["audit", str(kaggle_tree), "--out", str(tmp_path / "audit"), *common]) == 0
    assert run(["analyze", str(kaggle_tree), "--out", str(tmp_path / "analysis"), *common]) == 0
    assert run(train_args(kaggle_tree, tmp_path / "run", tmp_path, "--no-diagnose")) == 0
    write_report([tmp_path / "run"], tmp_path / "report", analysis_dir=tmp_path / "analysis")

    outputs = [p for p in tmp_path.rglob("*") if p.suffix in (".md", ".html")]
    texts = {p.name: p.read_text(encoding="utf-8") for p in outputs}
    assert set(texts) == {"audit.md", "summary.md", "results.md", "report.html", "MODEL_CARD.md"}
    for name, text in texts.items():
        assert "<img src=x" not in text and "<b>" not in text, name
    assert markdown_escape("Data/train/A/" + TAG) in texts["audit.md"]
    for name in ("audit.md", "summary.md"):
        assert markdown_escape("Data/test/C/" + TAG) in texts[name], name
    assert markdown_escape(TAG_CLASS) == "&lt;b&gt;\\|B"
    for name in ("summary.md", "results.md", "MODEL_CARD.md"):
        assert markdown_escape(TAG_CLASS) in texts[name], name
    assert "&lt;b&gt;|B" in texts["report.html"]
