"""Output files are written whole or not at all; folder locks refuse a second writer."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cxrlab.errors import CxrlabError
from cxrlab.fileio import (
    atomic_open,
    atomic_write_text,
    csv_cell,
    csv_dict_reader,
    csv_dict_writer,
    csv_writer,
    locked,
    open_text,
)
from cxrlab.plotting import new_figure, save_figure


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = atomic_write_text(tmp_path / "metrics.json", "old\n")
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write("half a fi")
        raise RuntimeError("disk full")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_kill_mid_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = atomic_write_text(tmp_path / "model.pt", "old")
    pid = os.fork()
    if pid == 0:  # the child is killed (no cleanup runs) in the middle of writing
        with atomic_open(target, "wb") as handle:
            handle.write(b"new but incomplete")
            handle.flush()
            os._exit(137)
    os.waitpid(pid, 0)
    assert target.read_text() == "old"


def test_outputs_get_the_usual_mode_and_figures_are_atomic(tmp_path: Path) -> None:
    mask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    figure = new_figure(2, 2)
    png = save_figure(figure, tmp_path / "f.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "f.png"]


def test_a_held_folder_lock_refuses_a_second_holder(tmp_path: Path) -> None:
    with locked(tmp_path, busy="busy here"):
        pid = os.fork()
        if pid == 0:  # another process asks for the same lock
            try:
                with locked(tmp_path, busy="busy here"):
                    os._exit(0)
            except CxrlabError:
                os._exit(3)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 3
    with locked(tmp_path, busy="busy here"):  # released again
        pass


FORMULAS = ["=1+1.jpg", "+cmd", "-2+3", "@SUM(A1)", "\tx", "\rx", "'=already", "'quoted"]


def test_csv_cells_are_never_formulas_and_read_back_exactly(tmp_path: Path) -> None:
    """A cell starting with = + - @ (tab, CR) is written with a leading apostrophe, as the page's
    export writes it; numbers and ordinary text as they are; every writer and reader agrees."""
    assert [csv_cell(v) for v in FORMULAS] == ["'" + v for v in FORMULAS]
    plain = ["film.png", "-0.25", "+3", "1e-3", "", "a=b", 0.5, -1, None]
    assert [csv_cell(v) for v in plain] == plain
    path = tmp_path / "cells.csv"
    with atomic_open(path, newline="") as handle:
        writer = csv_dict_writer(handle, ["=name", "value"])
        writer.writeheader()
        writer.writerows({"=name": v, "value": "-0.5"} for v in FORMULAS)
    text = path.read_text()
    assert text.splitlines()[:2] == ["'=name,value", "'=1+1.jpg,-0.5"]
    with open_text(path) as handle:
        rows = list(csv_dict_reader(handle))
    assert [r["=name"] for r in rows] == FORMULAS and {r["value"] for r in rows} == {"-0.5"}
    with atomic_open(path, newline="") as handle:
        csv_writer(handle).writerows([[v] for v in FORMULAS])
    assert not any(line.startswith(("=", "+", "-", "@")) for line in path.read_text().split())


def test_a_full_or_read_only_disk_is_named_by_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not by the hidden temporary file, and in one line; nothing left behind, the old file kept.
    A full disk is also recognised behind another error (torch.save's "unexpected pos")."""
    import errno

    from cxrlab import fileio

    target = tmp_path / "predictions.csv"
    target.write_text("old")
    for code, said in ((errno.ENOSPC, "no space left on device"), (errno.EROFS, "read-only")):

        def failing(fd: int, code: int = code) -> None:
            raise OSError(code, os.strerror(code))

        with monkeypatch.context() as patch:
            patch.setattr(fileio.os, "fsync", failing)
            with pytest.raises(CxrlabError) as info, atomic_open(target) as handle:
                handle.write("new")
        assert str(info.value) == f"{said}{' file system' if code == errno.EROFS else ''}: {target}"
    monkeypatch.setattr(fileio, "disk_full", lambda folder: True)
    with pytest.raises(CxrlabError, match="^no space left on device: "), atomic_open(target, "wb"):
        raise RuntimeError("[enforce fail at inline_container.cc:671] . unexpected pos 64")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["predictions.csv"]
