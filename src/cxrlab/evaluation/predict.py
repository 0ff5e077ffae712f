"""Class probabilities from a model: over a dataset, over image files, and how fast."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cxrlab.data.cache import CacheSpec, read_squares
from cxrlab.data.discover import natural_key
from cxrlab.data.reader import IMAGE_EXTENSIONS
from cxrlab.device import pick_device
from cxrlab.errors import CxrlabError
from cxrlab.evaluation.calibration import OperatingPoint, softmax
from cxrlab.evaluation.predictions_csv import write_predictions
from cxrlab.progress import track


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    description: str = "Predicting",
) -> np.ndarray:
    """The model's outputs (logits) ``(n, classes)`` for every item of ``dataset``, in order."""
    model = model.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    out = [
        model(images.to(device)).float().cpu()
        for images, _ in track(loader, total=len(loader), description=description)
    ]
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros((0, 0))


def predict_probs(
    model: nn.Module, dataset: Dataset, *, temperature: float = 1.0, **options: Any
) -> np.ndarray:
    """Probabilities ``softmax(logits / temperature)`` ``(n, classes)`` for every item of
    ``dataset``."""
    logits = predict_logits(model, dataset, **options)
    return softmax(logits, temperature) if logits.size else logits


@torch.no_grad()
def inference_speed(
    model: nn.Module,
    image_size: int,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    repeats: int = 3,
) -> float:
    """Images per second of a forward pass on a random batch (after one warm-up pass)."""
    device = torch.device(device)
    model = model.to(device).eval()
    batch = torch.rand(batch_size, 1, image_size, image_size, device=device)
    model(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        model(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch_size * repeats / (time.perf_counter() - started)


def expand_image_paths(inputs: list[Path]) -> list[Path]:
    """Files as given, folders searched recursively for images, in natural order."""
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = sorted(
                (
                    p
                    for p in item.rglob("*")
                    if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                ),
                key=lambda p: natural_key(str(p)),
            )
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise CxrlabError(f"{item}: no such file or folder")
    if not files:
        raise CxrlabError(f"no images found in {', '.join(map(str, inputs))}")
    return files


@dataclass
class FilePredictions:
    """Probabilities for image files; ``errors`` maps unreadable files to the reason."""

    arch: str
    classes: list[str]
    paths: list[Path]
    probs: np.ndarray
    errors: dict[str, str] = field(default_factory=dict)
    runtime: str = "PyTorch"
    notes: list[str] = field(default_factory=list)
    point: OperatingPoint | None = None  # the model's operating point, when its run chose one

    def write_csv(self, path: Path) -> None:
        write_predictions(
            path, [str(p) for p in self.paths], None, self.probs, self.classes, self.point
        )

    @property
    def decisions(self) -> list[str] | None:
        """The operating point's class for each film (None when the model has no operating
        point)."""
        if self.point is None:
            return None
        return [self.classes[int(k)] for k in self.point.decide(self.probs, self.classes)]


@dataclass
class Predictor:
    """A model ready for image files: its preprocessing and a ``batch -> probabilities`` step.

    ``batch_probs`` takes ``(N, 1, S, S)`` float32 images in 0..1 and returns ``(N, classes)``
    probabilities, calibrated with the model's ``temperature`` (1 for a model without one);
    ``point`` is the operating point its run chose; ``notes`` are caveats for the user;
    ``model`` is the PyTorch network itself, on ``device``, in eval mode (None for ONNX Runtime:
    what needs the network's inside, Grad-CAM and its features, needs the PyTorch backend).
    """

    arch: str
    classes: list[str]
    spec: CacheSpec
    batch_probs: Callable[[np.ndarray], np.ndarray]
    runtime: str = "PyTorch"
    notes: list[str] = field(default_factory=list)
    temperature: float = 1.0
    point: OperatingPoint | None = None
    model: nn.Module | None = None
    device: torch.device | None = None


def load_predictor(model_path: Path, device: str = "auto") -> Predictor:
    """A cxrlab checkpoint run by PyTorch, or a ``.onnx`` file written by ``cxrlab export`` run
    by ONNX Runtime (chosen by the file suffix)."""
    if Path(model_path).suffix.lower() == ".onnx":
        from cxrlab.models.export import OnnxModel

        onnx_model = OnnxModel(model_path, device=device)
        onnx_meta = onnx_model.meta
        return Predictor(
            onnx_model.arch,
            onnx_model.classes,
            CacheSpec.of_model(onnx_meta),
            onnx_model.predict,
            "ONNX Runtime",
            onnx_model.notes,
            onnx_meta.temperature,
            onnx_meta.operating_point,
        )

    from cxrlab.models.checkpoint import load_model
    from cxrlab.models.tta import with_tta

    model, meta = load_model(model_path)
    temperature = meta.temperature
    torch_device = pick_device(device)
    model = model.to(torch_device).eval()
    tested = with_tta(model, meta.tta).eval()

    @torch.no_grad()
    def batch_probs(images: np.ndarray) -> np.ndarray:
        logits = tested(torch.from_numpy(images).to(torch_device))
        return torch.softmax(logits.float() / temperature, dim=1).cpu().numpy()

    return Predictor(
        model.arch,
        list(model.classes),
        CacheSpec.of_model(meta),
        batch_probs,
        temperature=temperature,
        point=meta.operating_point,
        model=model,
        device=torch_device,
    )


def predict_files(
    checkpoint: Path | Predictor,
    files: list[Path],
    *,
    batch_size: int = 32,
    device: str = "auto",
) -> FilePredictions:
    """Run a cxrlab checkpoint (or its ``.onnx`` export, through ONNX Runtime; or a loaded
    :class:`Predictor`) on image files, preprocessed as in training (size and resize mode stored
    with the model). Files that cannot be decoded are skipped and reported."""
    predictor = (
        checkpoint if isinstance(checkpoint, Predictor) else load_predictor(checkpoint, device)
    )
    arch, classes, spec = predictor.arch, predictor.classes, predictor.spec
    errors: dict[str, str] = {}
    pairs = list(read_squares(files, spec, errors))  # each decoded once
    readable = [path for path, _ in pairs]
    squares = [square for _, square in pairs]  # uint8 S x S
    if not squares:
        return FilePredictions(
            arch,
            classes,
            [],
            np.zeros((0, len(classes))),
            errors,
            predictor.runtime,
            predictor.notes,
            predictor.point,
        )
    images = np.stack(squares)[:, None].astype(np.float32) / np.float32(
        255.0
    )  # (N, 1, S, S) in 0..1
    starts = range(0, len(images), batch_size)
    probs = [
        predictor.batch_probs(images[i : i + batch_size])
        for i in track(starts, total=len(starts), description="Predicting")
    ]
    return FilePredictions(
        arch,
        classes,
        readable,
        np.concatenate(probs).astype(np.float64),
        errors,
        predictor.runtime,
        predictor.notes,
        predictor.point,
    )
