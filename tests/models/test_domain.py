"""The domain check (models.domain): scores, threshold, checkpoint round trip, and what a
model without calibration does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.calibration import calibrate, scope_of, view_features
from models.data import prepare_dataset
from models.domain import DomainStats, fit_domain, pooled_features
from models.nets import GlobalPoolClassifier
from models.preprocess import prepare_array
from models.registry import (
    ModelMetadata,
    load_model,
    read_checkpoint,
    save_checkpoint,
    set_domain_calibration,
)
from models.synth import generate_dataset

ARCH = {"num_classes": 2, "backbone": "resnet18", "stages": 1, "pooling": "max",
        "lse_r": 10.0, "transition_channels": 8, "in_channels": 1}


def _gaussian(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    cov = np.diag(np.linspace(0.5, 2.0, 12))
    return rng.multivariate_normal(np.full(12, shift), cov, size=n)


def test_shifted_features_score_higher_and_the_threshold_keeps_its_pass_rate() -> None:
    rng = np.random.default_rng(7)
    fit = _gaussian(rng, 2000)
    labels = rng.integers(0, 2, len(fit))
    stats = fit_domain(fit, labels, _gaussian(rng, 1000), pass_rate=0.99, layer="x")
    fresh = stats.scores(_gaussian(rng, 4000))
    shifted = stats.scores(_gaussian(rng, 4000, shift=2.0))
    assert np.median(shifted) > 1.5 * np.median(fresh)
    assert 0.975 <= float(np.mean(fresh <= stats.threshold)) <= 1.0
    assert float(np.mean(shifted <= stats.threshold)) < 0.5
    assert [c.in_domain for c in stats.check(fit[:3])] == [True] * 3


def test_fit_refuses_what_it_cannot_calibrate() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="pass_rate"):
        fit_domain(_gaussian(rng, 10), np.zeros(10), _gaussian(rng, 5), pass_rate=1.0, layer="x")
    with pytest.raises(ValueError, match="one label per row"):
        fit_domain(_gaussian(rng, 10), np.zeros(9), _gaussian(rng, 5), layer="x")
    # Constant features (a dead layer) still give an invertible matrix, not a crash.
    stats = fit_domain(np.ones((10, 4)), np.zeros(10), np.ones((3, 4)), layer="x")
    assert np.isfinite(stats.scores(np.zeros((1, 4)))).all()


def test_pooled_features_are_channel_means_and_spreads_in_groups() -> None:
    maps = torch.arange(2 * 4 * 3 * 3, dtype=torch.float32).reshape(2, 4, 3, 3)
    feats = pooled_features(maps)
    assert feats.shape == (2, 8)
    assert torch.allclose(feats[:, :4], maps.flatten(2).mean(dim=2))
    wide = pooled_features(torch.rand(1, 1024, 2, 2))
    assert wide.shape == (1, 512)  # 1024 channels averaged in 256 groups of 4


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, studies=16, seed=3, size=128)
    return root


def _tiny_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    meta = ModelMetadata(model_type="global_pool", name="tiny", version="0", input_size=64,
                         classes=("normal", "fracture"), architecture=ARCH)
    save_checkpoint(path, GlobalPoolClassifier(**ARCH), meta)
    return path


@pytest.mark.filterwarnings("ignore:only .* held-out views set the domain threshold")
def test_a_network_scores_noise_and_blank_images_above_synthetic_views(
        tiny_set: Path, tmp_path: Path) -> None:
    model = load_model(_tiny_checkpoint(tmp_path / "tiny.pt"), device="cpu")
    data = prepare_dataset(tiny_set, size=64)
    stats = calibrate(model, data, pass_rate=0.99, val_fraction=0.25, seed=0)
    inside = stats.scores(view_features(model, data.images))
    rng = np.random.default_rng(0)
    foreign = np.stack([rng.random((64, 64)), np.zeros((64, 64)), np.ones((64, 64)),
                        np.tile(np.linspace(0, 1, 64), (64, 1))]).astype(np.float32)
    outside = stats.scores(view_features(model, foreign))
    assert outside.min() > np.percentile(inside, 90), (outside, np.percentile(inside, 90))
    assert scope_of(data.views)["body_parts"]  # the synthetic anatomy, normalised


def test_the_checkpoint_round_trips_the_statistics(tmp_path: Path) -> None:
    path = _tiny_checkpoint(tmp_path / "tiny.pt")
    assert not load_model(path).calibrated
    rng = np.random.default_rng(1)
    stats = fit_domain(rng.normal(size=(50, 128)), rng.integers(0, 2, 50),
                       rng.normal(size=(20, 128)), layer="features")
    scope = {"body_parts": ["HIP"], "view_positions": ["AP"]}
    set_domain_calibration(path, stats, scope=scope)
    model = load_model(path)
    assert model.calibrated and model.metadata.scope == scope
    assert model.domain is not None
    back: DomainStats = model.domain
    assert back.threshold == stats.threshold and back.layer == "features"
    assert (back.fit_views, back.threshold_views, back.pass_rate) == (50, 20, 0.99)
    np.testing.assert_array_equal(back.means, stats.means)
    np.testing.assert_array_equal(back.precision, stats.precision)
    assert read_checkpoint(path)["domain"]["method"] == "mahalanobis-tied-lw"


def test_an_uncalibrated_model_says_so_and_answers_only_when_allowed(tmp_path: Path) -> None:
    model = load_model(_tiny_checkpoint(tmp_path / "tiny.pt"), device="cpu")
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    view = prepare_array(image, size=64)
    (refused,) = model.predict([view])
    assert refused.fracture_probability is None and refused.heatmap is None
    assert not refused.domain.calibrated and not refused.domain.in_domain
    assert "no domain calibration" in refused.not_analysed_reason
    (allowed,) = model.predict([view], allow_uncalibrated=True)
    assert allowed.fracture_probability is not None and allowed.heatmap is not None
    assert not allowed.domain.calibrated and allowed.domain.in_domain
    assert allowed.not_analysed_reason == ""
