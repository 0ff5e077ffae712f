"""How unlike the training films a film is: the Mahalanobis distance of the model's own features.

Score. ``f(x)`` is the model's pooled penultimate feature vector of film ``x``: the input of its
classification head (:attr:`~cxrlab.models.registry.CxrClassifier.head`), the vector frozen-mode
training fits the head on, read here by a forward hook in eval mode (one view, no test-time
augmentation). The score is the Mahalanobis distance

    d(x) = sqrt((f(x) - mu)^T P (f(x) - mu))

where ``mu`` is the mean of the training films' features and ``P`` the inverse of their
covariance estimated with Ledoit-Wolf shrinkage (:class:`sklearn.covariance.LedoitWolf`): the
feature dimension (512 to 2048) is close to or above the number of training films, where the
plain sample covariance is singular (after Lee et al., NeurIPS 2018, on one layer and without
class-conditional means: the question is "like the training films?", not "like which class?").

Threshold. The 99th percentile (:data:`QUANTILE`) of the scores of the run's *validation* films,
so by construction about 1% of films from the training sources are flagged. Validation, not
train: the model has fitted its training films, so their features sit closer to ``mu`` than a new
film's of the same kind, and a threshold on them would flag many more. The 99th, not the 95th:
the warning is shown beside every answer, and at the 95th one film in twenty from the training
sources would carry it, often enough for people to learn to ignore it. With few validation films
the percentile is coarse (``n_val`` is stored with it, and the flag rate on validation).

What it is not. A chest film from another hospital or device is likely to be flagged (the model
has not seen such films: that is the point); a film of the right kind with an unusual finding may
be flagged; a flagged film is a warning beside the answer, not a refusal.

Stored beside the model (``RUN/ood.npz``, written by ``cxrlab ood RUN --data DATA``, or by
``cxrlab serve RUN --data DATA`` when absent): ``mean``, ``precision`` (float32), ``threshold``,
``quantile``, ``n_train``, ``n_val``, ``val_flag_rate``, ``arch`` and a digest of the weights, so
statistics fitted for other weights are refused rather than silently used. The features exist
only in the PyTorch model: an ONNX export's graph outputs the probabilities alone, so the score
needs ``model.pt``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn

from cxrlab.data.cache import CacheSpec, read_squares
from cxrlab.errors import CxrlabError
from cxrlab.fileio import atomic_open
from cxrlab.models.registry import head_inputs

QUANTILE = 0.99  # of the validation films' scores: the threshold
OOD_FORMAT = "cxrlab-ood-v1"
METHOD = (
    "Mahalanobis distance of the model's pooled penultimate features to the training films' "
    "(Ledoit-Wolf covariance); threshold: the 99th percentile of the validation films' distances"
)


def weights_digest(model: nn.Module) -> str:
    """SHA-1 of the model's state dict (names and values): what the statistics were fitted for."""
    digest = hashlib.sha1()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def head_features(model: nn.Module, images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Features ``float64 (N, d)`` (the head's input) of ``images`` ``(N, 1, S, S)`` in 0..1."""
    device = next(model.parameters()).device
    batch = torch.as_tensor(images, dtype=torch.float32).to(device)
    was_training = model.training
    model.eval()
    try:
        with head_inputs(model) as captured:
            model(batch)
    finally:
        model.train(was_training)
    return torch.cat(captured).numpy().astype(np.float64)


@dataclass
class OodStats:
    """Fitted statistics: :meth:`score` gives the distance, :meth:`flag` whether it is unlike."""

    mean: np.ndarray  # (d,)
    precision: np.ndarray  # (d, d)
    threshold: float
    quantile: float
    n_train: int
    n_val: int
    val_flag_rate: float
    arch: str
    digest: str

    @classmethod
    def fit(
        cls,
        train: np.ndarray,
        val: np.ndarray,
        *,
        arch: str,
        digest: str,
        quantile: float = QUANTILE,
    ) -> OodStats:
        """Mean and shrunk covariance of ``train`` features, threshold from ``val`` features."""
        from sklearn.covariance import LedoitWolf

        train, val = np.asarray(train, np.float64), np.asarray(val, np.float64)
        if train.ndim != 2 or len(train) < 2:
            raise CxrlabError(f"OOD statistics need at least 2 training films (got {len(train)})")
        if val.ndim != 2 or len(val) < 1 or val.shape[1] != train.shape[1]:
            raise CxrlabError(f"OOD statistics need validation films (got {len(val)})")
        if not 0.5 <= quantile < 1.0:
            raise CxrlabError(f"OOD quantile {quantile} must lie in 0.5..1")
        estimate = LedoitWolf().fit(train)
        stats = cls(
            estimate.location_,
            cast(np.ndarray, estimate.precision_).astype(np.float32),
            0.0,
            float(quantile),
            len(train),
            len(val),
            0.0,
            arch,
            digest,
        )
        val_scores = stats.score(val)
        stats.threshold = float(np.quantile(val_scores, quantile))
        stats.val_flag_rate = float(np.mean(val_scores > stats.threshold))
        return stats

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def score(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance ``(N,)`` of each row of ``features`` ``(N, d)``."""
        features = np.asarray(features, np.float64)
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise CxrlabError(
                f"OOD: features of shape {features.shape} do not fit statistics of {self.dim}"
            )
        centred = features - self.mean
        squared = np.einsum("nd,de,ne->n", centred, self.precision.astype(np.float64), centred)
        return np.sqrt(np.maximum(squared, 0.0))

    def flag(self, scores: np.ndarray) -> np.ndarray:
        """True where a score is above the threshold: unlike the training films."""
        return np.asarray(scores) > self.threshold

    def describe(self) -> str:
        return (
            f"Mahalanobis distance of {self.arch}'s {self.dim} pooled features to "
            f"{self.n_train} training films; threshold {self.threshold:.2f}: the "
            f"{self.quantile:.0%} quantile of {self.n_val} validation films "
            f"({self.val_flag_rate:.1%} of them above it)"
        )

    def save(self, path: Path) -> Path:
        with atomic_open(path, "wb") as handle:
            np.savez(
                handle,
                format=np.array(OOD_FORMAT),
                mean=self.mean,
                precision=self.precision,
                threshold=np.array(self.threshold),
                quantile=np.array(self.quantile),
                n_train=np.array(self.n_train),
                n_val=np.array(self.n_val),
                val_flag_rate=np.array(self.val_flag_rate),
                arch=np.array(self.arch),
                digest=np.array(self.digest),
            )
        return path

    @classmethod
    def load(cls, path: Path) -> OodStats:
        """Statistics written by :meth:`save`; an error naming ``path`` otherwise."""
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["format"]) != OOD_FORMAT:
                    raise ValueError(f"format {data['format']}")
                return cls(
                    data["mean"].astype(np.float64),
                    data["precision"],
                    float(data["threshold"]),
                    float(data["quantile"]),
                    int(data["n_train"]),
                    int(data["n_val"]),
                    float(data["val_flag_rate"]),
                    str(data["arch"]),
                    str(data["digest"]),
                )
        except (OSError, ValueError, KeyError) as exc:
            raise CxrlabError(
                f"{path}: not cxrlab OOD statistics ({exc}); compute them again with "
                "`cxrlab ood RUN --data DATA`"
            ) from exc


def stats_path(model_file: Path) -> Path:
    """Where the statistics of ``model_file`` live: ``ood.npz`` beside it (``RUN/ood.npz``)."""
    return Path(model_file).with_name("ood.npz")


def load_stats_for(model: nn.Module, model_file: Path) -> tuple[OodStats | None, str]:
    """``(statistics, "")`` for ``model`` from beside ``model_file``, or ``(None, why not)``."""
    path = stats_path(model_file)
    if not path.is_file():
        return None, (
            f"no {path.name} beside {Path(model_file).name}: compute it with "
            f"`cxrlab ood RUN --data DATA` (RUN: the model's run folder, DATA: its dataset), "
            "or serve the run with --data DATA"
        )
    stats = OodStats.load(path)
    if stats.digest != weights_digest(model):
        return None, (
            f"{path} was fitted for other weights than {Path(model_file).name}; "
            "compute it again with `cxrlab ood RUN --data DATA`"
        )
    return stats, ""


@dataclass
class OodScores:
    """Scores of image files; ``errors`` maps unreadable files to the reason."""

    paths: list[Path]
    scores: np.ndarray
    threshold: float
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def flagged(self) -> np.ndarray:
        return self.scores > self.threshold

    @property
    def flag_rate(self) -> float:
        return float(self.flagged.mean()) if len(self.scores) else float("nan")

    def summary(self) -> str:
        """``flagged k of n (x%)`` (and how many files could not be read)."""
        k, n = int(self.flagged.sum()), len(self.scores)
        rate = f"{self.flag_rate:.1%}" if n else "n/a"
        unread = f"; {len(self.errors)} unreadable" if self.errors else ""
        return f"flagged {k} of {n} ({rate}){unread}"


def score_files(
    model: nn.Module,
    spec: CacheSpec,
    stats: OodStats,
    files: list[Path],
    *,
    batch_size: int = 32,
) -> OodScores:
    """Scores of image files read as ``predict`` reads them (unreadable files are reported)."""
    readable: list[Path] = []
    scores: list[np.ndarray] = []
    errors: dict[str, str] = {}
    batch: list[np.ndarray] = []

    def flush() -> None:
        if batch:
            images = np.stack(batch)[:, None].astype(np.float32) / np.float32(255.0)
            scores.append(stats.score(head_features(model, images)))
            batch.clear()

    for path, square in read_squares(files, spec, errors, description="OOD scores"):
        batch.append(square)
        readable.append(path)
        if len(batch) >= batch_size:
            flush()
    flush()
    values = np.concatenate(scores) if scores else np.zeros(0)
    return OodScores(readable, values, stats.threshold, errors)
