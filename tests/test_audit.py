from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import save, smooth_image
from PIL import Image

from cxrlab.data.audit import AuditConfig, audit_records, markdown_report, read_manifest, run_audit
from cxrlab.data.audit_records import AuditReport
from cxrlab.data.discover import discover
from cxrlab.data.duplicates import near_pairs
from cxrlab.data.scan import scan_dataset
from cxrlab.data.synthetic import synth_cxr
from cxrlab.errors import CxrlabError


def reencoded_resized(pixels: np.ndarray, scale: float, quality: int = 70) -> np.ndarray:
    """A copy as a careless user would make it: resized, then JPEG re-encoded."""
    height, width = pixels.shape
    small = Image.fromarray(pixels).resize(
        (int(width * scale), int(height * scale)), Image.Resampling.LANCZOS
    )
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("L"))


def audit_tree(root: Path, **config: object):
    index = discover(root)
    records = scan_dataset(index, workers=1)
    return audit_records(index, records, AuditConfig(folds=2, **config))


def status_of(result, name: str) -> tuple[str, str]:
    for record, status, reasons in zip(result.records, result.statuses, result.reasons):
        if record.path.endswith(name):
            return status, " | ".join(reasons)
    raise KeyError(name)


@pytest.fixture
def messy_tree(kaggle_tree: Path) -> Path:
    train, test = kaggle_tree / "Data/train", kaggle_tree / "Data/test"
    (train / "A/empty.jpg").write_bytes(b"")
    (train / "A/notes.txt").write_text("not an image")
    good = (train / "B/B(0).png").read_bytes()
    (train / "B/cut.png").write_bytes(good[: len(good) // 3])
    save(train / "C/tiny.png", smooth_image(500, (20, 20)))
    source = np.asarray(Image.open(train / "A/A(1).png"))
    save(train / "A/copy_A(1).bmp", source)  # exact copy, other format
    test_image = np.asarray(Image.open(test / "B/B(0).png"))
    save(train / "B/leak.jpg", reencoded_resized(test_image, 0.6))  # near copy of a test image
    save(
        train / "C/conflict.png", np.asarray(Image.open(train / "A/A(2).png"))
    )  # same image, other label
    return kaggle_tree


def test_each_problem_is_found_and_explained(messy_tree: Path) -> None:
    result = audit_tree(messy_tree, min_size=32)
    expectations = {
        "empty.jpg": "unreadable: empty",
        "notes.txt": "unreadable: not_image",
        "cut.png": "unreadable: truncated",
        "tiny.png": "too_small",
        "copy_A(1).bmp": "duplicate: copy of Data/train/A/A(1).png",
        "leak.jpg": "leakage: copy of test file Data/test/B/B(0).png",
        "conflict.png": "label_conflict",
        "A(2).png": "label_conflict",
    }
    for name, reason in expectations.items():
        status, reasons = status_of(result, name)
        assert status == "excluded", name
        assert reason in reasons, (name, reasons)
    assert status_of(result, "A(1).png")[0] == "ok"  # the first copy is kept
    assert status_of(result, "Data/test/B/B(0).png")[0] == "ok"  # test copies stay
    summary = result.summary
    assert summary.leakage_groups == 1 and summary.label_conflict_groups == 1
    assert summary.unreadable == {"empty": 1, "not_image": 1, "truncated": 1}
    assert summary.status["ok"] == 18 - 1  # of the 18 originals only A(2) (label conflict) goes


def test_clean_distinct_images_are_not_flagged(kaggle_tree: Path) -> None:
    result = audit_tree(kaggle_tree)
    assert result.groups == [] and set(result.statuses) == {"ok"}


def test_near_duplicates_found_and_similar_films_not_flagged() -> None:
    """Re-encoded and resized copies are found; 60 different synthetic films of one class are
    not."""
    from cxrlab.data.scan import ImageRecord, pixel_hash, thumbnail

    def record(pixels: np.ndarray, name: str) -> ImageRecord:
        return ImageRecord(
            path=name, split="train", label=0, file_size=1,
            width=pixels.shape[1], height=pixels.shape[0],
            pixel_hash=pixel_hash(pixels), thumbs={s: thumbnail(pixels, s) for s in (16, 64)},
        )  # fmt: skip

    rng = np.random.default_rng(0)
    films = [synth_cxr(rng, "NORMAL", 160) for _ in range(60)]
    records = [record(f, f"film{i}") for i, f in enumerate(films)]
    assert near_pairs(records) == []  # look-alike films of different "patients"
    copies = [
        record(reencoded_resized(films[i], s), f"copy{i}")
        for i, s in ((0, 0.5), (1, 0.8), (2, 1.3))
    ]
    squashed = Image.fromarray(films[3]).resize((120, 120), Image.Resampling.BILINEAR)
    copies.append(record(np.asarray(squashed), "squashed3"))
    pairs = near_pairs(records + copies)
    found = {(records + copies)[p.second].path: (records + copies)[p.first].path for p in pairs}
    assert found == {"copy0": "film0", "copy1": "film1", "copy2": "film2", "squashed3": "film3"}


def test_manifest_and_report_files(messy_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "audit"
    before = sorted(p.name for p in messy_tree.rglob("*"))
    run_audit(discover(messy_tree), out, AuditConfig(folds=2, workers=1))
    assert sorted(p.name for p in messy_tree.rglob("*")) == before  # nothing touched
    for name in ("manifest.csv", "audit.json", "audit.md", "duplicates.png", "shortcuts.png"):
        assert (out / name).stat().st_size > 0
    statuses = read_manifest(out)
    assert (
        statuses["Data/train/B/leak.jpg"] == "excluded"
        and statuses["Data/train/A/A(0).png"] == "ok"
    )
    with open(out / "manifest.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(discover(messy_tree).samples)
    assert "leakage" in (out / "audit.md").read_text().lower()


def test_missing_manifest_is_named(tmp_path: Path) -> None:
    with pytest.raises(CxrlabError, match="manifest not found"):
        read_manifest(tmp_path)


def test_audit_json_is_a_typed_record_read_strictly(messy_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "audit"
    result = run_audit(discover(messy_tree), out, AuditConfig(folds=2, workers=1))
    path = out / "audit.json"
    data = json.loads(path.read_text())
    loaded = AuditReport.load(path)
    assert loaded == result.report() and loaded.to_json() == path.read_text()  # byte for byte
    assert markdown_report(loaded) == (out / "audit.md").read_text()  # audit.md: from audit.json
    assert loaded.summary.leakage_groups == 1 and loaded.shortcut is not None
    assert {p.path for p in loaded.problems} >= {"Data/train/B/leak.jpg", "Data/train/A/empty.jpg"}
    typo = json.loads(json.dumps(data))
    typo["duplicate_groups"][0]["note"] = "x"
    lost = json.loads(json.dumps(data))
    del lost["shortcut"]["level"]
    broken_path = tmp_path / "audit.json"
    for broken, message in (
        (typo, "duplicate_groups.0.note: unknown key"),
        (lost, "shortcut.level: missing key"),
        (data | {"summary": data["summary"] | {"leakage": 1}}, "summary.leakage: unknown key"),
        ({k: v for k, v in data.items() if k != "problems"}, "problems: missing key"),
    ):
        broken_path.write_text(json.dumps(broken))
        with pytest.raises(CxrlabError) as error:
            AuditReport.load(broken_path)
        assert str(error.value) == f"{broken_path}: {message}"


def test_model_card_reads_the_audit_beside_the_manifest(messy_tree: Path, tmp_path: Path) -> None:
    from cxrlab.config import RunConfig
    from cxrlab.reporting.model_card import _audit_of

    out = tmp_path / "audit"
    run_audit(discover(messy_tree), out, AuditConfig(folds=2, workers=1))
    for manifest in (out, out / "manifest.csv"):
        assert _audit_of(RunConfig(manifest=str(manifest))) == AuditReport.load(out / "audit.json")
    assert _audit_of(RunConfig(manifest=None)) is None
    assert _audit_of(RunConfig(manifest=str(tmp_path / "elsewhere" / "manifest.csv"))) is None
    (out / "audit.json").write_text('{"root": "x"}')
    with pytest.raises(CxrlabError, match=r"audit\.json: classes: missing key"):
        _audit_of(RunConfig(manifest=str(out)))
