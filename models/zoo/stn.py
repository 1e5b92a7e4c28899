"""Model type ``stn``: spatial-transformer attention, a-STN / aff-STN (seed 000 §II.C.1).

Loss: weighted cross entropy of the ROI classifier's logits on the image labels (eq. 1-2
weights when enabled); the localization network learns only through it (§II.C.1).

Options (``--option name=value``, stored in the checkpoint's architecture):
``transform`` (``similarity``, the default, or ``affine``), ``loc_stages`` (backbone stages
of the localization network, default ``min(2, stages)``) and ``roi_size`` (side of the
warped ROI, default the input size), ``loc_lr_scale`` (learning-rate factor of the
localization network, default 0.1).

Layer-wise learning rates: seed 000 trains the localization network far slower than the
classifier (Table I, 1e-6 vs 1e-2 with SGD) instead of clipping the transform (§V). Under
AdamW a step's size does not scale with the gradient, so the SGD ratio would freeze the
localization network; the default keeps the idea (a ten times slower localizer) and
``loc_lr_scale`` sets any other ratio.

Inference: probabilities of the ROI classifier; the heatmap is the ROI's square box
(:func:`models.nets.stn.square_roi_boxes`) as a soft mask scaled by the fracture
probability. The paper's STN localization output is that box (§III "Performance
Evaluation"), so the heatmap's one finding is the box the paper evaluates, scored by the
fracture probability; a class activation map of the ROI classifier would need an inverse
warp and would still be blank outside the ROI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..nets.stn import SpatialTransformerClassifier, box_mask, square_roi_boxes
from ..registry import ModelTypeSpec, register_model_type
from ..supervision import LossContext, TrainBatch, TrainingSpec, option_value

if TYPE_CHECKING:
    from ..train import TrainConfig

__all__: list[str] = []


def _network(network: nn.Module) -> SpatialTransformerClassifier:
    if not isinstance(network, SpatialTransformerClassifier):
        raise TypeError(
            f"stn expects a SpatialTransformerClassifier, got {type(network).__name__}")
    return network


def _infer(network: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits, theta = _network(network).forward_with_theta(batch)
    probs = torch.softmax(logits.float(), dim=1)
    size = batch.shape[-2:]
    mask = box_mask(square_roi_boxes(theta, size[0], size[1]), size[0], size[1])
    return probs, (1.0 - probs[:, 0])[:, None, None] * mask


def _architecture(config: TrainConfig, num_classes: int) -> dict[str, Any]:
    options = config.options
    roi_size = options.get("roi_size")
    return {
        "num_classes": num_classes,
        "transform": str(options.get("transform", "similarity")),
        "backbone": config.backbone,
        "stages": config.stages,
        "loc_stages": int(options.get("loc_stages", min(2, config.stages))),
        "pooling": config.pooling,
        "lse_r": config.lse_r,
        "roi_size": None if roi_size is None else int(roi_size),
        "in_channels": 1,
    }


def _loss(network: nn.Module, batch: TrainBatch, ctx: LossContext) -> torch.Tensor:
    """Weighted cross entropy of the ROI classifier (seed 000 eq. 1-2, §II.C.1)."""
    logits = _network(network)(batch.images)
    return F.cross_entropy(logits.float(), batch.labels, weight=ctx.class_weights)


def _param_groups(network: nn.Module, config: TrainConfig
                  ) -> list[tuple[list[nn.Parameter], float]]:
    """The localization network at ``loc_lr_scale`` times the learning rate (§V, Table I)."""
    scale = float(option_value(config.options, "loc_lr_scale", 0.1))
    net = _network(network)
    loc = list(net.localization.parameters())
    ids = {id(p) for p in loc}
    rest = [p for p in net.parameters() if id(p) not in ids]
    return [(loc, scale), (rest, 1.0)]


OPTIONS = (  # the --option names this type reads
    "transform",
    "loc_stages",
    "roi_size",
    "loc_lr_scale",
)


register_model_type(
    "stn",
    ModelTypeSpec(
        feature_layer="localization.0",
        build=SpatialTransformerClassifier,
        infer=_infer,
        training=TrainingSpec(options=OPTIONS, architecture=_architecture, loss=_loss,
                              param_groups=_param_groups),
    ),
)
