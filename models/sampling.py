"""Class balancing: weighted cross entropy (seed 000 eq. 1-2) and the class-balanced batch
sampler (seed 004 §4.3, eq. 4.3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch.utils.data import WeightedRandomSampler

__all__ = ["balanced_sampler", "class_weights", "sample_probabilities"]


def _counts(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    if len(labels) == 0:
        raise ValueError("no labels: cannot balance an empty training set")
    t = torch.as_tensor(list(labels), dtype=torch.long)
    if int(t.min()) < 0 or int(t.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got {t.min()}..{t.max()}")
    return torch.bincount(t, minlength=num_classes)


def class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """``w_c = Z / freq(c)`` (seed 000 eq. 2) with ``Z = N / C``.

    With this ``Z`` a balanced set gets ``w_c = 1`` (plain cross entropy). A class absent from
    ``labels`` gets weight 0 (there is nothing to weight).
    """
    counts = _counts(labels, num_classes).double()
    z = counts.sum() / num_classes
    weights = torch.where(counts > 0, z / counts.clamp(min=1), torch.zeros_like(counts))
    return weights.float()


def sample_probabilities(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Per-sample pick probability ``P(s) = 1 / (K * n_class(s))`` over the K present classes.

    For two classes this is exactly seed 004 eq. 4.3,
    ``P(s) = n_opposite(s) / (2 * n_b * n_nb)``; for more classes it keeps its intent: every
    class is drawn equally often in the long run.
    """
    counts = _counts(labels, num_classes).double()
    present = int((counts > 0).sum())
    t = torch.as_tensor(list(labels), dtype=torch.long)
    return 1.0 / (present * counts[t])


def balanced_sampler(
    labels: Sequence[int], num_classes: int, *, generator: torch.Generator
) -> WeightedRandomSampler:
    """Seed 004 §4.3: ``K * n_min`` samples per epoch, drawn with the probabilities of
    :func:`sample_probabilities` and without repeating a sample within the epoch."""
    counts = _counts(labels, num_classes)
    n_min = int(counts[counts > 0].min())
    present = int((counts > 0).sum())
    return WeightedRandomSampler(
        # torch takes a tensor of weights (torch.as_tensor); its stub says Sequence[float]
        cast("Sequence[float]", sample_probabilities(labels, num_classes)),
        num_samples=present * n_min,
        replacement=False,
        generator=generator,
    )
