"""The card of a lung segmenter's weights file (``CARD.md`` beside it), from its meta."""

from __future__ import annotations

from pathlib import Path

from cxrlab.fileio import atomic_write_text
from cxrlab.lungs.network import SegmenterMeta

SOURCES = {
    "ieee8023": "ieee8023 COVID-19 films of the Kaggle data's COVID19 class, lung masks drawn by "
    "V7 Labs (torchxrayvision wheel, semantic_masks_v7labs_lungs.zip); held out: the films in "
    "the Kaggle test split",
    "openist": "adult-extra's NORMAL films (chestx-ray.com teaching set via pi-null-mezon/OpenIST) "
    "with OpenIST's lung masks; held out: 20% of the films, seeded",
}


def write_card(meta: SegmenterMeta, weights: Path, left_out: dict[str, int]) -> Path:
    """Write ``CARD.md`` next to ``weights``; returns its path."""
    lines = [
        f"# {meta.label}",
        "",
        f"U-Net on a MobileNetV2 encoder (ImageNet start), decoder channels "
        f"{', '.join(map(str, meta.decoder_channels))}; input: the film squashed to "
        f"{meta.input_size} px, three equal channels, ImageNet normalisation; output: lung "
        f"probability, threshold {meta.threshold}; masks cleaned to the two largest pieces.",
        "",
        f"Made by: `{meta.command}` (seed {meta.seed}, {meta.epochs} epochs, the epoch with the "
        "best validation Dice kept).",
        "",
        "## Data",
        "",
        "| source | train | val | test | what |",
        "|---|---|---|---|---|",
    ]
    for source, counts in sorted(meta.films.items()):
        lines.append(
            f"| {source} | {counts.get('train', 0)} | {counts.get('val', 0)} | "
            f"{counts.get('test', 0)} | {SOURCES.get(source, '')} |"
        )
    if left_out:
        lines += ["", "Left out: " + ", ".join(f"{n} ({why})" for why, n in left_out.items()) + "."]
    lines += [
        "",
        "No child has a mask: on the Kaggle NORMAL and PNEUMONIA films (children) the segmenter "
        "is judged by the plausibility check and contact sheets (README), not by Dice.",
        "",
        "## Held-out Dice (256 px, cleaned masks)",
        "",
        "| source | films | Dice mean | std |",
        "|---|---|---|---|",
    ]
    for source, scores in sorted(meta.test.items()):
        lines.append(f"| {source} | {scores.films} | {scores.dice:.4f} | {scores.dice_std:.4f} |")
    path = weights.with_name("CARD.md")
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
