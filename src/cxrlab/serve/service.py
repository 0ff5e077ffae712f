"""The served model: what it is (``GET /api/model``) and its answer for uploaded films.

Films are decoded and resized by :func:`cxrlab.data.cache.decode_square`, the code ``cxrlab
predict`` reads files with, and their probabilities come from the same
:class:`~cxrlab.evaluation.predict.Predictor` (calibrated, with test-time augmentation where the
run uses it). Grad-CAM (:mod:`cxrlab.evaluation.gradcam`) and the "unlike the training films"
score (:mod:`cxrlab.evaluation.ood`) need the network's inside, so the PyTorch backend only.
One film's failure raises :class:`~cxrlab.errors.ImageReadError` naming it.
"""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
from PIL import Image
from torch import nn

from cxrlab.data.cache import decode_square
from cxrlab.data.reader import DecodedImage
from cxrlab.errors import CxrlabError
from cxrlab.evaluation.external import resolve_model
from cxrlab.evaluation.gradcam import CAM_CMAP, find_target_layer, gradcam
from cxrlab.evaluation.ood import OodStats, head_features, load_stats_for
from cxrlab.evaluation.predict import Predictor, load_predictor
from cxrlab.models.registry import head_inputs
from cxrlab.serve import schemas

ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})
ALPHA_WARNING = "the image has transparency (alpha); it was dropped and the stored pixels read"
ONNX_REASON = "the ONNX graph outputs the probabilities only; serve the run's model.pt for {what}"
OVERLAY_MAX_ALPHA = 0.6  # the overlay's opacity where the Grad-CAM map is highest (0 where 0)
MIN_PNG_SIDE = 256  # films and overlays smaller than this are enlarged for the page
# Below this many films a request runs PyTorch on one CPU thread: called from the server's worker
# thread (not the main thread), CPU inference with several intra-op threads was 2.5x slower for
# one film (MobileNetV2, 128 px, 2 cores: 67 ms against 27 ms) and faster only from 16 films on.
ONE_THREAD_BELOW = 16
# Films decoded at once, over all requests: each takes up to 8 bytes per pixel of the 80 MP limit
# (cxrlab.data.reader), so decoding never holds more than about 2 x 640 MB whatever is uploaded.
DECODE_SLOTS = 2


@contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """PyTorch's intra-op CPU threads set to ``count`` inside the block (None: unchanged)."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def png_data_url(pixels: np.ndarray) -> str:
    """``data:image/png;base64,...`` of ``uint8`` pixels ``(H, W)`` or ``(H, W, 3)``, enlarged
    (nearest neighbour) to at least :data:`MIN_PNG_SIDE` on the shorter side."""
    image = Image.fromarray(np.ascontiguousarray(pixels))
    scale = max(1, -(-MIN_PNG_SIDE // min(image.size)))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def overlay(film: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """The film ``uint8 (S, S)`` under the Grad-CAM map ``(S, S)`` in 0..1, coloured as in the
    report's figures (``jet``) and blended by the map itself: opaque up to
    :data:`OVERLAY_MAX_ALPHA` where the map is highest, the film alone where it is 0, so that
    the film stays readable under it: ``uint8 (S, S, 3)``."""
    from matplotlib import colormaps

    cam = np.clip(cam, 0.0, 1.0)
    heat = colormaps[CAM_CMAP](cam)[..., :3]
    grey = np.repeat(film[..., None].astype(np.float64) / 255.0, 3, axis=2)
    alpha = OVERLAY_MAX_ALPHA * cam[..., None]
    mixed = (1.0 - alpha) * grey + alpha * heat
    return np.clip(np.rint(mixed * 255.0), 0, 255).astype(np.uint8)


@dataclass
class Film:
    """One uploaded film: the name to show and its bytes."""

    filename: str
    data: bytes | bytearray


class ServedModel:
    """A model loaded once for serving; :meth:`predict` is safe to call from several threads
    (the network runs one batch at a time: Grad-CAM and the feature hook are per-model)."""

    def __init__(self, model: Path, *, device: str = "auto") -> None:
        self.model_file, self.run_dir = resolve_model(Path(model))
        self.predictor: Predictor = load_predictor(self.model_file, device)
        self._lock = threading.Lock()
        self.decoding = threading.BoundedSemaphore(DECODE_SLOTS)  # films decoded at once
        self.limitations = self._limitations()
        self.sources = self._sources()
        self.ood, self.ood_reason = self._ood()
        self.layer, self.gradcam_reason = self._gradcam_layer()

    def _limitations(self) -> list[str]:
        if self.run_dir is None:
            return []
        from cxrlab.reporting.model_card import known_limitations

        return known_limitations(self.run_dir)

    def _sources(self) -> str | None:
        if self.run_dir is None:
            return None
        from cxrlab.reporting.model_card import training_sources

        return training_sources(self.run_dir)

    def _ood(self) -> tuple[OodStats | None, str]:
        if self.predictor.model is None:
            return None, ONNX_REASON.format(what="the check")
        return load_stats_for(self.predictor.model, self.model_file)

    def _gradcam_layer(self) -> tuple[str | None, str]:
        if self.predictor.model is None:
            return None, ONNX_REASON.format(what="Grad-CAM")
        try:
            return find_target_layer(self.predictor.model, self.predictor.spec.image_size), ""
        except CxrlabError as exc:
            return None, str(exc)

    @property
    def notes(self) -> list[str]:
        notes = list(self.predictor.notes)
        if self.run_dir is None:
            notes.append(
                f"{self.model_file.name} is not in a finished run folder: "
                "the model card's known limitations are unknown"
            )
        if self.predictor.point is None:
            notes.append("the model has no operating point: the decision is the most probable")
        return notes

    def info(self, max_upload_mb: float) -> schemas.ModelInfo:
        """What ``GET /api/model`` answers (``max_upload_mb``: the app's upload limit)."""
        p, stats = self.predictor, self.ood
        point = None
        if p.point is not None:
            point = schemas.OperatingPointInfo(
                label=p.point.label,
                target_recall=p.point.target_recall,
                threshold=p.point.threshold,
                description=(
                    f"{p.point.target}: call {p.point.label} when its probability reaches "
                    f"{p.point.threshold:.3f} (chosen on the run's validation split), "
                    "otherwise the most probable other class"
                ),
            )
        ood = schemas.OodInfo(available=False, reason=self.ood_reason)
        if stats is not None:
            ood = schemas.OodInfo(
                available=True,
                method=stats.describe(),
                threshold=stats.threshold,
                quantile=stats.quantile,
                n_train=stats.n_train,
                n_val=stats.n_val,
                val_flag_rate=stats.val_flag_rate,
            )
        return schemas.ModelInfo(
            name=self.model_file.name,
            arch=p.arch,
            classes=list(p.classes),
            image_size=p.spec.image_size,
            resize=p.spec.resize,
            crop=p.spec.crop,
            runtime=p.runtime,
            temperature=p.temperature,
            operating_point=point,
            gradcam=schemas.GradcamInfo(
                available=self.layer is not None,
                layer=self.layer,
                reason=self.gradcam_reason or None,
            ),
            ood=ood,
            known_limitations=self.limitations,
            training_sources=self.sources,
            notes=self.notes,
            max_upload_mb=max_upload_mb,
        )

    def _decode(self, film: Film) -> DecodedImage:
        """One film decoded and resized, waiting for one of :data:`DECODE_SLOTS`."""
        with self.decoding:
            return decode_square(film.data, self.predictor.spec, name=film.filename)

    def predict(self, films: list[Film], *, with_gradcam: bool = False) -> list[schemas.FilmResult]:
        """Answers for ``films``, in order; raises ``ImageReadError`` for the first bad one."""
        p = self.predictor
        decoded = [self._decode(film) for film in films]
        squares = np.stack([d.pixels for d in decoded])
        images = squares[:, None].astype(np.float32) / np.float32(255.0)
        small = len(films) < ONE_THREAD_BELOW and (p.device is None or p.device.type == "cpu")
        scored = self.ood is not None and p.model is not None
        with self._lock, cpu_threads(1 if small else None):
            with head_inputs(cast(nn.Module, p.model)) if scored else nullcontext([]) as captured:
                probs = np.asarray(p.batch_probs(images), dtype=np.float64)
            decisions = probs.argmax(axis=1)
            scores = None
            if scored:  # the features of the pass that gave the probabilities, read once
                assert self.ood is not None and p.model is not None  # what scored says
                features = torch.cat(captured).numpy().astype(np.float64)
                if len(features) != len(images):  # test-time augmentation: several views each
                    features = head_features(p.model, images)  # the score wants the single view
                scores = self.ood.score(features)
            cams = None
            if with_gradcam and self.layer is not None and p.model is not None:
                batch = torch.from_numpy(images).to(p.device)
                target = torch.from_numpy(decisions).to(p.device)
                cams = gradcam(p.model, batch, target, self.layer).cpu().numpy()
        decided = p.point.decide(probs, p.classes) if p.point is not None else None
        results = []
        for i, film in enumerate(films):
            warnings = [ALPHA_WARNING] if decoded[i].mode in ALPHA_MODES else []
            ood = None
            if scores is not None and self.ood is not None:
                unlike = bool(self.ood.flag(scores[i : i + 1])[0])
                ood = schemas.OodResult(
                    score=float(scores[i]), threshold=self.ood.threshold, unlike_training=unlike
                )
                if unlike:
                    warnings.insert(
                        0,
                        f"unlike the training films (score {scores[i]:.1f} above the threshold "
                        f"{self.ood.threshold:.1f}): the probabilities may not apply to it",
                    )
            results.append(
                schemas.FilmResult(
                    filename=film.filename,
                    probabilities={c: float(v) for c, v in zip(p.classes, probs[i])},
                    decision=p.classes[int(decisions[i])],
                    operating_decision=(
                        p.classes[int(decided[i])] if decided is not None else None
                    ),
                    ood=ood,
                    film_png=png_data_url(squares[i]),
                    gradcam_png=png_data_url(overlay(squares[i], cams[i]))
                    if cams is not None
                    else None,
                    warnings=warnings,
                )
            )
        return results
