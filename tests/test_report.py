"""Tests for cxrlab.reporting: the HTML report, its figures and tables on tiny real runs."""

from __future__ import annotations

import base64
import csv
import html
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrlab.config import preset
from cxrlab.data.analyze import analyze_dataset
from cxrlab.data.discover import discover
from cxrlab.data.scan import scan_dataset
from cxrlab.data.synthetic import make_demo_dataset
from cxrlab.errors import CxrlabError
from cxrlab.evaluation.metrics import holm
from cxrlab.fileio import markdown_escape
from cxrlab.reporting.report import write_report
from cxrlab.training.run import train_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TABLES = [
    "report.html",
    "results.md",
    "results.csv",
    "mcnemar.csv",
    "robustness.csv",
    "gradcam.csv",
]
FIGURES = ["curves.png", "confusion.png", "roc.png", "bars.png"]
HEADINGS = [
    "Dataset",
    "Comparison on the test split",
    "Headline metrics",
    "Learning curves",
    "Confusion matrices",
    "ROC curves",
    "Paired comparison (McNemar)",
    "Per-class metrics",
    "Robustness",
    "Explainability (Grad-CAM)",
    "Runs",
]
CLASSES = ["COVID19", "NORMAL", "PNEUMONIA"]
COPY_FOLDER = "a&<copy>"  # a run folder whose name needs escaping
TITLE = "Demo <comparison> & co"
COMMAND = "cxrlab report runs/* --title '<x>'"
CI = re.compile(r"\[\d\.\d{3}, \d\.\d{3}\]")
# robustness.json of run "c" as robustness_eval writes it: reference squash, darken worst
ACCURACIES = {"squash": 0.75, "pad": 0.5, "rotate+10": 0.75, "rotate-10": 0.6875, "darken": 0.4375}
ROBUSTNESS = {
    "reference": "squash",
    "image_size": 32,
    "n_images": 16,
    "unreadable": 1,
    "variants": {
        name: {
            "description": f"description of {name}",
            "accuracy": acc,
            "macro_f1": acc - 0.05,
            "recall": {c: acc for c in CLASSES},
            "accuracy_drop": 0.75 - acc,
        }
        for name, acc in ACCURACIES.items()
    },
}
# robustness.json with the shortcut probes (run "copy"); run "c" keeps the older file without them
PROBED = ROBUSTNESS | {
    "variants": ROBUSTNESS["variants"]
    | {
        name: {
            "description": f"description of {name}",
            "accuracy": acc,
            "balanced_accuracy": balanced,
            "macro_f1": balanced,
            "recall": dict.fromkeys(CLASSES, balanced),
            "accuracy_drop": 0.75 - acc,
        }
        # drops past darken's
        for name, acc, balanced in (("lungs-hidden", 0.6, 0.7), ("lungs-only", 0.3, 0.35))
    },
    "chance": {"balanced_accuracy": 1 / 3, "accuracy": 0.5, "majority_class": "PNEUMONIA"},
    "lung_fields": {
        "mode": "squash",
        "segmented": 0.8125,
        "n_segmented": 13,
        "segmented_by_class": {"COVID19": 1.0, "NORMAL": 0.75, "PNEUMONIA": None},
    },
}
GRADCAM = {
    "n_images": 24,
    "target": "predicted class",
    "layer": "network.features.18",
    "lung_share": 0.6125,
    "border_share": 0.0875,
    "other_share": 0.3,
    "lung_area": 0.25,
    "lung_enrichment": 2.45,
    "lung_share_by_class": {"COVID19": 0.5, "NORMAL": 0.65, "PNEUMONIA": 0.7},
    "lung_share_correct": 0.6375,
    "lung_share_wrong": None,
    "segmented": 0.917,
    "n_zero_maps": 0,
}


def add_extras(run_dir: Path) -> None:
    """Robustness and Grad-CAM results, TTA and EMA, as newer runs have them."""
    (run_dir / "robustness.json").write_text(json.dumps(ROBUSTNESS))
    (run_dir / "gradcam.json").write_text(json.dumps(GRADCAM))
    Image.fromarray(np.arange(48 * 64, dtype=np.uint32).reshape(48, 64).astype(np.uint8)).save(
        run_dir / "gradcam.png"
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["test_without_tta"] = metrics["test"] | {"accuracy": 0.123456}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps(config | {"ema_decay": 0.999, "tta": True}))


def section(page: str, anchor: str, next_anchor: str) -> str:
    return page[page.index(f'id="{anchor}"') : page.index(f'id="{next_anchor}"')]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three tiny trained runs, a copy of the first minus one test image, an analysis folder."""
    tmp = tmp_path_factory.mktemp("report")
    data = make_demo_dataset(tmp / "d", train_per_class=8, test_per_class=4, size=64, defects=False)
    configs = {
        "a": preset("frozen", model="resnet18", image_size=32, pretrained=False, epochs=3),
        "b": preset("scratch", model="resnet18", image_size=32, epochs=2),
        "c": preset("frozen", model="mobilenet_v2", image_size=32, pretrained=False, epochs=3),
    }
    dirs = {}
    for name, config in configs.items():
        dirs[name] = tmp / "runs" / name
        train_run(data, config, dirs[name], cache_root=tmp / "c")
    # Same run name as "a", different test image list: the label gets the folder name and
    # McNemar's test skips every pair with it.
    copy = tmp / "runs" / COPY_FOLDER
    shutil.copytree(dirs["a"], copy, ignore=shutil.ignore_patterns("checkpoints", "logs", "*.pt"))
    lines = (copy / "test_predictions.csv").read_text().splitlines(keepends=True)
    (copy / "test_predictions.csv").write_text("".join(lines[:-1]))
    dirs["copy"] = copy
    (copy / "robustness.json").write_text(json.dumps(PROBED))
    add_extras(dirs["c"])
    config_b = json.loads((dirs["b"] / "config.json").read_text())  # newer fields, both off
    (dirs["b"] / "config.json").write_text(json.dumps(config_b | {"ema_decay": 0.0, "tta": False}))
    index = discover(data)
    analyze_dataset(index, scan_dataset(index, workers=1), tmp / "analysis")
    dirs["analysis"] = tmp / "analysis"
    return dirs


@pytest.fixture(scope="module")
def report(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report on all four runs, with the analysis folder; returns its folder."""
    out = tmp_path_factory.mktemp("out")
    dirs = [runs[k] for k in ("a", "b", "c", "copy")]
    path = write_report(dirs, out, title=TITLE, analysis_dir=runs["analysis"], command=COMMAND)
    assert path == out / "report.html"
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def labels(runs: dict[str, Path]) -> list[str]:
    """The labels in report order: "a" and its copy share a run name, so both get their folder's."""
    names = [json.loads((runs[k] / "metrics.json").read_text())["run"] for k in ("a", "b", "c")]
    return [f"{names[0]} [a]", names[1], names[2], f"{names[0]} [{COPY_FOLDER}]"]


def test_every_output_is_written(report: Path) -> None:
    for name in TABLES + FIGURES:
        assert (report / name).is_file(), name
        assert (report / name).stat().st_size > 0, name
    for name in FIGURES:
        assert (report / name).read_bytes().startswith(PNG_MAGIC), name


def test_html_has_every_section_figure_and_run(report: Path, runs: dict[str, Path]) -> None:
    page = (report / "report.html").read_text()
    for heading in HEADINGS:
        assert re.search(rf"<h2>\d+\. {re.escape(heading)}</h2>", page), heading
    for label in labels(runs):
        assert page.count(html.escape(label)) >= 4, label
    # Four comparison figures and five analysis figures, all inline.
    assert page.count('src="data:image/png;base64,') >= 8
    assert not re.search(r"(src|href)=\"(https?:|//|file:)", page)
    assert "<script" not in page.lower()
    assert "Models chosen on validation macro-F1" in page
    assert "cxrlab" in page and "torch" in page
    assert len(CI.findall(page)) >= 4 * (2 + len(CLASSES))  # accuracy, macro-F1, recalls per run
    assert "<strong>" in page  # best values in bold
    for finding in json.loads((runs["analysis"] / "summary.json").read_text())["findings"]:
        assert html.escape(finding) in page


def test_text_is_html_escaped(report: Path) -> None:
    page = (report / "report.html").read_text()
    assert TITLE not in page and "Demo &lt;comparison&gt; &amp; co" in page
    assert "&lt;x&gt;" in page and "'<x>'" not in page
    assert "a&amp;&lt;copy&gt;" in page and COPY_FOLDER not in page


def test_mcnemar_table_and_csv(report: Path, runs: dict[str, Path]) -> None:
    rows = read_csv(report / "mcnemar.csv")
    n = 4
    assert len(rows) == n * (n - 1) // 2
    copy_label = labels(runs)[-1]
    tested = [r for r in rows if copy_label not in (r["run_a"], r["run_b"])]
    skipped = [r for r in rows if copy_label in (r["run_a"], r["run_b"])]
    assert len(tested) == 3 and len(skipped) == 3
    for r in tested:
        p, p_holm = float(r["p_value"]), float(r["p_holm"])
        assert 0.0 <= p <= p_holm <= 1.0
        assert int(r["n"]) == 12 and int(r["only_a_right"]) >= 0 and int(r["only_b_right"]) >= 0
    assert all(r["p_value"] == "" and "different test image" in r["note"] for r in skipped)
    page = (report / "report.html").read_text()
    section = page[page.index('id="mcnemar"') : page.index('id="per-class"')]
    for header in ("only A right", "only B right", "p (Holm)"):
        assert header in section
    assert re.search(r"<td>(\d\.\d{3}|\d\.\de-\d\d)</td>", section)  # p-values
    assert "different test image lists" in section
    markdown = (report / "results.md").read_text()
    assert "McNemar" in markdown and "p (Holm)" in markdown


def test_results_csv_one_row_per_run(report: Path, runs: dict[str, Path]) -> None:
    rows = read_csv(report / "results.csv")
    assert [r["run"] for r in rows] == labels(runs)
    expected = {
        "run",
        "model",
        "mode",
        "balanced_accuracy",
        "macro_auc",
        "ece",
        "ece_uncalibrated",
        "temperature",
        "train_s",
        "parameters",
        "trainable_parameters",
        "inference_img_per_s",
        "best_epoch",
        "epochs_run",
        *(
            f"{key}{suffix}"
            for key in ("accuracy", "macro_f1", *(f"recall_{c}" for c in CLASSES))
            for suffix in ("", "_low", "_high")
        ),
    }
    assert set(rows[0]) == expected
    for r in rows:
        assert float(r["accuracy_low"]) <= float(r["accuracy"]) <= float(r["accuracy_high"])
        assert 1 <= int(r["best_epoch"]) <= int(r["epochs_run"])
        assert int(r["trainable_parameters"]) <= int(r["parameters"])
        assert float(r["train_s"]) > 0 and float(r["inference_img_per_s"]) > 0
    assert [r["mode"] for r in rows] == ["frozen", "finetune", "frozen", "frozen"]


def test_results_markdown_has_the_comparison(report: Path, runs: dict[str, Path]) -> None:
    markdown = (report / "results.md").read_text()
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    headers = (markdown_escape("accuracy [CI]"), markdown_escape("macro-F1 [CI]"))
    assert any(all(header in line for header in headers) for line in table)
    for label in labels(runs):
        assert any(line.startswith(f"| {markdown_escape(label)} |") for line in table), label
    assert re.search(r"\d\.\d{3} \\\[\d\.\d{3}, \d\.\d{3}\\\]", markdown)  # brackets escaped


def test_single_run_without_analysis(runs: dict[str, Path], tmp_path: Path) -> None:
    write_report([runs["b"]], tmp_path)
    page = (tmp_path / "report.html").read_text()
    # bars, curves, confusion, ROC, reliability
    assert page.count('src="data:image/png;base64,') == 5
    assert "No dataset analysis given" in page and "nothing to test" in page
    assert read_csv(tmp_path / "mcnemar.csv") == []
    assert len(read_csv(tmp_path / "results.csv")) == 1


def test_bad_inputs_are_user_errors(runs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(CxrlabError, match="no run folders"):
        write_report([], tmp_path)
    with pytest.raises(CxrlabError, match="twice"):
        write_report([runs["a"], runs["a"]], tmp_path)
    with pytest.raises(CxrlabError, match="metrics.json"):
        write_report([runs["analysis"]], tmp_path)


def test_holm_adjustment() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_robustness_section_and_csv(report: Path, runs: dict[str, Path]) -> None:
    a, _b, c, _copy = labels(runs)
    page = (report / "report.html").read_text()
    part = section(page, "robustness", "gradcam")
    rows = {
        label: part[part.index(f'<td class="text">{html.escape(label)}</td>') :] for label in (a, c)
    }
    row_c = rows[c][: rows[c].index("</tr>")]
    assert "squash 32px" in row_c and "(1 unreadable)" in row_c
    assert '0.750<br><span class="ci">(reference)' in row_c
    assert '0.500<br><span class="ci">(−0.250)' in row_c
    assert '0.750<br><span class="ci">(0.000)' in row_c  # rotate+10: no change, no sign
    assert '0.438<br><span class="ci">(−0.312)' in row_c and "(darken)" in row_c  # worst
    assert "not computed" in rows[a][: rows[a].index("</tr>")]
    for name in ACCURACIES:
        assert f"<th>{html.escape(name)}</th>" in part
        assert html.escape(f"description of {name}") in part
    assert "relying on image format" in part and html.escape(a) in part
    csv_rows = {r["run"]: r for r in read_csv(report / "robustness.csv")}
    assert list(csv_rows) == labels(runs)
    assert csv_rows[c]["computed"] == "True" and csv_rows[c]["reference"] == "squash"
    assert float(csv_rows[c]["pad_accuracy_drop"]) == pytest.approx(0.25)
    assert float(csv_rows[c]["darken_recall_NORMAL"]) == pytest.approx(0.4375)
    assert csv_rows[c]["worst_variant"] == "darken"
    assert float(csv_rows[c]["worst_drop"]) == pytest.approx(0.3125)
    assert csv_rows[a]["computed"] == "False" and csv_rows[a]["pad_accuracy"] == ""
    markdown = (report / "results.md").read_text()
    assert "## Robustness" in markdown
    assert any(
        line.startswith(f"| {markdown_escape(c)} | squash 32px |") and "0.500 (−0.250)" in line
        for line in markdown.splitlines()
    )


def test_robustness_shows_the_shortcut_probes(report: Path, runs: dict[str, Path]) -> None:
    _a, _b, c, copy = labels(runs)
    page = (report / "report.html").read_text()
    part = section(page, "robustness", "gradcam")
    for header in ("lungs hidden (balanced)", "lungs only (balanced)", "lungs found"):
        assert f"<th>{header}</th>" in part
    row = part[part.index(f'<td class="text">{html.escape(copy)}</td>') :]
    row = row[: row.index("</tr>")]
    assert '0.700<br><span class="ci">(chance 0.333)' in row
    assert '0.350<br><span class="ci">(chance 0.333)' in row
    # the segmenter that made the masks: a robustness.json without one is from the heuristic
    assert '81%<br><span class="ci">(COVID19 100%, NORMAL 75%, PNEUMONIA –; heuristic)' in row
    assert '0.312<br><span class="ci">(darken)' in row  # the probes are no format drop
    old = part[part.index(f'<td class="text">{html.escape(c)}</td>') :]
    # an older file: both probes and lungs found are not computed
    assert old[: old.index("</tr>")].count("not computed") == 3
    reading = (
        f"{copy}: lungs hidden: balanced accuracy 0.700 vs chance 0.333: the model reads "
        "something outside the lungs"
    )
    assert html.escape(reading) in part
    assert html.escape(f"{c}: lungs hidden: not computed") in part
    assert html.escape("description of lungs-hidden") in part and "Maguolo" in part
    csv_rows = {r["run"]: r for r in read_csv(report / "robustness.csv")}
    assert float(csv_rows[copy]["lungs-hidden_balanced_accuracy"]) == pytest.approx(0.7)
    assert float(csv_rows[copy]["chance_balanced_accuracy"]) == pytest.approx(1 / 3)
    assert float(csv_rows[copy]["lungs_segmented_NORMAL"]) == pytest.approx(0.75)
    assert csv_rows[copy]["lungs_segmented_PNEUMONIA"] == ""
    assert csv_rows[copy]["worst_variant"] == "darken"
    assert csv_rows[c]["lungs_segmented"] == "" and csv_rows[c]["lungs-only_accuracy"] == ""
    assert "lungs hidden (balanced)" in (report / "results.md").read_text()


def test_gradcam_section_figure_and_csv(report: Path, runs: dict[str, Path]) -> None:
    _a, b, c, _copy = labels(runs)
    page = (report / "report.html").read_text()
    part = section(page, "gradcam", "runs")
    row_c = part[part.index(f'<td class="text">{html.escape(c)}</td>') :]
    row_c = row_c[: row_c.index("</tr>")]
    shown = ("network.features.18", "0.613", "0.087", "0.300", "0.250", "2.45×", "0.637", "0.700")
    for text in (*shown, "92%"):
        assert text in row_c, text
    assert "not computed" in part and "lung segmenter" in part and "lung share" in part
    png = base64.b64encode((runs["c"] / "gradcam.png").read_bytes()).decode("ascii")
    assert f'src="data:image/png;base64,{png}"' in part
    assert part.count("<figure>") == 1 and "network.features.18" in part[part.index("<figure>") :]
    csv_rows = {r["run"]: r for r in read_csv(report / "gradcam.csv")}
    assert list(csv_rows) == labels(runs)
    assert float(csv_rows[c]["lung_enrichment"]) == pytest.approx(2.45)
    assert float(csv_rows[c]["lung_share_PNEUMONIA"]) == pytest.approx(0.7)
    assert csv_rows[c]["lung_share_wrong"] == "" and csv_rows[c]["layer"] == "network.features.18"
    assert csv_rows[b]["computed"] == "False" and csv_rows[b]["lung_share"] == ""
    markdown = (report / "results.md").read_text()
    assert "## Explainability (Grad-CAM)" in markdown and "2.45×" in markdown


def test_runs_section_names_tta_and_ema(report: Path, runs: dict[str, Path]) -> None:
    _a, _b, c, _copy = labels(runs)
    page = (report / "report.html").read_text()
    part = page[page.index('id="runs"') :]
    run_c = part[part.index(f"<h3>{html.escape(c)}</h3>") :]
    run_c = run_c[: run_c.index("</dl>")]
    assert "<dt>TTA</dt><dd>on (test accuracy without TTA: 0.123)</dd>" in run_c
    assert "<dt>EMA of weights</dt><dd>decay 0.999</dd>" in run_c
    assert part.count("TTA</dt>") == 1 and part.count("EMA of weights") == 1  # b has both off


def test_single_run_without_extras(runs: dict[str, Path], tmp_path: Path) -> None:
    write_report([runs["b"]], tmp_path / "out")
    page = (tmp_path / "out" / "report.html").read_text()
    assert section(page, "robustness", "gradcam").lower().count("not computed") >= 2  # row, note
    assert "not computed" in section(page, "gradcam", "runs")
    assert [r["computed"] for r in read_csv(tmp_path / "out" / "robustness.csv")] == ["False"]
    broken = tmp_path / "broken"
    shutil.copytree(runs["b"], broken, ignore=shutil.ignore_patterns("checkpoints", "logs", "*.pt"))
    (broken / "gradcam.json").write_text("{not json")
    with pytest.raises(CxrlabError, match="gradcam.json"):
        write_report([broken], tmp_path / "out2")
