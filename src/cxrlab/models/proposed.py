"""cxrlab's own models: MobileNetV2 (ImageNet) with a head designed for this data.

``proposed`` (the second design, issue 13): MobileNetV2 whose head is a :class:`TwoStageHead`.
Its "abnormal vs NORMAL" decision is learnt from NORMAL vs PNEUMONIA films alone, the one
contrast of the Kaggle data without the age/hospital confound (both are children's films of
one hospital); "COVID19 vs PNEUMONIA" is learnt among abnormal films only. So the adult COVID19
films never teach the network that an adult's film is abnormal. It is trained with the
baseline's fine-tuning recipe (the ``proposed`` preset equals ``finetune``), so a comparison
with fine-tuned MobileNetV2 measures the head alone (README, "The second design").

``proposed_v1`` (the first design, kept for its README results): MobileNetV2 with film
equalisation and a two-scale GeM head, trained with an EMA of the weights (preset ``proposed_v1``):

- **Histogram equalisation of every film inside the network.** The classes come from
  different hospitals and film types, so brightness and contrast differ by class (COVID19
  adult films are darker and flatter than the pediatric NORMAL/PNEUMONIA ones). Equalising
  each film's grey-level histogram maps any monotone change of intensity to the same input,
  so exposure cannot be used as a shortcut; it also stretches the lung texture.
- **Generalised-mean (GeM) pooling at two scales.** Opacities are small, patchy and
  peripheral; average pooling over the last 4 x 4 map (128 px) dilutes them. GeM (p learned,
  starting at 3) leans towards the strongest responses, and the stride-16 stage adds a finer
  8 x 8 view with 96 more features.

``proposed_v1_noeq`` is the first design without equalisation (for its ablation).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from cxrlab.errors import CxrlabError


def equalize_histogram(images: torch.Tensor, levels: int = 256) -> torch.Tensor:
    """Global histogram equalisation of each ``(1, H, W)`` image in 0..1 (as PIL
    ``ImageOps.equalize``)."""
    b = images.shape[0]
    grey = (images.clamp(0, 1) * (levels - 1)).round().long().reshape(b, -1)
    counts = torch.zeros(b, levels, device=images.device).scatter_add_(
        1, grey, torch.ones_like(grey, dtype=torch.float32)
    )
    cdf = counts.cumsum(1)
    lowest = cdf.gather(1, grey.min(1, keepdim=True).values)  # pixels at the darkest level map to 0
    mapped = (cdf - lowest) / (grey.shape[1] - lowest).clamp_min(1)
    return mapped.clamp_min(0).gather(1, grey).reshape(images.shape).to(images.dtype)


class HistogramEqualization(nn.Module):
    """:func:`equalize_histogram` as a layer (no parameters), applied to the 0..1 grayscale
    input."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return equalize_histogram(images)


class GeM(nn.Module):
    """Generalised-mean pooling, ``(mean x^p)^(1/p)`` over space, with ``p`` learned."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.clamp(1.0, 8.0)
        return x.clamp_min(self.eps).pow(p).mean((2, 3)).pow(1.0 / p)


class EqualizedMultiScaleNet(nn.Module):
    """``features`` of a torchvision MobileNetV2 split at stride 16, pooled at both scales."""

    def __init__(
        self, features: nn.Sequential, num_classes: int, *, split_at: int = 14, dropout: float = 0.2
    ) -> None:
        super().__init__()
        self.stage16 = features[:split_at]
        self.stage32 = features[split_at:]
        self.pool16 = nn.AdaptiveAvgPool2d(
            1
        )  # the stride-16 block output is linear (can be negative)
        self.pool32 = GeM()
        self.dropout = nn.Dropout(dropout)
        width16 = cast(int, self.stage16[-1].out_channels)
        width32 = cast(int, self.stage32[-1].out_channels)
        self.head = nn.Linear(width16 + width32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mid = self.stage16(x)
        top = self.stage32(mid)
        pooled = torch.cat([self.pool16(mid).flatten(1), self.pool32(top)], dim=1)
        return self.head(self.dropout(pooled))


TWO_STAGE_ROLES = (
    "NORMAL",
    "PNEUMONIA",
)  # the normal class, and the abnormal class from the same source


def two_stage_roles(classes: list[str]) -> tuple[int, int, int]:
    """``(normal, contrast, other)`` class indices of a three-class set with NORMAL and PNEUMONIA
    (``other``: the remaining class, COVID19 on the Kaggle set). Generic names ``class0..2`` (the
    registry's shape check) take the Kaggle order: COVID19, NORMAL, PNEUMONIA."""
    if len(classes) != 3:
        raise CxrlabError(
            "the two-stage head needs three classes (NORMAL, PNEUMONIA and one more), "
            f"got {', '.join(classes)}"
        )
    if classes == [f"class{i}" for i in range(3)]:
        return 1, 2, 0
    missing = [c for c in TWO_STAGE_ROLES if c not in classes]
    if missing:
        raise CxrlabError(
            "the two-stage head needs classes NORMAL and PNEUMONIA; "
            f"{', '.join(classes)} lacks {', '.join(missing)}"
        )
    normal, contrast = (classes.index(c) for c in TWO_STAGE_ROLES)
    return normal, contrast, 3 - normal - contrast


class TwoStageHead(nn.Module):
    """Three class log-probabilities from two decisions (the second ``proposed`` design, issue 13).

    On the Kaggle set the COVID19 films are adults from other hospitals and the NORMAL and
    PNEUMONIA films children from one hospital, so a flat three-class head can learn "adult film =
    COVID19". The one contrast without that confound is NORMAL vs PNEUMONIA. This head factorises
    the decision: ``a`` (is the film abnormal) is trained on NORMAL and PNEUMONIA films only, ``q``
    (PNEUMONIA rather than the other abnormal class) on the two abnormal classes only::

        log p(NORMAL)    = log σ(-a)
        log p(other)     = log σ(a) + log σ(-q)
        log p(PNEUMONIA) = log σ(a) + log σ(q)

    The output is a log-probability per class, so it is a valid logit vector for every consumer
    (softmax, temperature, ONNX); :meth:`loss` is the masked two-stage loss training uses.
    """

    def __init__(self, in_features: int, classes: list[str]) -> None:
        super().__init__()
        # like the nn.Linear it replaces: one output per class
        self.in_features, self.out_features = in_features, 3
        self.linear = nn.Linear(in_features, 2)
        self.normal, self.contrast, self.other = two_stage_roles(list(classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, q = self.linear(x).float().unbind(1)
        abnormal = nn.functional.logsigmoid(a)
        parts = {
            self.normal: nn.functional.logsigmoid(-a),
            self.other: abnormal + nn.functional.logsigmoid(-q),
            self.contrast: abnormal + nn.functional.logsigmoid(q),
        }
        return torch.stack([parts[k] for k in range(3)], dim=1)

    def loss(
        self, log_probs: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor
    ) -> torch.Tensor:
        """Stage 1 (abnormal vs NORMAL) on NORMAL and PNEUMONIA films only; stage 2 (PNEUMONIA vs
        the other class) on abnormal films only; each a class-weighted mean, summed."""
        log_probs = log_probs.float()
        abnormal = torch.logsumexp(log_probs[:, [self.other, self.contrast]], dim=1)  # log σ(a)
        own = log_probs.gather(1, target[:, None]).squeeze(1)
        weights = class_weights[target]
        stage1 = (target != self.other).float() * weights
        stage2 = (target != self.normal).float() * weights
        nll1 = -torch.where(target == self.normal, own, abnormal)
        nll2 = -(own - abnormal)
        return (nll1 * stage1).sum() / stage1.sum().clamp_min(1e-12) + (
            nll2 * stage2
        ).sum() / stage2.sum().clamp_min(1e-12)
