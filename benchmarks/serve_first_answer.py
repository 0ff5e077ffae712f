"""Benchmark helper: ``cxrlab serve MODEL`` started, one film posted, the answer read, the server
stopped; a whole process to time for serve's start-up (its first answer).

    uv run python benchmarks/serve_first_answer.py RUN_OR_MODEL FILM

Time it as a whole command beside the floor torch sets, pair by pair, e.g. with GNU time::

    /usr/bin/time -f %e uv run python -c "import torch, torchvision"
    /usr/bin/time -f %e uv run python benchmarks/serve_first_answer.py RUN FILM
    /usr/bin/time -f %e uv run cxrlab predict RUN/model.pt FILM --out /tmp/p.csv --force

Prints the seconds from start to the first answer; fails when the server does not answer.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_latency import Server, multipart, post


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    model, film = Path(sys.argv[1]), Path(sys.argv[2])
    started = time.perf_counter()
    with Server(model, "cpu") as server:
        body, content_type = multipart(film.name, film.read_bytes())
        post(server.url + "/api/predict", body, content_type)  # raises unless answered
        elapsed = time.perf_counter() - started
    print(f"first answer after {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
