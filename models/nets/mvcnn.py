"""Multi-view aggregator: a study-level classifier over any number of views (seed 004 §5.3).

Seed 004 §5.3 (after MVCNN, its ref. [63]): every view of a study goes through one shared
*view model*; the per-view features are combined by a *view pooling*, an element-wise
maximum along the view axis, so the study descriptor has the same shape whatever the number
of views; a classifier maps it to the study prediction. The learned alternative to the
rule-based aggregations of :mod:`models.aggregation` (seed 004 §6.2.2).

Here the view model is the global pooling classifier's backbone, transition layer and
global pooling (:class:`~models.nets.global_pool.GlobalPoolClassifier`), and the classifier
is its linear prediction layer. A study of one view is therefore exactly the global pooling
classifier on that view, whose class activation map is the per-view heatmap; and the weights
of a trained ``global_pool`` checkpoint load unchanged (the transfer learning of §5.3).
"""

from __future__ import annotations

import torch

from .global_pool import GlobalPoolClassifier

__all__ = ["MultiViewClassifier", "view_max_pool"]


def _check_study(views_or_features: torch.Tensor, mask: torch.Tensor) -> None:
    if mask.dtype != torch.bool:
        raise TypeError(f"view mask must be bool, got {mask.dtype}")
    if mask.dim() != 2 or tuple(mask.shape) != tuple(views_or_features.shape[:2]):
        raise ValueError(f"view mask shape {tuple(mask.shape)} does not match the (N, V) of "
                         f"{tuple(views_or_features.shape)}")
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"studies {empty} have no view: every study needs at least one")


def view_max_pool(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum over the real views (seed 004 §5.3 "view pooling").

    Args:
        features: (N, V, D) per-view features.
        mask: (N, V) bool, True for real views; padded views are filled with -inf first,
            so they never win the maximum whatever their content.

    Returns:
        (N, D) study features.

    Raises:
        ValueError: a study has no real view (its maximum would be -inf).
    """
    if features.dim() != 3:
        raise ValueError(f"features must be (N, V, D), got {tuple(features.shape)}")
    _check_study(features, mask)
    return features.masked_fill(~mask[..., None], float("-inf")).amax(dim=1)


class MultiViewClassifier(GlobalPoolClassifier):
    """Shared view encoder -> masked view max pooling -> linear classifier.

    Constructor arguments are those of :class:`GlobalPoolClassifier`. ``forward`` and
    ``forward_with_cam`` (inherited) treat each image as a study of one view;
    :meth:`forward_study` classifies whole studies.
    """

    def view_features(self, x: torch.Tensor) -> torch.Tensor:
        """The view model: (K, 1, S, S) images -> (K, D) pooled transition features."""
        return self.pool(self.transition_maps(x))

    def forward_study(self, views: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Study logits (N, C) from views (N, V, 1, S, S) and a (N, V) bool mask of real views.

        Only the real views go through the encoder, so padded views influence nothing: not
        the maximum and not the batch-norm statistics in training mode. Raises ``ValueError``
        for a study without views or a mask that does not match the views.
        """
        if views.dim() != 5:
            raise ValueError(f"views must be (N, V, C, S, S), got {tuple(views.shape)}")
        _check_study(views, mask)
        real = self.view_features(views[mask])
        table = real.new_zeros((*mask.shape, real.shape[1]))
        table[mask] = real
        return self.prediction(view_max_pool(table, mask))
