"""One model registry for every command: ImageNet CNNs adapted to grayscale chest films.

Names: the torchvision models in :data:`TORCHVISION_MODELS`, cxrlab's own models in
:data:`CXRLAB_MODELS` (``proposed``: see :mod:`cxrlab.models.proposed`), and any timm model by
its timm name (``timm:<name>`` forces timm, e.g. ``timm:resnet18``). Each is built with its
ImageNet weights through the library's own mechanism (torchvision weight enums, cached in
``$TORCH_HOME/hub/checkpoints``; timm ``pretrained=True``), or from a local file
(``weights=PATH``), or from scratch (``pretrained=False``); then its last linear layer is
replaced by a new head for the dataset's classes.

Grayscale handling (documented once): :class:`CxrClassifier` takes ``(B, 1, H, W)`` images in
0..1, repeats the channel three times and applies the weights' own mean/std normalisation,
so the pretrained first convolution is used unchanged. A model may add an ``input_transform``
that sees the 0..1 film first (the proposed model's histogram equalisation). Test-time
augmentation is a wrapper around the model (:mod:`cxrlab.models.tta`), not part of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import torch
import torchvision
from torch import nn

from cxrlab.errors import ConfigError, CxrlabError
from cxrlab.models.weights import load_imagenet_state_dict, load_state_dict_file

TORCHVISION_MODELS = (
    "alexnet",
    "resnet18",
    "resnet50",
    "densenet121",
    "efficientnet_b0",
    "mobilenet_v2",
    "convnext_tiny",
)
# cxrlab's own models: name -> (ImageNet backbone it starts from, histogram equalisation, head).
CXRLAB_MODELS = {
    "proposed": ("mobilenet_v2", False, "two-stage"),
    "proposed_v1": ("mobilenet_v2", True, "two-scale"),
    "proposed_v1_noeq": ("mobilenet_v2", False, "two-scale"),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CxrClassifier(nn.Module):
    """Grayscale film in, class logits out, around any ImageNet network."""

    mean: torch.Tensor  # buffers
    std: torch.Tensor

    def __init__(
        self,
        network: nn.Module,
        head_name: str,
        arch: str,
        classes: list[str],
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        input_transform: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.input_transform = input_transform
        self.network = network
        self.head_name = head_name
        self.arch = arch
        self.classes = list(classes)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for ``images`` ``(B, 1, H, W)`` in 0..1."""
        if self.input_transform is not None:
            images = self.input_transform(images)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return self.network((images - self.mean) / self.std)

    @property
    def head(self) -> nn.Module:
        return self.network.get_submodule(self.head_name)

    def head_parameters(self) -> Iterator[nn.Parameter]:
        return self.head.parameters()

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        head_ids = {id(p) for p in self.head.parameters()}
        return (p for p in self.network.parameters() if id(p) not in head_ids)


@contextmanager
def head_inputs(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Inside: every forward pass of ``model`` appends the input of ``model.head`` (the pooled
    features, ``float32 (N, d)`` on the CPU) to the yielded list. Frozen-mode training fits the
    head on these features; the OOD score measures them."""
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Module):
        raise CxrlabError(f"{type(model).__name__}: no classification head to read features from")
    captured: list[torch.Tensor] = []
    handle = head.register_forward_hook(
        lambda _m, inputs, _o: captured.append(inputs[0].detach().float().flatten(1).cpu())
    )
    try:
        yield captured
    finally:
        handle.remove()


def list_models() -> list[str]:
    """Registered names (any timm name is accepted too)."""
    return [*TORCHVISION_MODELS, *CXRLAB_MODELS]


def last_linear(network: nn.Module) -> str:
    """Dotted name of the last ``nn.Linear`` (the ImageNet classifier) of a network."""
    names = [name for name, module in network.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise CxrlabError(f"{type(network).__name__}: no linear classifier layer to replace")
    return names[-1]


def replace_head(network: nn.Module, head_name: str, num_classes: int) -> None:
    old = network.get_submodule(head_name)
    parent_name, _, child = head_name.rpartition(".")
    parent = network.get_submodule(parent_name) if parent_name else network
    setattr(parent, child, nn.Linear(cast(int, old.in_features), num_classes))


def _torchvision(
    name: str, pretrained: bool, weights: Path | None, classes: list[str]
) -> CxrClassifier:
    network = torchvision.models.get_model(name, weights=None)
    if weights is not None:
        load_state_dict_file(network, weights, name)
    elif pretrained:
        enum = torchvision.models.get_model_weights(name).DEFAULT  # pyright: ignore[reportAttributeAccessIssue]  # every weights enum has DEFAULT; WeightsEnum does not declare it
        network.load_state_dict(load_imagenet_state_dict(enum, name))
    head = last_linear(network)
    replace_head(network, head, len(classes))
    return CxrClassifier(network, head, name, classes)


def _cxrlab(name: str, pretrained: bool, weights: Path | None, classes: list[str]) -> CxrClassifier:
    """A cxrlab model on a torchvision backbone; ``weights`` is that backbone's ImageNet state
    dict."""
    from cxrlab.models.proposed import EqualizedMultiScaleNet, HistogramEqualization, TwoStageHead

    backbone, equalize, head = CXRLAB_MODELS[name]
    base = _torchvision(backbone, pretrained, weights, classes)
    transform = HistogramEqualization() if equalize else None
    if head == "two-stage":  # the backbone's own pooling and dropout, a two-decision head
        base.network.set_submodule(
            base.head_name, TwoStageHead(cast(int, base.head.in_features), classes)
        )
        return CxrClassifier(base.network, base.head_name, name, classes, input_transform=transform)
    network = EqualizedMultiScaleNet(cast(nn.Sequential, base.network.features), len(classes))
    return CxrClassifier(network, "head", name, classes, input_transform=transform)


def _timm(name: str, pretrained: bool, weights: Path | None, classes: list[str]) -> CxrClassifier:
    import timm

    if name not in timm.list_models():
        raise CxrlabError(
            "no such model in cxrlab or timm "
            f"(registered: {', '.join(list_models())}; or any timm name)"
        )
    try:
        network = timm.create_model(name, pretrained=pretrained and weights is None)
    except Exception as exc:  # hub/network errors come in many types
        raise ConfigError(
            None,
            f"cannot fetch timm ImageNet weights for '{name}' "
            f"({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}); "
            "give a local state dict ({weights}), or start from random weights ({pretrained})",
        ) from exc
    if weights is not None:
        load_state_dict_file(network, weights, name)
    network.reset_classifier(len(classes))  # pyright: ignore[reportCallIssue]  # a timm model method; create_model is typed nn.Module
    head = last_linear(network)
    cfg = getattr(network, "pretrained_cfg", {}) or {}
    mean, std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    return CxrClassifier(network, head, f"timm:{name}", classes, mean, std)


def create_model(
    name: str,
    classes: list[str] | int = 3,
    *,
    pretrained: bool = True,
    weights: str | Path | None = None,
) -> CxrClassifier:
    """Build a registered (or timm) network with a new head for ``classes``.

    ``weights`` (a local ImageNet state dict) wins over ``pretrained``; ``pretrained=False``
    trains from scratch.
    """
    if isinstance(classes, int):
        classes = [f"class{i}" for i in range(classes)]
    if len(classes) < 2:
        raise CxrlabError(f"need at least two classes, got {classes}")
    path = Path(weights).expanduser() if weights is not None else None
    if name.startswith("timm:"):
        return _timm(name.removeprefix("timm:"), pretrained, path, classes)
    if name in TORCHVISION_MODELS:
        return _torchvision(name, pretrained, path, classes)
    if name in CXRLAB_MODELS:
        return _cxrlab(name, pretrained, path, classes)
    return _timm(name, pretrained, path, classes)


PROBE_SIZES = (16, 32, 64, 128, 224, 256, 384, 512, 1024, 2048)


def _accepts(network: nn.Module, image_size: int) -> bool:
    try:
        network(torch.empty(1, 3, image_size, image_size, device="meta"))
    except (
        RuntimeError,
        AssertionError,
        ValueError,
    ):  # "Output size is too small", fixed-size inputs
        return False
    return True


def check_model(name: str, image_size: int) -> None:
    """Refuse, before any work, a model name that does not exist or an image size the network
    cannot take (AlexNet needs at least 63 px; some timm models take one size only).

    The network is built on PyTorch's ``meta`` device (shapes only: no memory, no weights,
    no download), so this takes well under a second.
    """
    try:
        with torch.device("meta"):
            network = create_model(name, 3, pretrained=False).network.eval()
    except CxrlabError as exc:
        raise ConfigError("model", str(exc), value=name) from exc
    if _accepts(network, image_size):
        return
    smallest = next((s for s in PROBE_SIZES if s > image_size and _accepts(network, s)), None)
    if smallest is not None:  # bisect down to the exact smallest size above the one refused
        low = image_size
        while smallest - low > 1:
            middle = (low + smallest) // 2
            low, smallest = (low, middle) if _accepts(network, middle) else (middle, smallest)
    what = (
        f"needs at least {smallest} px"
        if smallest and smallest > image_size
        else f"does not take {image_size} px images"
    )
    hint = f" (e.g. {{image_size}} {smallest})" if smallest else ""
    raise ConfigError("image_size", f"{name} {what}{hint}", value=image_size)
