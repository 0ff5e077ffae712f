"""Benchmark: `cxrlab compare` on the real Kaggle data, AlexNet / ResNet-18 / MobileNetV2, each
model also scored on the external adult films of ../shared/data/external-dev.

    uv run python benchmarks/compare_real.py  # the CPU budget (about an hour, 2 cores)
    uv run python benchmarks/compare_real.py --models alexnet resnet18 mobilenet_v2 proposed
    # on a GPU
    uv run python benchmarks/compare_real.py --image-size 224 --epochs 30 --num-workers 8

External sets (``--external NAME=PATH``, default ``adult=../shared/data/external-dev`` where it
exists) are scored once per finished model and never used to train or select. Every run is
calibrated on validation and gets the operating point ``--target-recall`` (default
``COVID19=0.95``, chosen on validation); runs finished by an older cxrlab are calibrated on the
next run of this script.

MobileNetV2 starts from the ImageNet weights in ../shared/weights (the one pretrained network
available offline) and runs in both modes, frozen and finetune; AlexNet and ResNet-18 cannot
download their weights here, so they train from scratch (finetune mode only: a frozen random
backbone is meaningless). Prints the exact command, the machine, the wall time and the table;
the report lands in OUT/report.html. Skips (exit 0, with a message) when the data is absent.
Re-running reuses finished runs and resumes unfinished ones.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
DEFAULT_DATA = SHARED / "data" / "chest-xray-covid19-pneumonia"
DEFAULT_WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet-dequantized.pth"
DEFAULT_EXTERNAL = SHARED / "data" / "external-dev"


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.platform()}, {os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__}"


def cxrlab(args: list[str]) -> None:
    """Run ``cxrlab ARGS`` in a child process, printing the command first; fails on failure."""
    print("$ cxrlab " + shlex.join(args), flush=True)
    subprocess.run([sys.executable, "-m", "cxrlab", *args], check=True)


def real_data_parser(description: str) -> argparse.ArgumentParser:
    """The real-data benchmarks' parser: ``--data`` and ``--weights``, from ../shared by default."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    return parser


def shared_missing(data: Path, weights: Path) -> bool:
    """Say SKIP and return True when the dataset or the MobileNetV2 weights are not beside the
    repo."""
    for path, what in ((data, "dataset"), (weights, "MobileNetV2 weights")):
        if not path.exists():
            print(f"SKIP: {what} not found at {path} (place ../shared beside the repo)")
            return True
    return False


def main() -> int:
    parser = real_data_parser(__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/compare-real"))
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--models", nargs="+", default=["alexnet", "resnet18", "mobilenet_v2"])
    parser.add_argument(
        "--external",
        nargs="*",
        default=[f"adult={DEFAULT_EXTERNAL}"] if DEFAULT_EXTERNAL.is_dir() else [],
    )
    parser.add_argument(
        "--target-recall",
        default="COVID19=0.95",
        help="operating point chosen on validation ('' for none)",
    )
    args = parser.parse_args()
    if shared_missing(args.data, args.weights):
        return 0
    command = [
        "cxrlab",
        "compare",
        str(args.data),
        "--models",
        *args.models,
        "--mode",
        "both",
        *(
            f"--weights={model}={args.weights}"
            for model in args.models
            if model == "mobilenet_v2" or model.startswith("proposed")
        ),
        "--no-pretrained",
        "--image-size",
        str(args.image_size),
        "--epochs",
        str(args.epochs),
        "--num-workers",
        str(args.num_workers),
        "--out",
        str(args.out),
        "--no-progress",
    ]
    for seed in args.seeds:
        command += ["--seeds", str(seed)]
    for item in args.external:
        command += ["--external", item]
    if args.target_recall:
        command += ["--target-recall", args.target_recall]
    print("command:", shlex.join(command))
    print("machine:", machine())
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cxrlab", *command[1:]], check=True)
    print(
        f"wall time: {time.perf_counter() - started:.0f} s "
        f"(budget: {args.image_size} px, {args.epochs} epochs)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
