"""ONNX export and prediction through ONNX Runtime, on tiny untrained models at 32 px."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save, smooth_image

from cxrlab.cli import run
from cxrlab.errors import CxrlabError
from cxrlab.models import export
from cxrlab.models.checkpoint import load_checkpoint, save_checkpoint
from cxrlab.models.export import TTA_NOTE, OnnxModel, compare_eager_onnx, export_onnx
from cxrlab.models.registry import CxrClassifier, create_model
from cxrlab.records import ModelMeta

SIZE = 32
CLASSES = ["A", "B", "C"]


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error:") and "Traceback" not in err
    return err


def smooth_batch(n: int, seed: int) -> torch.Tensor:
    """Smooth random films ``(n, 1, SIZE, SIZE)`` in 0..1."""
    coarse = torch.rand(n, 1, 6, 6, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(
        coarse, size=SIZE, mode="bicubic", align_corners=False
    ).clamp(0, 1)


def untrained(arch: str) -> CxrClassifier:
    """A random model whose batch-norm statistics are set on a few films, so its
    probabilities depend on the input (random BN statistics give near-constant outputs)."""
    torch.manual_seed(0)
    model = create_model(arch, CLASSES, pretrained=False)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(smooth_batch(16, seed=1))
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Checkpoints and their ONNX exports: ``resnet18`` and ``proposed`` (saved with TTA on)."""
    root = tmp_path_factory.mktemp("export")
    paths: dict[str, Path] = {}
    for arch, tta in (("resnet18", False), ("proposed_v1", True)):
        model = untrained(arch)
        meta = ModelMeta.of(model, image_size=SIZE, resize="squash", tta=tta)
        checkpoint = save_checkpoint(model, root / arch / "model.pt", meta)
        paths[arch] = checkpoint
        paths[f"{arch}.onnx"] = export_onnx(checkpoint)
    return paths


@pytest.mark.parametrize("arch", ["resnet18", "proposed_v1"])
def test_onnx_matches_eager_with_any_batch_size(exported: dict[str, Path], arch: str) -> None:
    assert exported[f"{arch}.onnx"] == exported[arch].with_suffix(".onnx")
    model = load_checkpoint(exported[arch]).eval()
    runtime = OnnxModel(exported[f"{arch}.onnx"])
    for n, images in (
        (5, smooth_batch(5, seed=2)),
        (1, smooth_batch(1, seed=3)),
        (4, torch.rand(4, 1, SIZE, SIZE)),
    ):
        with torch.no_grad():
            expected = torch.softmax(model(images), dim=1).numpy()
        got = runtime.predict(images.numpy())
        assert got.shape == (n, len(CLASSES))
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert np.ptp(expected, axis=0).max() > 0.01  # the check means something: outputs vary


def test_metadata_round_trip(exported: dict[str, Path]) -> None:
    plain = OnnxModel(exported["resnet18.onnx"])
    assert (plain.arch, plain.classes, plain.image_size, plain.resize) == (
        "resnet18",
        CLASSES,
        SIZE,
        "squash",
    )
    assert 0 <= plain.max_abs_diff <= 1e-4 and plain.notes == []
    (images,) = plain.session.get_inputs()
    assert (
        images.name == "images"
        and isinstance(images.shape[0], str)
        and images.shape[1:] == [1, SIZE, SIZE]
    )
    assert [o.name for o in plain.session.get_outputs()] == ["probabilities"]
    proposed = OnnxModel(exported["proposed_v1.onnx"])
    assert proposed.arch == "proposed_v1" and proposed.notes == [TTA_NOTE]


def test_compare_eager_onnx(exported: dict[str, Path]) -> None:
    result = compare_eager_onnx(
        load_checkpoint(exported["resnet18"]), exported["resnet18.onnx"], SIZE, repeats=3
    )
    assert set(result) == {"eager_ms", "onnx_ms", "speedup", "max_abs_diff", "threads"}
    assert result["eager_ms"] > 0 and result["onnx_ms"] > 0 and result["max_abs_diff"] <= 1e-4
    assert result["speedup"] == pytest.approx(result["eager_ms"] / result["onnx_ms"])


def read_probs(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [r["path"] for r in rows], np.array(
        [[float(r[f"p_{c}"]) for c in CLASSES] for r in rows]
    )


def test_cli_export_then_predict_onnx_like_checkpoint(
    exported: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx_path = tmp_path / "out" / "r18.onnx"
    assert run(["export", str(exported["resnet18"]), "--onnx", "--out", str(onnx_path)]) == 0
    out = capsys.readouterr().out
    assert "r18.onnx" in out and " MB" in out and "max |probability difference|" in out
    assert OnnxModel(onnx_path).classes == CLASSES

    folder = tmp_path / "images"
    for i in range(5):
        save(folder / f"x{i}.png", smooth_image(40 + i, size=(70 + 7 * i, 60)))
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    base = ["--no-progress", "--batch-size", "2", "--device", "cpu"]
    assert (
        run(
            [
                "predict",
                str(exported["resnet18"]),
                str(folder),
                "--out",
                str(tmp_path / "pt.csv"),
                *base,
            ]
        )
        == 0
    )
    assert (
        run(["predict", str(onnx_path), str(folder), "--out", str(tmp_path / "onnx.csv"), *base])
        == 0
    )
    captured = capsys.readouterr()
    assert "ONNX Runtime" in captured.out and "broken.jpg" in captured.err
    pt_paths, pt_probs = read_probs(tmp_path / "pt.csv")
    onnx_paths, onnx_probs = read_probs(tmp_path / "onnx.csv")
    assert pt_paths == onnx_paths and len(pt_paths) == 5
    np.testing.assert_allclose(onnx_probs, pt_probs, atol=1e-4, rtol=0)
    assert np.ptp(pt_probs, axis=0).max() > 0.01

    assert (
        run(
            [
                "predict",
                str(exported["proposed_v1.onnx"]),
                str(folder),
                "--out",
                str(tmp_path / "p.csv"),
                *base,
            ]
        )
        == 0
    )
    assert "test-time augmentation is not part of the ONNX graph" in capsys.readouterr().out


def test_export_needs_a_format(
    exported: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["export", str(exported["resnet18"])]) == 2
    assert "--onnx" in one_line_error(capsys)


def test_export_of_a_non_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(1)}, fake)
    assert run(["export", str(fake), "--onnx"]) == 2
    assert "weights.pt: not a cxrlab model checkpoint" in one_line_error(capsys)
    (tmp_path / "notes.txt").write_text("hello")
    assert run(["export", str(tmp_path / "notes.txt"), "--onnx"]) == 2
    assert "notes.txt" in one_line_error(capsys)
    assert not list(tmp_path.glob("*.onnx"))


def test_predict_with_a_corrupt_onnx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corrupt = tmp_path / "model.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 10)
    save(tmp_path / "img" / "a.png", smooth_image(1))
    assert (
        run(
            [
                "predict",
                str(corrupt),
                str(tmp_path / "img"),
                "--out",
                str(tmp_path / "p.csv"),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "model.onnx: not a readable ONNX model" in one_line_error(capsys)


def test_onnx_without_cxrlab_metadata(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [value("x", TensorProto.FLOAT, [1])],
        [value("y", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(CxrlabError, match="other.onnx: an ONNX model without cxrlab metadata"):
        OnnxModel(path)


def test_a_mismatching_export_is_refused(
    exported: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check after export: a graph that disagrees with PyTorch is an error, no file is
    written."""
    other = exported["proposed_v1.onnx"].read_bytes()  # another network's graph
    monkeypatch.setattr(export, "_to_onnx", lambda *args: other)
    out = tmp_path / "bad.onnx"
    with pytest.raises(
        CxrlabError, match=r"model\.pt: ONNX Runtime probabilities differ from PyTorch"
    ) as info:
        export_onnx(exported["resnet18"], out)
    assert "bad.onnx not written" in str(info.value) and not out.exists()


def test_legacy_exporter_is_the_fallback(
    exported: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = torch.onnx.export

    def no_dynamo(*args: object, dynamo: bool = True, **kwargs: object) -> object:
        if dynamo:
            raise RuntimeError("torch.export cannot trace this model")
        return original(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    out = export_onnx(exported["resnet18"], tmp_path / "legacy.onnx")
    runtime = OnnxModel(out)
    assert runtime.max_abs_diff <= 1e-4 and runtime.predict(
        smooth_batch(5, seed=4).numpy()
    ).shape == (5, 3)
