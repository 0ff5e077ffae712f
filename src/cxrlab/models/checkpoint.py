"""cxrlab model checkpoints: the state dict plus what is needed to rebuild and check it.

A checkpoint (``model.pt``) is a dict: ``format``, ``cxrlab_version``, ``arch``, ``classes``,
``state_dict`` and ``extra``; ``arch``, ``classes`` and ``extra`` together are its
:class:`~cxrlab.records.ModelMeta`, the one schema every reader uses.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cxrlab import __version__
from cxrlab.errors import CxrlabError
from cxrlab.fileio import atomic_open
from cxrlab.models.registry import CxrClassifier, create_model
from cxrlab.models.weights import safe_load
from cxrlab.records import ModelMeta

CHECKPOINT_FORMAT = "cxrlab-model-v1"


def save_checkpoint(model: CxrClassifier, path: str | Path, meta: ModelMeta | None = None) -> Path:
    """Write ``model`` with its :class:`ModelMeta` (default: the model's arch and classes, every
    other field at its default); loadable with ``weights_only``."""
    path = Path(path)
    meta = meta if meta is not None else ModelMeta.of(model)
    if (meta.arch, list(meta.classes)) != (model.arch, list(model.classes)):
        raise ValueError(
            f"ModelMeta of a {meta.arch} for {list(meta.classes)} given with a {model.arch} "
            f"for {list(model.classes)}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "cxrlab_version": __version__,
        "arch": model.arch,
        "classes": list(model.classes),
        "state_dict": model.state_dict(),
        "extra": meta.extra(),
    }
    with atomic_open(path, "wb") as handle:  # a kill mid-write keeps the previous file
        torch.save(payload, handle)
    return path


def load_checkpoint(
    path: str | Path, *, arch: str | None = None, classes: list[str] | None = None
) -> CxrClassifier:
    """Rebuild a model from a checkpoint; refuse one made for another architecture or class set."""
    return load_model(path, arch=arch, classes=classes)[0]


def load_model(
    path: str | Path, *, arch: str | None = None, classes: list[str] | None = None
) -> tuple[CxrClassifier, ModelMeta]:
    """:func:`load_checkpoint` plus its :class:`ModelMeta` (image size, resize mode, crop,
    test-time augmentation, calibration, config; an older checkpoint's missing keys at their
    documented defaults)."""
    path = Path(path)
    payload = safe_load(path, "checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CxrlabError(
            f"{path}: not a cxrlab model checkpoint (a plain state dict is a model's starting "
            "weights, given to cxrlab train --weights)"
        )
    if arch is not None and payload["arch"] != arch:
        raise CxrlabError(f"{path}: checkpoint is a {payload['arch']}, not a {arch}")
    if classes is not None and list(payload["classes"]) != list(classes):
        raise CxrlabError(
            f"{path}: checkpoint classes {payload['classes']} "
            f"differ from the dataset's {list(classes)}"
        )
    extra = payload.get("extra") or {}  # none in a checkpoint saved without any
    if not isinstance(extra, dict):
        raise CxrlabError(f"{path}: damaged checkpoint (its extra is not a dict)")
    meta = ModelMeta.from_extra(extra, path, arch=payload["arch"], classes=payload["classes"])
    model = create_model(payload["arch"], list(payload["classes"]), pretrained=False)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise CxrlabError(
            f"{path}: weights do not fit {payload['arch']} ({str(exc).splitlines()[0]})"
        ) from exc
    return model, meta
