"""Grad-CAM (hooks, target layers, a hand-made sanity case), CAM shares and lung-field masks."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import dice, film_and_lungs, square
from torch import nn

from cxrlab.data.synthetic import DEMO_CLASSES, synth_cxr
from cxrlab.diagnostics import GradcamSummary
from cxrlab.errors import CxrlabError
from cxrlab.evaluation.gradcam import (
    border_frame,
    cam_shares,
    find_target_layer,
    gradcam,
    gradcam_summary,
)
from cxrlab.lungs import segmenter_label
from cxrlab.lungs.heuristic import lung_field_mask, lung_masks, otsu_threshold, template_mask
from cxrlab.models import create_model

CLASSES = list(DEMO_CLASSES)
SUMMARY_KEYS = [
    "n_images",
    "target",
    "layer",
    "lung_share",
    "border_share",
    "other_share",
    "lung_area",
    "lung_enrichment",
    "lung_share_by_class",
    "lung_share_correct",
    "lung_share_wrong",
    "segmented",
    "n_zero_maps",
    "segmenter",
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, especially on a busy machine (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def no_hooks(model: nn.Module) -> bool:
    return all(
        not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks) for m in model.modules()
    )


# --------------------------------------------------------------------------- target layers


@pytest.mark.parametrize(
    ("name", "size", "expected"),
    [
        ("mobilenet_v2", 64, "network.features"),
        ("resnet18", 64, "network.layer4"),
        ("alexnet", 128, "network.features"),  # AdaptiveAvgPool2d((6, 6)) comes later: skipped
        ("proposed_v1", 64, "network.stage32"),
        ("proposed", 64, "network.features"),
    ],
)
def test_target_layer_per_architecture(name: str, size: int, expected: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, CLASSES, pretrained=False)
    assert find_target_layer(model, size=size) == expected
    assert no_hooks(model)
    assert model.training  # mode restored


def test_alexnet_at_64_px_picks_a_layer_with_spatial_extent() -> None:
    torch.manual_seed(0)
    model = create_model("alexnet", CLASSES, pretrained=False)
    layer = find_target_layer(model, size=64)  # features ends at 1x1 here
    assert layer.startswith("network.features.") and "avgpool" not in layer
    out = {}
    module = model.get_submodule(layer)
    handle = module.register_forward_hook(lambda m, i, o: out.setdefault("o", o))
    with torch.no_grad():
        model.eval()(torch.rand(1, 1, 64, 64))
    handle.remove()
    assert out["o"].shape[-1] > 1


def test_no_convolution_is_an_error() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64 * 64, 3))
    with pytest.raises(CxrlabError, match="Grad-CAM needs a CNN"):
        find_target_layer(model, size=64)


# --------------------------------------------------------------------------- Grad-CAM


def test_gradcam_shape_range_and_no_side_effects() -> None:
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", CLASSES, pretrained=False)
    model.train()
    for p in model.backbone_parameters():  # frozen backbone: gradients must still reach the CAM
        p.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    bn = model.network.features[1].conv[0][1]
    running = bn.running_mean.clone()

    images = torch.rand(3, 1, 64, 64)
    cams = gradcam(model, images, torch.tensor([0, 1, 2]))

    assert cams.shape == (3, 64, 64) and not cams.requires_grad
    assert float(cams.min()) >= 0.0 and float(cams.max()) <= 1.0
    for cam in cams:
        assert float(cam.max()) in (0.0, 1.0)
    assert no_hooks(model)
    assert model.training and bn.training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(bn.running_mean, running)  # ran in eval mode
    assert not images.requires_grad


def test_gradcam_under_no_grad_with_a_given_layer() -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", CLASSES, pretrained=False).eval()
    with torch.no_grad():
        images, target = torch.rand(2, 1, 64, 64), torch.tensor([1, 1])
        cams = gradcam(model, images, target, layer="network.layer3")
    assert cams.shape == (2, 64, 64) and float(cams.max()) <= 1.0
    assert not model.training and no_hooks(model)
    with pytest.raises(CxrlabError, match="not a module"):
        gradcam(model, torch.rand(1, 1, 64, 64), torch.tensor([0]), layer="network.nope")
    assert no_hooks(model)


class BrightDark(nn.Module):
    """Channel 0 responds to bright pixels, channel 1 to dark ones; class 1 reads only
    channel 0 and class 0 only channel 1 (through a global average pool)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0, 1, 1] = 1.0  # x
            self.conv.weight[1, 0, 1, 1] = -1.0  # 1 - x
            self.conv.bias.copy_(torch.tensor([0.0, 1.0]))
            self.head.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.act(self.conv(images))).flatten(1))


@pytest.mark.parametrize("side", ["left", "right"])
def test_gradcam_points_at_the_evidence(side: str) -> None:
    images = torch.zeros(1, 1, 32, 32)
    columns = slice(4, 12) if side == "left" else slice(20, 28)
    images[0, 0, 10:20, columns] = 1.0  # one bright blob
    model = BrightDark()
    assert not hasattr(model, "tta")
    assert find_target_layer(model, size=32) == "act"

    bright = gradcam(model, images, torch.tensor([1]))[0]  # class 1: "bright pixels"
    half = bright[:, :16] if side == "left" else bright[:, 16:]
    assert float(half.sum() / bright.sum()) > 0.9
    blob = torch.zeros(32, 32, dtype=torch.bool)
    blob[10:20, columns] = True
    assert float(bright[blob].sum() / bright.sum()) > 0.8

    dark = gradcam(model, images, torch.tensor([0]))[0]  # class 0: "dark pixels"
    assert float(dark[blob].sum() / dark.sum()) < 0.1


# --------------------------------------------------------------------------- shares


def test_cam_shares_add_up_and_locate_mass() -> None:
    rng = np.random.default_rng(0)
    size = 50
    masks = np.zeros((3, size, size), dtype=bool)
    masks[:, 10:40, 8:22] = masks[:, 10:40, 28:42] = True
    cams = rng.random((3, size, size))
    frame = border_frame(size, size)
    assert frame.mean() == pytest.approx(1 - (1 - 2 * 4 / size) ** 2)  # 8% of 50 px = 4 px
    cams[1] = masks[1] & ~frame  # all mass inside the lungs
    cams[2] = 0.0  # an all-zero map
    shares = cam_shares(cams, masks)

    total = shares["lung_share"] + shares["border_share"] + shares["other_share"]
    assert total[:2] == pytest.approx([1.0, 1.0])
    assert shares["lung_share"][1] == pytest.approx(1.0)
    assert shares["border_share"][1] == 0.0
    assert np.isnan(shares["lung_share"][2])
    assert shares["lung_area"] == pytest.approx((masks & ~frame).mean(axis=(1, 2)))

    uniform = cam_shares(np.ones((1, size, size)), masks[:1])
    assert uniform["lung_share"][0] == pytest.approx(uniform["lung_area"][0])
    assert uniform["border_share"][0] == pytest.approx(frame.mean())


# --------------------------------------------------------------------------- lungs


def test_otsu_splits_two_modes() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(50, 5, 1000), rng.normal(180, 5, 500)])
    assert 70 < otsu_threshold(values) < 160
    assert otsu_threshold(np.full(10, 7.0)) == 7.0


@pytest.mark.parametrize("class_name", ["NORMAL", "COVID19"])
def test_lung_mask_finds_the_synthetic_lungs(class_name: str) -> None:
    film, truth = film_and_lungs(0, class_name, 128)
    mask, ok = lung_field_mask(film)
    assert ok
    assert mask.shape == (128, 128) and mask.dtype == bool
    assert dice(mask, truth) > 0.8
    assert dice(mask, truth) > dice(template_mask(128), truth)
    # one lung on each side of the midline
    assert mask[:, :64].sum() > 0.03 * mask.size and mask[:, 64:].sum() > 0.03 * mask.size


def test_lung_mask_of_a_large_film_is_found_at_the_working_size() -> None:
    film, truth = film_and_lungs(0, "PNEUMONIA", 224)  # segmented at 128 px, mask resized back
    mask, ok = lung_field_mask(film)
    assert ok and mask.shape == (224, 224) and dice(mask, truth) > 0.8


@pytest.mark.parametrize(("level", "least_dice"), [(0, 0.9), (40, 0.75)])
def test_lungs_open_to_the_outside_air_are_cut_at_the_body_outline(
    level: int, least_dice: float
) -> None:
    """A gap in each chest wall joins the lung to the dark air beyond the body (as on thin
    pediatric films): the lungs are still found, cut at the body outline. A gap of air (0) is
    left out of the body; one darker than the lungs but lighter than air (40) is body, so the
    lung runs on through it to the (eroded) body outline."""
    film, truth = film_and_lungs(0, "NORMAL", 128)
    film = film.copy()
    for row in range(52, 64):  # a 12 px gap: wider than the opening that cuts thin bridges
        lung = np.flatnonzero(truth[row])
        film[row, : lung[0]] = np.minimum(film[row, : lung[0]], level)  # the walls, not the lungs
        film[row, lung[-1] + 1 :] = np.minimum(film[row, lung[-1] + 1 :], level)
    mask, ok = lung_field_mask(film)
    assert ok and dice(mask, truth) > least_dice
    assert not mask[:, :4].any() and not mask[:, -4:].any()  # no lung at the image edge


def test_lung_mask_falls_back_to_the_template() -> None:
    for blank in (np.full((64, 64), 128, np.uint8), np.zeros((64, 64), np.uint8)):
        mask, ok = lung_field_mask(blank)
        assert not ok and np.array_equal(mask, template_mask(64))
    noise = np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8)
    assert not lung_field_mask(noise)[1]
    film, _ = film_and_lungs(1, "NORMAL", 64)
    masks, ok = lung_masks(np.stack([film, np.zeros((64, 64), np.uint8)]))
    assert masks.shape == (2, 64, 64) and ok.tolist() == [True, False]


# --------------------------------------------------------------------------- summary


def test_gradcam_summary_keys_values_and_figure(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", CLASSES, pretrained=False)
    films = [synth_cxr(np.random.default_rng(i), CLASSES[i % 3], size=64) for i in range(12)]
    images = np.stack([square(f, 64) for f in films])
    labels = np.arange(12) % 3
    out = tmp_path / "figs" / "gradcam.png"

    summary = gradcam_summary(
        model,
        images,
        labels,
        CLASSES,
        out_png=out,
        batch_size=5,
        title="mobilenet_v2 $test",
    )

    assert list(asdict(summary)) == SUMMARY_KEYS  # gradcam.json's keys, in this order
    json.dumps(asdict(summary), allow_nan=False)
    assert summary.n_images == 12 and summary.layer == "network.features"
    assert summary.target == "predicted class"
    parts = [summary.lung_share, summary.border_share, summary.other_share]
    assert all(0.0 <= p <= 1.0 for p in parts) and sum(parts) == pytest.approx(1.0)
    assert 0.0 < summary.lung_area < 1.0
    assert summary.lung_enrichment == pytest.approx(summary.lung_share / summary.lung_area)
    assert set(summary.lung_share_by_class) == set(CLASSES)
    assert 0.0 <= summary.segmented <= 1.0
    assert summary.segmenter == segmenter_label()  # the learned segmenter, shipped
    assert summary.n_zero_maps < 12
    assert summary.lung_share_correct is not None or summary.lung_share_wrong is not None
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert model.training and no_hooks(model)

    earlier = gradcam_summary(model, images[:4], labels[:4], CLASSES, layer="network.features.13")
    assert earlier.layer == "network.features.13" and earlier.n_images == 4

    # gradcam.json as the diagnose pipeline writes it reads back as the same record, strictly
    saved = tmp_path / "gradcam.json"
    saved.write_text(summary.to_json())
    loaded = GradcamSummary.load(saved)
    assert loaded == summary and json.loads(loaded.to_json()) == json.loads(saved.read_text())
    data = json.loads(saved.read_text())
    saved.write_text(json.dumps(data | {"lung_sahre": 0.5}))
    with pytest.raises(CxrlabError, match=r"gradcam\.json: lung_sahre: unknown key"):
        GradcamSummary.load(saved)
    saved.write_text(json.dumps({k: v for k, v in data.items() if k != "n_zero_maps"}))
    with pytest.raises(CxrlabError, match=r"gradcam\.json: n_zero_maps: missing key"):
        GradcamSummary.load(saved)
