"""Global pooling classifier (seed 000 §II.C.3): the demo model's type."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..nets import GlobalPoolClassifier, fracture_heatmap
from ..registry import ModelTypeSpec, register_model_type
from ..supervision import LossContext, TrainBatch, TrainingSpec

if TYPE_CHECKING:
    from ..train import TrainConfig

__all__ = ["global_pool_architecture"]


def _infer_global_pool(
    network: nn.Module, batch: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(network, GlobalPoolClassifier):
        raise TypeError(f"global_pool expects a GlobalPoolClassifier, got {type(network).__name__}")
    logits, cams = network.forward_with_cam(batch)
    probs = torch.softmax(logits, dim=1)
    return probs, fracture_heatmap(cams, probs)


def global_pool_architecture(config: TrainConfig, num_classes: int) -> dict[str, Any]:
    """Constructor arguments of a :class:`GlobalPoolClassifier` (and the MVCNN built on it)."""
    return {
        "num_classes": num_classes,
        "backbone": config.backbone,
        "stages": config.stages,
        "pooling": config.pooling,
        "lse_r": config.lse_r,
        "transition_channels": config.transition_channels,
        "in_channels": 1,
    }


def _global_pool_loss(network: nn.Module, batch: TrainBatch, ctx: LossContext) -> torch.Tensor:
    """Weighted cross entropy on image labels (seed 000 eq. 1-2)."""
    logits = network(batch.images)
    return F.cross_entropy(logits.float(), batch.labels, weight=ctx.class_weights)


register_model_type(
    "global_pool",
    ModelTypeSpec(
        feature_layer="features",
        build=GlobalPoolClassifier,
        infer=_infer_global_pool,
        training=TrainingSpec(architecture=global_pool_architecture, loss=_global_pool_loss),
    ),
)
