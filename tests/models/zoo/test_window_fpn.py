"""Model type ``window_fpn``: Window Loss on an FPN with point annotations (seed 003 §3)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.data import PreparedSet, view_batch
from models.nets.window_fpn import WindowFPN
from models.registry import (
    ModelMetadata,
    load_model,
    model_type_spec,
    model_types,
    save_checkpoint,
)
from models.supervision import LossContext, TrainBatch
from models.train import TrainConfig
from models.zoo.window_fpn import WindowOptions, window_bounds, window_loss
from tests.models.zoo.helpers import adam_losses

SIZE = 64
NAN = float("nan")
PAPER = WindowOptions(r_l=50.0, r_u=200.0, tau=2.0)  # §3 "Implementation Details"


def _net() -> WindowFPN:
    torch.manual_seed(0)
    return WindowFPN(backbone="resnet18", fpn_channels=16)


def _ctx(**options: str) -> LossContext:
    config = TrainConfig(model_type="window_fpn", input_size=SIZE, options=dict(options))
    return LossContext(config=config, num_classes=2, epoch=1, epochs=1)


def _points(*rows: tuple[float, float]) -> torch.Tensor:
    """(1, 8, 2) NaN-padded points of one view."""
    out = torch.full((1, 8, 2), NAN)
    for k, row in enumerate(rows):
        out[0, k] = torch.tensor(row)
    return out


def _logit(p: list[float]) -> torch.Tensor:
    t = torch.tensor(p, dtype=torch.float64)
    return torch.log(t / (1 - t))


# --- Window Loss (eq. 3-5) on hand-worked values -------------------------------------------

# p = 0.1 below lower 0.2, p = 0.3 and 0.6 inside [0.2, 0.7], p = 0.9 above upper 0.7.
P = [0.1, 0.3, 0.6, 0.9]
LOWER, UPPER = 0.2, 0.7


def test_mse_window_loss_is_zero_inside_and_squared_error_outside() -> None:
    loss = window_loss(_logit(P), torch.full((4,), LOWER, dtype=torch.float64),
                       torch.full((4,), UPPER, dtype=torch.float64), "mse")
    # (0.1 - 0.2)^2 = 0.01; inside -> 0; (0.9 - 0.7)^2 = 0.04
    torch.testing.assert_close(loss, torch.tensor([0.01, 0.0, 0.0, 0.04], dtype=torch.float64))


def test_kld_window_loss_is_zero_inside_and_kl_divergence_outside() -> None:
    loss = window_loss(_logit(P), torch.full((4,), LOWER, dtype=torch.float64),
                       torch.full((4,), UPPER, dtype=torch.float64), "kld")
    # 0.2 ln(0.2/0.1) + 0.8 ln(0.8/0.9) = 0.138629 - 0.094226 = 0.044403
    # 0.7 ln(0.7/0.9) + 0.3 ln(0.3/0.1) = -0.175920 + 0.329584 = 0.153664
    torch.testing.assert_close(loss, torch.tensor([0.044403, 0.0, 0.0, 0.153664],
                                                  dtype=torch.float64), atol=2e-6, rtol=0)


def test_window_loss_pushes_only_predictions_outside_the_window() -> None:
    for divergence in ("mse", "kld"):
        logits = _logit(P).requires_grad_(True)
        window_loss(logits, torch.full((4,), LOWER, dtype=torch.float64),
                    torch.full((4,), UPPER, dtype=torch.float64), divergence).sum().backward()
        grad = logits.grad
        assert grad is not None
        assert grad[0] < 0 and grad[3] > 0, divergence  # raise the low one, lower the high one
        assert grad[1] == 0 and grad[2] == 0, divergence


def test_kld_window_loss_stays_finite_for_saturated_predictions() -> None:
    logits = torch.tensor([-200.0, 200.0], requires_grad=True)
    loss = window_loss(logits, torch.tensor([0.5, 0.0]), torch.tensor([1.0, 0.0]), "kld")
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logits.grad).all()  # type: ignore[arg-type]
    assert loss[0] > 50 and loss[1] > 50  # ~ -0.5 ln σ(-200) and -ln(1 - σ(200))


# --- Supervision bounds (eq. 1-2) ----------------------------------------------------------

# 512 px input, a 32 x 32 level (stride 16): cell (i, j) is centred on (16j + 7.5, 16i + 7.5).
GRID, IMAGE = (32, 32), (512, 512)


def test_bounds_at_far_from_and_between_points_with_the_paper_parameters() -> None:
    lower, upper = window_bounds(_points((71.5, 71.5)), torch.tensor([1]), GRID, IMAGE, PAPER)
    lower, upper = lower[0], upper[0]
    # On the point (cell 4, 4): σ(50/2) and σ(200/2), 1 to float precision.
    assert lower[4, 4].item() == pytest.approx(1.0, abs=1e-6)
    assert upper[4, 4].item() == pytest.approx(1.0, abs=1e-6)
    # Cell (4, 7) is 48 px away: lower σ(1) = 0.7310586, upper σ(76) = 1.
    assert lower[4, 7].item() == pytest.approx(0.7310586, abs=1e-6)
    assert upper[4, 7].item() == pytest.approx(1.0, abs=1e-6)
    # Cell (4, 8), 64 px: lower σ(-7) = 0.00091105 (the uncertain band begins).
    assert lower[4, 8].item() == pytest.approx(0.00091105, abs=1e-7)
    # Cell (4, 17), 208 px: lower σ(-79) = 0, upper σ(-4) = 0.0179862.
    assert lower[4, 17].item() == pytest.approx(0.0, abs=1e-9)
    assert upper[4, 17].item() == pytest.approx(0.0179862, abs=1e-6)
    # Far corner (31, 31), 611 px from the point: both 0.
    assert lower[31, 31].item() == 0.0 and upper[31, 31].item() == 0.0
    assert bool((lower <= upper).all())


def test_bounds_take_the_nearest_of_several_points() -> None:
    # A second point at cell (4, 27) is 160 px from cell (4, 17): upper σ((200-160)/2) = σ(20).
    lower, upper = window_bounds(_points((71.5, 71.5), (439.5, 71.5)), torch.tensor([1]),
                                 GRID, IMAGE, PAPER)
    assert upper[0, 4, 17].item() == pytest.approx(1.0 / (1.0 + math.exp(-20.0)), abs=1e-6)
    assert lower[0, 4, 27].item() == pytest.approx(1.0, abs=1e-6)
    assert lower[0, 4, 24].item() == pytest.approx(0.7310586, abs=1e-6)  # 48 px from point 2


def test_negative_views_get_zero_bounds_and_unannotated_fractures_the_whole_window() -> None:
    points = torch.full((2, 8, 2), NAN)
    lower, upper = window_bounds(points, torch.tensor([0, 1]), GRID, IMAGE, PAPER)
    assert bool((lower == 0).all())
    assert bool((upper[0] == 0).all())  # negative: any activation is penalised
    assert bool((upper[1] == 1).all())  # fracture without points: nothing is penalised


# --- Degenerate ablation settings (Tables 2-3: r_l = r_u, τ = 0) ---------------------------

DISK_POINTS = ((20.3, 30.7), (50.0, 10.0))
DISK_R = 9.0


def _disk_mask(h: int, w: int) -> torch.Tensor:
    """Disks of radius DISK_R around DISK_POINTS at the centres of an h x w grid on 64 px."""
    mask = torch.zeros(h, w)
    sy, sx = SIZE / h, SIZE / w
    for i in range(h):
        for j in range(w):
            cx, cy = (j + 0.5) * sx - 0.5, (i + 0.5) * sy - 0.5
            if any((cx - x) ** 2 + (cy - y) ** 2 <= DISK_R**2 for x, y in DISK_POINTS):
                mask[i, j] = 1.0
    return mask


def _two_views() -> tuple[torch.Tensor, torch.Tensor]:
    """View 0 with DISK_POINTS, view 1 negative: points (2, 8, 2) and labels (2,)."""
    points = torch.cat([_points(*DISK_POINTS), torch.full((1, 8, 2), NAN)])
    return points, torch.tensor([1, 0])


@pytest.mark.parametrize(("divergence", "reference"), [
    ("mse", F.mse_loss), ("kld", F.binary_cross_entropy)])
def test_degenerate_window_reduces_to_mse_or_bce_on_a_disk_mask(divergence, reference) -> None:
    points, labels = _two_views()
    options = WindowOptions(r_l=DISK_R, r_u=DISK_R, tau=0.0, divergence=divergence)
    lower, upper = window_bounds(points, labels, (16, 16), (SIZE, SIZE), options)
    target = torch.stack([_disk_mask(16, 16), torch.zeros(16, 16)])
    assert 0 < int(target.sum()) < 256
    torch.testing.assert_close(lower, target)
    torch.testing.assert_close(upper, target)
    logits = torch.randn(2, 16, 16, generator=torch.Generator().manual_seed(0)) * 3
    expected = reference(torch.sigmoid(logits), target)
    torch.testing.assert_close(window_loss(logits, lower, upper, divergence).mean(), expected)


@pytest.mark.parametrize(("divergence", "reference"), [
    ("mse", F.mse_loss), ("kld", F.binary_cross_entropy)])
def test_training_loss_sums_the_degenerate_losses_over_the_four_levels(divergence,
                                                                       reference) -> None:
    net = _net().eval()
    points, labels = _two_views()
    images = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    batch = TrainBatch(images=images, labels=labels, rois=torch.full((2, 4), NAN),
                       boxes=torch.full((2, 8, 4), NAN), points=points)
    ctx = _ctx(r_l=str(DISK_R), r_u=str(DISK_R), tau="0", radius_units="input",
               window_loss=divergence)
    loss = model_type_spec("window_fpn").training.loss(net, batch, ctx)  # type: ignore[union-attr]
    with torch.no_grad():
        levels = net(images)
    assert [z.shape[-1] for z in levels] == [16, 8, 4, 2]
    expected = sum(
        reference(torch.sigmoid(z[:, 0]),
                  torch.stack([_disk_mask(*z.shape[-2:]), torch.zeros(z.shape[-2:])]))
        for z in levels)
    torch.testing.assert_close(loss.detach(), expected)


# --- Options -----------------------------------------------------------------------------

def test_radii_scale_from_the_paper_input_size_unless_given_in_input_pixels() -> None:
    assert WindowOptions.from_context(_ctx(), 256) == WindowOptions(12.5, 50.0, 0.5, "mse")
    assert WindowOptions.from_context(_ctx(radius_units="input", window_loss="kld"), 256) == \
        WindowOptions(50.0, 200.0, 2.0, "kld")


@pytest.mark.parametrize("options", [
    {"r_l": "300"}, {"tau": "-1"}, {"window_loss": "l1"}, {"radius_units": "mm"}])
def test_invalid_options_are_rejected(options: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        WindowOptions.from_context(_ctx(**options), 256)


# --- Network, inference and registration -----------------------------------------------------

def test_inference_averages_the_upsampled_level_maps_and_scores_their_maximum() -> None:
    net = _net().eval()
    images = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        probs, heatmap = model_type_spec("window_fpn").infer(net, images)
        maps = [F.interpolate(torch.sigmoid(z), size=(SIZE, SIZE), mode="bilinear")
                for z in net(images)]
    expected = (maps[0] + maps[1] + maps[2] + maps[3])[:, 0] / 4
    assert heatmap.shape == (2, SIZE, SIZE)
    torch.testing.assert_close(heatmap, expected)
    torch.testing.assert_close(probs[:, 1], expected.flatten(1).amax(dim=1))
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2))


def test_only_resnet_backbones_and_binary_labels_are_accepted() -> None:
    with pytest.raises(ValueError, match="ResNet"):
        WindowFPN(backbone="densenet121")
    config = TrainConfig(model_type="window_fpn", label_set="garden")
    with pytest.raises(ValueError, match="binary"):
        model_type_spec("window_fpn").training.architecture(config, 3)  # type: ignore[union-attr]


def _annotated_batch(data: PreparedSet) -> TrainBatch:
    """Two fracture views with points and two normal views."""
    has_points = ~torch.isnan(data.points[:, 0, 0])
    positives = torch.nonzero((data.labels > 0) & has_points).flatten()[:2].tolist()
    negatives = torch.nonzero(data.labels == 0).flatten()[:2].tolist()
    assert len(positives) == 2 and len(negatives) == 2
    return view_batch(data, positives + negatives)


def test_a_few_adam_steps_lower_the_window_loss(zoo_set: PreparedSet) -> None:
    batch = _annotated_batch(zoo_set)
    net = _net()
    ctx = _ctx()  # the paper's defaults: MSE, r_l = 50, r_u = 200, τ = 2 scaled to 64 px
    losses = adam_losses("window_fpn", net, batch, ctx)
    assert losses[-1] < 0.5 * losses[0], losses


def test_checkpoint_round_trip_predicts_on_the_original_grid(zoo_set: PreparedSet,
                                                            tmp_path: Path) -> None:
    assert "window_fpn" in model_types()
    config = TrainConfig(model_type="window_fpn", backbone="resnet18", input_size=SIZE,
                         options={"fpn_channels": "16"})
    arch = model_type_spec("window_fpn").training.architecture(config, 2)  # type: ignore[union-attr]
    assert arch == {"backbone": "resnet18", "fpn_channels": 16, "in_channels": 1}
    net = _net().eval()
    path = tmp_path / "window_fpn.pt"
    save_checkpoint(path, net, ModelMetadata(
        model_type="window_fpn", name="test", version="0", classes=("normal", "fracture"),
        input_size=SIZE, architecture=arch))
    model = load_model(path, device="cpu")
    views = zoo_set.views[:2]
    predictions = model.predict(views, allow_uncalibrated=True)
    with torch.no_grad():
        expected, _ = model_type_spec("window_fpn").infer(
            net, torch.from_numpy(np.stack([v.image for v in views]))[:, None].float())
    for view, prediction, want in zip(views, predictions, expected, strict=True):
        assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        assert prediction.fracture_probability == pytest.approx(float(want[1]), abs=1e-5)
        assert prediction.heatmap.shape == tuple(view.original_shape)
        assert 0.0 <= float(prediction.heatmap.min()) <= float(prediction.heatmap.max()) <= 1.0
