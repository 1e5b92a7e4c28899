"""Model type ``stn``: spatial-transformer attention, a-STN and aff-STN (seed 000 §II.C.1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.data import PreparedSet, view_batch
from models.nets.stn import SpatialTransformerClassifier, box_mask, square_roi_boxes
from models.registry import ModelMetadata, load_model, model_type_spec, save_checkpoint
from models.supervision import LossContext, TrainBatch
from models.train import TrainConfig
from tests.models.zoo.helpers import adam_losses

SIZE = 64
TRANSFORMS = ("similarity", "affine")


def _net(transform: str, roi_size: int | None = None) -> SpatialTransformerClassifier:
    torch.manual_seed(0)
    return SpatialTransformerClassifier(transform=transform, stages=1, loc_stages=1,
                                        roi_size=roi_size).eval()


def _images(n: int = 2) -> torch.Tensor:
    return torch.rand(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def _set_warp(net: SpatialTransformerClassifier, params: list[float]) -> None:
    """Make the localization network output ``params`` whatever the image."""
    regressor = net.localization[-1]
    with torch.no_grad():
        regressor.weight.zero_()
        regressor.bias.copy_(torch.tensor(params))


def _random_batch() -> TrainBatch:
    n = 4
    return TrainBatch(images=_images(n), labels=torch.tensor([0, 1, 0, 1]),
                      rois=torch.full((n, 4), float("nan")),
                      boxes=torch.full((n, 8, 4), float("nan")),
                      points=torch.full((n, 8, 2), float("nan")))


def _ctx(**options: str) -> LossContext:
    config = TrainConfig(model_type="stn", stages=1, input_size=SIZE, options=dict(options))
    return LossContext(config=config, num_classes=2, epoch=1, epochs=1)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_at_the_identity_the_roi_is_the_whole_image(transform: str) -> None:
    images = _images()
    with torch.no_grad():
        net = _net(transform)
        theta = net.theta(images)
        identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(2, 2, 3)
        assert torch.equal(theta, identity)
        assert torch.allclose(net.warp(images, theta), images, atol=1e-5)
        assert torch.allclose(net.roi_boxes(images),
                              torch.tensor([[0.0, 0.0, SIZE - 1.0, SIZE - 1.0]] * 2))
        # The classifier then sees the image itself: the lower-bound model (§V).
        assert torch.allclose(net(images), net.classify(images), atol=1e-5)
        smaller = _net(transform, roi_size=48)
        resized = F.interpolate(images, size=(48, 48), mode="bilinear", align_corners=False)
        assert torch.allclose(smaller.warp(images, smaller.theta(images)), resized, atol=1e-5)


def test_a_half_scale_similarity_crops_the_top_left_quadrant_exactly() -> None:
    # s = 1/2, tx = ty = -1/2: the ROI spans normalised [-1, 0], i.e. pixels 0..31.
    net = _net("similarity", roi_size=32)
    _set_warp(net, [0.5, -0.5, -0.5])
    images = _images()
    with torch.no_grad():
        assert torch.allclose(net.warp(images, net.theta(images)), images[..., :32, :32],
                              atol=1e-5)
        assert torch.allclose(net.roi_boxes(images), torch.tensor([[0.0, 0.0, 31.0, 31.0]] * 2))
        probs, heat = model_type_spec("stn").infer(net, images)
    fracture = (1.0 - probs[:, 0])[:, None, None]
    assert torch.allclose(heat[:, :32, :32], fracture.expand(2, 32, 32))
    assert float(heat[:, 32:, :].abs().max()) == 0.0 and float(heat[:, :, 32:].abs().max()) == 0.0


def test_affine_roi_becomes_the_square_of_equal_centre_and_area() -> None:
    # A = [[0.4, 0.3], [0, 0.4]] (a shear), t = (0.25, -0.5): |det A| = 0.16, so the square's
    # half side is 0.4 (normalised) = 12.8 px. Normalised u lies at pixel (u + 1) * 32 - 0.5:
    # centre (39.5, 15.5), edges x 26.7..52.3 and y 2.7..28.3, whose first and last covered
    # pixel centres are x 27.2..51.8 and y 3.2..27.8.
    net = _net("affine")
    _set_warp(net, [0.4, 0.3, 0.25, 0.0, 0.4, -0.5])
    with torch.no_grad():
        boxes = net.roi_boxes(_images(1))
    assert torch.allclose(boxes, torch.tensor([[27.2, 3.2, 51.8, 27.8]]), atol=1e-4)
    # A rotation by 30 degrees at scale 1/2 keeps the similarity's square: side 2 * 0.5.
    c, s = 0.5 * np.cos(np.pi / 6), 0.5 * np.sin(np.pi / 6)
    rotated = torch.tensor([[[c, -s, 0.0], [s, c, 0.0]]], dtype=torch.float32)
    scaled = torch.tensor([[[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]])
    assert torch.allclose(square_roi_boxes(rotated, SIZE, SIZE),
                          square_roi_boxes(scaled, SIZE, SIZE), atol=1e-4)


def test_box_mask_holds_the_covered_pixel_fraction() -> None:
    mask = box_mask(torch.tensor([[1.0, 0.0, 2.5, 1.0]]), 3, 5)
    expected = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]] * 2 + [[0.0] * 5])
    expected[:2, 3] = 0.5  # the right edge at x = 3.0 halves pixel 3
    assert torch.allclose(mask[0], expected)


def test_the_classification_loss_trains_the_localization_network() -> None:
    net = _net("similarity").train()
    batch = _random_batch()
    loss = model_type_spec("stn").training.loss(net, batch, _ctx())
    loss.backward()
    regressor = net.localization[-1]
    assert regressor.weight.grad is not None and float(regressor.weight.grad.abs().sum()) > 0
    assert float(regressor.bias.grad.abs().sum()) > 0


def test_a_few_optimisation_steps_lower_the_loss(zoo_set: PreparedSet) -> None:
    net = _net("similarity", roi_size=32).train()
    batch = view_batch(zoo_set, range(8))
    ctx = _ctx()
    losses = adam_losses("stn", net, batch, ctx)
    assert np.mean(losses[-3:]) < losses[0]


def test_registry_round_trip_keeps_the_transform(zoo_set: PreparedSet, tmp_path: Path) -> None:
    config = TrainConfig(model_type="stn", stages=1, input_size=SIZE,
                         options={"transform": "affine", "roi_size": "48", "loc_stages": "1"})
    spec = model_type_spec("stn")
    arch = spec.training.architecture(config, 2)
    assert (arch["transform"], arch["roi_size"], arch["loc_stages"]) == ("affine", 48, 1)
    torch.manual_seed(0)
    net = spec.build(**arch)
    _set_warp(net, [0.5, 0.0, 0.1, 0.0, 0.5, -0.2])
    path = tmp_path / "stn.pt"
    save_checkpoint(path, net, ModelMetadata(
        model_type="stn", name="stn-test", version="0", classes=("normal", "fracture"),
        input_size=SIZE, architecture=arch))
    model = load_model(path, device="cpu")
    assert isinstance(model.network, SpatialTransformerClassifier)
    assert model.network.transform == "affine" and model.network.roi_size == 48
    views = zoo_set.views[:2]
    predictions = model.predict(views, allow_uncalibrated=True)
    images = torch.from_numpy(np.stack([v.image for v in views]))[:, None]
    with torch.no_grad():
        expected = torch.softmax(net.eval()(images), dim=1)
    for view, prediction, probs in zip(views, predictions, expected, strict=True):
        assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert prediction.probabilities["fracture"] == pytest.approx(float(probs[1]), abs=1e-5)
        assert prediction.heatmap.shape == view.original_shape
        assert 0.0 <= prediction.heatmap.min()
        assert prediction.heatmap.max() == pytest.approx(float(probs[1]), abs=1e-4)
