"""What the JSON API answers (Pydantic models, so ``/openapi.json`` describes every field)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class OperatingPointInfo(BaseModel):
    """The decision threshold the run chose on its validation split."""

    label: str = Field(description="The class the threshold is on.")
    target_recall: float = Field(description="The recall of that class it was chosen for.")
    threshold: float = Field(description="Call the class when its probability reaches this.")
    description: str = Field(description="The rule in words.")


class GradcamInfo(BaseModel):
    available: bool
    layer: str | None = Field(
        default=None, description="The layer whose activations are explained."
    )
    reason: str | None = Field(default=None, description="Why Grad-CAM is unavailable, when it is.")


class OodInfo(BaseModel):
    available: bool
    method: str | None = Field(default=None, description="The score and its threshold, in words.")
    threshold: float | None = None
    quantile: float | None = Field(default=None, description="Of the validation films' scores.")
    n_train: int | None = None
    n_val: int | None = None
    val_flag_rate: float | None = Field(
        default=None, description="Share of validation films flagged."
    )
    reason: str | None = Field(
        default=None, description="Why the check is unavailable, when it is."
    )


class ModelInfo(BaseModel):
    """``GET /api/model``: the served model and what its answers can and cannot say."""

    name: str = Field(description="The model file's name.")
    arch: str
    classes: list[str]
    image_size: int = Field(description="Films are resized to this side in pixels.")
    resize: str = Field(description="squash (stretch to a square) or pad (keep the aspect).")
    crop: str = Field(
        default="none", description="lungs: each film is cut to its lung box before resizing."
    )
    runtime: str = Field(description="PyTorch or ONNX Runtime.")
    temperature: float = Field(description="Probabilities are softmax(logits / temperature).")
    operating_point: OperatingPointInfo | None
    gradcam: GradcamInfo
    ood: OodInfo
    known_limitations: list[str] = Field(description="From the run's model card.")
    training_sources: str | None = Field(
        None,
        description="The sources of the training films with their films per class (null when "
        "the model is not in a run folder).",
    )
    notes: list[str] = Field(description="Caveats about this model or how it is served.")
    max_upload_mb: float = Field(description="Largest request body accepted.")


class OodResult(BaseModel):
    score: float = Field(description="Mahalanobis distance to the training films' features.")
    threshold: float
    unlike_training: bool = Field(description="score > threshold.")


class FilmResult(BaseModel):
    """One film's answer."""

    filename: str
    probabilities: dict[str, float] = Field(description="Calibrated, per class; they sum to 1.")
    decision: str = Field(description="The most probable class.")
    operating_decision: str | None = Field(
        description="The class the run's operating point decides (null without one)."
    )
    ood: OodResult | None = Field(description="Null where the check is unavailable.")
    film_png: str = Field(description="The film as the model saw it, a PNG data URL.")
    gradcam_png: str | None = Field(
        description="Grad-CAM of the decision over the film, a PNG data URL (when asked for)."
    )
    warnings: list[str]


class PredictResponse(BaseModel):
    """``POST /api/predict``: one result per ``file`` part, in order."""

    results: list[FilmResult]


class ErrorDetail(BaseModel):
    """Every 4xx: one line that starts with the file's name where there is one."""

    detail: str
