"""Several training sources (``--add-source``): keys and the source column, the per-source test
part, the audit across sources, ``--balance source`` and per-source metrics; on tiny synthetic
sources (two seeds of the demo generator)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cxrlab.cli import run
from cxrlab.data.audit import run_audit
from cxrlab.data.audit_records import AuditConfig, AuditReport
from cxrlab.data.datasets import make_split
from cxrlab.data.discover import discover_sources
from cxrlab.data.split import save_split, source_balance_weights
from cxrlab.errors import CxrlabError
from cxrlab.training.testing import scores_by_source


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The main demo set (seed 0, Kaggle layout) and a second source (seed 1) laid out as plain
    class folders holding NORMAL and PNEUMONIA only, as adult-extra is."""
    from cxrlab.data.synthetic import make_demo_dataset

    base = tmp_path_factory.mktemp("sources")
    main = make_demo_dataset(
        base / "main", train_per_class=8, test_per_class=3, size=48, defects=False
    )
    other = make_demo_dataset(
        base / "gen1", train_per_class=10, test_per_class=1, size=48, seed=1, defects=False
    )
    extra = base / "extra"
    for cls in ("NORMAL", "PNEUMONIA"):
        shutil.copytree(other / "Data" / "train" / cls, extra / cls)
    return main, extra


def test_films_carry_their_source_and_keys_resolve(sources: tuple[Path, Path]) -> None:
    main, extra = sources
    index = discover_sources(main, {"adult": extra})
    assert list(index.source_roots) == ["main", "adult"]
    keys = [index.key(s) for s in index.samples]
    assert len(set(keys)) == len(keys)
    extra_keys = [k for k, s in zip(keys, index.samples) if s.source == "adult"]
    assert len(extra_keys) == 20 and all(k.startswith("adult:") for k in extra_keys)
    assert all(not k.startswith("adult:") for k in keys if k not in extra_keys)
    for key, sample in zip(keys, index.samples):
        assert index.path_of(key) == sample.path
        assert index.source_of(key) == sample.source
    # the added source's classes are the main data's labels
    assert {index.classes[s.label] for s in index.samples if s.source == "adult"} == {
        "NORMAL",
        "PNEUMONIA",
    }
    # one source only: keys as before
    alone = discover_sources(main)
    assert [alone.key(s) for s in alone.samples] == keys[: len(alone.samples)]


def test_added_source_gets_a_test_part_held_out_once(
    sources: tuple[Path, Path], tmp_path: Path
) -> None:
    main, extra = sources
    index = discover_sources(main, {"adult": extra})
    first = make_split(index, seed=0, test_fraction=0.2, test_seed=0)
    second = make_split(index, seed=1, test_fraction=0.2, test_seed=0)
    test_of = lambda subsets, src: sorted(  # noqa: E731
        k for k, _ in subsets["test"] if index.source_of(k) == src
    )
    # the same test films whatever the run's seed; validation changes with it
    assert test_of(first, "adult") == test_of(second, "adult")
    assert first["val"] != second["val"]
    # 20% of each class of the added source (10 per class -> 2 each), none in train or val
    held = test_of(first, "adult")
    assert sorted(c for k, c in first["test"] if k in held) == ["NORMAL"] * 2 + ["PNEUMONIA"] * 2
    trained = {k for k, _ in first["train"] + first["val"]}
    assert not trained & set(held)
    # the main data's own test split stays as it is
    main_test = test_of(first, "main")
    assert main_test == sorted(f"Data/test/{c}/{c}({8 + i}).jpg" for c in
                               ("COVID19", "NORMAL", "PNEUMONIA") for i in range(3))  # fmt: skip
    # another test seed draws another test part
    assert test_of(make_split(index, test_seed=1), "adult") != held
    # split.csv: a source column
    out = tmp_path / "split.csv"
    save_split(out, first, index.source_of)
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["source"] for r in rows} == {"main", "adult"}
    assert all(r["source"] == "adult" for r in rows if r["path"].startswith("adult:"))


def test_unknown_class_folder_is_one_line_before_any_work(
    sources: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main, _ = sources
    odd = tmp_path / "odd"
    for cls in ("NORMAL", "CATS"):
        (odd / cls).mkdir(parents=True)
        (odd / cls / "x.jpg").write_bytes(b"\xff\xd8")
    out = tmp_path / "audit"
    assert run(["audit", str(main), "--add-source", f"pets={odd}", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CATS" in err and "pets" in err
    assert not out.exists()
    assert run(["split", str(main), "--add-source", "nodir", "--out", str(tmp_path / "s.csv")]) == 2
    assert "NAME=DIR" in capsys.readouterr().err
    # two sources under one name, a folder inside the main data
    with pytest.raises(CxrlabError, match="overlaps"):
        discover_sources(main, {"inner": main / "Data" / "train"})


def test_audit_across_sources(sources: tuple[Path, Path], tmp_path: Path) -> None:
    """A single-class source is named; a film in two sources (here: a copy of a main test film
    in the added source) is a leak, found across sources and excluded from training."""
    main, _ = sources
    extra = tmp_path / "teaching"
    shutil.copytree(main.parent / "extra" / "NORMAL", extra / "NORMAL")
    leaked = main / "Data" / "test" / "NORMAL" / "NORMAL(8).jpg"
    shutil.copy(leaked, extra / "NORMAL" / "copy-of-a-test-film.jpg")
    index = discover_sources(main, {"teaching": extra})
    result = run_audit(index, tmp_path / "audit", AuditConfig(workers=1, min_size=16))
    report = AuditReport.load(tmp_path / "audit" / "audit.json")
    assert report.sources is not None
    assert report.sources.single_class == {"teaching": "NORMAL"}
    assert report.sources.single_source == {"COVID19": "main", "PNEUMONIA": "main"}
    assert set(report.sources.sources) == {"main", "teaching"}
    assert report.sources.sources["teaching"].kept["NORMAL"] == 10
    assert report.sources.format_predicts_source is not None
    crossing = [g for g in report.duplicate_groups if g.cross_source]
    assert len(crossing) == 1
    assert crossing[0].members[0] == "Data/test/NORMAL/NORMAL(8).jpg"  # the test copy is kept
    assert crossing[0].sources == ["main", "teaching"]
    status = dict(zip((r.path for r in result.records), result.statuses))
    assert status["teaching:NORMAL/copy-of-a-test-film.jpg"] == "excluded"
    with (tmp_path / "audit" / "manifest.csv").open(newline="") as handle:
        rows = {r["path"]: r for r in csv.DictReader(handle)}
    copy = rows["teaching:NORMAL/copy-of-a-test-film.jpg"]
    assert copy["source"] == "teaching" and "cross_source" in copy["reasons"]
    text = (tmp_path / "audit" / "audit.md").read_text()
    assert "## Sources" in text and "teaching (NORMAL)" in text
    # the manifest's exclusions reach the split
    subsets = make_split(index, manifest=tmp_path / "audit")
    assert all(k != "teaching:NORMAL/copy-of-a-test-film.jpg" for k, _ in subsets["train"])


def test_balance_source_weights_by_hand() -> None:
    """Class 0: source 0 has 3 films, source 1 one; class 1: source 0 has 2. Each class weighs
    1/2, shared by its sources: class 0's films of source 0 get 1/4 / 3, source 1's film 1/4;
    class 1's films 1/2 / 2."""
    labels = np.array([0, 0, 0, 0, 1, 1])
    sources = np.array([0, 0, 0, 1, 0, 0])
    weights = source_balance_weights(labels, sources)
    assert weights == pytest.approx([1 / 12, 1 / 12, 1 / 12, 1 / 4, 1 / 4, 1 / 4])
    assert weights.sum() == pytest.approx(1.0)


def test_per_source_metrics_by_hand() -> None:
    """Source a: labels 0,0,1,1 called 0,1,1,1 (recall 0.5 and 1, balanced 0.75); source b:
    labels 2,2 called 2,0 (recall 0.5, its one class)."""
    classes = ["A", "B", "C"]
    y_true = np.array([0, 0, 1, 1, 2, 2])
    calls = [0, 1, 1, 1, 2, 0]
    probs = np.full((6, 3), 0.1)
    probs[np.arange(6), calls] = 0.8
    scores = scores_by_source(["a", "a", "a", "a", "b", "b"], y_true, probs, classes)
    assert list(scores) == ["a", "b"]
    a, b = scores["a"], scores["b"]
    assert a.n == 4 and a.present == ["A", "B"]
    assert a.balanced_accuracy.value == pytest.approx(0.75)
    assert a.accuracy.value == pytest.approx(0.75)
    assert a.per_class["A"].recall.value == pytest.approx(0.5)
    assert a.per_class["A"].called == {"A": 1, "B": 1, "C": 0}
    assert a.macro_f1 is None  # not every class present
    assert b.present == ["C"] and b.balanced_accuracy.value == pytest.approx(0.5)
    assert b.per_class["C"].called == {"A": 1, "B": 0, "C": 1}
    assert a.balanced_accuracy.low <= 0.75 <= a.balanced_accuracy.high


def test_train_with_an_added_source_end_to_end(
    sources: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """train --add-source --balance source: split.csv's source column, metrics.json per source,
    the model card's sources and single-class warning, the report's per-source section."""
    main, extra = sources
    teaching = tmp_path / "teaching"
    shutil.copytree(extra / "NORMAL", teaching / "NORMAL")
    run_dir = tmp_path / "run"
    args = ["train", str(main), "--add-source", f"teaching={teaching}", "--model", "resnet18",
            "--no-pretrained", "--preset", "smoke", "--image-size", "32", "--epochs", "1",
            "--balance", "source", "--out", str(run_dir), "--cache-dir", str(tmp_path / "c"),
            "--workers", "1", "--no-progress", "--no-diagnose"]  # fmt: skip
    assert run(args) == 0, capsys.readouterr().err
    config = json.loads((run_dir / "config.json").read_text())
    assert config["sources"] == {"teaching": str(teaching)} and config["balance"] == "source"
    with (run_dir / "split.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["source"] for r in rows if r["subset"] == "test"} == {"main", "teaching"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["per_source"]) == {"main", "teaching"}
    assert metrics["per_source"]["teaching"]["present"] == ["NORMAL"]
    assert metrics["per_source"]["teaching"]["n"] == 2
    assert metrics["sources"]["teaching"]["test"]["NORMAL"] == 2
    assert metrics["per_source"]["main"]["n"] == 9
    card = (run_dir / "MODEL_CARD.md").read_text()
    assert "source teaching: NORMAL 10" in card and "only NORMAL" in card
    assert "Every film of the training source teaching is NORMAL" in card
    from cxrlab.reporting.report import write_report

    report = write_report([run_dir], tmp_path / "report")
    assert "Per source" in report.read_text()
    assert "teaching_balanced_accuracy" in (tmp_path / "report" / "results.csv").read_text()
    # a resumed run keeps its sources: another set of sources is refused
    assert run([*args[:3], f"teaching={extra}", *args[4:], "--resume"]) == 2
    assert "sources" in capsys.readouterr().err
