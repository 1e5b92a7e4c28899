"""Model type ``mvcnn``: the learned multi-view aggregator of seed 004 §5.3.

Trained on study labels alone (``study_level=True``): weighted cross entropy on the study
logits of :meth:`~models.nets.mvcnn.MultiViewClassifier.forward_study` (seed 000 eq. 1-2
weights when enabled). ``infer_study`` gives study probabilities, the learned counterpart
of the rule-based aggregations of :mod:`models.aggregation` (seed 004 §6.2.2).

Per-view ``infer`` treats each view as a study of one view: its probabilities are the
study probabilities of that view alone, its heatmap the class activation map of the
classifier on the view model's transition maps (1 - softmax of the "normal" map).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..nets import fracture_heatmap
from ..nets.mvcnn import MultiViewClassifier
from ..registry import ModelTypeSpec, register_model_type
from ..supervision import LossContext, TrainBatch, TrainingSpec
from .global_pool import global_pool_architecture

if TYPE_CHECKING:
    pass

__all__: list[str] = []


def _network(network: nn.Module) -> MultiViewClassifier:
    if not isinstance(network, MultiViewClassifier):
        raise TypeError(f"mvcnn expects a MultiViewClassifier, got {type(network).__name__}")
    return network


def _infer(network: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits, cams = _network(network).forward_with_cam(batch)
    probs = torch.softmax(logits.float(), dim=1)
    return probs, fracture_heatmap(cams.float(), probs)


def _infer_study(network: nn.Module, views: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.softmax(_network(network).forward_study(views, mask).float(), dim=1)




def _loss(network: nn.Module, batch: TrainBatch, ctx: LossContext) -> torch.Tensor:
    """Weighted cross entropy of the study logits on the study labels (seed 004 §5.3)."""
    if batch.mask is None:
        raise ValueError("mvcnn trains on study-level batches (views with a mask)")
    logits = _network(network).forward_study(batch.images, batch.mask)
    return F.cross_entropy(logits.float(), batch.labels, weight=ctx.class_weights)


register_model_type(
    "mvcnn",
    ModelTypeSpec(
        feature_layer="features",
        build=MultiViewClassifier,
        infer=_infer,
        training=TrainingSpec(architecture=global_pool_architecture, loss=_loss, study_level=True),
        infer_study=_infer_study,
    ),
)
