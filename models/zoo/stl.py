"""Model type ``stl``: self-transfer learning (seed 000 §II.C.2).

Loss: eq. 6, ``(1 - alpha) * L_class + alpha * L_uloc``, both weighted cross entropy on the
image labels (eq. 1-2 weights when enabled); a term whose weight is 0 is left out of the
loss, so its branch gets no gradient. Options (``--option name=value``): ``alpha`` (default 0.3, a
small value of Table III) and ``alpha_switch`` (default 0.5), the fraction of the schedule
after which alpha is complemented (:func:`models.nets.stl.stl_alpha`); ``alpha_switch=1``
keeps alpha fixed, e.g. ``alpha=0.6 alpha_switch=1`` for Table III's best setting read as a
constant weight.

Inference: the probabilities are the classification branch's; the paper combines no
branches at test time (§II.C.2: the localization branch exists to find the ROI and to
improve the shared features). The heatmap comes from the localization branch's score maps
(Fig. 3), upsampled to the input and turned into per-pixel fracture evidence
``1 - softmax(maps)[normal]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..nets import fracture_heatmap
from ..nets.stl import SelfTransferNet, stl_alpha
from ..registry import ModelTypeSpec, register_model_type
from ..supervision import LossContext, TrainBatch, TrainingSpec

if TYPE_CHECKING:
    from ..train import TrainConfig

__all__: list[str] = []

DEFAULT_ALPHA = 0.3
DEFAULT_ALPHA_SWITCH = 0.5


def _network(network: nn.Module) -> SelfTransferNet:
    if not isinstance(network, SelfTransferNet):
        raise TypeError(f"stl expects a SelfTransferNet, got {type(network).__name__}")
    return network


def _infer(network: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits, maps = _network(network).forward_with_maps(batch)
    probs = torch.softmax(logits.float(), dim=1)
    return probs, fracture_heatmap(maps.float(), probs)


def _architecture(config: TrainConfig, num_classes: int) -> dict[str, Any]:
    return {
        "num_classes": num_classes,
        "backbone": config.backbone,
        "stages": config.stages,
        "hidden_features": 256,
        "dropout": 0.5,
        "pooled_grid": 4,
        "loc_channels": config.transition_channels,
        "in_channels": 1,
    }


def _loss(network: nn.Module, batch: TrainBatch, ctx: LossContext) -> torch.Tensor:
    """Eq. 6 with the alpha schedule of :func:`stl_alpha` at ``ctx.progress``."""
    alpha = stl_alpha(ctx.option("alpha", DEFAULT_ALPHA), ctx.progress,
                      ctx.option("alpha_switch", DEFAULT_ALPHA_SWITCH))
    class_logits, loc_logits = _network(network).forward_branches(batch.images)
    loss = torch.zeros((), device=batch.images.device)
    if alpha < 1.0:
        loss = loss + (1.0 - alpha) * F.cross_entropy(class_logits.float(), batch.labels,
                                                      weight=ctx.class_weights)
    if alpha > 0.0:
        loss = loss + alpha * F.cross_entropy(loc_logits.float(), batch.labels,
                                              weight=ctx.class_weights)
    return loss


OPTIONS = (  # the --option names this type reads
    "alpha",
    "alpha_switch",
)


register_model_type(
    "stl",
    ModelTypeSpec(
        feature_layer="shared",
        build=SelfTransferNet,
        infer=_infer,
        training=TrainingSpec(options=OPTIONS, architecture=_architecture, loss=_loss),
    ),
)
