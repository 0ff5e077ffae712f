"""DDP on CPU: two gloo processes train like one, and every validation and test image counts
once."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cxrlab.config import RunConfig
from cxrlab.data.synthetic import make_demo_dataset
from cxrlab.errors import CxrlabError
from cxrlab.records import read_history
from cxrlab.training.datamodule import CxrDataModule
from cxrlab.training.run import train_run
from cxrlab.training.trainer import check_runnable, launched_rank

# 33 train films: 9 for validation (odd: a padding sampler would show a duplicate), 24 to train
# in one full batch, so the gradient does not depend on how the images are shared out.
OPTIONS = dict(
    val_fraction=0.27,
    image_size=32,
    epochs=3,
    batch_size=24,
    augment=False,
    balance="none",
    accelerator="cpu",
)


def run_cli_ddp(data: Path, out: Path, cache: Path) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "cxrlab",
        "train",
        str(data),
        "--model",
        "resnet18",
        "--no-pretrained",
        "--val-fraction",
        "0.27",
        "--image-size",
        "32",
        "--epochs",
        "3",
        "--batch-size",
        "24",
        "--no-augment",
        "--balance",
        "none",
        "--accelerator",
        "cpu",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--out",
        str(out),
        "--cache-dir",
        str(cache),
        "--workers",
        "1",
        "--no-progress",
        "--no-diagnose",
    ]
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "SLURM_PROCID")
    }
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_two_gloo_processes_match_one_and_count_each_image_once(tmp_path: Path) -> None:
    data = make_demo_dataset(
        tmp_path / "data", train_per_class=11, test_per_class=3, size=40, defects=False
    )
    single = train_run(
        data,
        RunConfig(model="resnet18", pretrained=False, devices="1", **OPTIONS),
        tmp_path / "single",
        cache_root=tmp_path / "cache",
        workers=1,
    )
    done = run_cli_ddp(data, tmp_path / "ddp", tmp_path / "cache")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Test (9 images)") == 1  # only rank 0 reports

    ddp_dir = tmp_path / "ddp"
    ddp = json.loads((ddp_dir / "metrics.json").read_text())
    assert ddp["training_processes"] == 2 and single.metrics.training_processes == 1
    # The same split, the same optimiser steps: the same curves and test probabilities.
    assert (ddp_dir / "split.csv").read_text() == (single.run_dir / "split.csv").read_text()
    one, two = read_history(single.run_dir / "history.csv"), read_history(ddp_dir / "history.csv")
    assert len(one) == len(two) == 3
    for a, b in zip(one, two):
        assert b.val_n == a.val_n == 9  # each validation film once, over both processes
        assert b.val_loss == pytest.approx(a.val_loss, abs=1e-4)
        assert b.val_macro_f1 == pytest.approx(a.val_macro_f1, abs=1e-4)
        assert b.train_loss == pytest.approx(a.train_loss, abs=1e-4)
    # The test split: every image exactly once, probabilities as in the single-process run.
    assert ddp["test"]["n"] == single.metrics.test.n == 9
    rows = {
        name: list(csv.DictReader(open(d / "test_predictions.csv")))
        for name, d in (("one", single.run_dir), ("two", ddp_dir))
    }
    paths = [r["path"] for r in rows["two"]]
    assert len(paths) == len(set(paths)) == 9
    assert paths == [r["path"] for r in rows["one"]]
    probs = {
        name: np.array([[float(r[k]) for k in r if k.startswith("p_")] for r in rs])
        for name, rs in rows.items()
    }
    np.testing.assert_allclose(probs["two"], probs["one"], atol=1e-4)
    assert ddp["test"]["accuracy"] == pytest.approx(single.metrics.test.accuracy)


def test_launched_rank_reads_the_launchers_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert launched_rank() == 0
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launched_rank() == 1
    monkeypatch.setenv("RANK", "3")
    assert launched_rank() == 3


def test_global_batch_must_split_evenly_over_processes() -> None:
    class Trainer:  # what the data module reads of a Lightning Trainer
        world_size, global_rank = 4, 0

    with pytest.raises(
        CxrlabError, match="batch_size 30: not divisible by the 4 training processes"
    ):
        check_runnable(RunConfig(batch_size=30, devices="2", num_nodes=2, accelerator="cpu"))
    check_runnable(RunConfig(batch_size=32, devices="4", accelerator="cpu"))
    with pytest.raises(CxrlabError, match="devices two"):
        check_runnable(RunConfig(devices="two", accelerator="cpu"))
    module = CxrDataModule([], [], np.zeros(0), RunConfig(batch_size=32))
    module.trainer = Trainer()
    assert module.device_batch_size == 8


def test_compare_refuses_several_devices(tmp_path: Path) -> None:
    from cxrlab.pipelines.compare import run_comparison

    with pytest.raises(CxrlabError, match="devices 2"):
        run_comparison(tmp_path, [RunConfig(devices="2")], tmp_path / "out")
