"""cxrlab.fileio: atomic output files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cxrlab.fileio import atomic_open, atomic_write_text, read_text


def test_atomic_files_get_the_usual_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    path = atomic_write_text(tmp_path / "out" / "a.txt", "text\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's private 0o600
    assert read_text(path) == "text\n"


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = atomic_write_text(tmp_path / "a.csv", "old\n")
    with pytest.raises(RuntimeError), atomic_open(path) as handle:
        handle.write("half")
        raise RuntimeError("killed")
    assert read_text(path) == "old\n" and os.listdir(tmp_path) == ["a.csv"]
