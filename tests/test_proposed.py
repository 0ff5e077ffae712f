"""The proposed model's parts: histogram equalisation, two-scale GeM head, TTA, EMA, its recipe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image, ImageOps

from cxrlab.config import preset
from cxrlab.data.synthetic import make_demo_dataset
from cxrlab.evaluation.predict import load_predictor
from cxrlab.models import create_model
from cxrlab.models.checkpoint import load_checkpoint, load_model, save_checkpoint
from cxrlab.models.proposed import GeM, equalize_histogram
from cxrlab.models.tta import TTA_VIEWS, TestTimeAugmentation, affine_view, with_tta
from cxrlab.pipelines.compare import plan_runs
from cxrlab.records import ModelMeta
from cxrlab.training.module import ClassifierModule, parameter_groups
from cxrlab.training.run import train_run

CLASSES = ["COVID19", "NORMAL", "PNEUMONIA"]


def _film(seed: int = 0, size: int = 48) -> torch.Tensor:
    pixels = (np.random.default_rng(seed).random((size, size)) ** 2 * 200 + 20).astype(np.uint8)
    return torch.from_numpy(pixels)[None, None].float() / 255


def test_equalisation_matches_pil_and_ignores_monotone_intensity_changes() -> None:
    film = _film()
    ours = (equalize_histogram(film) * 255).round().numpy()[0, 0]
    pil = np.asarray(
        ImageOps.equalize(Image.fromarray((film[0, 0] * 255).round().byte().numpy())),
        dtype=np.float64,
    )
    assert np.corrcoef(ours.ravel(), pil.ravel())[0, 1] > 0.995
    assert ours.min() == 0 and ours.max() == 255
    # Darker, flatter exposure of the same film (monotone): the same equalised film, up to
    # the grey levels that the darker copy merges.
    darker = (film * 0.6 + 0.05) ** 1.3
    assert (equalize_histogram(darker) - equalize_histogram(film)).abs().mean() < 0.01
    assert (darker - film).abs().mean() > 0.1
    # Each image of a batch is equalised on its own histogram.
    batch = torch.cat([film, _film(1)])
    assert torch.allclose(equalize_histogram(batch)[:1], equalize_histogram(film))


def test_gem_lies_between_mean_and_max() -> None:
    x = torch.rand(2, 4, 5, 5)
    pooled = GeM(p=3.0)(x)
    assert torch.all(pooled >= x.mean((2, 3)) - 1e-6) and torch.all(pooled <= x.amax((2, 3)) + 1e-6)
    assert torch.allclose(GeM(p=1.0)(x), x.mean((2, 3)), atol=1e-5)


def test_proposed_is_in_the_zoo_with_mobilenet_v2_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    backbone = torchvision.models.mobilenet_v2()
    weights = tmp_path / "mnv2.pth"
    torch.save(backbone.state_dict(), weights)
    model = create_model("proposed_v1", CLASSES, weights=weights)
    assert model.arch == "proposed_v1" and model.head.in_features == 96 + 1280
    assert torch.equal(model.network.stage16[0][0].weight, backbone.features[0][0].weight)
    assert torch.equal(model.network.stage32[-1][0].weight, backbone.features[18][0].weight)
    model.eval()
    x = torch.rand(3, 1, 64, 64)
    assert model(x).shape == (3, 3)
    # Equalisation happens inside: a darker copy of the films changes the logits far less.
    plain = create_model("proposed_v1_noeq", CLASSES, weights=weights).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        change = (model(x * 0.7) - model(x)).abs().mean()
        change_plain = (plain(x * 0.7) - plain(x)).abs().mean()
    assert change < 0.2 * change_plain
    # Head (linear) and backbone (features, GeM p) are separate learning-rate groups.
    groups = parameter_groups(model, 1e-3, 1e-4, 1e-4)
    head_ids = {id(p) for p in model.head.parameters()}
    assert {id(p) for g in groups if g["lr"] == 1e-3 for p in g["params"]} == head_ids


def test_tta_averages_probabilities_over_views_and_survives_a_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", CLASSES, pretrained=False).eval()
    x = torch.rand(2, 1, 48, 48)
    assert torch.equal(affine_view(x, 0.0, 1.0), x)
    rotated = affine_view(x, 5.0, 1.0)
    assert not torch.allclose(rotated, x) and rotated.shape == x.shape
    tta = TestTimeAugmentation(model).eval()
    with torch.no_grad():
        plain = model(x)
        averaged = tta(x).exp()
        expected = torch.stack(
            [torch.softmax(model(affine_view(x, d, z)), 1) for d, z in TTA_VIEWS]
        ).mean(0)
    assert torch.allclose(averaged, expected, atol=1e-5)
    assert torch.allclose(averaged.sum(1), torch.ones(2), atol=1e-5)
    assert not torch.allclose(averaged, torch.softmax(plain, 1))
    assert tta.classes == CLASSES and with_tta(model, False) is model
    # the checkpoint carries the run's choice; prediction from it applies the views
    path = save_checkpoint(model, tmp_path / "m.pt", ModelMeta.of(model, image_size=48, tta=True))
    assert load_model(path)[1].tta is True
    predicted = load_predictor(path, device="cpu").batch_probs(x.numpy())
    np.testing.assert_allclose(predicted, expected.numpy(), atol=1e-5)
    plain_path = save_checkpoint(model, tmp_path / "p.pt", ModelMeta.of(model, image_size=48))
    predicted = load_predictor(plain_path, device="cpu").batch_probs(x.numpy())
    np.testing.assert_allclose(predicted, torch.softmax(plain, 1).numpy(), atol=1e-5)
    tta.train()
    assert tta(x).shape == (2, 3)  # training mode: one view, raw logits


def test_ema_is_what_is_validated_and_kept(tmp_path: Path) -> None:
    root = make_demo_dataset(
        tmp_path / "data", train_per_class=6, test_per_class=2, size=40, defects=False
    )
    config = preset(
        "proposed_v1",
        model="resnet18",
        pretrained=False,
        image_size=32,
        batch_size=4,
        val_fraction=0.25,
        epochs=2,
        ema_decay=0.9,
        tta=True,
    )
    result = train_run(root, config, tmp_path / "run", cache_root=tmp_path / "cache", workers=1)
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", weights_only=False)[
        "state_dict"
    ]
    kept = load_checkpoint(tmp_path / "run" / "model.pt")
    for name, value in kept.state_dict().items():
        assert torch.equal(value, best[f"ema.module.{name}"]), name
    assert any(
        not torch.equal(best[f"net.{k}"], best[f"ema.module.{k}"])
        for k in kept.state_dict()
        if k.endswith("weight")
    )
    assert load_model(tmp_path / "run" / "model.pt")[1].tta is True
    assert result.metrics.test_without_tta.n == result.metrics.test.n
    module = ClassifierModule(kept, config, 3)
    assert module.evaluated_net() is module.ema.module


def test_compare_gives_each_proposed_design_its_recipe_and_pairs_seeds() -> None:
    models = ["mobilenet_v2", "proposed", "proposed_v1"]
    configs, _ = plan_runs(
        models,
        "finetune",
        weights={},
        pretrained=True,
        seeds=[0, 1],
        typed={"epochs": 7},
    )
    assert [(c.seed, c.model) for c in configs] == [
        (s, m) for s in (0, 1) for m in models
    ]  # seed by seed
    by_model = {c.model: c for c in configs if c.seed == 0}
    assert (
        by_model["proposed_v1"].ema_decay > 0 and not by_model["proposed_v1"].tta
    )  # TTA lost on validation
    # the second design is trained exactly as the baseline: the comparison measures its head
    assert by_model["proposed"].updated(model="mobilenet_v2") == by_model["mobilenet_v2"]
    assert by_model["proposed_v1"].epochs == by_model["mobilenet_v2"].epochs == 7  # the same budget
    with pytest.raises(Exception, match="ema_decay"):
        preset("proposed_v1", ema_decay=1.0)


KAGGLE = ["COVID19", "NORMAL", "PNEUMONIA"]


def test_two_stage_head_gives_probabilities_and_keeps_the_confounded_class_out_of_stage_one() -> (
    None
):
    from cxrlab.errors import CxrlabError
    from cxrlab.models.proposed import TwoStageHead

    torch.manual_seed(0)
    head = TwoStageHead(8, KAGGLE)
    assert (head.normal, head.contrast, head.other) == (1, 2, 0)
    x = torch.randn(6, 8)
    log_probs = head(x)
    assert torch.allclose(log_probs.exp().sum(1), torch.ones(6), atol=1e-6)
    a, q = head.linear(x).unbind(1)
    assert torch.allclose(
        log_probs[:, 1].exp(), torch.sigmoid(-a), atol=1e-6
    )  # p(NORMAL) = 1 - σ(a)
    assert torch.allclose(log_probs[:, 2].exp(), torch.sigmoid(a) * torch.sigmoid(q), atol=1e-6)
    weights = torch.ones(3)
    # COVID19 films (the confounded class) move only the second decision, never the first
    head.zero_grad()
    head.loss(head(x), torch.zeros(6, dtype=torch.long), weights).backward()
    grad = head.linear.weight.grad.abs().sum(1)
    assert grad[0] < 1e-6 * grad[1]  # zero but for rounding (log σ(a) cancels in stage 2)
    # NORMAL films move only the first
    head.zero_grad()
    head.loss(head(x), torch.ones(6, dtype=torch.long), weights).backward()
    grad = head.linear.weight.grad.abs().sum(1)
    assert grad[1] < 1e-6 * grad[0]
    # the loss by hand: stage 1 is binary cross-entropy on NORMAL vs PNEUMONIA
    target = torch.tensor([1, 2, 1, 2, 0, 0])
    loss = head.loss(head(x), target, weights)
    stage1 = nn_bce(a[:4], torch.tensor([0.0, 1.0, 0.0, 1.0]))
    stage2 = nn_bce(q[[1, 3, 4, 5]], torch.tensor([1.0, 1.0, 0.0, 0.0]))
    assert loss.item() == pytest.approx((stage1 + stage2).item(), rel=1e-5)
    for classes in (["A", "B"], ["COVID19", "NORMAL", "TB"]):
        with pytest.raises(CxrlabError, match="two-stage head needs"):
            TwoStageHead(8, classes)


def nn_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, target)


def test_two_stage_model_is_in_the_zoo_trains_frozen_and_exports(tmp_path: Path) -> None:
    from cxrlab.models.export import OnnxModel, export_model
    from cxrlab.models.registry import check_model

    check_model("proposed", 32)
    model = create_model("proposed", KAGGLE, pretrained=False).eval()
    assert model.head_name == "classifier.1" and model.head.in_features == 1280
    images = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        probs = torch.softmax(model(images), 1)
    assert torch.allclose(probs.sum(1), torch.ones(2), atol=1e-5)
    onnx = export_model(
        model, tmp_path / "m.onnx", ModelMeta.of(model, image_size=32, temperature=2.0)
    )
    got = OnnxModel(onnx).predict(images.numpy())
    with torch.no_grad():
        expected = torch.softmax(model(images) / 2.0, 1).numpy()
    assert np.abs(got - expected).max() < 1e-4
    data = make_demo_dataset(
        tmp_path / "data", train_per_class=8, test_per_class=3, size=48, defects=False
    )
    config = preset(
        "frozen",
        model="proposed",
        pretrained=False,
        image_size=32,
        epochs=3,
        val_fraction=0.25,
        batch_size=8,
    )
    result = train_run(data, config, tmp_path / "run", cache_root=tmp_path / "cache", workers=1)
    assert (
        result.metrics.test.n == 9
        and load_checkpoint(tmp_path / "run" / "model.pt").arch == "proposed"
    )
