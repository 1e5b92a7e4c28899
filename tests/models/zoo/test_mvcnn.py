"""The ``mvcnn`` model type: learned multi-view aggregation (seed 004 §5.3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.data import PreparedSet, study_batch
from models.nets import GlobalPoolClassifier
from models.nets.mvcnn import MultiViewClassifier, view_max_pool
from models.registry import ModelMetadata, load_model, model_type_spec, save_checkpoint
from models.supervision import MAX_VIEWS, LossContext
from models.train import TrainConfig

SIZE = 64
HUGE = 1e6
CONFIG = TrainConfig(model_type="mvcnn", stages=1, pooling="lse", transition_channels=16,
                     input_size=SIZE)


def _network(seed: int = 0) -> MultiViewClassifier:
    torch.manual_seed(seed)
    spec = model_type_spec("mvcnn")
    assert spec.training is not None
    network = spec.build(**spec.training.architecture(CONFIG, 2))
    assert isinstance(network, MultiViewClassifier)
    return network


def _studies(counts: list[int], views: int, seed: int, fill: float = 0.0
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random studies with ``counts`` real views each, padded to ``views`` with ``fill``."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(len(counts), views, 1, SIZE, SIZE, generator=g)
    mask = torch.arange(views)[None, :] < torch.as_tensor(counts)[:, None]
    images[~mask] = fill
    return images, mask


def test_view_max_pool_hand_worked() -> None:
    # Negative features: a zero-filled padding row would win; -inf fill never does.
    features = torch.tensor([[[1.0, 5.0], [3.0, 2.0], [HUGE, HUGE]],
                             [[-4.0, -1.0], [-2.0, -7.0], [0.0, 0.0]],
                             [[-3.0, 6.0], [HUGE, HUGE], [HUGE, HUGE]]])
    mask = torch.tensor([[True, True, False], [True, True, False], [True, False, False]])
    expected = torch.tensor([[3.0, 5.0], [-2.0, -1.0], [-3.0, 6.0]])
    torch.testing.assert_close(view_max_pool(features, mask), expected)


def test_view_max_pool_and_network_reject_bad_masks() -> None:
    features = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match=r"studies \[1\] have no view"):
        view_max_pool(features, torch.tensor([[True, False, False], [False, False, False]]))
    with pytest.raises(TypeError, match="bool"):
        view_max_pool(features, torch.ones(2, 3))
    with pytest.raises(ValueError, match="does not match"):
        view_max_pool(features, torch.ones(2, 4, dtype=torch.bool))
    network = _network().eval()
    images, mask = _studies([2, 1], 3, seed=1)
    mask[1] = False
    with pytest.raises(ValueError, match="no view"):
        network.forward_study(images, mask)


def test_study_output_does_not_depend_on_view_order() -> None:
    network = _network().eval()
    counts = [1, 3, 5, 8]
    images, mask = _studies(counts, MAX_VIEWS, seed=2)
    g = torch.Generator().manual_seed(3)
    order = torch.stack([torch.randperm(MAX_VIEWS, generator=g) for _ in counts])
    shuffled = images[torch.arange(len(counts))[:, None], order]
    shuffled_mask = mask[torch.arange(len(counts))[:, None], order]
    assert not torch.equal(shuffled_mask, mask)  # the padding moved too
    with torch.inference_mode():
        before = network.forward_study(images, mask)
        after = network.forward_study(shuffled, shuffled_mask)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("views", range(1, MAX_VIEWS + 1))
def test_one_to_eight_views_and_padding_content_is_ignored(views: int) -> None:
    network = _network().eval()
    counts = [views, 1, max(1, views // 2)]
    zero_pad, mask = _studies(counts, MAX_VIEWS, seed=views)
    huge_pad, _ = _studies(counts, MAX_VIEWS, seed=views, fill=HUGE)
    with torch.inference_mode():
        padded = network.forward_study(zero_pad, mask)
        huge = network.forward_study(huge_pad, mask)
        alone = torch.cat([network.forward_study(zero_pad[i:i + 1, :c],
                                                 torch.ones(1, c, dtype=torch.bool))
                           for i, c in enumerate(counts)])
    assert padded.shape == (len(counts), 2) and torch.isfinite(padded).all()
    torch.testing.assert_close(huge, padded, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(alone, padded, rtol=1e-5, atol=1e-5)


def test_padding_does_not_reach_batch_norm_in_training_mode() -> None:
    # Encoding padded views would shift the batch statistics, hence the real views' logits.
    network = _network().train()
    zero_pad, mask = _studies([2, 3], 4, seed=5)
    huge_pad, _ = _studies([2, 3], 4, seed=5, fill=HUGE)
    with torch.no_grad():
        torch.testing.assert_close(network.forward_study(huge_pad, mask),
                                   network.forward_study(zero_pad, mask), rtol=1e-5, atol=1e-5)


def test_view_pooling_is_a_maximum_not_a_mean() -> None:
    # Repeating views leaves a maximum unchanged, but would move a mean toward them.
    network = _network().eval()
    images, _ = _studies([2], 2, seed=6)
    a, b = images[:, :1], images[:, 1:]
    repeated = torch.cat([a, b, a, a, a], dim=1)
    with torch.inference_mode():
        pair = network.forward_study(images, torch.ones(1, 2, dtype=torch.bool))
        many = network.forward_study(repeated, torch.ones(1, 5, dtype=torch.bool))
        only_a = network.forward_study(a, torch.ones(1, 1, dtype=torch.bool))
    torch.testing.assert_close(many, pair, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(pair, only_a, atol=1e-4)  # the second view does count


def test_per_view_inference_is_a_study_of_one_view() -> None:
    network = _network().eval()
    spec = model_type_spec("mvcnn")
    assert spec.infer_study is not None
    images, _ = _studies([1, 1, 1], 1, seed=7)
    with torch.inference_mode():
        probs, heatmaps = spec.infer(network, images[:, 0])
        study = spec.infer_study(network, images, torch.ones(3, 1, dtype=torch.bool))
    torch.testing.assert_close(probs, study, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(3))
    assert heatmaps.shape == (3, SIZE, SIZE)
    assert float(heatmaps.min()) >= 0.0 and float(heatmaps.max()) <= 1.0
    assert float(heatmaps.std()) > 0.0  # a map, not a constant


def test_global_pool_weights_transfer_to_the_view_model() -> None:
    # Seed 004 §5.3: the aggregator reuses a trained single-view model's weights.
    torch.manual_seed(8)
    single = GlobalPoolClassifier(**model_type_spec("mvcnn").training.architecture(CONFIG, 2))
    network = _network(seed=9)
    network.load_state_dict(single.state_dict())
    single.eval(), network.eval()
    images, _ = _studies([1, 1], 1, seed=10)
    with torch.inference_mode():
        torch.testing.assert_close(network(images[:, 0]), single(images[:, 0]))


def test_a_few_steps_on_study_labels_lower_the_loss(zoo_set: PreparedSet) -> None:
    spec = model_type_spec("mvcnn")
    assert spec.training is not None and spec.training.study_level
    batch = study_batch(zoo_set, list(zoo_set.studies()))
    assert batch.mask is not None and bool((~batch.mask).any())  # padded views present
    # Study labels alone: no ROI, box or point supervision.
    batch.rois.fill_(float("nan"))
    batch.boxes.fill_(float("nan"))
    batch.points.fill_(float("nan"))
    counts = torch.bincount(batch.labels, minlength=2).float()
    ctx = LossContext(config=CONFIG, num_classes=2, epoch=1, epochs=1,
                      class_weights=counts.sum() / (2 * counts))
    network = _network(seed=11).train()
    optimiser = torch.optim.Adam(network.parameters(), lr=1e-3)
    losses = []
    for step in range(12):
        ctx.step = step
        loss = spec.training.loss(network, batch, ctx)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = float(spec.training.loss(network, batch, ctx))
    assert np.isfinite(losses).all()
    assert final < 0.7 * losses[0], losses + [final]
    with pytest.raises(ValueError, match="study-level"):
        spec.training.loss(network, type(batch)(batch.images[:, 0], batch.labels, batch.rois,
                                                batch.boxes, batch.points), ctx)


def test_registry_round_trip(zoo_set: PreparedSet, tmp_path: Path) -> None:
    spec = model_type_spec("mvcnn")
    assert spec.training is not None and spec.infer_study is not None
    network = _network(seed=12).eval()
    path = tmp_path / "mvcnn.pt"
    save_checkpoint(path, network, ModelMetadata(
        model_type="mvcnn", name="mvcnn-test", version="0.0.1", classes=("normal", "fracture"),
        input_size=SIZE, architecture=spec.training.architecture(CONFIG, 2)))
    model = load_model(path, device="cpu")
    assert isinstance(model.network, MultiViewClassifier)

    predictions = model.predict(zoo_set.views[:2], allow_uncalibrated=True)
    for view, prediction in zip(zoo_set.views[:2], predictions, strict=True):
        assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert prediction.heatmap.shape == view.original_shape
        assert 0.0 <= prediction.heatmap.min() and prediction.heatmap.max() <= 1.0

    batch = study_batch(zoo_set, list(zoo_set.studies())[:3])
    assert batch.mask is not None
    with torch.inference_mode():
        loaded = spec.infer_study(model.network, batch.images, batch.mask)
        original = spec.infer_study(network, batch.images, batch.mask)
    assert loaded.shape == (3, 2)
    torch.testing.assert_close(loaded.sum(dim=1), torch.ones(3))
    torch.testing.assert_close(loaded, original)
