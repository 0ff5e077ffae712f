"""Where a command's ``--out`` may write, checked before any work so that a refusal writes nothing.

:func:`check_output` refuses, even with ``force``:

* a folder, a name with an image extension, or an input file (compared through symlinks and
  hard links): ``--out`` naming an image must never replace it;
* a path inside a folder given as input, or inside the dataset folder of an input image: the
  folder holding the split folders (``train``, ``val``, ``test`` and the other names
  :mod:`cxrlab.data.discover` knows) of the layouts ``ROOT/Data/{train,test}/<CLASS>/`` and
  ``ROOT/{train,val,test}/<CLASS>/``. A bare ``ROOT/<CLASS>/`` dataset cannot be told from any
  folder of pictures, so it is protected when given as a folder (its images always are: they
  are inputs).

An existing file is overwritten only when it is a previous output of the same kind (so that
re-running a command works), or with ``force``.
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from cxrlab.data.discover import SPLIT_ALIASES
from cxrlab.data.reader import IMAGE_EXTENSIONS
from cxrlab.errors import ConfigError
from cxrlab.fileio import check_writable

PREDICTION_HEADERS = (
    b"path,predicted,p_",
    b"path,true,predicted",
)  # write_predictions, without / with truth
SPLIT_HEADERS = (b"path,class,subset",)  # cxrlab.data.split.save_split


def _starts_with(path: Path, headers: tuple[bytes, ...]) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(64).removeprefix(codecs.BOM_UTF8)
    except OSError:
        return False
    return head.startswith(headers)


def is_predictions_csv(path: Path) -> bool:
    """Whether ``path`` starts with a header written by
    :func:`cxrlab.evaluation.predictions_csv.write_predictions`."""
    return _starts_with(path, PREDICTION_HEADERS)


def is_split_csv(path: Path) -> bool:
    """Whether ``path`` starts with the header of :func:`cxrlab.data.split.save_split`."""
    return _starts_with(path, SPLIT_HEADERS)


def _is_onnx_export(path: Path) -> bool:
    from cxrlab.models.export import is_cxrlab_onnx  # imports torch: only when needed

    return is_cxrlab_onnx(path)


KINDS: dict[str, tuple[str, Callable[[Path], bool]]] = {
    "predictions": ("a cxrlab predictions file", is_predictions_csv),
    "onnx": ("a cxrlab ONNX export", _is_onnx_export),
    "split": ("a cxrlab split file", is_split_csv),
}


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def dataset_folders(images: Iterable[Path]) -> set[Path]:
    """The dataset folders holding ``images``: for an image in ``SPLIT/<CLASS>/``, where ``SPLIT``
    has a split folder's name and two or more class folders, the folder holding ``SPLIT``."""
    folders: set[Path] = set()
    for split in {image.resolve().parent.parent for image in images}:
        if (
            split.name.lower() in SPLIT_ALIASES
            and sum(child.is_dir() for child in split.iterdir()) >= 2
        ):
            folders.add(split.parent)
    return folders


def check_output(out: Path, *, kind: str, inputs: Iterable[Path], force: bool = False) -> None:
    """Raise a one-line error naming the ``out`` setting unless ``out`` may be written.

    ``kind``: a key of :data:`KINDS` (what the command writes); ``inputs``: the files and folders
    the command reads (model, images, folders given).
    """
    out = Path(out)
    inputs = [Path(path) for path in inputs]
    files = [path for path in inputs if path.is_file()]
    images = [path for path in files if is_image_name(path)]
    if out.is_dir():
        raise ConfigError("out", "is a folder; give a file name", value=out)
    for path in files:
        if out.exists() and os.path.samefile(out, path):
            what = "image" if path in images else "file"
            raise ConfigError("out", f"is an input {what}; choose another file", value=out)
    if is_image_name(out) or is_image_name(out.resolve()):
        raise ConfigError("out", "has an image extension; choose another file", value=out)
    protected = [(path, "input folder") for path in inputs if path.is_dir()]
    protected += [(path, "dataset folder") for path in sorted(dataset_folders(images))]
    for folder, what in protected:
        if out.resolve().is_relative_to(folder.resolve()):
            raise ConfigError(
                "out", f"is inside the {what} {folder}; choose a file outside it", value=out
            )
    description, is_previous = KINDS[kind]
    if out.exists() and not force and not is_previous(out):
        raise ConfigError(
            "out", f"exists and is not {description}; pass {{force}} to overwrite", value=out
        )
    check_writable(out.parent, "out", out)


def check_output_folder(out: Path, data: Path | Sequence[Path], *, setting: str = "out") -> None:
    """Refuse an output folder that is a dataset folder ``data`` (one, or every source of a
    training set) or lies inside one: cxrlab writes nothing among the films it reads; and one
    where nothing can be written (read-only, or a full disk), before any work."""
    for folder in [data] if isinstance(data, (str, Path)) else data:
        if Path(out).resolve().is_relative_to(Path(folder).resolve()):
            raise ConfigError(
                setting,
                f"is inside the dataset folder {folder}; choose a folder outside it",
                value=out,
            )
    check_writable(out, setting, out)


def check_cache_folder(cache_dir: Path | None, data: Path | Sequence[Path]) -> None:
    """:func:`check_output_folder` for the cache folder; without one, whether the default cache
    (``$CXRLAB_CACHE`` or ``~/.cache/cxrlab``) can be written."""
    from cxrlab.data.cache import default_cache_root

    if cache_dir is not None:
        check_output_folder(cache_dir, data, setting="cache_root")
    else:
        check_writable(default_cache_root(), "cache_root", "(default: $CXRLAB_CACHE or ~/.cache)")
