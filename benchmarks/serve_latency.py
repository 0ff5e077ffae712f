"""Benchmark: `cxrlab serve` under load: requests per second and latency of single-film requests.

    uv run python benchmarks/serve_latency.py          # random-weight mobilenet_v2, 224 px
    uv run python benchmarks/serve_latency.py runs/my-run --film film.png --requests 200

For each backend (the PyTorch ``model.pt`` and its ONNX export, run by ONNX Runtime) a real
server is started in its own process (``cxrlab serve``, on a free local port, ``--device cpu``
unless ``--device`` says otherwise), warmed up, then sent ``--requests`` single-film
``POST /api/predict`` requests by 1 and by 8 concurrent clients (``--concurrency``). Printed per
backend and concurrency: requests per second, and the latency p50 / p95 in milliseconds as a
client sees it (upload, decoding, inference, the OOD score where there are statistics, JSON).
Grad-CAM is off unless ``--gradcam`` (it is PyTorch only). Without MODEL, a random-weight model
is written to a temporary folder (speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["COVID19", "NORMAL", "PNEUMONIA"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def post(url: str, body: bytes, content_type: str) -> float:
    """Seconds for one request; raises on a non-200 answer."""
    request = urllib.request.Request(url, body, {"Content-Type": content_type}, method="POST")
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()
    return time.perf_counter() - started


class Server:
    """``cxrlab serve MODEL`` in a subprocess, until the ``with`` block ends."""

    def __init__(self, model: Path, device: str, options: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.args = ["serve", str(model), "--port", str(self.port), "--device", device, *options]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cxrlab", *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"cxrlab serve exited: {self.process.stderr.read().decode()}")
            try:
                with urllib.request.urlopen(self.url + "/api/model", timeout=2) as response:
                    self.info = json.loads(response.read())
                    return self
            except OSError:
                time.sleep(0.3)
        raise SystemExit("cxrlab serve did not start within 3 minutes")

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(30)


def measure(url: str, film: tuple[str, bytes], requests: int, concurrency: int) -> dict:
    body, content_type = multipart(*film)
    for _ in range(3):  # warm-up
        post(url, body, content_type)
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        times = list(pool.map(lambda _: post(url, body, content_type), range(requests)))
    wall = time.perf_counter() - started
    ms = np.array(times) * 1000
    return {
        "rps": requests / wall,
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "mean": statistics.fmean(ms),
    }


def random_model(folder: Path, arch: str, image_size: int) -> Path:
    from cxrlab.models.checkpoint import save_checkpoint
    from cxrlab.models.registry import create_model
    from cxrlab.records import ModelMeta

    model = create_model(arch, CLASSES, pretrained=False)
    meta = ModelMeta.of(model, image_size=image_size, resize="squash")
    return save_checkpoint(model, folder / "model.pt", meta)


def demo_film(size: int) -> tuple[str, bytes]:
    """A 1024 x 1024 8-bit PNG (decoding and resizing are part of every request)."""
    rng = np.random.default_rng(0)
    coarse = Image.fromarray((rng.random((8, 8)) * 255).astype(np.uint8))
    buffer = io.BytesIO()
    coarse.resize((size, size), Image.Resampling.BICUBIC).save(buffer, format="PNG")
    return "film.png", buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", type=Path, help="run folder or model.pt")
    parser.add_argument("--film", type=Path, help="the film every request sends")
    parser.add_argument("--arch", default="mobilenet_v2", help="without MODEL: its architecture")
    parser.add_argument("--image-size", type=int, default=224, help="without MODEL: its size")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--gradcam", action="store_true")
    args = parser.parse_args()

    from cxrlab.evaluation.external import resolve_model
    from cxrlab.models.export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            model_pt = random_model(Path(tmp), args.arch, args.image_size)
        else:
            model_pt = resolve_model(args.model)[0]
        onnx = export_onnx(model_pt, Path(tmp) / "model.onnx")
        film = (args.film.name, args.film.read_bytes()) if args.film else demo_film(1024)
        query = "?gradcam=" + ("true" if args.gradcam else "false")
        print(
            f"cxrlab serve latency; {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPUs, --device {args.device}; film {film[0]} "
            f"({len(film[1]) / 1e3:.0f} kB); {args.requests} requests per row",
            flush=True,
        )
        print("| backend | model | concurrency | requests/s | p50 ms | p95 ms |")
        print("|---|---|---|---|---|---|")
        for path in (model_pt, onnx):
            with Server(path, args.device) as server:
                info = server.info
                for concurrency in args.concurrency:
                    row = measure(
                        server.url + "/api/predict" + query, film, args.requests, concurrency
                    )
                    print(
                        f"| {info['runtime']} | {info['arch']} {info['image_size']} px "
                        f"| {concurrency} | {row['rps']:.1f} | {row['p50']:.0f} "
                        f"| {row['p95']:.0f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
