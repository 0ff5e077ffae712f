"""Rich progress bars for long loops, silent when hidden or when output is not a terminal.

Whether bars show is the process's setting, not a parameter of every function on the way
(as ``logging`` levels are): the command line hides them for ``--no-progress`` with
:func:`progress_bars`, and a DDP worker process hides its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

_shown = [True]  # the process's setting (a list: set in place, read by every thread)


def shown() -> bool:
    """Whether progress bars show (Lightning's included)."""
    return _shown[0]


@contextmanager
def progress_bars(show: bool) -> Iterator[None]:
    """Show (or hide) progress bars inside the block; the setting before it comes back after."""
    before, _shown[0] = _shown[0], show
    try:
        yield
    finally:
        _shown[0] = before


def track(items: Iterable[T], *, total: int | None = None, description: str = "") -> Iterator[T]:
    """Yield ``items`` while showing a progress bar with count, elapsed and remaining time."""
    if not shown():
        yield from items
        return
    from rich.progress import (  # here: the command line imports this module, not the bars
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)
