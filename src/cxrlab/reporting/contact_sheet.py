"""A contact sheet: films in a grid, each with its lung mask's outline, to look at by eye.

Each tile is the film squashed to ``tile`` pixels square with the outline of its mask drawn
over it: green where the mask passed the plausibility check (:func:`cxrlab.lungs.plausible`),
orange where it did not, and a caption (the file's name, shortened) under it. Pillow only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from cxrlab.fileio import display_name

FOUND = (40, 220, 60)
NOT_FOUND = (255, 150, 0)
CAPTION = 12  # pixels under each tile


def outline(mask: np.ndarray) -> np.ndarray:
    """The pixels of ``mask`` on its edge (bool, same shape), two pixels wide."""
    return mask & ~cast(np.ndarray, ndimage.binary_erosion(mask, iterations=2, border_value=0))


def contact_sheet(
    films: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    found: Sequence[bool],
    names: Sequence[str],
    path: Path,
    *,
    tile: int = 128,
    columns: int = 8,
    title: str = "",
) -> Path:
    """Write the sheet of ``films`` (``uint8`` of any size) with their ``masks`` to ``path``."""
    n = len(films)
    rows = max(1, -(-n // columns))
    top = 16 if title else 0
    sheet = Image.new("RGB", (columns * tile, top + rows * (tile + CAPTION)), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((4, 2), title, fill=(255, 255, 255))
    for i, (film, mask, ok, name) in enumerate(zip(films, masks, found, names)):
        grey = Image.fromarray(film).resize((tile, tile), Image.Resampling.BILINEAR)
        small = (
            np.asarray(
                Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).resize(
                    (tile, tile), Image.Resampling.NEAREST
                )
            )
            > 127
        )
        rgb = np.repeat(np.asarray(grey)[..., None], 3, axis=2)
        rgb[outline(small)] = FOUND if ok else NOT_FOUND
        x, y = (i % columns) * tile, top + (i // columns) * (tile + CAPTION)
        sheet.paste(Image.fromarray(rgb), (x, y))
        caption = display_name(name)
        caption = caption if len(caption) <= tile // 6 else caption[: tile // 6 - 1] + "~"
        draw.text((x + 2, y + tile), caption, fill=(255, 255, 255) if ok else NOT_FOUND)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
