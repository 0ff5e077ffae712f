"""Getting ImageNet weights: the standard download cache, or a local file, with one-line errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.error import URLError

import torch
from torch import nn

from cxrlab.errors import ConfigError, CxrlabError


def hub_checkpoint_dir() -> Path:
    """Where torchvision caches downloaded weights: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def load_imagenet_state_dict(weights_enum, name: str) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """The torchvision weights' state dict, from the hub cache or downloaded into it."""
    filename = os.path.basename(weights_enum.url)
    try:
        return weights_enum.get_state_dict(check_hash=False)
    except (URLError, OSError, RuntimeError) as exc:
        raise ConfigError(
            None,
            f"cannot download ImageNet weights for {name} ({type(exc).__name__}: offline?); "
            f"copy {filename} into {hub_checkpoint_dir()}/, "
            "or give a local state dict ({weights}), or start from random weights ({pretrained})",
        ) from exc


def safe_load(path: Path, what: str) -> Any:
    """``torch.load(weights_only=True)`` on CPU; a missing or foreign file is a one-line error."""
    if not path.is_file():
        raise CxrlabError(f"{what}: {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CxrlabError(
            f"{what}: {path} cannot be read as a PyTorch weights file "
            f"(truncated, damaged or of another kind: {type(exc).__name__})"
        ) from exc


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a file (``weights_only=True``); accepts ``{"state_dict": ...}``
    wrappers."""
    payload = safe_load(path, "weights")
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(payload, dict) and isinstance(payload.get(key), dict):
            payload = payload[key]
    if not isinstance(payload, dict) or not all(
        isinstance(v, torch.Tensor) for v in payload.values()
    ):
        raise ConfigError("weights", f"{path} holds no state dict of tensors")
    return payload


def load_state_dict_file(network: nn.Module, path: Path, name: str) -> None:
    """Load a local state dict into ``network`` strictly; refuse one made for another model."""
    state = read_state_dict(path)
    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if wrong_shape:
            k = wrong_shape[0]
            parts.append(
                f"{len(wrong_shape)} shape mismatches "
                f"(e.g. {k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)})"
            )
        raise ConfigError("weights", f"{path} does not fit {name}: {'; '.join(parts)}")
    network.load_state_dict(state)
