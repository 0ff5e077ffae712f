"""``cxrlab segment``: a lung mask per film, a table of what was found, and a contact sheet.

For each film (files as given, folders searched recursively), one after another so memory
stays bounded by one film: decode it (:func:`cxrlab.data.reader.decode_image`, as every
command does), segment it (:mod:`cxrlab.lungs`), write ``OUT/<stem>.png`` (0/255, the film's
own size; a stem met twice gets ``-2``, ``-3``...) and a row of ``OUT/masks.csv``: the film,
its mask, whether the mask is a plausible two-lung mask, the lungs' share of the film and the
box ``--crop lungs`` cuts from it, in fractions (the whole film where it would not crop).
``OUT/contact_sheet.png`` shows at most :data:`SHEET_FILMS` films (evenly spaced through the
list) with their outlines. A file that cannot be read is listed and skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cxrlab.data.reader import decode_image
from cxrlab.errors import ImageReadError
from cxrlab.fileio import csv_writer
from cxrlab.lungs import default_segmenter
from cxrlab.lungs.segment import plausible
from cxrlab.progress import track
from cxrlab.reporting.contact_sheet import contact_sheet

SHEET_FILMS = 96
THUMB = 128
COLUMNS = ("file", "mask", "found", "lung_share", "box_top", "box_left", "box_bottom", "box_right")


@dataclass
class SegmentResult:
    """What ``segment`` wrote: masks per file, the found count and unreadable files."""

    out: Path
    segmenter: str
    masks: dict[str, Path] = field(default_factory=dict)
    found: int = 0
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def table(self) -> Path:
        return self.out / "masks.csv"

    @property
    def sheet(self) -> Path:
        return self.out / "contact_sheet.png"


def _mask_name(stem: str, taken: set[str]) -> str:
    name, k = f"{stem}.png", 1
    while name.lower() in taken:
        k += 1
        name = f"{stem}-{k}.png"
    taken.add(name.lower())
    return name


def segment_files(files: list[Path], out: Path) -> SegmentResult:
    """Segment ``files`` into ``out`` (see the module docstring)."""
    segmenter = default_segmenter()
    out.mkdir(parents=True, exist_ok=True)
    result = SegmentResult(out, segmenter.label)
    picks = set(np.linspace(0, len(files) - 1, min(SHEET_FILMS, len(files))).round().astype(int))
    thumbs: list[tuple[np.ndarray, np.ndarray, bool, str]] = []
    taken: set[str] = set()
    with result.table.open("w", newline="", encoding="utf-8") as handle:
        writer = csv_writer(handle)
        writer.writerow(COLUMNS)
        for i, path in enumerate(track(files, total=len(files), description="Segmenting")):
            try:
                film = decode_image(path).pixels
            except ImageReadError as exc:
                result.errors[str(path)] = str(exc)
                continue
            probability = segmenter.probabilities([film])[0]  # once, for the mask and the box
            mask = segmenter.mask(film, probability)
            found = plausible(mask)
            name = _mask_name(path.stem, taken)
            as_image = Image.fromarray(mask.view(np.uint8) * np.uint8(255))  # (one byte a pixel)
            as_image.save(out / name)
            result.masks[str(path)] = out / name
            result.found += int(found)
            box, _ = segmenter.box(film, probability)  # the box --crop lungs cuts
            writer.writerow(
                [
                    str(path),
                    name,
                    int(found),
                    f"{mask.mean():.4f}",
                    f"{box.top:.4f}",
                    f"{box.left:.4f}",
                    f"{box.bottom:.4f}",
                    f"{box.right:.4f}",
                ]
            )
            if i in picks:
                thumb = np.asarray(Image.fromarray(film).resize((THUMB, THUMB)))
                small = np.asarray(as_image.resize((THUMB, THUMB), Image.Resampling.NEAREST)) > 127
                thumbs.append((thumb, small, bool(found), path.name))
    if thumbs:
        films, masks, found_flags, names = zip(*thumbs)
        contact_sheet(
            films,
            masks,
            found_flags,
            names,
            result.sheet,
            tile=THUMB,
            title=f"{segmenter.label}: {result.found} of {len(result.masks)} found",
        )
    return result
