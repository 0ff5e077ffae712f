"""Lightning training runs on a tiny synthetic dataset: run folder, both modes, BN freezing,
determinism and resume."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, killed_at, train_tiny

from cxrlab.config import RunConfig, preset
from cxrlab.errors import CxrlabError
from cxrlab.models import create_model
from cxrlab.models.checkpoint import load_model
from cxrlab.records import read_history
from cxrlab.training.module import warmup_cosine

_train = train_tiny


@pytest.fixture(scope="module")
def local_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in 'ImageNet' resnet18 state dict with non-trivial BatchNorm statistics."""
    torch.manual_seed(1)
    import torchvision

    network = torchvision.models.resnet18()
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("w") / "resnet18-local.pth"
    torch.save(network.state_dict(), path)
    return path


def test_config_rejects_bad_options_by_name() -> None:
    with pytest.raises(CxrlabError, match="^mode"):
        RunConfig(mode="half")
    with pytest.raises(CxrlabError, match="^preset"):
        preset("fast")
    with pytest.raises(CxrlabError, match="unknown config field"):
        RunConfig().updated(learning_rate=1.0)
    assert preset("scratch").pretrained is False and preset("frozen").mode == "frozen"


def test_config_round_trips_through_json(tmp_path: Path) -> None:
    config = preset("finetune", model="alexnet", seed=3, extra={"note": "x"})
    config.save(tmp_path / "config.json")
    assert RunConfig.load(tmp_path / "config.json") == config


def hand_written_factor(step: int, warmup: int, total: int) -> float:
    """cxrlab's learning-rate factor before it used torch's schedulers (a LambdaLR)."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


@pytest.mark.parametrize(
    ("warmup", "total"), [(0, 10), (1, 10), (4, 20), (3, 7), (30, 600), (0, 1)]
)
def test_warmup_then_cosine_equals_the_hand_written_schedule(warmup: int, total: int) -> None:
    """SequentialLR(LinearLR, CosineAnnealingLR) gives every step the learning rate of the old
    hand-written factor, within 1e-12 relative, for each parameter group (backbone and head)."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in (1e-3, 1e-4)]
    optimizer = torch.optim.AdamW(groups)
    schedule = warmup_cosine(optimizer, warmup, total)
    for step in range(total):
        for group, base in zip(optimizer.param_groups, (1e-3, 1e-4)):
            expected = base * hand_written_factor(step, warmup, total)
            assert group["lr"] == pytest.approx(expected, rel=1e-12, abs=1e-18)
        optimizer.step()
        schedule.step()
    assert hand_written_factor(0, 4, 20) == pytest.approx(0.25)
    assert hand_written_factor(12, 4, 20) == pytest.approx(0.5)


def test_finetune_run_writes_a_complete_run_folder(
    tiny_data: tuple[Path, Path], tmp_path: Path
) -> None:
    config = preset("scratch", model="resnet18", epochs=2, **TINY)
    result = _train(tiny_data, tmp_path / "run", config)
    run = result.run_dir
    for name in (
        "config.json",
        "split.csv",
        "history.csv",
        "model.pt",
        "test_predictions.csv",
        "metrics.json",
    ):
        assert (run / name).is_file(), name
    # last.ckpt resumes (optimizer and all); best.ckpt keeps the chosen epoch's weights only
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert "optimizer_states" in last and "optimizer_states" not in best
    assert best["state_dict"].keys() == last["state_dict"].keys()
    assert (run / "logs" / "csv" / "metrics.csv").is_file()
    history = read_history(run / "history.csv")
    assert [row.epoch for row in history] == [0, 1]
    assert all(0 <= row.val_macro_f1 <= 1 and row.train_loss > 0 for row in history)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["sizes"]["test"] == 9 and metrics["test"]["n"] == 9
    assert metrics["best_epoch"] == int(np.argmax([r.val_macro_f1 for r in history]))
    assert metrics["parameters"] == metrics["trainable_parameters"] > 1e6
    assert set(metrics["intervals"]) == {
        "accuracy",
        "macro_f1",
        "recall_COVID19",
        "recall_NORMAL",
        "recall_PNEUMONIA",
    }
    with open(run / "split.csv") as handle:
        subsets = [row["subset"] for row in csv.DictReader(handle)]
    assert subsets.count("test") == 9 and subsets.count("train") + subsets.count("val") == 24
    # model.pt is the chosen model: with its temperature it reproduces the saved (calibrated) test
    # probabilities
    model, meta = load_model(run / "model.pt", arch="resnet18")
    assert meta.temperature == metrics["calibration"]["temperature"] > 0
    with open(run / "test_predictions.csv") as handle:
        first = next(csv.DictReader(handle))
    from cxrlab.data.cache import CacheSpec, load_square

    square = load_square(tiny_data[0] / first["path"], CacheSpec(32))
    image = torch.from_numpy(np.array(square)).float().div(255.0)[None, None]
    with torch.no_grad():
        probs = torch.softmax(model.eval()(image) / meta.temperature, 1)[0]
    assert probs[0].item() == pytest.approx(float(first["p_COVID19"]), abs=1e-4)


def test_same_seed_same_result_on_cpu(tiny_data: tuple[Path, Path], tmp_path: Path) -> None:
    config = preset("scratch", model="resnet18", epochs=2, **TINY)
    a = _train(tiny_data, tmp_path / "a", config)
    b = _train(tiny_data, tmp_path / "b", config)
    c = _train(tiny_data, tmp_path / "c", config.updated(seed=1))
    history = [read_history(r.run_dir / "history.csv") for r in (a, b, c)]
    strip = lambda rows: [replace(row, epoch_time_s=0.0) for row in rows]  # noqa: E731
    assert strip(history[0]) == strip(history[1])
    assert (a.run_dir / "test_predictions.csv").read_text() == (
        b.run_dir / "test_predictions.csv"
    ).read_text()
    assert strip(history[0]) != strip(history[2])


def test_frozen_mode_trains_only_the_head(
    tiny_data: tuple[Path, Path], tmp_path: Path, local_weights: Path
) -> None:
    config = preset("frozen", model="resnet18", weights=str(local_weights), epochs=5, **TINY)
    result = _train(tiny_data, tmp_path / "frozen", config)
    trained = torch.load(result.run_dir / "model.pt", weights_only=True)["state_dict"]
    original = torch.load(local_weights, weights_only=True)
    for key, value in original.items():
        if key.startswith("fc."):
            continue
        assert torch.equal(trained[f"network.{key}"], value), key
    assert trained["network.fc.weight"].shape == (3, 512)
    assert result.metrics.trainable_parameters == 512 * 3 + 3
    assert "features_s" in result.metrics.timings


@pytest.mark.parametrize("freeze_bn", [True, False])
def test_finetune_batchnorm_statistics_frozen_or_trained(
    tiny_data: tuple[Path, Path], tmp_path: Path, local_weights: Path, freeze_bn: bool
) -> None:
    config = preset(
        "finetune",
        model="resnet18",
        weights=str(local_weights),
        epochs=1,
        freeze_bn=freeze_bn,
        **TINY,
    )
    result = _train(tiny_data, tmp_path / "ft", config)
    trained = torch.load(result.run_dir / "model.pt", weights_only=True)["state_dict"]
    original = torch.load(local_weights, weights_only=True)
    same = torch.equal(trained["network.bn1.running_mean"], original["bn1.running_mean"])
    assert same is freeze_bn
    assert not torch.equal(
        trained["network.conv1.weight"], original["conv1.weight"]
    )  # the backbone did train


def test_existing_run_needs_resume(tiny_data: tuple[Path, Path], tmp_path: Path) -> None:
    config = preset("scratch", model="resnet18", epochs=1, **TINY)
    _train(tiny_data, tmp_path / "run", config)
    with pytest.raises(CxrlabError, match="a run already exists here; pass resume"):
        _train(tiny_data, tmp_path / "run", config)
    again = _train(tiny_data, tmp_path / "run", config, resume=True)  # finished: returned as is
    assert again.metrics.epochs_run == 1
    with pytest.raises(CxrlabError, match="no run to resume"):
        _train(tiny_data, tmp_path / "nothing", config, resume=True)


def test_resume_after_interruption_loses_at_most_one_epoch(
    tiny_data: tuple[Path, Path], tmp_path: Path
) -> None:
    config = preset("scratch", model="resnet18", epochs=4, patience=10, **TINY)
    with killed_at(epoch=2, batch=1), pytest.raises(RuntimeError, match="killed"):
        _train(tiny_data, tmp_path / "run", config)
    before = read_history(tmp_path / "run" / "history.csv")
    assert len(before) == 2 and not (tmp_path / "run" / "metrics.json").exists()

    result = _train(
        tiny_data, tmp_path / "run", preset("smoke"), resume=True
    )  # the saved config wins
    after = read_history(result.run_dir / "history.csv")
    assert [row.epoch for row in after] == [0, 1, 2, 3]
    assert after[:2] == before
    assert result.metrics.epochs_run == 4


def test_missing_logger_package_is_one_clear_error(
    tiny_data: tuple[Path, Path], tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    try:
        import tensorboard  # noqa: F401

        pytest.skip("tensorboard is installed here")
    except ImportError:
        pass
    try:
        import tensorboardX  # noqa: F401

        pytest.skip("tensorboardX is installed here")
    except ImportError:
        pass
    config = preset("scratch", model="resnet18", epochs=1, logger="tensorboard", **TINY)
    with pytest.raises(CxrlabError, match="logger tensorboard.*pip install"):
        _train(tiny_data, tmp_path / "tb", config)


def test_weights_file_of_another_model_is_refused(
    tiny_data: tuple[Path, Path], tmp_path: Path, local_weights: Path
) -> None:
    config = preset(
        "finetune",
        model="alexnet",
        weights=str(local_weights),
        epochs=1,
        **(TINY | {"image_size": 64}),
    )
    with pytest.raises(CxrlabError, match="resnet18-local.pth"):
        _train(tiny_data, tmp_path / "bad", config)
    assert create_model("resnet18", 3, weights=local_weights).arch == "resnet18"
