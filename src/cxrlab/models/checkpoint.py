"""cxrlab model checkpoints: the state dict plus what is needed to rebuild and check it."""

from __future__ import annotations

from pathlib import Path

import torch

from cxrlab import __version__
from cxrlab.errors import CxrlabError
from cxrlab.fileio import atomic_open
from cxrlab.models.registry import CxrClassifier, create_model
from cxrlab.models.weights import safe_load

CHECKPOINT_FORMAT = "cxrlab-model-v1"


def save_checkpoint(model: CxrClassifier, path: str | Path, **extra: object) -> Path:
    """Write ``model`` with its architecture name and classes (loadable with ``weights_only``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "cxrlab_version": __version__,
        "arch": model.arch,
        "classes": list(model.classes),
        "state_dict": model.state_dict(),
        "extra": dict(extra),
    }
    with atomic_open(path, "wb") as handle:  # a kill mid-write keeps the previous file
        torch.save(payload, handle)
    return path


def load_checkpoint(
    path: str | Path, *, arch: str | None = None, classes: list[str] | None = None
) -> CxrClassifier:
    """Rebuild a model from a checkpoint; refuse one made for another architecture or class set."""
    return load_checkpoint_with_extra(path, arch=arch, classes=classes)[0]


def load_checkpoint_with_extra(
    path: str | Path, *, arch: str | None = None, classes: list[str] | None = None
) -> tuple[CxrClassifier, dict]:
    """:func:`load_checkpoint` plus the ``extra`` saved with it (image size, resize mode,
    config)."""
    path = Path(path)
    payload = safe_load(path, "checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CxrlabError(
            f"{path}: not a cxrlab model checkpoint (use --weights for plain state dicts)"
        )
    if arch is not None and payload["arch"] != arch:
        raise CxrlabError(f"{path}: checkpoint is a {payload['arch']}, not a {arch}")
    if classes is not None and list(payload["classes"]) != list(classes):
        raise CxrlabError(
            f"{path}: checkpoint classes {payload['classes']} "
            f"differ from the dataset's {list(classes)}"
        )
    model = create_model(payload["arch"], list(payload["classes"]), pretrained=False)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise CxrlabError(
            f"{path}: weights do not fit {payload['arch']} ({str(exc).splitlines()[0]})"
        ) from exc
    return model, dict(payload.get("extra", {}))
