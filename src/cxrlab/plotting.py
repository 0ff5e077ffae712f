"""Figure conventions shared by every plot of cxrlab: Agg canvas, resolution, colours.

Figures are drawn on their own Agg canvas (no pyplot), so nothing here touches the global
matplotlib backend and plotting works on machines without a display.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from cxrlab.fileio import atomic_open, display_name

DPI = 110


def class_colours(names: list[str]) -> dict[str, str]:
    """One ``#rrggbb`` colour per name from tab10 (tab20 beyond ten names)."""
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {c: to_hex(cmap(i % cmap.N)) for i, c in enumerate(names)}


def figure_text(label: str) -> str:
    """A name shown literally in a figure: undecodable bytes visible, no ``$`` starting mathtext."""
    return display_name(label).replace("$", r"\$")


def new_figure(width: float, height: float) -> Figure:
    """A constrained-layout figure on its own Agg canvas."""
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path: Path) -> Path:
    """Write ``figure`` as a PNG on white, atomically; returns ``path``. A file name in a script
    the font lacks (CJK, emoji) is drawn as boxes without matplotlib's "Glyph ... missing"
    warning per character: the name is in the Markdown and CSV beside the figure."""
    with atomic_open(path, "wb") as handle, missing_glyphs_quiet():
        figure.savefig(handle, dpi=DPI, format="png", facecolor="white")
    return path


@contextmanager
def missing_glyphs_quiet() -> Iterator[None]:
    """Inside the block, matplotlib draws a character its font lacks as a box without warning
    ("Glyph ... missing from font(s)", one line per character of every CJK or emoji name)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from", category=UserWarning)
        yield


def empty_panel(ax: Axes, text: str) -> None:
    """A panel with only a grey message in its centre."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])
