"""Find the splits, classes and files of a dataset folder.

Layouts understood (class names always come from folder names):

* Kaggle: ``ROOT/Data/train/<CLASS>/``, ``ROOT/Data/test/<CLASS>/`` (``Data/`` optional),
  with an optional ``val/`` (also ``valid``/``validation``) beside them;
* ImageFolder: ``ROOT/<CLASS>/`` — one split, called ``train``.

Every regular file below a class folder is listed, image or not, so that the audit can
report odd files; hidden files (``.DS_Store``) are listed too. Files lying loose in a
split folder, outside any class, are kept in ``ignored``.

Sources. A training set may join several folders (``--add-source NAME=DIR``): the main DATA
and each added one is a *source*, and every film carries the name of its own. An added source
holds some of the main data's classes (an unknown class folder is an error naming it). A film's
*key*, the name every later stage (cache, split, manifest, predictions) knows it by, is its path
relative to its source's folder, prefixed ``NAME:`` for an added source; so a dataset of one
source keys its films exactly as before.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cxrlab.errors import ConfigError, CxrlabError

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
SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
KEY_SEPARATOR = ":"  # between an added source's name and the film's path in it


@dataclass(frozen=True)
class Sample:
    """One file of the dataset: where it is, which split, which class (index into classes) and
    which source it comes from."""

    path: Path
    split: str
    label: int
    source: str = ""


@dataclass
class DatasetIndex:
    """The discovered dataset: its root, layout, class names and files."""

    root: Path
    layout: str
    classes: list[str]
    samples: list[Sample]
    ignored: list[Path] = field(default_factory=list)
    # every source's folder by name, the main data first; empty: one source, named after root
    sources: dict[str, Path] = field(default_factory=dict)

    @property
    def source_roots(self) -> dict[str, Path]:
        """``{name: folder}`` of every source, the main data first."""
        return dict(self.sources) or {self.root.name: self.root}

    @property
    def main_source(self) -> str:
        return next(iter(self.source_roots))

    @property
    def is_multi_source(self) -> bool:
        return len(self.source_roots) > 1

    def key(self, sample: Sample) -> str:
        """The film's key: its path in its source's folder, ``NAME:``-prefixed for an added one
        (:meth:`relative` of its path)."""
        return self.relative(sample.path)

    def source_of(self, key: str) -> str:
        """The source a film's key names."""
        name, sep, _ = key.partition(KEY_SEPARATOR)
        if sep and name in self.source_roots and name != self.main_source:
            return name
        return self.main_source

    def path_of(self, key: str) -> Path:
        """The file a key names (the inverse of :meth:`key`)."""
        source = self.source_of(key)
        relative = key if source == self.main_source else key.partition(KEY_SEPARATOR)[2]
        return self.source_roots[source] / relative

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
        """The key of a file of the dataset: relative to its source's folder, with forward
        slashes (stable across machines), ``NAME:``-prefixed for an added source."""
        for name, root in self.source_roots.items():
            if path.is_relative_to(root) and name != self.main_source:
                return f"{name}{KEY_SEPARATOR}{path.relative_to(root).as_posix()}"
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


def dataset_folder(root: str | Path) -> Path:
    """``root`` resolved, or a one-line :class:`CxrlabError` when it is not an existing folder."""
    root = Path(root).expanduser()
    if not root.exists():
        raise CxrlabError(f"{root}: dataset folder does not exist")
    if not root.is_dir():
        raise CxrlabError(f"{root}: not a folder")
    return root.resolve()


def discover(root: str | Path, *, min_classes: int = 2, source: str | None = None) -> DatasetIndex:
    """Index a dataset folder; raise a one-line :class:`CxrlabError` on any layout problem.

    ``min_classes``: training needs two classes; a set to evaluate on may hold one. ``source``:
    the name its films carry (default: the folder's name)."""
    root = dataset_folder(root)
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
            samples.extend(Sample(path, split, label, source or root.name) for path in files)
        ignored.extend(p for p in split_dir.iterdir() if p.is_file())
    if len(classes or []) < min_classes:
        raise CxrlabError(f"{root}: need at least {min_classes} class folders, found {classes}")
    return DatasetIndex(
        root=root,
        layout=layout,
        classes=classes or [],
        samples=samples,
        ignored=ignored,
        sources={source: root} if source else {},
    )


def parse_named_folders(
    items: list[str], setting: str, example: str, form: str = "NAME=DIR"
) -> dict[str, Path]:
    """``NAME=DIR`` items of a repeatable ``setting`` into ``{name: folder}``, each name given
    once (``example``: a right item, shown with ``form`` when one is malformed)."""
    parsed: dict[str, Path] = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise ConfigError(setting, f"write {form}, e.g. {{{setting}}} {example}", value=item)
        if name in parsed:
            raise ConfigError(setting, f"the name {name} is given twice", value=item)
        parsed[name] = Path(folder).expanduser()
    return parsed


def parse_sources(items: list[str]) -> dict[str, Path]:
    """``NAME=DIR`` items of the ``sources`` setting into ``{name: folder}``: each name a plain
    word, given once (the folders are checked when they are discovered)."""
    parsed = parse_named_folders(items, "sources", "adult=../shared/data/adult-extra")
    for name in parsed:
        check_source_name(name, "sources")
    return parsed


def check_source_name(name: str, setting: str) -> None:
    if not SOURCE_NAME.fullmatch(name):
        raise ConfigError(
            setting,
            "a source name is letters, digits, '_', '.' or '-' (at most 64, not starting with a "
            "sign)",
            value=name,
        )


def discover_sources(
    data: str | Path,
    added: Mapping[str, str | Path] | None = None,
    *,
    source_name: str | None = None,
) -> DatasetIndex:
    """Index the main dataset ``data`` and every ``added`` source (``{name: folder}``) as one
    training set: the main data's classes and layout; each added folder (a Kaggle layout or plain
    class folders) may hold some of those classes. Every layout problem, an unknown class folder
    and a folder given twice are one-line errors naming the folder, raised before any work."""
    main = discover(data)
    if not added and source_name is None:
        return main
    name = source_name or main.root.name
    if source_name is None and not SOURCE_NAME.fullmatch(name):
        raise ConfigError(
            "source_name",
            f"the folder name of {main.root} is no source name; give one with {{source_name}} NAME",
        )
    check_source_name(name, "source_name")
    main.samples = [Sample(s.path, s.split, s.label, name) for s in main.samples]
    roots: dict[str, Path] = {name: main.root}
    for extra_name, folder in (added or {}).items():
        item = f"{extra_name}={folder}"
        if extra_name in roots:
            raise ConfigError(
                "sources", f"the name {extra_name} is already a source's name", value=item
            )
        index = discover(folder, min_classes=1, source=extra_name)
        for other, root in roots.items():
            if (
                index.root == root
                or index.root.is_relative_to(root)
                or root.is_relative_to(index.root)
            ):
                raise ConfigError(
                    "sources", f"{index.root} overlaps the folder of {other}", value=item
                )
        unknown = [c for c in index.classes if c not in main.classes]
        if unknown:
            raise ConfigError(
                "sources",
                f"class folder {', '.join(unknown)} is not one of the main data's classes "
                f"({', '.join(main.classes)})",
                value=item,
            )
        remap = [main.classes.index(c) for c in index.classes]
        main.samples.extend(
            Sample(s.path, s.split, remap[s.label], extra_name) for s in index.samples
        )
        main.ignored.extend(index.ignored)
        roots[extra_name] = index.root
    main.sources = roots
    return main
