"""Grad-CAM explanations, and how much of their mass falls inside the lung fields.

Grad-CAM (Selvaraju et al., 2017) for a class ``c`` and a convolutional layer with activation
maps ``A_k``: the weight of channel ``k`` is the spatial mean of ``d y_c / d A_k`` (``y_c``:
the logit of ``c``), the map is ``relu(sum_k w_k A_k)``, upsampled bilinearly to the input
size and divided by its maximum (a map that is zero everywhere stays zero). It is written
here with torch hooks, for any :class:`~cxrlab.models.registry.CxrClassifier`:

* the layer is found generically by :func:`find_target_layer`: the last module to finish in
  a forward pass whose output is a 4-D tensor with a spatial size above 1x1 and which is not
  a pooling layer (``network.features`` for MobileNetV2, AlexNet, DenseNet, EfficientNet and
  ConvNeXt, ``network.layer4`` for ResNets);
* the model runs in ``eval()`` mode, one view (test-time augmentation is a wrapper that
  Grad-CAM is never given); the modes of all modules are restored afterwards, and no hook and
  no ``.grad`` is left behind;
* the hook makes the layer's output a leaf that requires grad and hands a copy of it on, so
  Grad-CAM works with frozen parameters, backpropagates only through the layers above the
  target, and in-place operations after the layer (``F.relu(x, inplace=True)``) leave the
  captured activation intact. Samples are independent in eval mode, so a batch
  backpropagates the sum of its target logits at once.

:func:`gradcam_summary` explains the *predicted* class of every test image and measures, per
image, the share of the map's mass inside the lung fields (:func:`cxrlab.lungs.lung_masks`: the
learned segmenter, or the heuristic where its weights are unavailable; less the border frame),
inside the outer border frame (``border = 8%`` of each side: film edges, text, markers), and
elsewhere (mediastinum, abdomen, shoulders). ``lung_area`` is the share a uniform map would get, so
``lung_enrichment = lung_share / lung_area`` above 1 means the maps favour the lungs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrlab.diagnostics import GradcamSummary
from cxrlab.errors import CxrlabError
from cxrlab.lungs import lung_masks, segmenter_label
from cxrlab.plotting import empty_panel, figure_text, new_figure, save_figure
from cxrlab.progress import track

BORDER = 0.08  # width of the border frame, fraction of each side
POOLING = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d)
PANEL_INCHES = 2.2
CAM_ALPHA = 0.45
CAM_CMAP = "jet"
MASK_COLOUR = "white"


# --------------------------------------------------------------------------- model state


@contextmanager
def _explaining(model: nn.Module) -> Iterator[None]:
    """Eval mode inside; every module's mode restored after."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _is_pooling(module: nn.Module) -> bool:
    return isinstance(module, POOLING) or "Pool" in type(module).__name__


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


# --------------------------------------------------------------------------- Grad-CAM


def find_target_layer(model: nn.Module, size: int | tuple[int, int] = 224) -> str:
    """Dotted name of the layer Grad-CAM uses: the last module to finish in a forward pass of
    a ``size`` input whose output is 4-D with a spatial size above 1x1 and that is no pooling.

    The answer can depend on ``size``: a small input shrinks late feature maps to 1x1 (AlexNet's
    ``features`` at 64 px), and then an earlier layer is chosen.
    """
    height, width = (size, size) if isinstance(size, int) else size
    found: list[str] = []

    def record(name: str, module: nn.Module, output: object) -> None:
        if (
            isinstance(output, torch.Tensor)
            and output.dim() == 4
            and output.shape[-2] * output.shape[-1] > 1
            and not _is_pooling(module)
        ):
            found.append(name)

    handles = [
        module.register_forward_hook(lambda mod, inp, out, name=name: record(name, mod, out))
        for name, module in model.named_modules()
        if name
    ]
    device, dtype = _model_device_dtype(model)
    try:
        with _explaining(model), torch.no_grad():
            model(torch.full((1, 1, height, width), 0.5, device=device, dtype=dtype))
    except RuntimeError as exc:
        raise CxrlabError(
            f"{type(model).__name__}: a forward pass of a {height}x{width} image failed "
            f"({str(exc).splitlines()[0][:120]}); cannot find a Grad-CAM layer"
        ) from exc
    finally:
        for handle in handles:
            handle.remove()
    if not found:
        raise CxrlabError(
            f"{getattr(model, 'arch', type(model).__name__)}: no convolutional layer with a "
            f"spatial output above 1x1 at {height}x{width} px; Grad-CAM needs a CNN"
        )
    return found[-1]


def _gradcam(
    model: nn.Module, images: torch.Tensor, target: torch.Tensor | None, layer: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(maps (B, H, W) in [0, 1], logits (B, classes)); ``target=None``: the predicted class.

    The caller holds :func:`_explaining`.
    """
    try:
        module = model.get_submodule(layer)
    except AttributeError as exc:
        raise CxrlabError(f"Grad-CAM layer '{layer}' is not a module of the model") from exc
    captured: list[torch.Tensor] = []

    def hook(mod: nn.Module, inputs: object, output: object) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            raise CxrlabError(f"Grad-CAM layer '{layer}' does not output a 4-D tensor")
        leaf = output.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf.clone()  # downstream (possibly in-place) operations work on a copy

    handle = module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(images)
            if not captured:
                raise CxrlabError(f"Grad-CAM layer '{layer}' was not used in the forward pass")
            activation = captured[-1]
            if target is None:
                target = logits.detach().argmax(dim=1)
            target = torch.as_tensor(target, device=logits.device).long().view(-1, 1)
            if target.shape[0] != logits.shape[0]:
                raise CxrlabError(
                    f"Grad-CAM: {target.shape[0]} targets for {logits.shape[0]} images"
                )
            score = logits.gather(1, target).sum()
            (grads,) = torch.autograd.grad(score, activation, allow_unused=True)
    finally:
        handle.remove()
    if grads is None:
        raise CxrlabError(f"the model's output does not depend on Grad-CAM layer '{layer}'")
    activation, grads = activation.detach().float(), grads.float()
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * activation).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.amax(dim=(1, 2), keepdim=True)
    cam = cam / torch.where(peak > 0, peak, torch.ones_like(peak))  # an all-zero map stays zero
    return cam.clamp_(0.0, 1.0), logits.detach()


def gradcam(
    model: nn.Module, images: torch.Tensor, target: torch.Tensor, layer: str | None = None
) -> torch.Tensor:
    """Grad-CAM maps ``(B, H, W)`` in [0, 1] of ``images (B, 1, H, W)`` for classes ``target (B,)``.

    ``layer``: a dotted module name; by default :func:`find_target_layer` at the images' size.
    The model is run in eval mode with test-time augmentation off; its state is restored.
    """
    if images.dim() != 4:
        raise CxrlabError(
            f"Grad-CAM: expected images of shape (B, 1, H, W), got {tuple(images.shape)}"
        )
    with _explaining(model):
        if layer is None:
            layer = find_target_layer(model, size=(images.shape[-2], images.shape[-1]))
        cams, _ = _gradcam(model, images, torch.as_tensor(target), layer)
    return cams


# --------------------------------------------------------------------------- shares


def border_frame(height: int, width: int, border: float = BORDER) -> np.ndarray:
    """Bool (H, W): the outer ``border`` fraction of each side."""
    frame = np.zeros((height, width), dtype=bool)
    by, bx = int(round(border * height)), int(round(border * width))
    if by:
        frame[:by] = frame[-by:] = True
    if bx:
        frame[:, :bx] = frame[:, -bx:] = True
    return frame


def cam_shares(
    cams: np.ndarray, lung_masks: np.ndarray, border: float = BORDER
) -> dict[str, np.ndarray]:
    """Per image: the share of the map's mass in the lungs, in the border frame, elsewhere.

    ``lung = lung mask minus the border frame``, so the three shares add up to 1. Returns
    arrays (N,): ``lung_share``, ``border_share``, ``other_share`` (NaN for an all-zero map)
    and ``lung_area`` (the fraction of the image in ``lung``: a uniform map's lung share).
    """
    cams = np.asarray(cams, dtype=np.float64)
    masks = np.asarray(lung_masks, dtype=bool)
    if cams.ndim != 3 or cams.shape != masks.shape:
        raise CxrlabError(
            f"cam_shares: maps {cams.shape} and lung masks {masks.shape} must both be (N, H, W)"
        )
    frame = border_frame(cams.shape[1], cams.shape[2], border)
    lung = masks & ~frame
    other = ~(lung | frame)
    total = cams.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        denominator = np.where(total > 0, total, np.nan)
        return {
            "lung_share": (cams * lung).sum(axis=(1, 2)) / denominator,
            "border_share": (cams * frame).sum(axis=(1, 2)) / denominator,
            "other_share": (cams * other).sum(axis=(1, 2)) / denominator,
            "lung_area": lung.mean(axis=(1, 2)),
        }


# --------------------------------------------------------------------------- summary


def json_number(value: float) -> float | None:
    """``value`` for a JSON file: None where it is not finite (JSON has no NaN); the report's
    :func:`cxrlab.reporting.tables.number` reads it back as NaN."""
    value = float(value)
    return value if math.isfinite(value) else None


def _mean(values: np.ndarray) -> float | None:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return json_number(values.mean()) if values.size else None


def _to_tensor(images: np.ndarray, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    batch = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)
    return batch.to(device=device, dtype=dtype).div_(255.0)


def gradcam_summary(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    *,
    out_png: Path | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    examples_per_cell: int = 2,
    seed: int = 0,
    title: str = "",
    layer: str | None = None,
) -> GradcamSummary:
    """Grad-CAM of the predicted class of every image and the share of it in the lung fields.

    ``images``: uint8 ``(N, S, S)`` at the model's input size; ``labels``: true class indices;
    ``layer``: the Grad-CAM layer (default: :func:`find_target_layer` at ``S`` px).
    Returns the record saved as ``gradcam.json`` (plain floats, None where undefined); the
    share means leave out the ``n_zero_maps`` images whose map is zero everywhere (no positive
    evidence at the layer).
    With ``out_png``, also draws example overlays there (see :func:`plot_gradcam_examples`).
    """
    images = np.asarray(images)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if images.ndim != 3 or images.shape[1] != images.shape[2] or len(images) == 0:
        raise CxrlabError(
            f"Grad-CAM: expected square images (N, S, S) with N > 0, got {images.shape}"
        )
    if len(labels) != len(images):
        raise CxrlabError(f"Grad-CAM: {len(labels)} labels for {len(images)} images")
    if labels.min() < 0 or labels.max() >= len(classes):
        raise CxrlabError(f"Grad-CAM: labels must lie in 0..{len(classes) - 1} (one per class)")
    if batch_size < 1:
        raise CxrlabError(f"Grad-CAM: batch_size must be at least 1 (got {batch_size})")
    n, size = len(images), images.shape[1]
    model = model.to(device)
    _, dtype = _model_device_dtype(model)

    probs = np.zeros((n, len(classes)), dtype=np.float64)
    keys = ("lung_share", "border_share", "other_share", "lung_area")
    shares = {key: np.zeros(n) for key in keys}
    segmented = np.zeros(n, dtype=bool)
    starts = range(0, n, batch_size)
    with _explaining(model):
        if layer is None:
            layer = find_target_layer(model, size=size)
        for start in track(starts, total=len(starts), description="Grad-CAM"):
            stop = min(start + batch_size, n)
            batch = _to_tensor(images[start:stop], device, dtype)
            cams, logits = _gradcam(model, batch, None, layer)
            probs[start:stop] = torch.softmax(logits.float(), dim=1).cpu().numpy()
            masks, segmented[start:stop] = lung_masks(images[start:stop])
            for key, values in cam_shares(cams.cpu().numpy(), masks).items():
                shares[key][start:stop] = values

    predicted = probs.argmax(axis=1)
    correct = predicted == labels
    lung_share, lung_area = _mean(shares["lung_share"]), _mean(shares["lung_area"])
    summary = GradcamSummary(
        n_images=int(n),
        target="predicted class",
        layer=layer,
        lung_share=lung_share,
        border_share=_mean(shares["border_share"]),
        other_share=_mean(shares["other_share"]),
        lung_area=lung_area,
        lung_enrichment=(
            json_number(lung_share / lung_area) if lung_share is not None and lung_area else None
        ),
        lung_share_by_class={
            name: _mean(shares["lung_share"][labels == index]) for index, name in enumerate(classes)
        },
        lung_share_correct=_mean(shares["lung_share"][correct]),
        lung_share_wrong=_mean(shares["lung_share"][~correct]),
        segmented=float(segmented.mean()),
        n_zero_maps=int((~np.isfinite(shares["lung_share"])).sum()),
        segmenter=segmenter_label(),
    )
    if out_png is not None:
        plot_gradcam_examples(
            model,
            images,
            labels,
            probs,
            classes,
            Path(out_png),
            layer=layer,
            device=device,
            examples_per_cell=examples_per_cell,
            seed=seed,
            title=title,
        )
    return summary


def _pick_examples(
    labels: np.ndarray,
    predicted: np.ndarray,
    class_index: int,
    per_cell: int,
    rng: np.random.Generator,
) -> tuple[list[int], list[int]]:
    """Up to ``per_cell`` correctly and ``per_cell`` wrongly classified images of one true class."""
    picks = []
    for wanted in (True, False):
        pool = np.flatnonzero((labels == class_index) & ((predicted == labels) == wanted))
        chosen = rng.choice(pool, size=min(per_cell, pool.size), replace=False) if pool.size else []
        picks.append(sorted(int(i) for i in chosen))
    return picks[0], picks[1]


def plot_gradcam_examples(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    path: Path,
    *,
    layer: str | None = None,
    device: str | torch.device = "cpu",
    examples_per_cell: int = 2,
    seed: int = 0,
    title: str = "",
) -> Path:
    """One row per true class: ``examples_per_cell`` correct then as many misclassified films,
    each with its Grad-CAM (predicted class) overlaid and the lung mask outlined (dashed where
    it is the fallback template); returns ``path``.

    Examples are drawn reproducibly with ``seed``; Grad-CAM is recomputed for them only.
    """
    per_cell = max(1, int(examples_per_cell))
    predicted = probs.argmax(axis=1)
    rng = np.random.default_rng(seed)
    rows = [_pick_examples(labels, predicted, c, per_cell, rng) for c in range(len(classes))]
    chosen = sorted({i for correct, wrong in rows for i in (*correct, *wrong)})
    cams: dict[int, np.ndarray] = {}
    if chosen:
        _, dtype = _model_device_dtype(model)
        batch = _to_tensor(images[chosen], device, dtype)
        target = torch.as_tensor(predicted[chosen], device=batch.device)
        maps = gradcam(model, batch, target, layer).cpu().numpy()
        cams = dict(zip(chosen, maps))

    names = [figure_text(c) for c in classes]
    columns = 2 * per_cell
    height = PANEL_INCHES * len(classes) + (0.4 if title else 0.1)
    figure = new_figure(PANEL_INCHES * columns, height)
    axes = np.asarray(figure.subplots(len(classes), columns, squeeze=False))
    for class_index, (correct, wrong) in enumerate(rows):
        for group, picks, label in ((0, correct, "correct"), (1, wrong, "misclassified")):
            for slot in range(per_cell):
                ax = axes[class_index, group * per_cell + slot]
                if slot >= len(picks):
                    empty_panel(ax, "none")
                    ax.set_title(f"true {names[class_index]}: no {label}", fontsize=6.5)
                    continue
                i = picks[slot]
                (mask,), (segmented,) = lung_masks(images[i : i + 1])
                ax.imshow(images[i], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
                ax.imshow(
                    cams[i],
                    cmap=CAM_CMAP,
                    vmin=0.0,
                    vmax=1.0,
                    alpha=CAM_ALPHA,
                    interpolation="bilinear",
                )
                if mask.any() and not mask.all():
                    ax.contour(  # dashed: where no plausible two-lung mask was found
                        mask.astype(np.float32),
                        levels=[0.5],
                        colors=MASK_COLOUR,
                        linewidths=0.6,
                        linestyles="solid" if segmented else "dashed",
                    )
                pred = int(predicted[i])
                ax.set_title(
                    f"true {names[class_index]} → pred {names[pred]} ({probs[i, pred]:.2f})",
                    fontsize=6.5,
                    color="black" if pred == labels[i] else "#b00000",
                )
                ax.set_xticks([])
                ax.set_yticks([])
    if title:
        figure.suptitle(figure_text(title), fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(figure, path)
