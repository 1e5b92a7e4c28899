"""Model type ``stl``: self-transfer learning (seed 000 §II.C.2)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.data import PreparedSet, view_batch
from models.nets.stl import SelfTransferNet, stl_alpha
from models.registry import ModelMetadata, load_model, model_type_spec, save_checkpoint
from models.supervision import LossContext, TrainBatch
from models.train import TrainConfig
from tests.models.zoo.helpers import adam_losses

SIZE = 64


def _net() -> SelfTransferNet:
    torch.manual_seed(0)
    return SelfTransferNet(stages=1, hidden_features=32, loc_channels=16)


def _ctx(progress: float = 0.0, class_weights: torch.Tensor | None = None,
         **options: str) -> LossContext:
    config = TrainConfig(model_type="stl", stages=1, input_size=SIZE, options=dict(options))
    return LossContext(config=config, num_classes=2, epoch=1, epochs=1,
                       step=round(progress * 100), steps=100, class_weights=class_weights)


def _batch() -> TrainBatch:
    g = torch.Generator().manual_seed(1)
    n = 4
    nan = torch.full((n, 4), float("nan"))
    return TrainBatch(images=torch.rand(n, 1, SIZE, SIZE, generator=g),
                      labels=torch.tensor([0, 1, 0, 1]), rois=nan,
                      boxes=torch.full((n, 8, 4), float("nan")),
                      points=torch.full((n, 8, 2), float("nan")))


@pytest.mark.parametrize(("alpha", "progress", "switch", "expected"), [
    (0.3, 0.0, 0.5, 0.3),   # small alpha first
    (0.3, 0.49, 0.5, 0.3),
    (0.3, 0.5, 0.5, 0.7),   # complemented once "converged"
    (0.3, 0.99, 0.5, 0.7),
    (0.6, 0.99, 1.0, 0.6),  # switch 1: alpha stays fixed
    (0.0, 0.2, 0.1, 1.0),
])
def test_alpha_schedule_at_hand_picked_points(alpha: float, progress: float, switch: float,
                                              expected: float) -> None:
    assert stl_alpha(alpha, progress, switch) == pytest.approx(expected)


def test_alpha_schedule_rejects_values_outside_the_unit_interval() -> None:
    with pytest.raises(ValueError, match="alpha"):
        stl_alpha(1.5, 0.0, 0.5)
    with pytest.raises(ValueError, match="switch"):
        stl_alpha(0.3, 0.0, -0.1)


@pytest.mark.parametrize(("progress", "alpha_now"), [(0.25, 0.3), (0.75, 0.7)])
def test_loss_is_eq6_with_the_scheduled_alpha_and_class_weights(progress: float,
                                                                alpha_now: float) -> None:
    net = _net().eval()
    batch = _batch()
    weights = torch.tensor([1.0, 3.0])
    loss = model_type_spec("stl").training.loss(
        net, batch, _ctx(progress, weights, alpha="0.3", alpha_switch="0.5"))
    with torch.no_grad():
        class_logits, loc_logits = net.forward_branches(batch.images)
    l_class = F.cross_entropy(class_logits, batch.labels, weight=weights)
    l_uloc = F.cross_entropy(loc_logits, batch.labels, weight=weights)
    assert not torch.isclose(l_class, l_uloc, rtol=1e-3)  # the mix is then identifiable
    expected = (1 - alpha_now) * l_class + alpha_now * l_uloc
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize(("alpha", "silent", "trained"), [
    ("0", "localization", "classification"),
    ("1", "classification", "localization"),
])
def test_a_zero_weighted_branch_receives_no_gradient(alpha: str, silent: str,
                                                     trained: str) -> None:
    net = _net().train()
    loss = model_type_spec("stl").training.loss(
        net, _batch(), _ctx(0.0, alpha=alpha, alpha_switch="1"))
    loss.backward()
    assert all(p.grad is None for p in getattr(net, silent).parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in getattr(net, trained).parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.shared.parameters())


def test_heatmap_comes_from_the_localization_score_maps() -> None:
    net = _net().eval()
    images = _batch().images
    infer = torch.no_grad()(model_type_spec("stl").infer)
    probs, heat = infer(net, images)
    assert probs.shape == (4, 2)
    assert torch.allclose(probs.sum(dim=1), torch.ones(4))
    assert heat.shape == (4, SIZE, SIZE)
    assert float(heat.min()) >= 0.0 and float(heat.max()) <= 1.0
    assert float(heat.std()) > 0  # the score maps vary over the image
    # The map peaks with the image's fracture probability (models.nets.fracture_heatmap).
    assert torch.allclose(heat.amax(dim=(1, 2)), 1.0 - probs[:, 0], atol=1e-5)
    # Score maps forced to (0, ln 3) everywhere carry no location: the heatmap is blank.
    last = net.localization[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, math.log(3.0)]))
    _, heat = infer(net, images)
    assert torch.equal(heat, torch.zeros_like(heat))


def test_a_few_optimisation_steps_lower_the_loss(zoo_set: PreparedSet) -> None:
    torch.manual_seed(0)
    net = _net().train()
    batch = view_batch(zoo_set, range(8))
    ctx = _ctx(0.0)
    losses = adam_losses("stl", net, batch, ctx)
    assert np.mean(losses[-3:]) < losses[0]


def test_registry_round_trip(zoo_set: PreparedSet, tmp_path: Path) -> None:
    config = TrainConfig(model_type="stl", stages=1, transition_channels=16, input_size=SIZE)
    spec = model_type_spec("stl")
    arch = spec.training.architecture(config, 2)
    assert arch["stages"] == 1 and arch["loc_channels"] == 16
    torch.manual_seed(0)
    net = spec.build(**arch)
    path = tmp_path / "stl.pt"
    save_checkpoint(path, net, ModelMetadata(
        model_type="stl", name="stl-test", version="0", classes=("normal", "fracture"),
        input_size=SIZE, architecture=arch))
    model = load_model(path, device="cpu")
    views = zoo_set.views[:2]
    predictions = model.predict(views, allow_uncalibrated=True)
    net.eval()
    with torch.no_grad():
        expected, _ = spec.infer(net, torch.from_numpy(np.stack([v.image for v in views]))[:, None])
    for view, prediction, probs in zip(views, predictions, expected, strict=True):
        assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert prediction.probabilities["fracture"] == pytest.approx(float(probs[1]), abs=1e-5)
        assert prediction.heatmap.shape == view.original_shape
        assert 0.0 <= prediction.heatmap.min() and prediction.heatmap.max() <= 1.0
