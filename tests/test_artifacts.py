"""The run folder's files, named once (cxrlab.artifacts): no torch, strict JSON, strict config."""

from __future__ import annotations

import json
import pkgutil
from pathlib import Path

import pytest
from conftest import modules_loaded_by

from cxrlab.artifacts import RunDir, optional_json, read_json
from cxrlab.config import RunConfig, preset
from cxrlab.errors import CxrlabError


def test_run_dir_names_every_file_under_its_root(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert run.metrics == tmp_path / "run" / "metrics.json"
    assert run.last_checkpoint == tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert run.external("adult").predictions == tmp_path / "run/external/adult/predictions.csv"
    assert not run.is_finished
    run.root.mkdir()
    run.metrics.write_text("{}")
    assert run.is_finished


def test_bad_json_is_an_error_naming_the_file(tmp_path: Path) -> None:
    broken, listed = tmp_path / "metrics.json", tmp_path / "list.json"
    broken.write_text("{not json")
    listed.write_text("[1, 2]")
    with pytest.raises(CxrlabError, match="metrics.json: not valid JSON"):
        read_json(broken)
    with pytest.raises(CxrlabError, match="list.json: expected a JSON object"):
        read_json(listed)
    assert optional_json(tmp_path / "absent.json") is None


def test_config_with_an_unknown_field_is_refused_not_dropped(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    preset("finetune", model="alexnet").save(path)
    data = json.loads(path.read_text())
    del data["ema_decay"]  # missing (an older run): today's default
    assert RunConfig.load(path.write_text(json.dumps(data)) and path).ema_decay == 0.0
    path.write_text(json.dumps(data | {"mixup": 0.2}))
    with pytest.raises(CxrlabError, match=r"config.json: unknown field\(s\) mixup"):
        RunConfig.load(path)


def test_artifacts_import_neither_torch_nor_lightning() -> None:
    found = modules_loaded_by("cxrlab.artifacts")
    assert "cxrlab.artifacts" in found
    assert [m for m in found if m.split(".")[0] in ("torch", "lightning", "numpy")] == []


def test_records_import_neither_torch_nor_lightning() -> None:
    modules = ("records", "diagnostics", "data.summary", "data.audit_records")
    found = modules_loaded_by(*(f"cxrlab.{name}" for name in modules))
    assert {f"cxrlab.{name}" for name in modules} <= set(found)
    assert [m for m in found if m.split(".")[0] in ("torch", "lightning")] == []


def test_reporting_imports_neither_torch_nor_lightning() -> None:
    """The report and the model card are thin readers of a run's files: no module of
    cxrlab.reporting (nor the predictions CSV they read) loads torch or Lightning."""
    import cxrlab.reporting

    modules = [
        f"cxrlab.reporting.{m.name}" for m in pkgutil.iter_modules(cxrlab.reporting.__path__)
    ]
    assert {"cxrlab.reporting.report", "cxrlab.reporting.model_card"} <= set(modules)
    found = modules_loaded_by(*modules, "cxrlab.evaluation.predictions_csv")
    assert set(modules) <= set(found)
    assert [m for m in found if m.split(".")[0] in ("torch", "lightning", "torchvision")] == []


def test_reading_a_run_folder_loads_no_statistics_stack() -> None:
    """Reading a run (its config, records, history and predictions) needs no scipy or
    scikit-learn: only scoring does."""
    found = modules_loaded_by("cxrlab.reporting.runs")
    assert [m for m in found if m.split(".")[0] in ("scipy", "sklearn", "torch")] == []
