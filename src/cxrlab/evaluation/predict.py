"""Class probabilities from a model: over a dataset, over image files, and how fast."""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cxrlab.data.cache import CacheSpec, resize_square
from cxrlab.data.reader import IMAGE_EXTENSIONS, decode_image
from cxrlab.data.discover import natural_key
from cxrlab.errors import CxrlabError, ImageReadError
from cxrlab.progress import track


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: the GPU when there is one, else the CPU."""
    if name in ("auto", "gpu"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = False,
    description: str = "Predicting",
) -> np.ndarray:
    """Softmax probabilities ``(n, classes)`` for every item of ``dataset``, in order."""
    model = model.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    out = [
        torch.softmax(model(images.to(device)).float(), dim=1).cpu()
        for images, _ in track(loader, total=len(loader), description=description, enabled=progress)
    ]
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros((0, 0))


@torch.no_grad()
def inference_speed(
    model: nn.Module, image_size: int, *, device: str | torch.device = "cpu", batch_size: int = 32, repeats: int = 3
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
                (p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
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


class ImageFiles(Dataset):
    """Image files decoded and resized as the training cache does; label is always 0."""

    def __init__(self, paths: list[Path], spec: CacheSpec) -> None:
        self.paths, self.spec = paths, spec

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int]:
        pixels = decode_image(self.paths[item], draft_size=self.spec.image_size).pixels
        square = resize_square(pixels, self.spec)
        return torch.from_numpy(np.array(square)).unsqueeze(0).float().div_(255.0), 0


def write_predictions(path: Path, paths: list[str], y_true: np.ndarray | None, probs: np.ndarray, classes: list[str]) -> None:
    """CSV: path, (true class,) predicted class, one probability column per class."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        head = ["path"] + (["true"] if y_true is not None else []) + ["predicted"] + [f"p_{c}" for c in classes]
        writer.writerow(head)
        for i, p in enumerate(paths):
            truth = [classes[int(y_true[i])]] if y_true is not None else []
            writer.writerow([p, *truth, classes[int(probs[i].argmax())], *(f"{v:.6f}" for v in probs[i])])


def read_predictions(path: Path, classes: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(paths, y_true, probs)`` from a ``test_predictions.csv``."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    paths = [r["path"] for r in rows]
    y_true = np.array([classes.index(r["true"]) for r in rows], dtype=np.int64)
    probs = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows], dtype=np.float64).reshape(len(rows), len(classes))
    return paths, y_true, probs


@dataclass
class FilePredictions:
    """Probabilities for image files; ``errors`` maps unreadable files to the reason."""

    arch: str
    classes: list[str]
    paths: list[Path]
    probs: np.ndarray
    errors: dict[str, str] = field(default_factory=dict)

    def write_csv(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_predictions(path, [str(p) for p in self.paths], None, self.probs, self.classes)


def predict_files(
    checkpoint: Path, files: list[Path], *, batch_size: int = 32, device: str = "auto", progress: bool = True
) -> FilePredictions:
    """Run a cxrlab checkpoint on image files, preprocessed as in training (size and resize mode
    stored in the checkpoint). Files that cannot be decoded are skipped and reported."""
    from cxrlab.models.checkpoint import load_checkpoint_with_extra

    model, extra = load_checkpoint_with_extra(checkpoint)
    spec = CacheSpec(int(extra.get("image_size", 224)), str(extra.get("resize", "squash")))
    readable: list[Path] = []
    errors: dict[str, str] = {}
    for path in files:
        try:
            decode_image(path, draft_size=spec.image_size)
            readable.append(path)
        except ImageReadError as exc:
            errors[str(path)] = str(exc)
    probs = (
        predict_probs(model, ImageFiles(readable, spec), batch_size=batch_size, device=pick_device(device), progress=progress)
        if readable
        else np.zeros((0, len(model.classes)))
    )
    return FilePredictions(model.arch, list(model.classes), readable, probs, errors)
