"""The predictions CSV (``test_predictions.csv``, ``val_predictions.csv``, an external set's
``predictions.csv``, ``cxrlab predict --out``): written and read here, without torch, so that the
report and the model card read a run's predictions without loading a model's code."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrlab.fileio import atomic_open, csv_dict_reader, csv_writer, open_text
from cxrlab.records import OperatingPoint


def write_predictions(
    path: Path,
    paths: list[str],
    y_true: np.ndarray | None,
    probs: np.ndarray,
    classes: list[str],
    point: OperatingPoint | None = None,
) -> None:
    """CSV: path, (true class,) predicted class (the argmax), (``decision``: the class the operating
    point decides, when the model has one,) one probability column per class."""
    decided = point.decide(probs, classes) if point is not None and len(probs) else None
    with atomic_open(path, newline="") as handle:
        writer = csv_writer(handle)
        head = (
            ["path"]
            + (["true"] if y_true is not None else [])
            + ["predicted"]
            + (["decision"] if point else [])
        )
        writer.writerow(head + [f"p_{c}" for c in classes])
        for i, p in enumerate(paths):
            truth = [classes[int(y_true[i])]] if y_true is not None else []
            decision = [classes[int(decided[i])]] if decided is not None else []
            writer.writerow(
                [
                    p,
                    *truth,
                    classes[int(probs[i].argmax())],
                    *decision,
                    *(f"{v:.6f}" for v in probs[i]),
                ]
            )


def read_predictions(path: Path, classes: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(paths, y_true, probs)`` from a ``test_predictions.csv``."""
    with open_text(path) as handle:
        rows = list(csv_dict_reader(handle))
    paths = [r["path"] for r in rows]
    y_true = np.array([classes.index(r["true"]) for r in rows], dtype=np.int64)
    probs = np.array(
        [[float(r[f"p_{c}"]) for c in classes] for r in rows], dtype=np.float64
    ).reshape(len(rows), len(classes))
    return paths, y_true, probs
