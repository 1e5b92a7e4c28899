"""The model types this package ships, registered with :mod:`models.registry`."""

from __future__ import annotations

import torch
from torch import nn

from .nets import GlobalPoolClassifier, fracture_heatmap
from .registry import ModelTypeSpec, register_model_type

__all__: list[str] = []


def _infer_global_pool(
    network: nn.Module, batch: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(network, GlobalPoolClassifier):
        raise TypeError(f"global_pool expects a GlobalPoolClassifier, got {type(network).__name__}")
    logits, cams = network.forward_with_cam(batch)
    return torch.softmax(logits, dim=1), fracture_heatmap(cams)


register_model_type(
    "global_pool", ModelTypeSpec(build=GlobalPoolClassifier, infer=_infer_global_pool)
)
