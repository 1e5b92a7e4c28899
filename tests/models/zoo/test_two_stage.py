"""The ``two_stage`` model type: MIL ROI mining and chained ROI classification (seed 001 §2)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models.data import PreparedSet, view_batch
from models.nets import lse_pool
from models.nets.two_stage import TwoStageMIL, mine_rois, roi_origins, sensitivity_threshold
from models.registry import ModelMetadata, load_model, model_type_spec, save_checkpoint
from models.supervision import LossContext, TrainBatch
from models.train import TrainConfig
from models.zoo.two_stage import THRESHOLD_KEY, stage1_epochs

SIZE = 64
ROI = 16
CONFIG = TrainConfig(model_type="two_stage", backbone="resnet18", stages=1, input_size=SIZE,
                     options={"roi_size": ROI, "stage2_stages": 1})


def _network(num_classes: int = 2, seed: int = 0) -> TwoStageMIL:
    torch.manual_seed(seed)
    spec = model_type_spec("two_stage")
    assert spec.training is not None
    network = spec.build(**spec.training.architecture(CONFIG, num_classes))
    assert isinstance(network, TwoStageMIL)
    return network


class _FixedMap(nn.Module):
    """A stand-in stage 1 returning given logit maps (N, 1, h, w), whatever the input."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits


def _context(epoch: int, epochs: int = 2, step: int = 0) -> LossContext:
    return LossContext(config=CONFIG, num_classes=2, epoch=epoch, epochs=epochs, step=step,
                       steps=20)


# --- LSE pooling (eq. 1) ---------------------------------------------------------------

def test_lse_hand_value_and_finite_for_large_r() -> None:
    r = 1e4
    # (1/r) log((e^0 + e^r) / 2) = 1 + (log(1 + e^-r) - log 2) / r
    two = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    assert float(lse_pool(two, r)) == pytest.approx(1.0 - math.log(2.0) / r, abs=1e-6)

    g = torch.Generator().manual_seed(0)
    x = (torch.rand(3, 2, 5, 7, generator=g) - 0.5) * 2e4  # magnitudes up to 1e4
    x.requires_grad_(True)
    pooled = lse_pool(x, r)
    assert torch.isfinite(pooled).all()
    flat = x.detach().flatten(2)
    assert (pooled >= flat.mean(dim=2) - 1e-3).all()
    assert (pooled <= flat.amax(dim=2) + 1e-3).all()
    pooled.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_network_image_probability_is_finite_for_large_r() -> None:
    network = TwoStageMIL(backbone="resnet18", stages=1, lse_r=1e4, roi_size=ROI,
                          stage2_stages=1)
    g = torch.Generator().manual_seed(1)
    prob_map = network.probability_map(torch.rand(2, 1, SIZE, SIZE, generator=g))
    pooled = network.image_probability(prob_map)
    assert torch.isfinite(pooled).all()
    assert (pooled >= prob_map.flatten(1).mean(dim=1) - 1e-6).all()
    assert (pooled <= prob_map.flatten(1).amax(dim=1) + 1e-6).all()
    # r = 1e4 is nearly max pooling: max - log(h * w) / r <= LSE <= max.
    assert prob_map.shape[1:] == (16, 16)
    torch.testing.assert_close(pooled, prob_map.flatten(1).amax(dim=1),
                               atol=math.log(256) / 1e4 + 1e-6, rtol=0)


# --- 99 % sensitivity threshold (§2.1) --------------------------------------------------

def _below(value: float) -> float:
    return float(torch.nextafter(torch.tensor(value, dtype=torch.float32),
                                 torch.tensor(-math.inf)))


def test_sensitivity_threshold_hand_worked() -> None:
    # 10 positives: floor(10 * 0.01) = 0 may be missed -> just below the lowest positive.
    scores = torch.tensor([0.9, 0.3, 0.7, 0.5, 0.8, 0.6, 0.95, 0.4, 0.85, 0.65,
                           0.1, 0.99, 0.2])  # the last three are negatives
    positive = torch.tensor([True] * 10 + [False] * 3)
    threshold = sensitivity_threshold(scores, positive)
    assert threshold == _below(0.3)
    assert int((scores[positive] > threshold).sum()) == 10

    # 100 positives 0.01 ... 1.00: one may be missed -> just below the second lowest, 0.02.
    scores = torch.arange(1, 101, dtype=torch.float32) / 100
    threshold = sensitivity_threshold(scores, torch.ones(100, dtype=torch.bool))
    assert threshold == _below(0.02)
    assert int((scores > threshold).sum()) == 99

    # 250 positives: floor(2.5) = 2 may be missed -> just below the third lowest.
    scores = torch.arange(250, dtype=torch.float32) / 1000
    threshold = sensitivity_threshold(scores, torch.ones(250, dtype=torch.bool))
    assert threshold == _below(0.002)
    assert int((scores > threshold).sum()) == 248

    assert sensitivity_threshold(torch.tensor([0.4, 0.7]), torch.tensor([False, False])) == 1.0
    with pytest.raises(ValueError, match="sensitivity"):
        sensitivity_threshold(scores, torch.ones(250, dtype=torch.bool), 0.0)


# --- ROI mining (§2.1, eq. 2) -----------------------------------------------------------

def _map_with(cells_above: list[tuple[int, int]], *, at_threshold: tuple[int, int] | None = None
              ) -> torch.Tensor:
    prob_map = torch.full((4, 4), 0.2)
    for row, col in cells_above:
        prob_map[row, col] = 0.9
    if at_threshold is not None:
        prob_map[at_threshold] = 0.5  # not in S' = {p > 0.5}
    return prob_map


def test_mine_rois_hand_made_maps() -> None:
    seven = [(0, 0), (0, 1), (1, 1), (2, 2), (3, 0), (3, 3), (1, 3)]
    maps = torch.stack([
        _map_with(seven),                                # positive, 7 in S'
        _map_with([(1, 2), (2, 1)], at_threshold=(0, 3)),  # positive, 2 in S'
        _map_with([(0, 2), (3, 1)], at_threshold=(2, 3)),  # negative, 2 hard
        _map_with([(r, c) for r in range(2) for c in range(4)]),  # negative, 8 hard
        _map_with([]),                                   # negative, none hard
    ])
    positive = torch.tensor([True, True, False, False, False])
    index, cells, labels = mine_rois(maps, positive, 0.5, k=5,
                                     generator=torch.Generator().manual_seed(0))

    def picked(i: int) -> set[tuple[int, int]]:
        rows = cells[index == i].tolist()
        assert len(rows) == len({tuple(c) for c in rows}), "cells are drawn without replacement"
        return {(r, c) for r, c in rows}

    counts = torch.bincount(index, minlength=5).tolist()
    assert counts == [5, 2, 5, 5, 5]  # positives: up to K from S'; negatives: exactly K
    assert picked(0) <= set(seven)
    assert picked(1) == {(1, 2), (2, 1)}
    hard = picked(2)
    assert {(0, 2), (3, 1)} <= hard
    assert len(hard - {(0, 2), (3, 1)}) == 3  # made up with 3 random (easy) negatives
    assert picked(3) <= {(r, c) for r in range(2) for c in range(4)}
    assert len(picked(4)) == 5
    assert labels[index <= 1].eq(1.0).all() and labels[index >= 2].eq(0.0).all()

    again = mine_rois(maps, positive, 0.5, k=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[1], cells)


def test_roi_origins_centre_and_clamp() -> None:
    # 8 x 8 map over 64 px: cell (2, 5) has centre (x, y) = (44, 20); a 16 px ROI starts at
    # (36, 12). Cell (0, 7) would start at (52, -4): shifted inside to (48, 0).
    cells = torch.tensor([[2, 5], [0, 7], [7, 0]])
    origins = roi_origins(cells, (8, 8), 64, 16)
    assert origins.tolist() == [[36, 12], [48, 0], [0, 48]]
    with pytest.raises(ValueError, match="roi_size"):
        roi_origins(cells, (8, 8), 64, 65)


# --- chained inference (§2.2) -----------------------------------------------------------

def _fixed_map_network(num_classes: int) -> tuple[TwoStageMIL, torch.Tensor, torch.Tensor]:
    network = _network(num_classes).eval()
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 1, 8, 8, generator=g)
    logits[0, 0, 2, 5] = 4.0  # arg-max of image 0: ROI at (36, 12)
    logits[1, 0, 0, 7] = 3.0  # arg-max of image 1: ROI clamped to (48, 0)
    network.stage1 = _FixedMap(logits)
    images = torch.rand(2, 1, SIZE, SIZE, generator=g)
    return network, logits, images


def test_score_is_ps1_times_ps2_at_the_argmax_roi() -> None:
    network, logits, images = _fixed_map_network(2)
    infer = model_type_spec("two_stage").infer
    with torch.inference_mode():
        probs, heatmaps = infer(network, images)
        ps1 = torch.sigmoid(torch.tensor([4.0, 3.0]))
        crops = torch.stack([images[0, :, 12:28, 36:52], images[1, :, 0:16, 48:64]])
        ps2 = torch.sigmoid(network.fracture_head(network.stage2(crops))).squeeze(1)
        elsewhere = torch.sigmoid(network.fracture_head(network.stage2(
            images[0:1, :, 0:16, 0:16]))).squeeze()
    assert abs(float(elsewhere - ps2[0])) > 1e-4  # the test can tell ROIs apart
    torch.testing.assert_close(probs[:, 1], ps1 * ps2)
    torch.testing.assert_close(probs[:, 0], 1.0 - ps1 * ps2)
    # Heatmap: stage-1 map upsampled to the input and scaled by ps2; peak in the arg-max cell.
    assert heatmaps.shape == (2, SIZE, SIZE)
    assert float(heatmaps.min()) >= 0.0 and float(heatmaps.max()) <= 1.0
    row, col = divmod(int(heatmaps[0].argmax()), SIZE)
    assert 16 <= row < 24 and 40 <= col < 48
    assert float(heatmaps[0].max()) <= float(ps1[0] * ps2[0]) + 1e-6


def test_fracture_types_split_the_chained_score() -> None:
    network, _, images = _fixed_map_network(3)
    assert network.type_head is not None
    with torch.inference_mode():
        probs, _ = model_type_spec("two_stage").infer(network, images)
        crop = images[0:1, :, 12:28, 36:52]
        features = network.stage2(crop)
        score = torch.sigmoid(torch.tensor(4.0)) * torch.sigmoid(network.fracture_head(features))
        types = torch.softmax(network.type_head(features), dim=1)
    assert probs.shape == (2, 3)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2))
    torch.testing.assert_close(probs[0, 1:], (score * types).squeeze(0))


# --- training ---------------------------------------------------------------------------

def test_schedule_splits_the_epochs() -> None:
    assert stage1_epochs(_context(1, epochs=10)) == 5
    assert stage1_epochs(_context(1, epochs=1)) == 1
    config = TrainConfig(model_type="two_stage", options={"stage1_fraction": "0.3"})
    assert stage1_epochs(LossContext(config=config, num_classes=2, epoch=1, epochs=10)) == 3


def _steps(network: nn.Module, batch: TrainBatch, ctx: LossContext, n: int = 8) -> list[float]:
    loss_fn = model_type_spec("two_stage").training.loss  # type: ignore[union-attr]
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    losses = []
    for _ in range(n):
        loss = loss_fn(network, batch, ctx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def test_both_stages_lower_their_loss_and_stage2_freezes_stage1(zoo_set: PreparedSet) -> None:
    torch.manual_seed(0)
    network = _network().train()
    positives = torch.nonzero(zoo_set.labels > 0).flatten().tolist()[:4]
    negatives = torch.nonzero(zoo_set.labels == 0).flatten().tolist()[:4]
    batch = view_batch(zoo_set, positives + negatives)

    stage1 = _steps(network, batch, _context(epoch=1))
    assert stage1[-1] < stage1[0]

    ctx = _context(epoch=2)  # the second of two epochs: stage 2
    on_epoch_start = model_type_spec("two_stage").training.on_epoch_start  # type: ignore[union-attr]
    assert on_epoch_start is not None
    on_epoch_start(network, ctx, zoo_set)
    network.eval()
    with torch.inference_mode():
        p0 = network.probability_map(zoo_set.images.float().unsqueeze(1)).flatten(1).amax(1)
    assert ctx.state[THRESHOLD_KEY] == sensitivity_threshold(p0, zoo_set.labels > 0)
    network.train()
    frozen = {k: v.clone() for k, v in network.stage1.state_dict().items()}
    stage2 = _steps(network, batch, ctx)  # fixed step: the same mined ROIs
    assert stage2[-1] < stage2[0]
    for name, value in network.stage1.state_dict().items():
        assert torch.equal(value, frozen[name]), f"stage 1 changed in stage 2: {name}"


def test_type_head_learns_from_positive_rois_only(zoo_set: PreparedSet) -> None:
    network = _network(num_classes=3).train()
    assert network.type_head is not None
    loss_fn = model_type_spec("two_stage").training.loss  # type: ignore[union-attr]
    positives = torch.nonzero(zoo_set.labels > 0).flatten().tolist()[:2]
    negatives = torch.nonzero(zoo_set.labels == 0).flatten().tolist()[:2]
    batch = view_batch(zoo_set, positives + negatives)
    batch.labels = torch.tensor([1, 2, 0, 0])  # two fracture types
    ctx = _context(epoch=2, step=3)
    ctx.state[THRESHOLD_KEY] = 0.0  # every cell is in S': K ROIs from each image

    loss = loss_fn(network, batch, ctx)
    # By hand: the same ROIs (same seed and step), BCE on all, type CE on positive ones.
    with torch.no_grad():
        maps = network.probability_map(batch.images)
    g = torch.Generator().manual_seed(CONFIG.seed * 1_000_003 + 3)
    index, cells, labels = mine_rois(maps, batch.labels > 0, 0.0, k=5, generator=g)
    origins = roi_origins(cells, (16, 16), SIZE, ROI)
    crops = torch.stack([batch.images[i, :, y:y + ROI, x:x + ROI]
                         for i, (x, y) in zip(index.tolist(), origins.tolist(), strict=True)])
    fracture, types = network.classify_rois(crops)
    assert types is not None
    positive = labels > 0
    expected = (nn.functional.binary_cross_entropy_with_logits(fracture, labels)
                + nn.functional.cross_entropy(types[positive],
                                              batch.labels[index][positive] - 1))
    torch.testing.assert_close(loss, expected)

    network.zero_grad(set_to_none=True)
    batch.labels = torch.zeros(4, dtype=torch.long)  # no positive ROI: no type supervision
    loss_fn(network, batch, ctx).backward()
    assert network.type_head.weight.grad is None
    assert network.fracture_head.weight.grad is not None


def test_stage2_needs_the_threshold(zoo_set: PreparedSet) -> None:
    loss_fn = model_type_spec("two_stage").training.loss  # type: ignore[union-attr]
    with pytest.raises(RuntimeError, match="threshold"):
        loss_fn(_network(), view_batch(zoo_set, [0, 1]), _context(epoch=2))


def test_paper_recipe_builds_densenet_and_resnet18() -> None:
    config = TrainConfig(model_type="two_stage", backbone="densenet121", input_size=SIZE)
    arch = model_type_spec("two_stage").training.architecture(config, 2)  # type: ignore[union-attr]
    assert arch["backbone"] == "densenet121" and arch["stage2_stages"] == 4
    assert arch["roi_size"] == SIZE // 4
    network = TwoStageMIL(**arch).eval()
    with torch.inference_mode():
        probs, heatmaps = model_type_spec("two_stage").infer(network, torch.rand(1, 1, SIZE, SIZE))
    assert probs.shape == (1, 2) and heatmaps.shape == (1, SIZE, SIZE)


def test_registry_round_trip(zoo_set: PreparedSet, tmp_path: Path) -> None:
    network = _network()
    spec = model_type_spec("two_stage")
    assert spec.training is not None
    metadata = ModelMetadata(
        model_type="two_stage", name="two-stage-test", version="0.0.1",
        classes=("normal", "fracture"), input_size=SIZE,
        architecture=spec.training.architecture(CONFIG, 2),
    )
    save_checkpoint(tmp_path / "two_stage.pt", network, metadata)
    model = load_model(tmp_path / "two_stage.pt", device="cpu")
    views = zoo_set.views[:2]
    predictions = model.predict(views, allow_uncalibrated=True)
    for view, prediction in zip(views, predictions, strict=True):
        assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert prediction.heatmap.shape == tuple(view.original_shape)
        assert np.isfinite(prediction.heatmap).all()
