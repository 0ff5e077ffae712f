"""Benchmark: how close cxrlab's training runs to the hardware limit, and what it costs as data \
grows.

    uv run python benchmarks/throughput.py                          # CPU (2 cores: about 25 min)
    uv run python benchmarks/throughput.py --num-workers 8          # on a GPU machine

In one run, for alexnet, resnet18, resnet50, mobilenet_v2 and efficientnet_b0 at 224 px:

1. Training images/s and peak memory of (a) the model alone on a synthetic in-memory batch
   (forward, loss, backward, AdamW step: the compute bound), (b) cxrlab's real training path
   (Lightning fit over the decode-once cache with the X-ray augmentations) and (c) a naive
   baseline (torchvision ImageFolder, PIL decoding and resizing every image every epoch, the
   same augmentations, a plain loop). Goals: (b)/(a) >= 0.9 and (b)/(c) >= 2. Inference
   images/s of the model alone. Then each loader alone, without a model: the bound that the
   loading puts on a fast accelerator.
2. Options that may use the hardware better, each measured on (a): channels-last memory
   format; bf16 autocast (GPU only); torch.compile (``--compile``; minutes of compiling on CPU).
3. Batch-1 latency of eager PyTorch against ONNX Runtime (goal: ONNX >= 1.5x faster) and the
   largest probability difference (goal: <= 1e-4).
4. Cost as the work grows: one cxrlab training epoch over 1x, 2x and 4x a base set (the base
   images replicated): time should grow linearly, peak memory stay flat.
5. Frozen mode: heads of all models trained on cached backbone features of the real data
   (``--frozen-image-size``, 224 px on a GPU and 128 px on CPU by default; only mobilenet_v2 has
   ImageNet weights offline: the other backbones are random, which changes nothing about the
   time).

Absolute figures on shared machines are noisy; the ratios are what the goals are about.
Peak memory: the GPU's peak allocation on CUDA; on CPU the process's peak resident set
during the measurement, sampled every 5 ms. Skips (exit 0) when ../shared is absent.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_real import machine, real_data_parser, shared_missing

from cxrlab.progress import progress_bars

MODELS = ("alexnet", "resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0")
CLASSES = ["COVID19", "NORMAL", "PNEUMONIA"]


# -- measuring ---------------------------------------------------------------------------------


class PeakMemory:
    """Peak memory (MiB) while the ``with`` block runs: CUDA peak allocation, or sampled CPU RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_mb = device, 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            import psutil

            process, self._stop = psutil.Process(), threading.Event()
            self._rss = process.memory_info().rss

            def sample() -> None:
                while not self._stop.wait(0.005):
                    self._rss = max(self._rss, process.memory_info().rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = self._rss / 2**20


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def images_per_s(step: Callable[[], int], device: torch.device, warmup: int, steps: int) -> float:
    """Run ``step`` (which returns the images it processed) ``warmup`` then ``steps`` times."""
    for _ in range(warmup):
        step()
    synchronize(device)
    started, done = time.perf_counter(), 0
    for _ in range(steps):
        done += step()
    synchronize(device)
    return done / (time.perf_counter() - started)


def make_model(name: str, device: torch.device, channels_last: bool = False) -> torch.nn.Module:
    from cxrlab.models.registry import create_model

    model = create_model(name, CLASSES, pretrained=False).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def train_step_fn(
    model: torch.nn.Module,
    config,
    device: torch.device,
    images: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    amp: bool = False,
) -> Callable[[], int]:
    """One optimisation step as cxrlab's training step computes it (loss, groups, BatchNorm
    frozen)."""
    from cxrlab.training.module import (
        freeze_batchnorm_statistics,
        parameter_groups,
        weighted_cross_entropy,
    )

    optimizer = torch.optim.AdamW(
        parameter_groups(
            model, config.lr, config.lr * config.backbone_lr_scale, config.weight_decay
        )
    )
    weights = torch.ones(len(CLASSES), device=device)
    model.train()
    freeze_batchnorm_statistics(model)

    def step() -> int:
        x, y = images()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = weighted_cross_entropy(model(x), y, weights, config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return len(y)

    return step


def model_only(
    name: str,
    config,
    device: torch.device,
    args: argparse.Namespace,
    *,
    channels_last: bool = False,
    amp: bool = False,
    compile: bool = False,
) -> dict[str, float]:
    """(a) training and inference images/s of the model alone on one synthetic batch in memory."""
    model = make_model(name, device, channels_last)
    x = torch.rand(config.batch_size, 1, config.image_size, config.image_size, device=device)
    y = torch.randint(0, len(CLASSES), (config.batch_size,), device=device)
    net = torch.compile(model) if compile else model
    with PeakMemory(device) as memory:
        train = images_per_s(
            train_step_fn(net, config, device, lambda: (x, y), amp), device, args.warmup, args.steps
        )
    net.eval()

    @torch.no_grad()
    def infer() -> int:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            net(x)
        return len(x)

    return {
        "train": train,
        "infer": images_per_s(infer, device, args.warmup, args.steps),
        "peak_mb": memory.peak_mb,
    }


class BatchTimer:
    """Lightning callback: images/s from the end of the warm-up batches to the last batch."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        from lightning.pytorch.callbacks import Callback

        timer = self

        class _Callback(Callback):
            def on_train_batch_start(self, _trainer, _module, batch, index: int) -> None:
                if index == warmup:
                    synchronize(device)
                    timer.started, timer.images = time.perf_counter(), 0

            def on_train_batch_end(self, _trainer, _module, _outputs, batch, index: int) -> None:
                if index >= warmup:
                    timer.images += len(batch[1])
                    synchronize(device)
                    timer.ended = time.perf_counter()

        self.callback, self.started, self.ended, self.images = _Callback(), 0.0, 0.0, 0

    @property
    def images_per_s(self) -> float:
        return self.images / max(1e-9, self.ended - self.started)


def cxrlab_fit(
    name: str,
    config,
    prepared,
    rows: np.ndarray,
    device: torch.device,
    *,
    batches: int | None,
    warmup: int,
) -> tuple[float, float, float]:
    """(b) cxrlab's training path over cache ``rows``: the run's own fit step in its two halves
    (:func:`~cxrlab.training.run.build_learner`, then :func:`~cxrlab.training.run.fit_learner`
    for one epoch of at most ``batches`` batches, without validation or checkpoints). Returns
    (images/s after warm-up, seconds of the fit, peak MiB during the fit)."""
    from dataclasses import replace

    from cxrlab.training.run import RunContext, build_learner, fit_learner

    recipe = config.updated(model=name, pretrained=False, epochs=1)
    subset = replace(prepared, rows={"train": rows, "val": rows})  # val: never read (limit 0)
    timer = BatchTimer(warmup, device)
    with tempfile.TemporaryDirectory() as root:
        ctx = RunContext(prepared.index.root, recipe, Path(root))
        learner = build_learner(ctx, subset)
        with PeakMemory(device) as memory:
            started = time.perf_counter()
            fit_learner(
                ctx,
                learner,
                callbacks=[timer.callback],
                logger=False,
                limit_train_batches=batches if batches else 1.0,
                limit_val_batches=0,
                enable_checkpointing=False,
            )
            synchronize(device)
            seconds = time.perf_counter() - started
    return timer.images_per_s, seconds, memory.peak_mb


def naive_loader(
    config, train_dir: Path, excluded: set[str], device: torch.device
) -> torch.utils.data.DataLoader:
    """torchvision ImageFolder: PIL decode, resize and augment every image, every epoch."""
    from torchvision import datasets, transforms

    from cxrlab.training.augment import DEGREES, JITTER, SCALE, TRANSLATE

    transform = transforms.Compose(
        [
            transforms.Grayscale(1),
            transforms.Resize((config.image_size, config.image_size)),
            transforms.RandomAffine(DEGREES, translate=(TRANSLATE, TRANSLATE), scale=SCALE),
            transforms.ColorJitter(brightness=JITTER, contrast=JITTER),
            transforms.ToTensor(),
        ]
    )
    folder = datasets.ImageFolder(
        str(train_dir),
        transform=transform,
        is_valid_file=lambda p: (
            p.lower().endswith((".jpg", ".jpeg", ".png")) and Path(p).name not in excluded
        ),
    )
    return torch.utils.data.DataLoader(
        folder,
        batch_size=config.batch_size,
        shuffle=True,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
    )


def cxrlab_loader(config, prepared) -> torch.utils.data.DataLoader:
    """The training loader of a cxrlab run: cached films, with the X-ray augmentations unless
    they run batched on the device (``augment_on="device"``)."""
    from cxrlab.data.datasets import CachedImageDataset
    from cxrlab.training.augment import loader_augmentation
    from cxrlab.training.datamodule import CxrDataModule

    rows = prepared.rows["train"]
    train_set = CachedImageDataset(prepared.cache, rows, transform=loader_augmentation(config))
    return CxrDataModule(
        train_set, train_set, prepared.cache.labels[rows], config
    ).train_dataloader()


def naive_fit(
    name: str,
    config,
    train_dir: Path,
    excluded: set[str],
    device: torch.device,
    args: argparse.Namespace,
) -> tuple[float, float]:
    """(c) the naive loader feeding the same training step, in a plain loop."""
    batches = iter(naive_loader(config, train_dir, excluded, device))

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        x, y = next(batches)
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    model = make_model(name, device)
    with PeakMemory(device) as memory:
        speed = images_per_s(
            train_step_fn(model, config, device, next_batch), device, args.warmup, args.steps
        )
    return speed, memory.peak_mb


# -- the sections --------------------------------------------------------------------------------


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n## {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    sys.stdout.flush()


def naive_source(args: argparse.Namespace, prepared) -> tuple[Path, set[str]]:
    """The train folder the naive loader reads, and the file names the audit excludes."""
    from cxrlab.data.datasets import excluded_paths

    excluded = {Path(p).name for p in excluded_paths(args.manifest)} if args.manifest else set()
    return prepared.index.split("train")[0].path.parent.parent, excluded  # <train>/<CLASS>/<file>


def throughput_section(args: argparse.Namespace, config, prepared, device: torch.device) -> None:
    train_dir, excluded = naive_source(args, prepared)
    batches = args.warmup + args.steps
    rng = np.random.default_rng(0)
    rows_needed = rng.permutation(prepared.rows["train"])[: batches * config.batch_size]
    rows = []
    for name in args.models:
        a = model_only(name, config, device, args)
        b, _, b_peak = cxrlab_fit(
            name, config, prepared, rows_needed, device, batches=batches, warmup=args.warmup
        )
        c, c_peak = naive_fit(name, config, train_dir, excluded, device, args)
        rows.append(
            [
                name,
                f"{a['train']:.1f}",
                f"{b:.1f}",
                f"{c:.1f}",
                f"**{b / a['train']:.2f}**",
                f"**{b / c:.2f}**",
                f"{a['infer']:.1f}",
                f"{a['peak_mb']:.0f} / {b_peak:.0f} / {c_peak:.0f}",
            ]
        )
        print(
            f"  {name}: model-only {a['train']:.1f}, cxrlab {b:.1f}, naive {c:.1f} img/s",
            flush=True,
        )
    table(
        f"Training throughput, {config.image_size} px, batch {config.batch_size}, "
        f"{args.steps} timed steps after {args.warmup} warm-up, "
        f"{config.num_workers} loader workers, {device.type}",
        [
            "model",
            "(a) model only img/s",
            "(b) cxrlab img/s",
            "(c) naive ImageFolder img/s",
            "(b)/(a) goal >= 0.9",
            "(b)/(c) goal >= 2",
            "inference img/s",
            "peak MiB a / b / c",
        ],
        rows,
    )


def loaders_section(args: argparse.Namespace, config, prepared, device: torch.device) -> None:
    """Images/s of each loader alone (no model): what is left when the model step is nearly free."""
    train_dir, excluded = naive_source(args, prepared)
    rows = []
    loaders = (
        ("cxrlab (decode-once cache, augmenting per image)", cxrlab_loader(config, prepared)),
        (
            "naive ImageFolder (PIL decode + PIL augmentations)",
            naive_loader(config, train_dir, excluded, device),
        ),
        (
            "cxrlab, --augment-on device (augmentation batched on the device)",
            cxrlab_loader(config.updated(augment_on="device"), prepared),
        ),
    )
    from cxrlab.training.augment import BatchXrayAugmentation

    on_device = BatchXrayAugmentation()
    for label, loader in loaders:
        batches = iter(loader)

        def step(batches=batches, label=label) -> int:
            x, y = next(batches)
            if "device" in label:  # the batched augmentation is part of this loader's cost
                on_device(x.to(device, non_blocking=True))
            return len(y)

        speed = images_per_s(step, device, args.warmup, args.steps * 3)
        rows.append([label, f"{speed:.0f}"])
    table(
        f"Loaders alone, {config.image_size} px with augmentation, {config.num_workers} workers",
        ["loader", "images/s"],
        rows,
    )
    print(f"cxrlab / naive loader: {float(rows[0][1]) / float(rows[1][1]):.1f}x")


def options_section(args: argparse.Namespace, config, device: torch.device) -> None:
    variants = [("channels-last", dict(channels_last=True))]
    if device.type == "cuda":
        variants.append(("bf16 autocast", dict(amp=True)))
    if args.compile:
        variants.append(("torch.compile", dict(compile=True)))
    rows = []
    for name in args.models:
        base = model_only(name, config, device, args)
        cells = [name, f"{base['train']:.1f} / {base['infer']:.1f}"]
        for _, options in variants:
            v = model_only(name, config, device, args, **options)
            cells.append(
                f"{v['train']:.1f} / {v['infer']:.1f} "
                f"({v['train'] / base['train']:.2f}x / {v['infer'] / base['infer']:.2f}x)"
            )
        rows.append(cells)
    table(
        f"Hardware options, model only, train / inference img/s ({device.type})",
        ["model", "plain fp32"] + [v for v, _ in variants],
        rows,
    )


def calibrate_batchnorm(model: torch.nn.Module, films: torch.Tensor) -> torch.nn.Module:
    """BatchNorm statistics of ``films`` and a head scaled to logits of unit spread: a random
    network otherwise answers (almost) the same, saturated, probabilities for every input, and a
    probability difference measured on it would mean nothing."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for batch in films.split(16):
            model(batch)
        model.eval()
        head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        spread = (
            model(films).std().clamp_min(1e-6)
        )  # logits of unit spread: probabilities away from 0 and 1
        head.weight /= spread
        head.bias /= spread
    return model


def onnx_section(args: argparse.Namespace, config, prepared, device: torch.device) -> None:
    from cxrlab.data.datasets import CachedImageDataset
    from cxrlab.models.checkpoint import save_checkpoint
    from cxrlab.models.export import compare_eager_onnx, export_onnx
    from cxrlab.records import ModelMeta

    films = torch.stack(
        [CachedImageDataset(prepared.cache, prepared.rows["train"][:64])[i][0] for i in range(64)]
    )
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            model = calibrate_batchnorm(make_model(name, torch.device("cpu")), films)
            checkpoint = save_checkpoint(
                model,
                Path(folder) / f"{name}.pt",
                ModelMeta.of(model, image_size=config.image_size, resize=config.resize),
            )
            path = export_onnx(checkpoint)
            m = compare_eager_onnx(
                model, path, config.image_size, repeats=args.latency_repeats, films=films
            )
            rows.append(
                [
                    name,
                    f"{m['eager_ms']:.2f}",
                    f"{m['onnx_ms']:.2f}",
                    f"**{m['speedup']:.2f}x**",
                    f"{m['max_abs_diff']:.1e}",
                ]
            )
    table(
        f"Batch-1 latency on CPU, {config.image_size} px (median of {args.latency_repeats})",
        [
            "model",
            "eager PyTorch ms",
            "ONNX Runtime ms",
            "speed-up (goal >= 1.5x)",
            "max |p diff| on 64 films (goal <= 1e-4)",
        ],
        rows,
    )


def scaling_section(args: argparse.Namespace, config, prepared, device: torch.device) -> None:
    base = np.random.default_rng(1).permutation(prepared.rows["train"])[: args.scale_images]
    rows, first = [], None
    for factor in (1, 2, 4):
        rows_n = np.tile(base, factor)
        _, seconds, peak = cxrlab_fit(
            args.scale_model, config, prepared, rows_n, device, batches=None, warmup=1
        )
        first = first or seconds
        rows.append(
            [
                f"{factor}x",
                str(len(rows_n)),
                f"{seconds:.1f}",
                f"{seconds / first:.2f}",
                f"{peak:.0f}",
            ]
        )
    table(
        f"One training epoch as the set grows ({args.scale_model}, {config.image_size} px, "
        f"base {args.scale_images} images replicated)",
        ["set", "images", "epoch s", "time vs 1x (ideal 1, 2, 4)", "peak MiB"],
        rows,
    )


def frozen_section(args: argparse.Namespace, device: torch.device) -> None:
    from cxrlab.config import preset
    from cxrlab.training.run import train_run

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            weights = str(args.weights) if name == "mobilenet_v2" else None
            config = preset(
                "frozen",
                model=name,
                pretrained=False,
                weights=weights,
                image_size=args.frozen_image_size,
                manifest=str(args.manifest) if args.manifest else None,
            )
            result = train_run(args.data, config, Path(folder) / name, workers=2)
            t = result.metrics.timings
            source = "ImageNet" if weights else "random"
            rows.append(
                [
                    name,
                    source,
                    f"{t['features_s']:.1f}",
                    f"{t['train_s']:.1f}",
                    f"{result.metrics.epochs_run}",
                    f"{result.metrics.best_val_macro_f1:.3f}",
                ]
            )
            print(
                f"  {name}: features {t['features_s']:.1f} s, head {t['train_s']:.1f} s", flush=True
            )
    table(
        f"Frozen mode on the real data ({args.frozen_image_size} px): "
        "backbone features cached once, then the head trains",
        [
            "model",
            "backbone",
            "features s (0 = read from the cache)",
            "head training s",
            "epochs",
            "val macro-F1",
        ],
        rows,
    )


def main() -> int:
    parser = real_data_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--manifest",
        type=Path,
        default=Path("runs/benchmarks/proposed-real/audit/manifest.csv"),
        help="Audit manifest (files it excludes are left out); made by the other benchmarks.",
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--num-workers", type=int, default=0, help="DataLoader workers for (b) and (c)."
    )
    parser.add_argument(
        "--warmup", type=int, default=2, help="Untimed steps before each measurement."
    )
    parser.add_argument("--steps", type=int, default=6, help="Timed steps per measurement.")
    parser.add_argument("--compile", action="store_true", help="Also measure torch.compile.")
    parser.add_argument("--latency-repeats", type=int, default=50)
    parser.add_argument("--scale-model", default="resnet18")
    parser.add_argument("--scale-images", type=int, default=128)
    parser.add_argument(
        "--frozen-image-size",
        type=int,
        default=None,
        help="Default: 224 on a GPU, 128 on CPU (features of ~6000 films per model).",
    )
    parser.add_argument(
        "--sections",
        nargs="+",
        default=["throughput", "loaders", "options", "onnx", "scaling", "frozen"],
    )
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if shared_missing(args.data, args.weights):
        return 0
    if args.manifest and not args.manifest.is_file():
        print(
            f"note: {args.manifest} not found; no audit exclusions "
            "(run benchmarks/proposed_real.py or cxrlab audit first)"
        )
        args.manifest = None

    from cxrlab.config import preset
    from cxrlab.device import pick_device
    from cxrlab.training.prepared import prepare_data

    device = pick_device(args.device)
    args.frozen_image_size = args.frozen_image_size or (224 if device.type == "cuda" else 128)
    torch.manual_seed(0)
    print("machine:", machine(), f"| torch threads {torch.get_num_threads()}", flush=True)
    started = time.perf_counter()
    config = preset(
        "finetune",
        image_size=args.image_size,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices="1",
        manifest=str(args.manifest) if args.manifest else None,
    )
    with timed("decode-once cache (built on first use, then reused)"):
        prepared = prepare_data(args.data, config, workers=min(8, os.cpu_count() or 1))
    if "throughput" in args.sections:
        throughput_section(args, config, prepared, device)
    if "loaders" in args.sections:
        loaders_section(args, config, prepared, device)
    if "options" in args.sections:
        options_section(args, config, device)
    if "onnx" in args.sections:
        onnx_section(args, config, prepared, device)
    if "scaling" in args.sections:
        scaling_section(args, config, prepared, device)
    if "frozen" in args.sections:
        frozen_section(args, device)
    print(f"\nWall time of this command: {time.perf_counter() - started:.0f} s")
    return 0


@contextlib.contextmanager
def timed(what: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    print(f"{what}: {time.perf_counter() - started:.1f} s", flush=True)


if __name__ == "__main__":
    with progress_bars(False):  # the log keeps the numbers only
        sys.exit(main())
