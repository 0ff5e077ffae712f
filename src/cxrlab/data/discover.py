"""Find the splits, classes and files of a dataset folder.

Layouts understood (class names always come from folder names):

* Kaggle: ``ROOT/Data/train/<CLASS>/``, ``ROOT/Data/test/<CLASS>/`` (``Data/`` optional),
  with an optional ``val/`` (also ``valid``/``validation``) beside them;
* ImageFolder: ``ROOT/<CLASS>/`` — one split, called ``train``.

Every regular file below a class folder is listed, image or not, so that the audit can
report odd files; hidden files (``.DS_Store``) are listed too. Files lying loose in a
split folder, outside any class, are kept in ``ignored``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from cxrlab.errors import CxrlabError

SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
SPLIT_ORDER = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    """One file of the dataset: where it is, which split, which class (index into classes)."""

    path: Path
    split: str
    label: int


@dataclass
class DatasetIndex:
    """The discovered dataset: its root, layout, class names and files."""

    root: Path
    layout: str
    classes: list[str]
    samples: list[Sample]
    ignored: list[Path] = field(default_factory=list)

    @property
    def splits(self) -> list[str]:
        present = {sample.split for sample in self.samples}
        return [name for name in SPLIT_ORDER if name in present]

    def split(self, name: str) -> list[Sample]:
        return [sample for sample in self.samples if sample.split == name]

    def require(self, name: str) -> list[Sample]:
        samples = self.split(name)
        if not samples:
            raise CxrlabError(
                f"{self.root}: no '{name}' split found (have: {', '.join(self.splits)})"
            )
        return samples

    def relative(self, path: Path) -> str:
        """A path relative to the dataset root, with forward slashes (stable across machines)."""
        return path.relative_to(self.root).as_posix()

    def counts(self) -> dict[str, dict[str, int]]:
        """``{split: {class: n_files}}``."""
        table = {name: {cls: 0 for cls in self.classes} for name in self.splits}
        for sample in self.samples:
            table[sample.split][self.classes[sample.label]] += 1
        return table


def natural_key(text: str) -> list[object]:
    """Sort 'NORMAL(2).jpg' before 'NORMAL(10).jpg'."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def _subdirs(folder: Path) -> list[Path]:
    return sorted(
        (child for child in folder.iterdir() if child.is_dir() and not child.name.startswith(".")),
        key=lambda child: natural_key(child.name),
    )


def _files_below(folder: Path) -> list[Path]:
    """Every file below ``folder``, and every symbolic link (not followed into folders): a
    dangling or looping link, or one to a folder, then fails to read and is listed as skipped
    with the reason, never dropped silently; a link to a file is read wherever it leads."""
    files = [path for path in folder.rglob("*") if path.is_file() or path.is_symlink()]
    return sorted(files, key=lambda path: natural_key(path.relative_to(folder).as_posix()))


def _split_folders(base: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for child in _subdirs(base):
        split = SPLIT_ALIASES.get(child.name.lower())
        if split is None:
            continue
        if split in found:
            raise CxrlabError(
                f"{base}: two folders for the '{split}' split: {found[split].name}, {child.name}"
            )
        found[split] = child
    return found


def _classes_of(split_dir: Path) -> list[Path]:
    class_dirs = _subdirs(split_dir)
    if not class_dirs:
        raise CxrlabError(f"{split_dir}: no class folders inside (expected {split_dir}/<CLASS>/)")
    return class_dirs


def discover(root: str | Path, *, min_classes: int = 2) -> DatasetIndex:
    """Index a dataset folder; raise a one-line :class:`CxrlabError` on any layout problem.

    ``min_classes``: training needs two classes; a set to evaluate on may hold one."""
    root = Path(root).expanduser()
    if not root.exists():
        raise CxrlabError(f"{root}: dataset folder does not exist")
    if not root.is_dir():
        raise CxrlabError(f"{root}: not a folder")
    root = root.resolve()
    base = root
    data_dir = next((d for d in _subdirs(root) if d.name.lower() == "data"), None)
    if data_dir is not None and _split_folders(data_dir):
        base = data_dir
    split_dirs = _split_folders(base)
    if split_dirs:
        layout = "kaggle" if base != root else "splits"
    else:
        layout, split_dirs = "imagefolder", {"train": base}

    classes: list[str] | None = None
    reference = ""
    samples: list[Sample] = []
    ignored: list[Path] = []
    for split in SPLIT_ORDER:
        if split not in split_dirs:
            continue
        split_dir = split_dirs[split]
        class_dirs = _classes_of(split_dir)
        names = [d.name for d in class_dirs]
        if classes is None:
            classes, reference = names, split
        elif names != classes:
            missing = sorted(set(classes) - set(names))
            extra = sorted(set(names) - set(classes))
            detail = "; ".join(
                part
                for part in (
                    f"missing in {split}: {', '.join(missing)}" if missing else "",
                    f"only in {split}: {', '.join(extra)}" if extra else "",
                )
                if part
            )
            raise CxrlabError(
                f"{split_dir}: class folders differ from {reference} "
                f"({', '.join(classes)} vs {', '.join(names)}): {detail}"
            )
        for label, class_dir in enumerate(class_dirs):
            files = _files_below(class_dir)
            if not files:
                raise CxrlabError(f"{class_dir}: class folder is empty")
            samples.extend(Sample(path, split, label) for path in files)
        ignored.extend(p for p in split_dir.iterdir() if p.is_file())
    if len(classes or []) < min_classes:
        raise CxrlabError(f"{root}: need at least {min_classes} class folders, found {classes}")
    return DatasetIndex(
        root=root, layout=layout, classes=classes or [], samples=samples, ignored=ignored
    )
