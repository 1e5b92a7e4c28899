"""Model type ``two_stage``: weakly supervised ROI mining and ROI classification (seed 001 §2).

Training runs both stages inside the generic loop, one after the other (§2.1, §2.2):

- the first ``stage1_fraction`` of the epochs (option, default 0.5) train stage 1 alone:
  BCE between the LSE-pooled probability map (eq. 1) and the image label (fracture =
  class > 0);
- the remaining epochs train stage 2 on ROIs mined afresh in every batch from the frozen
  stage 1 (eq. 2): at the start of the first stage-2 epoch :func:`_on_epoch_start` sets the
  threshold p̂ at ``mining_sensitivity`` (default 0.99) of the training images' ``p0 = max
  p_ij``; each batch yields up to ``rois_per_image`` (K, default 5) ROIs per image. Stage 2
  learns BCE on the ROI labels and, with fracture types (label set ao/garden), cross entropy
  over the types on the positive ROIs only (§2.2 "Hip/pelvic fracture differentiation").

Stage 1 stays frozen in stage 2 (weights and batch-norm statistics): its maps propose the
ROIs and give ``ps1`` at inference. Inference chains the stages (§2.2): with ``score = ps1 *
ps2`` the probabilities are ``[1 - score, score]``, or ``[1 - score, score * p(type)]`` with
a type head. The heatmap is the stage-1 map upsampled (bilinearly) to the input grid and
scaled by ``ps2``, so it peaks in the arg-max cell at about the chained score, never above.

The paper does not state the ROI size; ``roi_size`` (option, input-grid pixels) defaults to
a quarter of the input side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..nets.two_stage import (
    TwoStageMIL,
    crop_rois,
    mine_rois,
    roi_origins,
    sensitivity_threshold,
)
from ..registry import ModelTypeSpec, register_model_type
from ..supervision import LossContext, TrainBatch, TrainingSpec

if TYPE_CHECKING:
    from ..data import PreparedSet
    from ..train import TrainConfig

__all__: list[str] = []

THRESHOLD_KEY = "two_stage_threshold"
_EPS = 1e-6  # probabilities are clamped to [eps, 1 - eps] inside the BCE logarithms
_SCORE_BATCH = 32


def _network(network: nn.Module) -> TwoStageMIL:
    if not isinstance(network, TwoStageMIL):
        raise TypeError(f"two_stage expects a TwoStageMIL, got {type(network).__name__}")
    return network


def _infer(network: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ps1, ps2, types, prob_map, _ = _network(network).chain(batch)
    score = (ps1 * ps2).unsqueeze(1)
    fracture = score * types if types.shape[1] else score
    heatmap = F.interpolate(prob_map.unsqueeze(1), size=batch.shape[-2:], mode="bilinear",
                            align_corners=False).squeeze(1)
    return torch.cat([1.0 - score, fracture], dim=1), (heatmap * ps2.view(-1, 1, 1)).clamp(0, 1)


def _architecture(config: TrainConfig, num_classes: int) -> dict[str, Any]:
    options = config.options
    return {
        "num_classes": num_classes,
        "backbone": config.backbone,
        "stages": config.stages,
        "lse_r": config.lse_r,
        "roi_size": int(options.get("roi_size", max(1, config.input_size // 4))),
        "stage2_stages": int(options.get("stage2_stages", 4)),
        "in_channels": 1,
    }


def stage1_epochs(ctx: LossContext) -> int:
    """How many of the first epochs train stage 1 (option ``stage1_fraction``)."""
    fraction = ctx.option("stage1_fraction", 0.5)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"stage1_fraction must lie in (0, 1], got {fraction}")
    return min(ctx.epochs, max(1, int(fraction * ctx.epochs + 0.5)))


def _on_epoch_start(network: nn.Module, ctx: LossContext, data: PreparedSet) -> None:
    """Before the first stage-2 epoch: p̂ at the training sensitivity (§2.1)."""
    if ctx.epoch <= stage1_epochs(ctx) or THRESHOLD_KEY in ctx.state:
        return  # stage 1 is frozen from here on, so p̂ is computed once
    net = _network(network)
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    with torch.inference_mode():
        scores = torch.cat([
            net.probability_map(
                data.images[start:start + _SCORE_BATCH].float().unsqueeze(1).to(device)
            ).flatten(1).amax(dim=1).cpu()
            for start in range(0, len(data.labels), _SCORE_BATCH)
        ])
    net.train(was_training)
    ctx.state[THRESHOLD_KEY] = sensitivity_threshold(
        scores, data.labels > 0, ctx.option("mining_sensitivity", 0.99))


def _bce(probability: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE on probabilities, written out so it is allowed under autocast."""
    p = probability.float().clamp(_EPS, 1.0 - _EPS)
    return -(target * torch.log(p) + (1.0 - target) * torch.log1p(-p)).mean()


def _loss(network: nn.Module, batch: TrainBatch, ctx: LossContext) -> torch.Tensor:
    net = _network(network)
    if ctx.epoch <= stage1_epochs(ctx):
        # §2.1: BCE of the LSE-pooled map (eq. 1) against the image label.
        image_probability = net.image_probability(net.probability_map(batch.images))
        return _bce(image_probability, (batch.labels > 0).float())
    return _stage2_loss(net, batch, ctx)


def _stage2_loss(net: TwoStageMIL, batch: TrainBatch, ctx: LossContext) -> torch.Tensor:
    """§2.2: BCE on ROIs mined from the frozen stage 1 (eq. 2); types on positive ROIs."""
    threshold = ctx.state.get(THRESHOLD_KEY)
    if threshold is None:
        raise RuntimeError("two_stage: the mining threshold is unset; the training loop "
                           "must call on_epoch_start before each epoch")
    net.stage1.eval()
    with torch.no_grad():
        maps = net.probability_map(batch.images)
    g = torch.Generator().manual_seed(ctx.config.seed * 1_000_003 + ctx.step)
    index, cells, labels = mine_rois(maps, (batch.labels > 0).cpu(), threshold,
                                     k=ctx.option("rois_per_image", 5), generator=g)
    if len(index) == 0:  # only positives without a cell above p̂: nothing to learn here
        return net.fracture_head.weight.sum() * 0.0
    origins = roi_origins(cells, (maps.shape[1], maps.shape[2]), batch.images.shape[-1],
                          net.roi_size)
    fracture, types = net.classify_rois(crop_rois(batch.images, index, origins, net.roi_size))
    labels = labels.to(fracture.device)
    loss = F.binary_cross_entropy_with_logits(fracture, labels)
    positive = labels > 0
    if types is not None and bool(positive.any()):
        type_targets = batch.labels[index.to(fracture.device)][positive] - 1
        loss = loss + F.cross_entropy(types[positive], type_targets)
    return loss


OPTIONS = (  # the --option names this type reads
    "roi_size",
    "stage2_stages",
    "stage1_fraction",
    "rois_per_image",
    "mining_sensitivity",
)


register_model_type(
    "two_stage",
    ModelTypeSpec(
        feature_layer="stage1.0",
        build=TwoStageMIL,
        infer=_infer,
        training=TrainingSpec(options=OPTIONS, architecture=_architecture, loss=_loss,
                              on_epoch_start=_on_epoch_start,
                              # best.pt must hold a trained stage 2, not a stage-1-only epoch
                              selectable=lambda ctx: ctx.epoch > stage1_epochs(ctx)
                              or stage1_epochs(ctx) == ctx.epochs),
    ),
)
