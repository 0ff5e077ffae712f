"""ONNX export of cxrlab checkpoints and prediction through ONNX Runtime.

:func:`export_onnx` writes one self-contained ``.onnx`` file whose graph is
``softmax(model(images) / T)``: input ``images`` ``(N, 1, S, S)`` float32 in 0..1
(dynamic batch), output ``probabilities`` ``(N, classes)``, calibrated with the run's temperature
``T`` (1 for a model without one). The file's metadata_props carry what prediction needs
(classes, arch, image size, resize mode, crop, temperature and operating point) and the verified
difference from eager PyTorch. The lung crop (``crop`` = ``lungs``) is not in the graph: it runs
before it, in Python (:func:`cxrlab.data.cache.to_square`), as ``cxrlab predict model.onnx``
does. :class:`OnnxModel` runs such a file; :func:`compare_eager_onnx`
measures batch-1 latency of eager PyTorch against ONNX Runtime on the CPU.

Test-time augmentation (a run's ``tta``) is not exported: the graph is the single view.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxrlab import __version__
from cxrlab.errors import ConfigError, CxrlabError
from cxrlab.fileio import atomic_open
from cxrlab.models.registry import CxrClassifier
from cxrlab.records import ModelMeta

ONNX_FORMAT = "cxrlab-onnx-v1"
TOLERANCE = 1e-4  # largest accepted |p_onnx - p_eager| over the verification batch
TTA_NOTE = "test-time augmentation is not part of the ONNX graph (it predicts the single view)"
EXAMPLE_BATCH = 2  # batch size traced at export
VERIFY_BATCH = 3  # a different batch size, so the check also covers the dynamic batch axis


class SoftmaxSingleView(nn.Module):
    """What is exported: calibrated class probabilities of the single (non-TTA) view."""

    def __init__(self, model: CxrClassifier, temperature: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.temperature = float(temperature)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(images) / self.temperature, dim=1)


def available_cores() -> int:
    """CPU cores this process may use (``OMP_NUM_THREADS`` wins when set)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _session(source: str | bytes, *, threads: int | None = None, device: str = "cpu") -> Any:
    """An ONNX Runtime session tuned for latency: all graph optimisations, one intra-op pool."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or available_cores()
    options.log_severity_level = 3  # errors only
    providers = ["CPUExecutionProvider"]
    if device in ("auto", "gpu", "cuda"):
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        elif device in ("gpu", "cuda"):
            raise ConfigError(
                "device", "this onnxruntime has no CUDA provider (use {device} cpu)", value=device
            )
    return ort.InferenceSession(source, options, providers=providers)


def _first_line(exc: BaseException) -> str:
    """``Type: first line`` of the root cause of ``exc`` (the exporters wrap the real error)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:160]}" if text else type(exc).__name__


@contextlib.contextmanager
def _quiet() -> Any:
    """Silence the exporters' progress lines, warnings and log messages."""
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        yield


def _to_onnx(wrapper: nn.Module, example: torch.Tensor, opset: int | None) -> bytes:
    """Serialized ONNX model of ``wrapper`` with a dynamic batch axis.

    The dynamo exporter (``torch.export`` + onnxscript, torch's default) is used first: it
    exported every registry model tried (resnet18, mobilenet_v2, alexnet, efficientnet_b0,
    proposed with its scatter_add/cumsum equalisation) at 32-224 px, while the legacy
    TorchScript exporter fails on alexnet below 224 px (adaptive pooling to 6 x 6 from a map
    whose side is not a multiple of 6). ONNX Runtime latency of the two graphs is the same
    within noise (ORT fuses batch norm and convolutions itself); the dynamo export is slower
    (2-7 s against under 1 s on one thread), a one-off cost. The legacy exporter is kept
    as a fallback for models ``torch.export`` cannot trace; the numeric check after export
    guards both paths.
    """
    names = {"input_names": ["images"], "output_names": ["probabilities"], "opset_version": opset}
    try:
        with _quiet():
            program = torch.onnx.export(
                wrapper,
                (example,),
                dynamo=True,
                external_data=False,
                verbose=False,
                optimize=True,
                dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
                **names,
            )
            assert program is not None  # the dynamo exporter returns its program
            return program.model_proto.SerializeToString()
    except Exception as dynamo_error:
        buffer = io.BytesIO()
        try:
            with _quiet():
                torch.onnx.export(
                    wrapper,
                    (example,),
                    buffer,  # pyright: ignore[reportArgumentType]  # the legacy exporter writes to a file object too
                    dynamo=False,
                    verbose=False,
                    dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}},
                    **names,
                )
        except Exception as legacy_error:
            raise CxrlabError(
                f"ONNX export failed ({_first_line(dynamo_error)}; "
                f"legacy exporter: {_first_line(legacy_error)})"
            ) from legacy_error
        return buffer.getvalue()


def export_model(
    model: CxrClassifier,
    out: Path,
    meta: ModelMeta | None = None,
    *,
    opset: int | None = None,
    source: str = "model",
) -> Path:
    """Export ``model`` (on the CPU, eval mode) to ``out`` and check it against eager PyTorch.

    ``meta`` (default: the model's, every other field at its default) gives the input size,
    resize mode and crop, ``tta`` (left out of the graph, said in the metadata), the
    ``temperature`` (divides the logits in the graph) and the ``operating_point`` (stored as
    metadata for :func:`cxrlab.evaluation.predict.load_predictor`), as in ``model.pt``.

    Raises :class:`CxrlabError` (naming ``source``) when the exporters fail or the
    probabilities differ by more than :data:`TOLERANCE` on a fixed random batch.
    """
    import onnx

    meta = meta if meta is not None else ModelMeta.of(model)
    image_size = meta.image_size
    # stored with the model, as in model.pt's extra
    calibration = {k: meta.extra()[k] for k in ("temperature", "operating_point")}
    model = model.cpu().eval()
    wrapper = SoftmaxSingleView(model, meta.temperature).eval()
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(EXAMPLE_BATCH, 1, image_size, image_size, generator=generator)
    check = torch.rand(VERIFY_BATCH, 1, image_size, image_size, generator=generator)
    try:
        with torch.no_grad():
            expected = wrapper(check).numpy()
    except Exception as exc:
        raise CxrlabError(
            f"{source}: the model does not run on {image_size} px images ({_first_line(exc)})"
        ) from exc
    try:
        data = _to_onnx(wrapper, example, opset)
    except CxrlabError as exc:
        raise CxrlabError(f"{source}: {exc}") from exc
    try:
        got = _session(data).run(None, {"images": check.numpy()})[0]
    except Exception as exc:
        raise CxrlabError(
            f"{source}: the exported ONNX model does not run in ONNX Runtime ({_first_line(exc)})"
        ) from exc
    diff = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
    if not diff <= TOLERANCE:
        raise CxrlabError(
            f"{source}: ONNX Runtime probabilities differ from PyTorch by {diff:.2e} "
            f"(> {TOLERANCE:.0e}); {out} not written"
        )
    proto = onnx.load_from_string(data)
    metadata = {
        "cxrlab_format": ONNX_FORMAT,
        "cxrlab_version": __version__,
        "arch": model.arch,
        "classes": json.dumps(list(model.classes)),
        "image_size": str(int(image_size)),
        "resize": meta.resize,
        "crop": meta.crop,
        "checkpoint_tta": "1" if meta.tta else "0",
        "verified_max_abs_diff": repr(diff),
        "calibration": json.dumps(calibration),
    }
    onnx.helper.set_model_props(proto, metadata)
    with atomic_open(out, "wb") as handle:  # the old file stays until the new one is complete
        handle.write(proto.SerializeToString())
    return out


def is_cxrlab_onnx(path: Path) -> bool:
    """Whether ``path`` is an ONNX model written by :func:`export_model` (it has cxrlab's
    metadata)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # not ONNX at all
        return False
    return any(
        prop.key == "cxrlab_format" and prop.value == ONNX_FORMAT for prop in proto.metadata_props
    )


def export_onnx(checkpoint: Path, out: Path | None = None, *, opset: int | None = None) -> Path:
    """Export a cxrlab checkpoint to ONNX (default: beside it, suffix ``.onnx``); returns the path.

    The graph is ``softmax(model(images) / T)``, the single view; when the checkpoint uses test-time
    augmentation, :attr:`OnnxModel.notes` of the written file says it was left out.
    """
    from cxrlab.models.checkpoint import load_model

    checkpoint = Path(checkpoint)
    out = Path(out) if out is not None else checkpoint.with_suffix(".onnx")
    model, meta = load_model(checkpoint)
    if out.resolve() == checkpoint.resolve():
        raise ConfigError("out", f"{out} is the checkpoint itself; choose another file")
    return export_model(model, out, meta, opset=opset, source=str(checkpoint))


class OnnxModel:
    """A ``.onnx`` file written by :func:`export_onnx`, run by ONNX Runtime.

    ``threads``: intra-op threads (default: the available cores, or ``OMP_NUM_THREADS``);
    ``device``: ``cpu``, or ``auto``/``cuda`` for the CUDA provider when onnxruntime has it.
    """

    def __init__(self, path: Path, *, threads: int | None = None, device: str = "cpu") -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CxrlabError(f"{self.path}: ONNX model does not exist")
        try:
            self.session = _session(str(self.path), threads=threads, device=device)
        except CxrlabError:
            raise
        except Exception as exc:
            raise CxrlabError(
                f"{self.path}: not a readable ONNX model ({_first_line(exc)})"
            ) from exc
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        if meta.get("cxrlab_format") != ONNX_FORMAT:
            raise CxrlabError(
                f"{self.path}: an ONNX model without cxrlab metadata "
                "(write one with `cxrlab export CHECKPOINT --onnx`)"
            )
        try:
            self.arch: str = meta["arch"]
            self.classes: list[str] = list(json.loads(meta["classes"]))
            self.image_size: int = int(meta["image_size"])
            self.resize: str = meta["resize"]
            self.crop: str = meta.get("crop", "none")  # before cxrlab wrote it: no crop
            self.tta_dropped: bool = meta.get("checkpoint_tta") == "1"
            self.max_abs_diff: float = float(meta.get("verified_max_abs_diff", "nan"))
            # temperature and operating point
            calibration = json.loads(meta.get("calibration", "{}"))
            if not isinstance(calibration, dict):
                raise ValueError("calibration is not a JSON object")
        except (KeyError, ValueError) as exc:
            raise CxrlabError(f"{self.path}: damaged cxrlab metadata ({_first_line(exc)})") from exc
        # what prediction needs, read as a checkpoint's is (the graph is the single view: no TTA)
        self.meta: ModelMeta = ModelMeta.from_extra(
            {
                "image_size": self.image_size,
                "resize": self.resize,
                "crop": self.crop,
                **calibration,
            },
            self.path,
            arch=self.arch,
            classes=self.classes,
        )

    @property
    def notes(self) -> list[str]:
        """Caveats to show the user (test-time augmentation left out)."""
        return [TTA_NOTE] if self.tta_dropped else []

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, classes)`` float32 for ``images`` ``(N, 1, S, S)`` in 0..1."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        expected = (1, self.image_size, self.image_size)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise CxrlabError(
                f"{self.path}: expects images of shape (N, {', '.join(map(str, expected))}), "
                f"got {images.shape}"
            )
        return self.session.run(None, {"images": images})[0]


def latency_ms(
    fn: Callable[[Any], object], example: Any, repeats: int = 30, warmup: int = 3
) -> float:
    """Median wall time of ``fn(example)`` in milliseconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn(example)
    times = []
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        fn(example)
        times.append(time.perf_counter() - started)
    return 1000.0 * statistics.median(times)


def compare_eager_onnx(
    model: CxrClassifier,
    onnx_path: Path,
    image_size: int,
    repeats: int = 30,
    *,
    seed: int = 0,
    films: torch.Tensor | None = None,
) -> dict[str, float]:
    """Batch-1 CPU latency of eager PyTorch (eval, no_grad, single view) against ONNX Runtime.

    Both run with ``torch.get_num_threads()`` threads, on the same random image. Returns
    ``eager_ms`` and ``onnx_ms`` (medians over ``repeats``), ``speedup`` (eager / onnx),
    ``max_abs_diff`` (probabilities, on ``films`` ``(N, 1, S, S)`` or else a random batch of 4)
    and ``threads``.
    """
    threads = torch.get_num_threads()
    runtime = OnnxModel(Path(onnx_path), threads=threads)
    wrapper = SoftmaxSingleView(model.cpu().eval(), runtime.meta.temperature).eval()
    generator = torch.Generator().manual_seed(seed)
    one = torch.rand(1, 1, image_size, image_size, generator=generator)
    batch = (
        films.float().cpu()
        if films is not None
        else torch.rand(4, 1, image_size, image_size, generator=generator)
    )
    with torch.no_grad():
        eager_ms = latency_ms(wrapper, one, repeats)
        expected = wrapper(batch).numpy()
    onnx_ms = latency_ms(runtime.predict, one.numpy(), repeats)
    diff = float(np.abs(runtime.predict(batch.numpy()) - expected).max())
    return {
        "eager_ms": eager_ms,
        "onnx_ms": onnx_ms,
        "speedup": eager_ms / onnx_ms,
        "max_abs_diff": diff,
        "threads": float(threads),
    }
