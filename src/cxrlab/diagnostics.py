"""What a run's ``robustness.json`` and ``gradcam.json`` hold, as typed records.

:func:`cxrlab.evaluation.robustness.robustness_eval` returns a :class:`Robustness` and
:func:`cxrlab.evaluation.gradcam.gradcam_summary` a :class:`GradcamSummary`; the diagnose
pipeline saves them (``to_json``); the report, the model card and the CLI load them and read
attributes. Loading is strict, as for ``metrics.json`` (:mod:`cxrlab.records`): an unknown or
missing key is an error naming the file and the key.

The one tolerance is explicit: files written before the shortcut probes have no ``chance``,
no ``lung_fields`` and no ``balanced_accuracy`` per variant, so exactly those are optional;
files written before the learned lung segmenter have no ``segmenter`` (theirs was the heuristic).
The variants' names and descriptions (:data:`VARIANTS`, the shortcut probes :data:`PROBES`) and
the reading of the lungs-hidden probe (:func:`probe_reading`) live here too: the pixel work is
:mod:`cxrlab.evaluation.robustness`'s, the words are the records'. Like :mod:`cxrlab.records`,
this module imports neither torch nor Lightning.
"""

from __future__ import annotations

from dataclasses import dataclass

from cxrlab.records import STRICT, JsonRecord

ROTATION_DEGREES = 10.0
DARKEN_FACTOR = 0.6
MID_GREY = 0.5  # what the probes put in place of the hidden region (inputs are 0..1)
PROBE_MARGIN = 0.15  # lungs hidden, balanced accuracy this far above chance: reads outside them
# name: description, in report order (cxrlab.evaluation.robustness.VARIANT_LIST does them)
VARIANTS: dict[str, str] = {
    "squash": "resized to a square ignoring the aspect ratio (stretched)",
    "pad": "aspect ratio kept, padded with black bars to a square",
    "rotate+10": (
        f"the model's own preprocessing, rotated {ROTATION_DEGREES:g}° counter-clockwise about "
        "the centre (bilinear, black corners)"
    ),
    "rotate-10": (
        f"the model's own preprocessing, rotated {ROTATION_DEGREES:g}° clockwise about the "
        "centre (bilinear, black corners)"
    ),
    "darken": f"the model's own preprocessing, every intensity multiplied by {DARKEN_FACTOR:g}",
    "lungs-hidden": (
        f"the model's own preprocessing, the lung fields replaced by mid-grey ({MID_GREY:g}); "
        "lung fields: the heuristic segmentation of that image, its template where it fails"
    ),
    "lungs-only": (
        f"the model's own preprocessing, everything outside the lung fields replaced by "
        f"mid-grey ({MID_GREY:g})"
    ),
}
PROBES: tuple[str, ...] = ("lungs-hidden", "lungs-only")  # the shortcut probes


@dataclass(frozen=True, kw_only=True)
class VariantResult:
    """The test films presented one way (squashed, padded, rotated, darkened, a probe)."""

    __pydantic_config__ = STRICT
    description: str
    accuracy: float
    balanced_accuracy: float | None = None  # None in files from before the shortcut probes
    macro_f1: float
    recall: dict[str, float]  # per class
    accuracy_drop: float  # the reference variant's accuracy minus this one's (positive: worse)


@dataclass(frozen=True)
class Chance:
    """What guessing scores on the test labels: any constant guess's balanced accuracy
    (``1/k``, ``k`` the classes present) and the accuracy of always guessing the majority."""

    __pydantic_config__ = STRICT
    balanced_accuracy: float
    accuracy: float
    majority_class: str


@dataclass(frozen=True)
class LungFields:
    """The lung fields the probes hid or kept, on the model's own squares (``mode``): the share
    of films whose lungs were segmented rather than templated, overall and per class (None
    for a class without films)."""

    __pydantic_config__ = STRICT
    mode: str
    segmented: float
    n_segmented: int
    segmented_by_class: dict[str, float | None]
    segmenter: str = (
        "heuristic"  # what made the masks (cxrlab.lungs.segmenter_label); older: heuristic
    )


@dataclass(frozen=True, kw_only=True)
class Robustness(JsonRecord):
    """``robustness.json``: test accuracy on every variant of the films (``variants``, in
    report order) against the ``reference`` (the model's own resize mode), with the chance
    levels and lung fields of the shortcut probes (None in files from before them)."""

    __pydantic_config__ = STRICT
    reference: str
    image_size: int
    n_images: int  # readable test films evaluated
    unreadable: int  # test films left out
    variants: dict[str, VariantResult]
    chance: Chance | None = None
    lung_fields: LungFields | None = None


@dataclass(frozen=True)
class GradcamSummary(JsonRecord):
    """``gradcam.json``: where the Grad-CAM maps of the predicted class fall. The shares are
    means over the films whose map is not zero everywhere, None where undefined (no such
    films, or none of the class / right / wrong)."""

    __pydantic_config__ = STRICT
    n_images: int
    target: str  # which class is explained: "predicted class"
    layer: str  # the Grad-CAM layer, a dotted module name
    lung_share: float | None
    border_share: float | None
    other_share: float | None
    lung_area: float | None  # the lung share of a uniform map
    lung_enrichment: float | None  # lung_share / lung_area
    lung_share_by_class: dict[str, float | None]  # by true class
    lung_share_correct: float | None
    lung_share_wrong: float | None
    segmented: float  # share of films whose lungs were segmented rather than templated
    n_zero_maps: int  # films whose map is zero everywhere, left out of the shares
    segmenter: str = "heuristic"  # what made the masks (cxrlab.lungs.segmenter_label)


def probe_reading(robustness: Robustness | None) -> str:
    """One line on the lungs-hidden probe of a ``robustness.json``: its balanced accuracy
    against chance and what that says ("not computed" where the file predates the probes)."""
    hidden = robustness.variants.get("lungs-hidden") if robustness else None
    value = hidden.balanced_accuracy if hidden else None
    chance = robustness.chance.balanced_accuracy if robustness and robustness.chance else None
    if value is None or chance is None:
        return "lungs hidden: not computed"
    if value - chance > PROBE_MARGIN:
        verdict = "the model reads something outside the lungs"
    elif chance - value > PROBE_MARGIN:
        verdict = "falls below chance"
    else:
        verdict = "falls to near chance"
    return f"lungs hidden: balanced accuracy {value:.3f} vs chance {chance:.3f}: {verdict}"
