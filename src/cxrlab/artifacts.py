"""The run folder and its files, named once: every stage finds a run's files here.

A run folder (``cxrlab train``; one per model, seed and mode under ``compare``)::

    config.json            the RunConfig (recipe, seed, data options)
    split.csv              the exact train/val/test files (path,class,subset)
    history.csv            one row per epoch: lr, train/val loss and accuracy, val macro-F1
    checkpoints/last.ckpt  Lightning state after the last finished epoch (for --resume)
    checkpoints/best.ckpt  the weights of the epoch with the best validation macro-F1
    model.pt               the chosen model as a cxrlab checkpoint (predict, evaluate, export)
    val_predictions.csv    per validation film: true class, prediction, calibrated probabilities
    test_predictions.csv   the same per test film
    metrics.json           test metrics with bootstrap CIs, calibration, timings, parameters
    logs/                  Lightning's CSV logs (and TensorBoard/MLflow when asked)
    robustness.json        written by ``cxrlab explain`` / ``compare``: perturbations, probes
    gradcam.json, .png     the same: where the model looks
    external/<NAME>/       ``cxrlab evaluate``: metrics.json and predictions.csv of one set
    MODEL_CARD.md          rewritten by every command that adds to the run

This module imports neither torch nor Lightning, so that reports and tools can read runs
without the training stack. :func:`read_json` is the one reader of a run's JSON files: a file
that is not a JSON object is an error naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cxrlab.errors import CxrlabError
from cxrlab.fileio import read_text

CONFIG_JSON = "config.json"
METRICS_JSON = "metrics.json"
SPLIT_CSV = "split.csv"
HISTORY_CSV = "history.csv"
MODEL_PT = "model.pt"
VAL_PREDICTIONS = "val_predictions.csv"
TEST_PREDICTIONS = "test_predictions.csv"
ROBUSTNESS_JSON = "robustness.json"
GRADCAM_JSON = "gradcam.json"
GRADCAM_PNG = "gradcam.png"
MODEL_CARD = "MODEL_CARD.md"
EXTERNAL_DIR = "external"
PREDICTIONS_CSV = "predictions.csv"  # an external set's predictions (RUN/external/<NAME>/)
DIAGNOSTIC_FILES = (ROBUSTNESS_JSON, GRADCAM_JSON, GRADCAM_PNG)


@dataclass(frozen=True)
class ExternalDir:
    """``RUN/external/<NAME>/``: one external set's results (``cxrlab evaluate``)."""

    root: Path

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_JSON

    @property
    def predictions(self) -> Path:
        return self.root / PREDICTIONS_CSV


@dataclass(frozen=True)
class RunDir:
    """A run folder and the paths of its files (the files need not exist yet)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / CONFIG_JSON

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_JSON

    @property
    def split(self) -> Path:
        return self.root / SPLIT_CSV

    @property
    def history(self) -> Path:
        return self.root / HISTORY_CSV

    @property
    def model(self) -> Path:
        return self.root / MODEL_PT

    @property
    def val_predictions(self) -> Path:
        return self.root / VAL_PREDICTIONS

    @property
    def test_predictions(self) -> Path:
        return self.root / TEST_PREDICTIONS

    @property
    def robustness(self) -> Path:
        return self.root / ROBUSTNESS_JSON

    @property
    def gradcam(self) -> Path:
        return self.root / GRADCAM_JSON

    @property
    def gradcam_png(self) -> Path:
        return self.root / GRADCAM_PNG

    @property
    def model_card(self) -> Path:
        return self.root / MODEL_CARD

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.root / "checkpoints" / "last.ckpt"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def externals(self) -> Path:
        return self.root / EXTERNAL_DIR

    def external(self, name: str) -> ExternalDir:
        return ExternalDir(self.root / EXTERNAL_DIR / name)

    @property
    def is_finished(self) -> bool:
        """Training and testing are done (``metrics.json`` is written last)."""
        return self.metrics.is_file()

    def check_finished(self) -> None:
        """A one-line error unless the run has finished, saying how to finish it."""
        if not self.is_finished:
            raise CxrlabError(
                f"{self.root}: no metrics.json (the run has not finished; resume it with "
                f"cxrlab train DATA --out {self.root} --resume)"
            )


def read_json(path: Path) -> dict:
    """The JSON object in ``path``; an error naming the file when it is not one."""
    try:
        data = json.loads(read_text(path))
    except ValueError as exc:
        raise CxrlabError(f"{path}: not valid JSON ({exc}); delete it or compute it again") from exc
    if not isinstance(data, dict):
        raise CxrlabError(f"{path}: expected a JSON object")
    return data


def optional_json(path: Path) -> dict | None:
    """The JSON object in ``path``; None when there is no such file."""
    return read_json(path) if path.is_file() else None
