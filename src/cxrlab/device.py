"""Which torch device a command runs on: one rule for training, evaluation and the benchmarks."""

from __future__ import annotations

import torch

from cxrlab.errors import ConfigError


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: the GPU when there is one, else the CPU; ``cuda``/``gpu`` without one is an
    error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name in ("gpu", "cuda") or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(
                "device", "no CUDA GPU is available here; use {device} cpu or auto", value=name
            )
        return torch.device("cuda" if name == "gpu" else name)
    if name != "cpu":
        raise ConfigError("device", "not one of auto, cpu, cuda", value=name)
    return torch.device(name)
