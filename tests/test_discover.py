from __future__ import annotations

from pathlib import Path

import pytest
from conftest import requires_real_data, save, smooth_image

from cxrlab.data.discover import discover
from cxrlab.errors import CxrlabError


def make(root: Path, rel: str) -> None:
    save(root / rel, smooth_image(len(rel)))


def test_kaggle_layout_with_data_level(kaggle_tree: Path) -> None:
    index = discover(kaggle_tree)
    assert index.layout == "kaggle"
    assert index.classes == ["A", "B", "C"]
    assert index.splits == ["train", "test"]
    assert index.counts() == {"train": {"A": 4, "B": 4, "C": 4}, "test": {"A": 2, "B": 2, "C": 2}}


def test_split_layout_without_data_level_and_val(tmp_path: Path) -> None:
    for split in ("Train", "valid", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            make(tmp_path, f"{split}/{cls}/x.png")
    index = discover(tmp_path)
    assert index.layout == "splits" and index.splits == ["train", "val", "test"]


def test_imagefolder_layout_is_one_train_split(tmp_path: Path) -> None:
    for cls in ("COVID19", "NORMAL"):
        make(tmp_path, f"{cls}/x.png")
        make(tmp_path, f"{cls}/sub/y.png")  # nested files count
    index = discover(tmp_path)
    assert index.layout == "imagefolder" and index.splits == ["train"]
    assert index.counts()["train"] == {"COVID19": 2, "NORMAL": 2}


def test_natural_sort_and_odd_files_are_listed(tmp_path: Path) -> None:
    for name in ("A(10).png", "A(2).png", "A(1).png"):
        make(tmp_path, f"train/A/{name}")
    make(tmp_path, "train/B/b.png")
    (tmp_path / "train/B/notes.txt").write_text("hi")
    (tmp_path / "train/loose.png").write_bytes(b"x")
    index = discover(tmp_path)
    assert [s.path.name for s in index.split("train")][:3] == ["A(1).png", "A(2).png", "A(10).png"]
    assert any(s.path.name == "notes.txt" for s in index.samples)
    assert [p.name for p in index.ignored] == ["loose.png"]


def test_classes_must_agree_between_splits(tmp_path: Path) -> None:
    for cls in ("A", "B", "C"):
        make(tmp_path, f"train/{cls}/x.png")
    for cls in ("A", "B"):
        make(tmp_path, f"test/{cls}/x.png")
    with pytest.raises(CxrlabError, match="missing in test: C"):
        discover(tmp_path)


def test_empty_class_folder_is_named(tmp_path: Path) -> None:
    make(tmp_path, "train/A/x.png")
    (tmp_path / "train/B").mkdir(parents=True)
    with pytest.raises(CxrlabError, match=r"train/B: class folder is empty"):
        discover(tmp_path)


@pytest.mark.parametrize("kind", ["missing", "file", "one_class"])
def test_bad_roots(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "root"
    if kind == "file":
        root.write_text("x")
    if kind == "one_class":
        make(root, "A/x.png")
    with pytest.raises(CxrlabError, match=str(root.name)):
        discover(root)


@pytest.mark.real_data
def test_real_dataset_layout() -> None:
    root = requires_real_data()
    index = discover(root)
    assert index.classes == ["COVID19", "NORMAL", "PNEUMONIA"]
    assert index.counts()["test"] == {"COVID19": 59, "NORMAL": 309, "PNEUMONIA": 855}
