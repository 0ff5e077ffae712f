"""Tests for cxrlab.data.analyze: plots and summaries on tiny synthetic datasets."""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from cxrlab.data.analyze import PLOTS, analyze_dataset, summary_table
from cxrlab.data.discover import discover
from cxrlab.data.scan import scan_dataset
from cxrlab.data.summary import DatasetSummary
from cxrlab.errors import CxrlabError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXPECTED_FILES = [*PLOTS.values(), "summary.json", "summary.md"]


def write_image(path: Path, width: int, height: int, level: int, seed: int) -> None:
    """A gradient plus noise, around grey ``level``, saved by extension (PNG or JPEG)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(-40, 40, width)[None, :] + np.linspace(-20, 20, height)[:, None]
    pixels = np.clip(level + ramp + rng.normal(0, 8, (height, width)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def make_dataset(
    root: Path,
    spec: dict[str, dict[str, list[tuple[int, int]]]],
    *,
    kaggle: bool = True,
    levels: dict[str, int] | None = None,
) -> Path:
    """``spec[split][class] = [(w, h), ...]``; a (0, 0) size writes a zero-byte file."""
    seed = 0
    for split, classes in spec.items():
        for cls, sizes in classes.items():
            folder = root / "Data" / split / cls if kaggle else root / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i, (w, h) in enumerate(sizes):
                seed += 1
                if (w, h) == (0, 0):
                    (folder / f"{cls}_broken{i}.jpg").write_bytes(b"")
                    continue
                ext = ".png" if i % 2 == 0 else ".jpg"
                level = (levels or {}).get(cls, 120)
                write_image(folder / f"{cls}({i}){ext}", w, h, level, seed)
    return root


def run_analysis(root: Path, out: Path, **kwargs: object) -> DatasetSummary:
    index = discover(root)
    records = scan_dataset(index, workers=1)
    return analyze_dataset(index, records, out, **kwargs)


def assert_outputs(out: Path) -> None:
    for name in EXPECTED_FILES:
        path = out / name
        assert path.is_file(), f"{name} missing"
        assert path.stat().st_size > 0, f"{name} is empty"
    for name in PLOTS.values():
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, f"{name} is not a PNG"
    json.loads((out / "summary.json").read_text(encoding="utf-8"))
    markdown = (out / "summary.md").read_text(encoding="utf-8")
    assert markdown.startswith("# ")
    for name in PLOTS.values():
        assert f"]({name})" in markdown, f"summary.md does not embed {name}"


SQUARE, WIDE = (40, 40), (50, 30)


@pytest.fixture(scope="module")
def main_case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DatasetSummary]:
    """SQ: all 40x40 PNG/JPEG, darker; WIDE: all 50x30, brighter, one zero-byte file in train."""
    root = tmp_path_factory.mktemp("ds")
    spec = {
        "train": {"SQ": [SQUARE] * 4, "WIDE": [WIDE] * 4 + [(0, 0)]},
        "test": {"SQ": [SQUARE] * 2, "WIDE": [WIDE] * 2},
    }
    make_dataset(root, spec, levels={"SQ": 80, "WIDE": 170})
    out = root / "analysis"
    return out, run_analysis(root, out, samples_per_class=3, seed=1)


def test_writes_every_file(main_case: tuple[Path, DatasetSummary]) -> None:
    out, summary = main_case
    assert_outputs(out)
    saved = (out / "summary.json").read_text()
    json.loads(saved, parse_constant=pytest.fail)  # no NaN: the comparisons below are exact
    assert json.loads(saved) == asdict(summary)


def test_summary_json_is_a_typed_record_read_strictly(
    main_case: tuple[Path, DatasetSummary], tmp_path: Path
) -> None:
    out, summary = main_case
    data = json.loads((out / "summary.json").read_text())
    loaded = DatasetSummary.load(out / "summary.json")
    assert loaded == summary and json.loads(loaded.to_json()) == data
    typo = json.loads(json.dumps(data))
    typo["per_class"]["SQ"]["intensity"]["meen"] = 1.0
    lost = json.loads(json.dumps(data))
    del lost["per_split_class"]["test"]["WIDE"]["median_size"]
    path = tmp_path / "summary.json"
    for broken, message in (
        (typo, "per_class.SQ.intensity.meen: unknown key"),
        (lost, "per_split_class.test.WIDE.median_size: missing key"),
        ({k: v for k, v in data.items() if k != "findings"}, "findings: missing key"),
    ):
        path.write_text(json.dumps(broken))
        with pytest.raises(CxrlabError) as error:
            DatasetSummary.load(path)
        assert str(error.value) == f"{path}: {message}"


def test_counts_and_unreadable(main_case: tuple[Path, DatasetSummary]) -> None:
    _, summary = main_case
    assert summary.dataset.classes == ["SQ", "WIDE"]
    assert summary.dataset.splits == ["train", "test"]
    assert summary.counts == {"train": {"SQ": 4, "WIDE": 5}, "test": {"SQ": 2, "WIDE": 2}}
    assert summary.ok_counts["train"] == {"SQ": 4, "WIDE": 4}
    assert asdict(summary.totals) == {
        "per_split": {"train": 9, "test": 4},
        "per_class": {"SQ": 6, "WIDE": 7},
        "all": 13,
    }
    assert summary.n_files == 13 and summary.n_ok == 12
    assert summary.not_ok.total == 1
    assert summary.not_ok.by_status == {"empty": 1}
    assert summary.shares["train"]["WIDE"] == pytest.approx(5 / 9)
    assert summary.imbalance_ratio["train"] == pytest.approx(5 / 4)
    # The unreadable file is left out of the statistics.
    assert summary.per_class["WIDE"].n_ok == 6
    assert summary.per_class["WIDE"].n_files == 7


def test_size_and_shape_statistics(main_case: tuple[Path, DatasetSummary]) -> None:
    _, summary = main_case
    sq, wide = summary.per_class["SQ"], summary.per_class["WIDE"]
    assert sq.square_share == 1.0
    assert sq.most_common_size.size == "40x40"
    assert sq.most_common_size.share == 1.0
    assert sq.median_aspect == pytest.approx(1.0)
    assert wide.square_share == 0.0
    assert asdict(wide.most_common_size) == {
        "size": "50x30",
        "width": 50,
        "height": 30,
        "count": 6,
        "share": 1.0,
    }
    assert wide.median_aspect == pytest.approx(50 / 30)
    assert asdict(wide.width) == {"median": 50.0, "min": 50, "max": 50}
    assert asdict(wide.height) == {"median": 30.0, "min": 30, "max": 30}
    assert sq.formats == {"PNG": 3, "JPEG": 3}
    assert set(sq.modes) == {"L"}
    assert sq.intensity.mean < wide.intensity.mean
    cell = summary.per_split_class["test"]["WIDE"]
    assert cell.n_files == 2 and cell.median_size == "50x30" and cell.square_share == 0.0


def test_findings_come_from_the_numbers(main_case: tuple[Path, DatasetSummary]) -> None:
    _, summary = main_case
    findings = summary.findings
    assert 2 <= len(findings) <= 4
    text = "\n".join(findings)
    assert "SQ is mostly exactly 40x40 (100%), WIDE almost never (0%)" in text
    assert "1 of 13 files cannot be read (1 empty)" in text
    assert "Brightness differs" in text
    markdown = (main_case[0] / "summary.md").read_text()
    for finding in findings:
        assert f"- {finding}" in markdown


def test_samples_are_seeded_and_capped(
    main_case: tuple[Path, DatasetSummary], tmp_path: Path
) -> None:
    out, summary = main_case
    assert len(summary.samples) == 6  # 3 per class
    index = discover(out.parent)
    records = scan_dataset(index, workers=1)
    again = analyze_dataset(index, records, tmp_path / "again", samples_per_class=3, seed=1)
    assert again.samples == summary.samples
    more = analyze_dataset(index, records, tmp_path / "more", samples_per_class=50, seed=1)
    assert len(more.samples) == 12  # every readable image, no more
    assert all(s["path"].split("/")[-1] != "WIDE_broken4.jpg" for s in more.samples)


def test_summary_table_renders(main_case: tuple[Path, DatasetSummary]) -> None:
    _, summary = main_case
    table = summary_table(summary)
    assert [c.header for c in table.columns] == [
        "split",
        "class",
        "files",
        "share",
        "median WxH",
        "square",
        "mean intensity",
    ]
    assert table.row_count == 4
    buffer = io.StringIO()
    Console(file=buffer, width=120).print(table)
    text = buffer.getvalue()
    assert "40x40" in text and "50x30" in text and "unreadable" in text


def test_class_with_no_readable_images(tmp_path: Path) -> None:
    root = make_dataset(
        tmp_path / "ds",
        {
            "train": {"A": [(32, 32), (32, 40)], "B": [(0, 0), (0, 0)]},
            "test": {"A": [(32, 32)], "B": [(0, 0)]},
        },
    )
    summary = run_analysis(root, tmp_path / "out")
    assert_outputs(tmp_path / "out")
    assert summary.per_class["B"].n_ok == 0
    assert summary.per_class["B"].square_share is None
    assert summary.not_ok.by_status == {"empty": 3}
    assert any("B has no readable image" in f for f in summary.findings)
    summary_table(summary)


def test_nothing_readable(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", {"train": {"A": [(0, 0)], "B": [(0, 0)]}})
    summary = run_analysis(root, tmp_path / "out")
    assert_outputs(tmp_path / "out")
    assert summary.n_ok == 0 and summary.not_ok.total == 2


def test_single_split_single_image_same_size(tmp_path: Path) -> None:
    # ImageFolder layout (one split), one image per class, every image the same size.
    root = make_dataset(
        tmp_path / "ds",
        {"train": {"A": [(36, 36)], "B": [(36, 36)], "C": [(36, 36)]}},
        kaggle=False,
    )
    summary = run_analysis(root, tmp_path / "out", samples_per_class=2)
    assert_outputs(tmp_path / "out")
    assert summary.dataset.layout == "imagefolder"
    assert summary.dataset.splits == ["train"]
    assert summary.counts == {"train": {"A": 1, "B": 1, "C": 1}}
    assert summary.imbalance_ratio["train"] == 1.0
    assert any("All 3 readable images are 36x36" in f for f in summary.findings)
    assert any("balanced" in f for f in summary.findings)


def test_missing_class_in_a_split_and_zero_samples(tmp_path: Path) -> None:
    # Class B exists in train only through an unreadable file; samples_per_class=0 still plots.
    root = make_dataset(
        tmp_path / "ds",
        {
            "train": {"A": [(20, 30)] * 3, "B": [(0, 0)]},
            "test": {"A": [(20, 30)], "B": [(30, 20)]},
        },
    )
    summary = run_analysis(root, tmp_path / "out", samples_per_class=0)
    assert_outputs(tmp_path / "out")
    assert summary.samples == []
    assert summary.ok_counts["train"]["B"] == 0
