"""The learned lung segmenter's network and its weights file.

The network is a U-Net (``segmentation_models_pytorch.Unet``) on a MobileNetV2 encoder (the
encoder starts from ImageNet weights, e.g. ``../shared/weights``; its BatchNorm statistics stay
as loaded, see :func:`cxrlab.training.module.freeze_batchnorm_statistics`), with a light decoder
(:data:`DECODER_CHANNELS`) and one output channel: the logit of "lung field" per pixel. It reads
a grey film squashed to ``input_size`` pixels square, repeated to three channels and normalised
with the ImageNet mean and standard deviation.

A weights file (``torch.save``) holds ``{"meta": SegmenterMeta as a dict, "state_dict": ...}``
(float16 tensors: the shipped file is a few MB). :class:`SegmenterMeta` is its typed card: how
the network was built, the data it learnt from, its held-out Dice per source and the command
that made it. The shipped weights are :data:`SHIPPED`, next to their card (``CARD.md``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

import torch
from torch import nn

from cxrlab.errors import ConfigError, CxrlabError
from cxrlab.records import STRICT, JsonRecord, parse

ENCODER = "mobilenet_v2"
DECODER_CHANNELS = (96, 48, 24, 16, 8)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SHIPPED = Path(__file__).resolve().parent / "weights" / "lungs_unet_mobilenet_v2.pt"


@dataclass(frozen=True)
class SourceDice:
    """One source's held-out masks: how many, and the mean Dice of the segmenter's masks."""

    __pydantic_config__ = STRICT

    films: int
    dice: float
    dice_std: float


@dataclass(frozen=True)
class SegmenterMeta(JsonRecord):
    """What a lung segmenter's weights file says about itself."""

    __pydantic_config__ = STRICT

    name: str = "lungs-unet-mobilenet_v2"
    encoder: str = ENCODER
    decoder_channels: tuple[int, ...] = DECODER_CHANNELS
    input_size: int = 192
    threshold: float = 0.5
    seed: int = 0
    epochs: int = 0
    films: dict[str, dict[str, int]] = field(default_factory=dict)  # source -> split -> films
    test: dict[str, SourceDice] = field(default_factory=dict)  # held-out Dice per source
    command: str = ""

    @property
    def label(self) -> str:
        """How results name this segmenter (``lungs-unet-mobilenet_v2 @192px``)."""
        return f"{self.name} @{self.input_size}px"


def build_network() -> nn.Module:
    """The U-Net, randomly initialised (load an encoder or a whole state dict into it)."""
    import segmentation_models_pytorch as smp  # imported here: only the segmenter needs it

    return smp.Unet(ENCODER, encoder_weights=None, classes=1, decoder_channels=DECODER_CHANNELS)


def load_encoder_weights(network: nn.Module, path: Path) -> None:
    """ImageNet weights of torchvision's ``mobilenet_v2`` (a state dict file) into the encoder;
    the classifier's keys are dropped. A file of another network is a one-line error."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file is the user's to fix
        raise ConfigError("encoder_weights", f"{path}: cannot be read ({exc})") from exc
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    encoder = cast(nn.Module, network.encoder)
    expected = set(encoder.state_dict())
    if set(state) != expected:
        raise ConfigError(
            "encoder_weights",
            f"{path} is not a torchvision mobilenet_v2 state dict "
            f"({len(expected - set(state))} encoder keys missing, {len(set(state) - expected)} "
            "unexpected)",
        )
    encoder.load_state_dict(state)


def save_segmenter(network: nn.Module, meta: SegmenterMeta, path: Path) -> None:
    """The weights file: float16 tensors and the meta as a plain dict."""
    state = {
        k: v.detach().cpu().half() if v.is_floating_point() else v.cpu()
        for k, v in network.state_dict().items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"meta": asdict(meta), "state_dict": state}, path)


def load_segmenter(path: Path = SHIPPED) -> tuple[nn.Module, SegmenterMeta]:
    """The network (float32, eval mode, on the CPU) and meta of a weights file; a missing file
    or one that is not a lung segmenter's is a one-line error naming it."""
    if not path.is_file():
        raise CxrlabError(f"{path}: no lung segmenter weights there")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        meta = parse(SegmenterMeta, saved["meta"], path)
    except CxrlabError:
        raise
    except Exception as exc:
        raise CxrlabError(f"{path}: not a cxrlab lung segmenter weights file ({exc})") from exc
    if meta.encoder != ENCODER or tuple(meta.decoder_channels) != DECODER_CHANNELS:
        raise CxrlabError(
            f"{path}: a segmenter of another shape ({meta.encoder}, "
            f"decoder {meta.decoder_channels})"
        )
    network = build_network()
    try:
        network.load_state_dict({k: v.float() for k, v in saved["state_dict"].items()})
    except RuntimeError as exc:
        raise CxrlabError(f"{path}: its weights do not fit the segmenter ({exc})") from exc
    return network.eval(), meta
