"""One schema per thing a run stores: config.json (RunConfig), model.pt's meta (ModelMeta) and
history.csv (HistoryRow), each read one way and without torch."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import get_args, get_type_hints

import pytest
import torch
from conftest import TINY, modules_loaded_by, train_tiny

from cxrlab.config import RecipeFile, RunConfig, preset, resolve
from cxrlab.data.cache import CacheSpec
from cxrlab.errors import ConfigError, CxrlabError
from cxrlab.models.checkpoint import CHECKPOINT_FORMAT, load_model, save_checkpoint
from cxrlab.models.registry import create_model
from cxrlab.records import (
    HistoryRow,
    ModelMeta,
    OperatingPoint,
    read_history,
    write_history,
)
from cxrlab.reporting.plots import LOSS_SERIES, SCORE_SERIES

CLASSES = ["COVID19", "NORMAL", "PNEUMONIA"]
# what training stores in model.pt's extra, in order (training/testing.py)
EXTRA_KEYS = ["image_size", "resize", "crop", "tta", "config", "temperature", "operating_point"]


def test_the_record_modules_import_neither_torch_nor_lightning() -> None:
    found = modules_loaded_by("cxrlab.config", "cxrlab.records")
    assert {"cxrlab.config", "cxrlab.records"} <= set(found)
    assert [m for m in found if m.split(".")[0] in ("torch", "lightning")] == []


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("mode", "half", "mode: 'half' is not one of frozen, finetune"),
        ("optimizer", "adam", "optimizer: 'adam' is not one of adamw, sgd"),
        ("balance", "x", "balance: 'x' is not one of weights, sampler, source, none"),
        ("resize", "crop", "resize: 'crop' is not one of squash, pad"),
        ("crop", "heart", "crop: 'heart' is not one of none, lungs"),
        ("augment_on", "gpu", "augment_on: 'gpu' is not loader or device"),
        ("logger", "wandb", "logger: 'wandb' is not csv, tensorboard or mlflow"),
        ("accelerator", "tpu", "accelerator: 'tpu' is not one of auto, cpu, gpu, cuda, mps"),
        ("precision", "8", "precision: '8' is not one of auto, 32-true, 32, 16-mixed"),
    ],
)
def test_run_config_refuses_a_value_outside_its_literal(
    field: str, value: str, message: str
) -> None:
    with pytest.raises(CxrlabError) as caught:
        RunConfig(**{field: value})
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
    # every allowed value of the field's Literal is accepted
    for allowed in get_args(get_type_hints(RunConfig)[field]):
        assert getattr(RunConfig(**{field: allowed}), field) == allowed


def test_config_json_round_trip_and_one_line_errors(tmp_path: Path) -> None:
    config = preset("frozen", model="mobilenet_v2", crop="lungs", sources={"b": "/data/b"})
    path = tmp_path / "config.json"
    config.save(path)
    assert RunConfig.load(path) == config
    assert json.loads(path.read_text()) == asdict(config)
    data = json.loads(path.read_text())
    del data["crop"]  # a run from before the field existed: today's default
    path.write_text(json.dumps(data))
    assert RunConfig.load(path).crop == "none"
    path.write_text(json.dumps(data | {"colour": "red"}))
    with pytest.raises(CxrlabError, match=r"config\.json: unknown field\(s\) colour"):
        RunConfig.load(path)
    path.write_text("{broken")
    with pytest.raises(CxrlabError, match=r"config\.json: not valid JSON"):
        RunConfig.load(path)


def test_the_model_card_reads_config_json_strictly(tmp_path: Path) -> None:
    from cxrlab.reporting.model_card import known_limitations

    (tmp_path / "config.json").write_text("{broken")  # was read as empty before
    with pytest.raises(CxrlabError, match=r"config\.json: not valid JSON"):
        known_limitations(tmp_path)


def test_model_meta_of_an_old_checkpoint_takes_the_documented_defaults() -> None:
    meta = ModelMeta.from_extra({"image_size": 64}, "old.pt", arch="resnet18", classes=CLASSES)
    assert meta == ModelMeta("resnet18", tuple(CLASSES), image_size=64)
    assert (meta.resize, meta.crop, meta.tta, meta.config) == ("squash", "none", False, None)
    assert (meta.temperature, meta.operating_point) == (1.0, None)
    assert CacheSpec.of_model(meta) == CacheSpec(64, "squash", "none")
    nothing = ModelMeta.from_extra({}, "older.pt", arch="resnet18", classes=CLASSES)
    assert CacheSpec.of_model(nothing) == CacheSpec(224, "squash", "none")  # the 224 px fallback
    nulls = {"temperature": None, "operating_point": None}  # stored as null: not calibrated
    assert ModelMeta.from_extra(nulls, "x.pt", arch="resnet18", classes=CLASSES) == nothing


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"epoch": 3}, "m.pt: epoch: unknown key"),
        ({"resize": "stretch"}, "m.pt: resize: "),
        ({"image_size": "big"}, "m.pt: image_size: "),
        ({"operating_point": {"label": "COVID19"}}, "m.pt: operating_point.target_recall: "),
    ],
)
def test_model_meta_refuses_what_it_does_not_know(extra: dict, message: str) -> None:
    with pytest.raises(CxrlabError) as caught:
        ModelMeta.from_extra(extra, "m.pt", arch="resnet18", classes=CLASSES)
    assert str(caught.value).startswith(message)


def test_model_meta_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    model = create_model("resnet18", CLASSES, pretrained=False)
    point = OperatingPoint("COVID19", 0.95, 0.3, 0.96, 0.8, 25)
    config = preset("smoke", model="resnet18")
    meta = ModelMeta.of(
        model,
        image_size=48,
        resize="pad",
        crop="lungs",
        tta=True,
        config=asdict(config),
        temperature=1.7,
        operating_point=point,
    )
    path = save_checkpoint(model, tmp_path / "model.pt", meta)
    payload = torch.load(path, weights_only=True)
    assert list(payload["extra"]) == EXTRA_KEYS  # the keys training stored before ModelMeta
    assert payload["extra"]["operating_point"] == asdict(point)
    assert (payload["arch"], payload["classes"]) == ("resnet18", CLASSES)
    loaded, read = load_model(path, arch="resnet18", classes=CLASSES)
    assert read == meta and RunConfig(**read.config) == config
    assert CacheSpec.of_model(read) == CacheSpec(48, "pad", "lungs")
    # a checkpoint written before the extra held a key: the defaults, once
    legacy = {k: v for k, v in payload.items() if k != "extra"} | {"extra": {"image_size": 48}}
    torch.save(legacy, tmp_path / "legacy.pt")
    assert load_model(tmp_path / "legacy.pt")[1] == ModelMeta("resnet18", tuple(CLASSES), 48)
    torch.save(legacy | {"extra": {"tta": "maybe"}}, tmp_path / "bad.pt")
    with pytest.raises(CxrlabError, match=r"bad\.pt: tta: "):
        load_model(tmp_path / "bad.pt")
    assert payload["format"] == CHECKPOINT_FORMAT
    other = create_model("resnet18", ["A", "B"], pretrained=False)
    with pytest.raises(ValueError, match="ModelMeta of a resnet18"):
        save_checkpoint(other, tmp_path / "x.pt", meta)


def test_history_rows_write_and_read_back(tmp_path: Path) -> None:
    rows = [HistoryRow(0, 1e-3, 1.2, 0.5, 1.1, 0.6, 0.55, 3.25, 12.0)]
    write_history(tmp_path / "history.csv", rows)
    assert (tmp_path / "history.csv").read_text().splitlines() == [
        "epoch,lr,train_loss,train_acc,val_loss,val_acc,val_macro_f1,epoch_time_s,val_n",
        "0,0.001,1.2,0.5,1.1,0.6,0.55,3.25,12",
    ]
    assert read_history(tmp_path / "history.csv") == rows
    # a row from before a column existed (a resumed old run): NaN there
    old = HistoryRow.from_dict({k: 1.0 for k in HistoryRow.columns() if k != "val_n"})
    assert old.epoch == 1 and old.val_n != old.val_n
    (tmp_path / "bad.csv").write_text("epoch,lr\n0,fast\n")
    with pytest.raises(CxrlabError, match=r"bad\.csv: not a history\.csv"):
        read_history(tmp_path / "bad.csv")
    # the report's learning curves plot HistoryRow fields
    assert {key for key, *_ in (*LOSS_SERIES, *SCORE_SERIES)} <= set(HistoryRow.columns())


def test_history_row_columns_are_the_header_training_writes(
    tiny_data: tuple[Path, Path], tmp_path: Path
) -> None:
    result = train_tiny(
        tiny_data, tmp_path / "run", preset("scratch", model="resnet18", epochs=1, **TINY)
    )
    with open(result.run_dir / "history.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert tuple(header) == HistoryRow.columns() == tuple(f.name for f in fields(HistoryRow))
    (row,) = read_history(result.run_dir / "history.csv")
    assert row.epoch == 0 and row.val_macro_f1 == pytest.approx(
        result.metrics.best_val_macro_f1, rel=1e-5
    )
    meta = load_model(result.run_dir / "model.pt")[1]
    assert RunConfig(**meta.config) == RunConfig.load(result.run_dir / "config.json")
    assert meta.temperature == result.metrics.calibration.temperature


def test_resolve_layers_settings_and_says_where_each_came_from(tmp_path: Path) -> None:
    """defaults < preset < recipe file < typed, checked once (a typed value mends a bad file
    value); a bad value names its field and where it came from; a resumed run keeps its
    stored config, and what contradicts it is one error."""
    recipe = tmp_path / "r.yaml"
    resolved = resolve(
        "smoke", file=RecipeFile(recipe, {"epochs": 3, "lr": 0.01}), typed={"lr": 0.02}
    )
    config, origins = resolved.config, resolved.origins
    assert (config.epochs, config.lr, config.image_size, config.seed) == (3, 0.02, 64, 0)
    assert [origins[k] for k in ("epochs", "lr", "image_size", "seed")] == [
        "file",
        "typed",
        "preset",
        "default",
    ]
    assert resolved.given("typed") == {"lr": 0.02}
    bad = RecipeFile(recipe, {"epochs": 0})
    with pytest.raises(ConfigError) as caught:
        resolve("smoke", file=bad)
    assert (caught.value.field, caught.value.origin, caught.value.where) == (
        "epochs",
        "file",
        str(recipe),
    )
    assert resolve("smoke", file=bad, typed={"epochs": 2}).config.epochs == 2
    with pytest.raises(ConfigError, match="^preset: 'fast' is not one of"):
        resolve("fast")

    stored = tmp_path / "config.json"
    RunConfig(epochs=4).save(stored)
    resumed = resolve(typed={"num_workers": 3}, stored=stored)  # execution only: no conflict
    assert resumed.config == RunConfig(epochs=4) and set(resumed.origins.values()) == {"stored"}
    with pytest.raises(
        ConfigError, match=r"^resume: preset frozen \(the run has mode finetune\); epochs 5 \("
    ):
        resolve("frozen", typed={"epochs": 5}, stored=stored)
    with pytest.raises(ConfigError, match="^config_file: a resumed run keeps its own"):
        resolve(file=bad, stored=stored)
    with pytest.raises(ConfigError, match="holds no run to resume"):
        resolve(stored=tmp_path / "nothing" / "config.json")
