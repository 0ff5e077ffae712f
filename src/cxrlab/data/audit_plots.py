"""The audit's two figures: copies side by side, and what the format-only classifier achieves."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from cxrlab.data.audit_records import DuplicateGroup, ShortcutReport
from cxrlab.data.reader import read_grayscale
from cxrlab.errors import ImageReadError
from cxrlab.plotting import figure_text

MAX_GROUPS_SHOWN = 8


def plot_duplicates(
    all_groups: Sequence[DuplicateGroup], path_of: Callable[[str], Path], path: Path
) -> None:
    """Up to eight duplicate groups (leakage, films two sources share and label conflicts
    first), two members each; ``path_of``: a member's key to its file."""
    groups = sorted(
        all_groups,
        key=lambda g: (not g.cross_split, not g.cross_source, not g.label_conflict, g.exact),
    )[:MAX_GROUPS_SHOWN]
    if not groups:
        fig, ax = plt.subplots(figsize=(5, 1.5))
        ax.text(0.5, 0.5, "No duplicates found", ha="center", va="center", fontsize=12)
        ax.axis("off")
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        return
    columns = min(len(groups), 4)
    rows = (len(groups) + columns - 1) // columns
    fig, axes = plt.subplots(rows, 2 * columns, figsize=(3.2 * columns, 2.1 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k, group in enumerate(groups):
        row, col = divmod(k, columns)
        kind = "LEAK " if group.cross_split else ""
        kind += "TWO SOURCES " if group.cross_source else ""
        kind += "LABEL CONFLICT " if group.label_conflict else ""
        kind += "exact" if group.exact else f"NCC {group.min_similarity:.3f}"
        for m in range(2):
            ax = axes[row, 2 * col + m]
            member = group.members[m]
            try:
                ax.imshow(read_grayscale(path_of(member)), cmap="gray", vmin=0, vmax=255)
            except ImageReadError:
                pass
            name = member.rsplit("/", 1)[-1]
            ax.set_title(figure_text(f"{group.splits[m]}/{group.classes[m]}\n{name}"), fontsize=7)
        axes[row, 2 * col].text(
            0.0, -0.08, kind, transform=axes[row, 2 * col].transAxes, fontsize=7,
            color="crimson" if group.cross_split or group.label_conflict else "black", va="top",
        )  # fmt: skip
    fig.suptitle(f"Duplicate groups ({len(all_groups)} in all; {len(groups)} shown)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_shortcuts(report: ShortcutReport | None, path: Path) -> None:
    """Balanced accuracy of each format feature alone and of all together, against chance."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    if report is None:
        ax.text(0.5, 0.5, "Shortcut check not run (too few images per class)", ha="center")
        ax.axis("off")
    else:
        names = list(report.single_feature) + ["all features"]
        values = list(report.single_feature.values()) + [report.cv_balanced_accuracy]
        colours = ["#8da0cb"] * len(report.single_feature) + [
            {"high": "crimson", "moderate": "darkorange", "low": "seagreen"}[report.level]
        ]
        bars = ax.barh(names, values, color=colours)
        ax.bar_label(bars, labels=[f"{v:.0%}" for v in values], padding=3, fontsize=8)
        ax.axvline(report.chance_balanced, color="black", linestyle="--", linewidth=1)
        ax.text(report.chance_balanced, len(names) - 0.4, " chance", fontsize=8)
        ax.set_xlim(0, 1.08)
        ax.set_xlabel(f"balanced accuracy, {report.folds}-fold CV on train")
        ax.set_title(
            f"Shortcut check: format features predict the class ({report.level})", fontsize=10
        )
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
