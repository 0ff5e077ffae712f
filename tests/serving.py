"""Helpers of the ``cxrlab serve`` tests: a tiny finished run with its OOD statistics, and films
in every format as the bytes a browser would upload."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from conftest import TINY, save, train_tiny
from PIL import Image
from test_reader import forged_png, write_dicom


def served_run(tiny_data: tuple[Path, Path], out: Path) -> Path:
    """A finished tiny run (with an operating point) and its ``ood.npz``."""
    from cxrlab.config import preset
    from cxrlab.pipelines.ood import fit_run_ood

    config = preset("scratch", model="resnet18", epochs=1, target_recall="COVID19=0.9", **TINY)
    train_tiny(tiny_data, out, config)
    fit_run_ood(out, tiny_data[0], cache_root=tiny_data[1], workers=1, say=print)
    return out


LOCAL_URL = "http://127.0.0.1:8000"  # the Host the test client sends: one the server answers


def local_client(app: object) -> object:
    """A test client for ``app`` addressing it as a browser on this machine would."""
    from fastapi.testclient import TestClient

    return TestClient(app, base_url=LOCAL_URL)


def dataset_films(tiny_data: tuple[Path, Path]) -> list[Path]:
    """The tiny dataset's test films, in a stable order."""
    return sorted((tiny_data[0] / "Data" / "test").rglob("*.*"))


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def film_formats(film: Path, tmp: Path) -> dict[str, tuple[str, bytes]]:
    """One film as ``{format: (file name, bytes)}``: JPEG, 8-bit PNG, 16-bit PNG, RGBA PNG,
    DICOM."""
    grey = np.asarray(Image.open(film).convert("L"))
    deep = (grey.astype(np.uint16) * 257).astype(np.uint16)
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 200)])
    dicom = write_dicom(tmp / "film.dcm", grey.astype(np.uint16) * 16)
    jpeg = save(tmp / "film.jpg", grey, quality=95)
    return {
        "jpeg": ("film.jpg", jpeg.read_bytes()),
        "png8": ("film.png", png_bytes(grey)),
        "png16": ("film16.png", png_bytes(deep)),
        "rgba": ("film-rgba.png", png_bytes(rgba)),
        "dicom": ("film.dcm", dicom.read_bytes()),
    }


def unlike_films(size: int) -> dict[str, bytes]:
    """Images nothing like a chest film: uniform noise, and a colour gradient like a photo."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (size, size), dtype=np.uint8)
    x = np.linspace(0.0, 1.0, size)
    photo = np.stack(
        [np.outer(x, 1 - x) * 1020, np.outer(1 - x, x) * 1020, np.full((size, size), 200.0)], -1
    )
    return {"noise.png": png_bytes(noise), "photo.png": png_bytes(photo.clip(0, 255).astype("u1"))}


def bad_films(tmp: Path, good: bytes) -> dict[str, tuple[str, bytes, int, str]]:
    """``{case: (file name, bytes, status, phrase in the message)}`` for each bad input."""
    import pydicom

    dicom = write_dicom(tmp / "report.dcm", np.zeros((8, 8)))
    dataset = pydicom.dcmread(dicom)
    del dataset.PixelData
    dataset.save_as(dicom, enforce_file_format=True)
    return {
        "not an image": ("notes.png", b"these are my notes\n" * 20, 415, "not image"),
        "truncated": ("cut.png", good[: len(good) // 2], 422, "trunc"),
        "empty": ("empty.jpg", b"", 422, "empty"),
        "decompression bomb": (
            "bomb.png",
            forged_png(tmp / "bomb.png", 20_000, 20_000).read_bytes(),
            422,
            "decompression-bomb limit",
        ),
        "dicom without pixels": ("report.dcm", dicom.read_bytes(), 422, "without pixel data"),
        "dicom with WindowWidth 0": (
            "w0.dcm",
            write_dicom(
                tmp / "w0.dcm", np.ones((8, 8)), WindowCenter=1, WindowWidth=0
            ).read_bytes(),
            422,
            "window",
        ),
        "multi-frame dicom over the pixel limit": (
            "frames.dcm",
            write_dicom(
                tmp / "frames.dcm", np.zeros((2, 8)), Rows=1, Columns=8, NumberOfFrames=10_000_001
            ).read_bytes(),
            422,
            "10000001 frames of 8x1 pixels",
        ),
    }
