"""Benchmark: peak resident memory of `cxrlab serve`, `predict` and `segment` for hostile films.

    uv run python benchmarks/hostile_memory.py            # random-weight mobilenet_v2, 224 px
    uv run python benchmarks/hostile_memory.py runs/my-run/model.pt
    uv run python benchmarks/hostile_memory.py --segment-only       # cxrlab segment alone

The films of issue 23, written to a temporary folder: an 8900 x 8900 16-bit gradient PNG
(79 megapixels, under the 80-megapixel limit, 175 KB), a 200-frame 1024 x 1024 deflated DICOM
(400 MB of pixels in 408 KB) and a 70-frame one (73 megapixels in all: accepted, its first
frame read). Printed for each:

* ``serve``: a fresh server (``cxrlab serve``, a subprocess) answers one ordinary 1024 x 1024
  film, then the hostile one; its peak resident memory (``VmHWM``) before and after, the rise,
  and the status code;
* ``predict``: the peak resident memory of ``cxrlab predict MODEL FILM`` (``wait4``'s
  ``ru_maxrss``, through a small launcher), beside that of the same command on the ordinary
  film, and its exit status;
* ``segment``: the same for ``cxrlab segment FILM`` (the shipped segmenter; it writes the mask
  at the film's own size), on the ordinary film, a synthetic chest film of 1024 x 1024 and the
  same film enlarged to 8900 x 8900, and the hostile films.

Linux only (``/proc/PID/status``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_latency import Server, demo_film, multipart, random_model


def hostile_films(folder: Path) -> dict[str, Path]:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

    side = 8900
    gradient = np.broadcast_to(np.linspace(0, 65535, side).astype(np.uint16), (side, side))
    films = {"grad16_8900.png": folder / "grad16_8900.png"}
    Image.fromarray(np.ascontiguousarray(gradient)).save(films["grad16_8900.png"])
    for frames in (200, 70):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        dataset = FileDataset("x", {}, file_meta=meta, preamble=b"\0" * 128)
        dataset.Rows = dataset.Columns = 1024
        dataset.NumberOfFrames = frames
        dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 16, 15
        dataset.PixelRepresentation = 0
        dataset.PixelData = np.zeros((frames, 1024, 1024), np.uint16).tobytes()
        name = f"frames{frames}.dcm"
        films[name] = folder / name
        dataset.save_as(films[name], enforce_file_format=True)
    return films


def peak_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise SystemExit("no VmHWM in /proc: Linux only")


def send(url: str, name: str, data: bytes) -> int:
    body, content_type = multipart(name, data)
    request = urllib.request.Request(url, body, {"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


# Linux keeps a process's peak resident memory across exec, so a command started from this
# (large) process would report this process's peak: a small launcher forks it and reports.
LAUNCHER = """import os, sys
pid = os.fork()
if pid == 0:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def command_peak(*args: str) -> tuple[int, int]:
    """``(peak resident KB, exit status)`` of ``cxrlab ARGS...``."""
    command = [sys.executable, "-m", "cxrlab", *args, "--no-progress"]
    launched = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *command], capture_output=True, text=True, check=True
    )
    peak, status = launched.stdout.split()
    return int(peak), int(status)


def predict_peak(model: Path, film: Path, out: Path) -> tuple[int, int]:
    """``(peak resident KB, exit status)`` of ``cxrlab predict MODEL FILM``."""
    return command_peak(
        "predict", str(model), str(film), "--out", str(out), "--force", "--device", "cpu"
    )


def chest_films(folder: Path) -> dict[str, Path]:
    """A synthetic chest film (the demo's generator) at 1024 x 1024, and enlarged to 8900."""
    from cxrlab.data.synthetic import synth_cxr

    film = Image.fromarray(synth_cxr(np.random.default_rng(0), "NORMAL", size=1024))
    films = {"chest_1024.png": folder / "chest_1024.png", "chest_8900.png": folder / "c89.png"}
    film.save(films["chest_1024.png"])
    film.resize((8900, 8900), Image.Resampling.BILINEAR).save(films["chest_8900.png"])
    return films


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", type=Path, help="model.pt (default: random weights)")
    parser.add_argument("--segment-only", action="store_true", help="measure cxrlab segment only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ordinary = folder / "film.png"
        ordinary.write_bytes(demo_film(1024)[1])
        films = hostile_films(folder)
        if not args.segment_only:
            model = args.model or random_model(folder, "mobilenet_v2", 224)
            serve_and_predict(model, ordinary, films)
        for name, path in {"film.png": ordinary, **chest_films(folder), **films}.items():
            peak, code = command_peak("segment", str(path), "--out", str(folder / "masks"))
            print(f"segment, {name}: peak {peak / 1024:.0f} MB, exit status {code}")


def serve_and_predict(model: Path, ordinary: Path, films: dict[str, Path]) -> None:
    """The serve and predict measurements of the module docstring."""
    folder = ordinary.parent
    base, _ = predict_peak(model, ordinary, folder / "p.csv")
    print(f"predict, an ordinary 1024 x 1024 film: peak {base / 1024:.0f} MB")
    for name, path in films.items():
        with Server(model, "cpu") as server:
            url = server.url + "/api/predict"
            send(url, "film.png", ordinary.read_bytes())
            before = peak_kb(server.process.pid)
            status = send(url, name, path.read_bytes())
            after = peak_kb(server.process.pid)
        print(
            f"serve, {name} ({path.stat().st_size / 1e3:.0f} KB): peak {before / 1024:.0f} "
            f"-> {after / 1024:.0f} MB (+{(after - before) / 1024:.0f} MB), HTTP {status}"
        )
        peak, code = predict_peak(model, path, folder / "p.csv")
        print(f"predict, {name}: peak {peak / 1024:.0f} MB, exit status {code}")


if __name__ == "__main__":
    main()
