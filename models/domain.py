"""The domain check: does a view look like the data the model was trained on?

A model trained on synthetic hips and wrists still answers on a chest film, a CT slice or a
blank image, and a classifier's own confidence says nothing about that (its softmax is
often most confident far from its data). Before a view's probability is reported, its
features are compared with those of the training views.

The score is the Mahalanobis distance of Lee et al., "A Simple Unified Framework for
Detecting Out-of-Distribution Samples and Adversarial Attacks" (NeurIPS 2018): Gaussian
class-conditional densities of a network layer's features with one shared (tied)
covariance, and a view's score is its distance to the closest class mean. Chosen over the
energy score (Liu et al., NeurIPS 2020) because the energy is a function of the logits
alone: with two classes and a prediction layer fed by max-pooled maps (seed 000
§II.C.3), a film unlike anything in training can reach logits as extreme as a fracture's,
which is exactly the failure this check exists for. Feature statistics see the whole image:
texture, contrast, anatomy.

Features are the per-channel mean and standard deviation of one convolutional layer's maps
(the model type's ``feature_layer``), channels averaged in groups so that at most
:data:`MAX_CHANNELS` remain: at most 2 x 256 numbers per view, so the covariance is
estimated from a few thousand views. For the pooling models the layer is the backbone's
last residual stage, not the transition layer after it: on the demo weights of stage 7
(2153 fit and 382 threshold views, 99 % pass rate) the real lower-leg film RG3 scored 1.14
times the threshold there against 0.94 at the transition layer (which the fracture
classifier shapes), the chest film RG1 1.64 against 1.46, with the same held-out pass rate;
adding the first stage or the transition layer to it separated no better. The covariance
is shrunk towards a scaled identity (Ledoit and Wolf, "A well-conditioned estimator for
large-dimensional covariance matrices", 2004), which keeps it invertible when there are
fewer views than dimensions.

The threshold is the ``pass_rate`` quantile of scores of held-out in-domain views (views
the statistics were not fitted on): by construction about that share of new in-domain
views pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "DEFAULT_PASS_RATE",
    "MAX_CHANNELS",
    "DomainCheck",
    "DomainStats",
    "fit_domain",
    "pooled_features",
]

DEFAULT_PASS_RATE = 0.99
MAX_CHANNELS = 256


def pooled_features(maps: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) feature maps -> (N, 2 * min(C, MAX_CHANNELS)) float32: the mean and
    standard deviation of each channel (channels averaged in equal groups above
    :data:`MAX_CHANNELS`)."""
    if maps.dim() != 4:
        raise ValueError(f"feature maps must be (N, C, H, W), got {tuple(maps.shape)}")
    maps = maps.float()
    n, c = maps.shape[:2]
    if c > MAX_CHANNELS:
        groups = MAX_CHANNELS
        while c % groups:
            groups -= 1
        maps = maps.reshape(n, groups, c // groups, *maps.shape[2:]).mean(dim=2)
    flat = maps.flatten(2)
    return torch.cat([flat.mean(dim=2), flat.std(dim=2, unbiased=False)], dim=1)


@dataclass(frozen=True)
class DomainCheck:
    """The domain check of one view.

    ``calibrated`` is False when the model carries no statistics (then ``score`` and
    ``threshold`` are None and ``in_domain`` says what the caller allowed).
    """

    in_domain: bool
    score: float | None = None
    threshold: float | None = None
    calibrated: bool = True

    def reason(self) -> str:
        """Why the view was not analysed, in words a reader understands ("" when it was)."""
        if not self.calibrated:
            return ("the model has no domain calibration (run pacs-node calibrate, or set "
                    "pipeline.allow_uncalibrated)") if not self.in_domain else ""
        if self.in_domain:
            return ""
        return (f"outside the model's training domain (score {self.score:.1f}, "
                f"threshold {self.threshold:.1f})")

    def to_dict(self) -> dict[str, Any]:
        return {"in_domain": self.in_domain, "score": self.score, "threshold": self.threshold,
                "calibrated": self.calibrated}


@dataclass(frozen=True)
class DomainStats:
    """Class means, shared precision and threshold of the domain check (in a checkpoint as
    plain tensors and numbers, so ``torch.load(weights_only=True)`` reads it)."""

    means: np.ndarray  # (K, D) float64, one row per class seen in calibration
    precision: np.ndarray  # (D, D) float64, inverse of the shrunk tied covariance
    threshold: float
    pass_rate: float
    fit_views: int
    threshold_views: int
    layer: str

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each (N, D) feature row to the closest class mean."""
        feats = np.asarray(features, dtype=np.float64)
        if feats.ndim != 2 or feats.shape[1] != self.means.shape[1]:
            raise ValueError(f"features must be (N, {self.means.shape[1]}), got {feats.shape}")
        best = np.full(len(feats), np.inf)
        for mean in self.means:
            diff = feats - mean
            best = np.minimum(best, np.einsum("nd,de,ne->n", diff, self.precision, diff))
        return np.sqrt(np.maximum(best, 0.0))

    def check(self, features: np.ndarray) -> list[DomainCheck]:
        return [DomainCheck(in_domain=bool(s <= self.threshold), score=float(s),
                            threshold=self.threshold)
                for s in self.scores(features)]

    def to_blob(self) -> dict[str, Any]:
        return {
            "method": "mahalanobis-tied-lw",
            "means": torch.from_numpy(self.means),
            "precision": torch.from_numpy(self.precision),
            "threshold": float(self.threshold),
            "pass_rate": float(self.pass_rate),
            "fit_views": int(self.fit_views),
            "threshold_views": int(self.threshold_views),
            "layer": self.layer,
        }

    @classmethod
    def from_blob(cls, blob: dict[str, Any]) -> DomainStats:
        if blob.get("method") != "mahalanobis-tied-lw":
            raise ValueError(f"unknown domain-check method {blob.get('method')!r}")
        return cls(
            means=blob["means"].double().numpy(),
            precision=blob["precision"].double().numpy(),
            threshold=float(blob["threshold"]),
            pass_rate=float(blob["pass_rate"]),
            fit_views=int(blob["fit_views"]),
            threshold_views=int(blob["threshold_views"]),
            layer=str(blob["layer"]),
        )


def _ledoit_wolf(centred: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf (2004) shrunk covariance of already centred (N, D) rows."""
    n, d = centred.shape
    sample = centred.T @ centred / n
    mu = np.trace(sample) / d
    target = mu * np.eye(d)
    delta = np.sum((sample - target) ** 2) / d
    # beta: how far the sample covariance is from the truth, estimated from the rows.
    squares = centred ** 2
    beta = (np.sum(squares.T @ squares) / n - np.sum(sample ** 2)) / (d * n)
    shrink = 0.0 if delta == 0 else min(beta, delta) / delta
    return shrink * target + (1.0 - shrink) * sample


def fit_domain(
    fit_features: np.ndarray,
    fit_labels: np.ndarray,
    threshold_features: np.ndarray,
    *,
    pass_rate: float = DEFAULT_PASS_RATE,
    layer: str,
) -> DomainStats:
    """Fit class means and the tied covariance on ``fit_features`` (N, D) with their class
    labels, and set the threshold so that ``pass_rate`` of ``threshold_features`` (held-out
    in-domain views) pass."""
    if not 0.5 <= pass_rate < 1.0:
        raise ValueError(f"pass_rate must lie in [0.5, 1), got {pass_rate}")
    fit = np.asarray(fit_features, dtype=np.float64)
    labels = np.asarray(fit_labels)
    if fit.ndim != 2 or len(fit) != len(labels):
        raise ValueError("fit_features must be (N, D) with one label per row")
    if len(fit) < 2 or len(threshold_features) < 1:
        raise ValueError("calibration needs at least 2 fit views and 1 threshold view")
    classes = sorted(set(labels.tolist()))
    means = np.stack([fit[labels == k].mean(axis=0) for k in classes])
    centred = fit - means[np.searchsorted(classes, labels)]
    covariance = _ledoit_wolf(centred)
    # A view set with constant features (a degenerate layer) still yields an invertible matrix.
    covariance += np.eye(len(covariance)) * 1e-9 * max(np.trace(covariance), 1e-12)
    precision = np.linalg.inv(covariance)
    stats = DomainStats(means=means, precision=precision, threshold=np.inf, pass_rate=pass_rate,
                        fit_views=len(fit), threshold_views=len(threshold_features), layer=layer)
    held_out = stats.scores(threshold_features)
    threshold = float(np.quantile(held_out, pass_rate, method="higher"))
    return DomainStats(means=means, precision=precision, threshold=threshold,
                       pass_rate=pass_rate, fit_views=len(fit),
                       threshold_views=len(held_out), layer=layer)
