"""Calibrating a model's domain check and recording its scope (``pacs-node calibrate``).

:func:`calibrate` fits the statistics of :mod:`models.domain` on one part of an in-domain
data set and sets the threshold on the other part, split by study with the training run's
own split (same fraction and seed), so that on the training data the threshold comes from
the validation studies the network never trained on. :func:`scope_of` reads the anatomy
and view positions a data set covers (seed 004 §4.2.2.1's normalised body parts).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .data import PreparedSet, prepare_dataset, split_by_study
from .domain import DEFAULT_PASS_RATE, DomainStats, fit_domain
from .preprocess import UNKNOWN, PreparedView
from .registry import FractureModel, load_model, set_domain_calibration

__all__ = ["MIN_THRESHOLD_VIEWS", "calibrate", "calibrate_checkpoint", "scope_of",
           "view_features"]

# Fewer held-out views than this make the pass_rate quantile a guess: calibrate warns.
MIN_THRESHOLD_VIEWS = 100


def scope_of(views: Sequence[PreparedView]) -> dict[str, list[str]]:
    """The normalised body parts and view positions of ``views`` (unknown ones left out)."""
    return {
        "body_parts": sorted({v.body_part for v in views if v.body_part != UNKNOWN}),
        "view_positions": sorted({v.view_position for v in views if v.view_position}),
    }


def view_features(model: FractureModel, images: Any, *, batch_size: int = 16,
                  progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Domain-check features (N, D) of prepared images ((N, S, S) array or tensor, any
    float type), computed a batch at a time."""
    total = len(images)
    chunks = []
    for start in range(0, total, batch_size):
        batch = [np.asarray(images[i], dtype=np.float32)
                 for i in range(start, min(start + batch_size, total))]
        chunks.append(model.infer_arrays(batch)[2])
        if progress is not None:
            progress(min(start + batch_size, total), total)
    return np.concatenate(chunks)


def calibrate(
    model: FractureModel,
    data: PreparedSet,
    *,
    pass_rate: float = DEFAULT_PASS_RATE,
    val_fraction: float = 0.15,
    seed: int = 0,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> DomainStats:
    """Domain statistics of ``model`` fitted on ``data``'s training-side studies, with the
    threshold from the held-out side (``split_by_study(entries, val_fraction, seed)``)."""
    model = model.uncalibrated()  # fit at the type's layer, whatever was there before
    if not model.feature_layer:
        raise ValueError(f"model type {model.metadata.model_type!r} names no feature layer")
    fit_idx, held_idx = split_by_study(data.entries, val_fraction, seed)
    if not fit_idx or not held_idx:
        raise ValueError(f"calibration needs studies on both sides of the split; {len(data.labels)}"
                         " views are too few")
    if len(held_idx) < MIN_THRESHOLD_VIEWS:
        warnings.warn(f"only {len(held_idx)} held-out views set the domain threshold "
                      f"(fewer than {MIN_THRESHOLD_VIEWS}): the pass rate on new data will "
                      "vary", stacklevel=2)
    features = view_features(model, data.images, batch_size=batch_size,
                             progress=progress)
    labels = (data.labels.numpy() > 0).astype(int)
    return fit_domain(features[fit_idx], labels[fit_idx], features[held_idx],
                      pass_rate=pass_rate, layer=model.feature_layer)


def calibrate_checkpoint(
    weights: Path,
    data_dir: Path,
    *,
    pass_rate: float = DEFAULT_PASS_RATE,
    workers: int = 1,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[DomainStats, dict[str, list[str]]]:
    """Calibrate the checkpoint at ``weights`` on the in-domain data set ``data_dir`` and
    write the statistics into it. The split follows the checkpoint's training recipe. A
    checkpoint without a scope gets the scope of ``data_dir`` (the data it is calibrated
    on is, by definition, its domain); one with a scope keeps it. Returns the statistics
    and the checkpoint's scope."""
    model = load_model(weights, device="cpu")
    recipe = model.metadata.training.get("recipe", {})
    pre = model.metadata.preprocessing
    data = prepare_dataset(
        Path(data_dir), size=model.metadata.input_size, mode=pre.get("mode", "pad"),
        align=bool(pre.get("align", False)),
        heuristic_inversion=bool(pre.get("heuristic_inversion", False)), workers=workers,
        progress=None if progress is None else lambda d, t: progress("preprocessing", d, t),
    )
    stats = calibrate(
        model, data, pass_rate=pass_rate, val_fraction=float(recipe.get("val_fraction", 0.15)),
        seed=int(recipe.get("seed", 0)),
        progress=None if progress is None else lambda d, t: progress("features", d, t),
    )
    scope = model.metadata.scope or scope_of(data.views)
    set_domain_calibration(weights, stats, scope=scope)
    return stats, scope
