"""The ``localize_classify`` model type: ROI crop, eq. 3 loss, Grad-CAM heatmap, registry."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.data import LABEL_SETS, PreparedSet, view_batch, view_class
from models.nets.localize_classify import (
    LocalizerClassifier,
    box_to_params,
    crop_rois,
    paste_roi_maps,
    roi_l2,
)
from models.registry import ModelMetadata, load_model, model_type_spec, save_checkpoint
from models.supervision import LossContext, TrainBatch
from models.train import TrainConfig

SIZE = 64
ROI = 32
NAN_BOX = [float("nan")] * 4
STEP_VIEWS = [0, 2, 3, 8, 12, 16, 17, 18]  # zoo_set views of every binary and Garden class


def _net(num_classes: int = 2, seed: int = 0) -> LocalizerClassifier:
    torch.manual_seed(seed)
    return LocalizerClassifier(num_classes=num_classes, stages=1, roi_size=ROI)


def _pin_localizer(net: LocalizerClassifier, box: list[float]) -> None:
    """Make the localizer predict ``box`` for every image (a perfect localizer)."""
    params = box_to_params(torch.tensor(box), SIZE)
    with torch.no_grad():
        net.localizer.head.weight.zero_()
        net.localizer.head.bias.copy_(torch.logit(params.double()).float())


def _ramp(n: int = 1) -> torch.Tensor:
    """Hand-made images whose every pixel differs: value = (row * 64 + column) / 4096 + k."""
    base = torch.arange(SIZE * SIZE, dtype=torch.float32).view(SIZE, SIZE) / (SIZE * SIZE)
    return torch.stack([base + 0.01 * k for k in range(n)])[:, None]


def _ctx(**options: str) -> LossContext:
    config = TrainConfig(model_type="localize_classify", input_size=SIZE, options=options)
    return LossContext(config=config, num_classes=2, epoch=1, epochs=1)


def test_crop_of_a_roi_size_box_is_the_image_slice() -> None:
    image = _ramp()
    crop = crop_rois(image, torch.tensor([[16.0, 8.0, 47.0, 39.0]]), ROI)
    torch.testing.assert_close(crop, image[:, :, 8:40, 16:48], rtol=0, atol=1e-6)


def test_crop_of_a_larger_box_averages_pixel_blocks() -> None:
    image = _ramp()
    # 32 columns by 64 rows -> 32 x 32: columns kept, row pairs averaged.
    crop = crop_rois(image, torch.tensor([[16.0, 0.0, 47.0, 63.0]]), ROI)
    expected = F.avg_pool2d(image[:, :, :, 16:48], kernel_size=(2, 1))
    torch.testing.assert_close(crop, expected, rtol=0, atol=1e-6)


def test_paste_puts_the_crop_back_inside_the_box_only() -> None:
    maps = torch.rand(1, ROI, ROI, generator=torch.Generator().manual_seed(0))
    pasted = paste_roi_maps(maps, torch.tensor([[16.0, 8.0, 47.0, 39.0]]), SIZE)
    torch.testing.assert_close(pasted[:, 8:40, 16:48], maps, rtol=0, atol=1e-6)
    outside = pasted.clone()
    outside[:, 8:40, 16:48] = 0
    assert float(outside.abs().max()) == 0.0


def test_a_perfect_localizer_crops_the_true_roi() -> None:
    net = _net().eval()
    box = [16.0, 8.0, 47.0, 39.0]
    _pin_localizer(net, box)
    images = _ramp(2)
    boxes = net.predict_boxes(images)
    torch.testing.assert_close(boxes, torch.tensor([box, box]), rtol=0, atol=1e-4)
    crops = net.crop(images, boxes)
    torch.testing.assert_close(crops, images[:, :, 8:40, 16:48], rtol=0, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(net(images), net.classifier(images[:, :, 8:40, 16:48]),
                                   rtol=1e-4, atol=1e-5)


def test_roi_l2_hand_worked_ignoring_unknown_rois() -> None:
    # Box pixels 16..47 on 64 px: centre 0.5, size 0.5.
    rois = torch.tensor([[16.0, 16.0, 47.0, 47.0], NAN_BOX, [16.0, 16.0, 47.0, 47.0]])
    params = torch.tensor([[0.6, 0.5, 0.5, 0.3], [0.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]])
    # View 1: 1/2 (0.1^2 + 0.2^2) = 0.025; view 2: 0; view 3 (NaN ROI) left out.
    assert float(roi_l2(params, rois, SIZE)) == pytest.approx(0.0125, abs=1e-7)
    assert float(roi_l2(params, torch.tensor([NAN_BOX] * 3), SIZE)) == 0.0
    true = box_to_params(rois[[0, 2]], SIZE)
    assert float(roi_l2(true, rois[[0, 2]], SIZE)) == 0.0


def test_loss_crops_true_rois_where_known_and_predicted_ones_elsewhere() -> None:
    net = _net().eval()
    predicted = [16.0, 16.0, 47.0, 47.0]  # params (0.5, 0.5, 0.5, 0.5)
    true = [0.0, 16.0, 31.0, 47.0]  # params (0.25, 0.5, 0.5, 0.5)
    _pin_localizer(net, predicted)
    images = _ramp(3)
    batch = TrainBatch(images=images, labels=torch.tensor([1, 0, 1]),
                       rois=torch.tensor([true, NAN_BOX, predicted]),
                       boxes=torch.full((3, 8, 4), float("nan")),
                       points=torch.full((3, 8, 2), float("nan")))
    crops = torch.stack([images[0, :, 16:48, 0:32], images[1, :, 16:48, 16:48],
                         images[2, :, 16:48, 16:48]])
    with torch.no_grad():
        wce = F.cross_entropy(net.classifier(crops), batch.labels)
    loss = model_type_spec("localize_classify").training.loss  # type: ignore[union-attr]
    # L_sloc: 1/2 0.25^2 for view 0, 0 for view 2 (pinned = true), view 1 unknown -> mean.
    assert float(loss(net, batch, _ctx()).detach()) == pytest.approx(float(wce) + 0.015625,
                                                                      abs=1e-5)
    weighted = loss(net, batch, _ctx(loc_weight="2")).detach()
    assert float(weighted) == pytest.approx(float(wce) + 0.03125, abs=1e-5)


def test_grad_cam_heatmap_lies_in_the_predicted_roi_under_inference_mode() -> None:
    net = _net(num_classes=3, seed=1).eval()
    _pin_localizer(net, [8.0, 16.0, 39.0, 47.0])
    infer = model_type_spec("localize_classify").infer
    torch.manual_seed(2)
    images = torch.rand(3, 1, SIZE, SIZE)
    with torch.inference_mode():
        batch = images * 1.0  # an inference tensor, as FractureModel.infer_arrays passes
        probs, heat = infer(net, batch)
    assert probs.shape == (3, 3) and heat.shape == (3, SIZE, SIZE)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(3))
    assert float(heat.min()) >= 0.0 and float(heat.max()) <= 1.0
    outside = heat.clone()
    outside[:, 16:48, 8:40] = 0
    assert float(outside.max()) == 0.0
    # Grad-CAM peaks at 1 on the crop, scaled to the view's fracture probability.
    torch.testing.assert_close(heat.amax(dim=(1, 2)), 1.0 - probs[:, 0], rtol=0, atol=1e-4)
    assert all(p.grad is None for p in net.parameters())
    assert not net.training


def test_architecture_roi_size_defaults_to_half_the_input() -> None:
    arch = model_type_spec("localize_classify").training.architecture  # type: ignore[union-attr]
    assert arch(TrainConfig(model_type="localize_classify", input_size=96), 3)["roi_size"] == 48
    config = TrainConfig(model_type="localize_classify", input_size=96, options={"roi_size": "64"})
    assert arch(config, 3) == {"num_classes": 3, "backbone": "resnet18", "stages": 3,
                               "roi_size": 64, "in_channels": 1}
    with pytest.raises(ValueError, match="roi_size"):
        LocalizerClassifier(roi_size=16)


def _garden(data: PreparedSet) -> PreparedSet:
    labels = torch.tensor([view_class(e, "garden") for e in data.entries])
    return dataclasses.replace(data, labels=labels)


@pytest.mark.parametrize("label_set", ["binary", "garden"])
def test_a_few_steps_lower_the_loss(zoo_set: PreparedSet, label_set: str) -> None:
    data = zoo_set if label_set == "binary" else _garden(zoo_set)
    num_classes = len(LABEL_SETS[label_set])
    batch = view_batch(data, STEP_VIEWS)
    assert len(batch.labels.unique()) == num_classes
    spec = model_type_spec("localize_classify")
    assert spec.training is not None
    net = _net(num_classes=num_classes).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    ctx = _ctx()
    with torch.no_grad():
        l_sloc_before = float(roi_l2(net.localize(batch.images), batch.rois, SIZE))
    losses = []
    for _ in range(8):
        loss = spec.training.loss(net, batch, ctx)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0]
    with torch.no_grad():  # the localizer learns too, not only the classifier
        assert float(roi_l2(net.localize(batch.images), batch.rois, SIZE)) < l_sloc_before


@pytest.mark.parametrize("label_set", ["binary", "garden"])
def test_registry_round_trip(zoo_set: PreparedSet, tmp_path: Path, label_set: str) -> None:
    spec = model_type_spec("localize_classify")
    assert spec.training is not None
    classes = LABEL_SETS[label_set]
    config = TrainConfig(model_type="localize_classify", stages=1, input_size=SIZE,
                         label_set=label_set)
    architecture = spec.training.architecture(config, len(classes))
    torch.manual_seed(0)
    net = spec.build(**architecture)
    path = tmp_path / "lc.pt"
    save_checkpoint(path, net, ModelMetadata(
        model_type="localize_classify", name="lc", version="0", classes=classes,
        input_size=SIZE, architecture=architecture))
    model = load_model(path, device="cpu")
    predictions = model.predict(zoo_set.views[:2], allow_uncalibrated=True)
    for view, prediction in zip(zoo_set.views[:2], predictions, strict=True):
        assert tuple(prediction.probabilities) == classes
        assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert prediction.heatmap.shape == view.original_shape
        assert 0.0 <= float(prediction.heatmap.min()) <= float(prediction.heatmap.max()) <= 1.0
    direct, _ = spec.infer(net.eval(), zoo_set.images[:2].float()[:, None])
    loaded = np.array([list(p.probabilities.values()) for p in predictions])
    np.testing.assert_allclose(loaded, direct.numpy(), atol=1e-5)
