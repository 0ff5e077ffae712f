from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision

from cxrlab.errors import ConfigError, CxrlabError
from cxrlab.models import create_model, list_models
from cxrlab.models.checkpoint import load_checkpoint, save_checkpoint
from cxrlab.models.registry import check_model
from cxrlab.models.weights import hub_checkpoint_dir

CLASSES = ["COVID19", "NORMAL", "PNEUMONIA"]
SHARED_WEIGHTS = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "weights"
    / "mobilenet_v2-imagenet-dequantized.pth"
)


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty $TORCH_HOME, and no network: a download attempt raises URLError."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url: str, *args: object, **kwargs: object) -> None:
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch"


@pytest.mark.parametrize("name", list_models() + ["timm:resnet10t"])
def test_every_model_builds_with_a_new_head(name: str) -> None:
    model = create_model(name, CLASSES, pretrained=False).eval()
    assert model.head.out_features == 3
    with torch.no_grad():
        logits = model(torch.rand(2, 1, 64, 64))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    n_head = sum(p.numel() for p in model.head_parameters())
    n_backbone = sum(p.numel() for p in model.backbone_parameters())
    assert n_head + n_backbone == sum(p.numel() for p in model.parameters())


def test_grayscale_is_repeated_and_normalised() -> None:
    model = create_model("resnet18", CLASSES, pretrained=False).eval()
    gray = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(gray), model(gray.expand(-1, 3, -1, -1)))


def test_local_weights_file_is_loaded(tmp_path: Path) -> None:
    reference = torchvision.models.resnet18()
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": reference.state_dict()}, path)
    model = create_model("resnet18", CLASSES, weights=path)
    assert torch.equal(model.network.conv1.weight, reference.conv1.weight)
    assert model.head.out_features == 3


def test_weights_of_another_model_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "mnv2.pth"
    torch.save(torchvision.models.mobilenet_v2().state_dict(), path)
    with pytest.raises(CxrlabError, match=r"mnv2.pth does not fit resnet18: .*missing keys"):
        create_model("resnet18", CLASSES, weights=path)
    (tmp_path / "junk.pth").write_bytes(b"not torch")
    with pytest.raises(CxrlabError, match="junk.pth cannot be read as a PyTorch weights file"):
        create_model("resnet18", CLASSES, weights=tmp_path / "junk.pth")


def test_offline_download_is_one_line_naming_the_fix(torch_home: Path) -> None:
    with pytest.raises(CxrlabError) as info:
        create_model("resnet18", CLASSES, pretrained=True)
    message = str(info.value)
    assert (
        "resnet18-f37072fd.pth" in message and str(torch_home) in message and "(weights)" in message
    )
    assert "\n" not in message


def test_weights_come_from_the_torch_hub_cache(torch_home: Path) -> None:
    reference = torchvision.models.alexnet()
    cache = hub_checkpoint_dir()
    assert cache == torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / "alexnet-owt-7be5be79.pth")
    model = create_model("alexnet", CLASSES, pretrained=True)  # no network needed
    assert torch.equal(model.network.features[0].weight, reference.features[0].weight)


def test_unknown_model_is_named_with_the_option() -> None:
    with pytest.raises(CxrlabError, match="no such model in cxrlab or timm"):
        create_model("resnet_banana", CLASSES, pretrained=False)
    with pytest.raises(ConfigError, match="^model timm:resnet_banana: no such model") as caught:
        check_model("timm:resnet_banana", 224)
    assert caught.value.field == "model"  # the CLI writes it as the option that set it


def test_checkpoint_round_trip_and_refusals(tmp_path: Path) -> None:
    model = create_model("mobilenet_v2", CLASSES, pretrained=False).eval()
    path = save_checkpoint(model, tmp_path / "best.pt")
    loaded = load_checkpoint(path, arch="mobilenet_v2", classes=CLASSES).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    with pytest.raises(CxrlabError, match="is a mobilenet_v2, not a resnet18"):
        load_checkpoint(path, arch="resnet18")
    with pytest.raises(CxrlabError, match="classes"):
        load_checkpoint(path, classes=["NORMAL", "PNEUMONIA"])
    torch.save({"some": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(CxrlabError, match="not a cxrlab model checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")


@pytest.mark.real_data
def test_shared_pretrained_mobilenet_loads() -> None:
    if not SHARED_WEIGHTS.is_file():
        pytest.skip(f"pretrained weights not found at {SHARED_WEIGHTS}")
    model = create_model("mobilenet_v2", CLASSES, weights=SHARED_WEIGHTS).eval()
    first = model.network.features[0][0].weight
    assert first.abs().sum() > 0 and model.head.out_features == 3
