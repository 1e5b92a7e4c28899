"""``localize_classify``: supervised ROI localizer + ROI classifier with Grad-CAM.

Seed 000 §II.B "Sup.+UBM" (Fig. 2b) and seed 002's localizer + classifier: a localizer
regresses the anatomical ROI box, the view is cropped there and a classifier labels the
crop. Label sets: ``binary``; ``ao`` (normal / A / B, seed 000's 3-class setting; its
6-class A1..B3 setting needs subtype labels the data sets do not carry, the network itself
takes any ``num_classes``); ``garden`` (normal / Garden I-II / Garden III-IV, seed 002).

Training loss (:func:`_loss`), per batch::

    L = WCE(f(crop), y) + loc_weight * L_sloc

``WCE`` is seed 000 eq. 1-2 (``LossContext.class_weights`` when enabled) on the crop taken
at the **true** ROI where the view has one (teacher forcing: seed 000 trains the UBM and
seed 002 its classifier on annotated ROIs) and at the predicted ROI otherwise; ``L_sloc`` is
seed 000 eq. 3 over the views with a known ROI. The crop is detached from the localizer
(``roi_align`` gives no box gradient) and the networks share no weights, so the sum trains
the two independent tasks of seed 000 at once; ``loc_weight`` (``--option loc_weight=``,
default 1) only scales the localizer's gradients. ``--option roi_size=`` sets the crop side
(default half the input size).

Inference (:func:`_infer`): crop at the predicted ROI, softmax of the classifier. The
heatmap is Grad-CAM (seed 002 "Learning Visualizations", Fig. 3) on the crop through the
``grad-cam`` package (``pytorch_grad_cam``), for the fracture log-odds, scaled to the view's
fracture probability and pasted back into the input grid at the predicted ROI (0 elsewhere).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..nets.localize_classify import LocalizerClassifier, params_to_box, paste_roi_maps, roi_l2
from ..registry import ModelTypeSpec, register_model_type
from ..supervision import LossContext, TrainBatch, TrainingSpec

if TYPE_CHECKING:
    from ..train import TrainConfig

__all__: list[str] = []


def _fracture_log_odds(logits: torch.Tensor) -> torch.Tensor:
    """Grad-CAM target: log P(any fracture class) - log P(normal) of one view's logits."""
    return torch.logsumexp(logits[..., 1:], dim=-1) - logits[..., 0]


def _roi_grad_cam(
    network: LocalizerClassifier, crops: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Classifier logits (N, C) and Grad-CAM maps (N, R, R) in [0, 1] of ROI crops.

    The maps weight the last convolutional stage of the classifier by the spatially averaged
    gradients of the fracture log-odds (Selvaraju et al., cited by seed 002), each map
    min-max normalised by ``pytorch_grad_cam``. Needs autograd enabled.
    """
    classifier = network.classifier
    was_training = classifier.training
    # Imported here: pytorch-grad-cam pulls in matplotlib and more (~1 s per process).
    from pytorch_grad_cam import GradCAM

    cam = GradCAM(model=classifier, target_layers=[classifier.features])
    try:
        maps = cam(input_tensor=crops, targets=[_fracture_log_odds] * len(crops))
        logits = cam.outputs.detach()
    finally:
        cam.activations_and_grads.release()
        classifier.zero_grad(set_to_none=True)
        classifier.train(was_training)
    return logits, torch.from_numpy(maps).to(crops.device)


def _infer(network: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities (N, C) and input-grid heatmaps (N, S, S) (registry contract).

    Runs with autograd on even when called under ``torch.inference_mode`` (Grad-CAM needs
    gradients): the batch is cloned into a normal tensor first.
    """
    if not isinstance(network, LocalizerClassifier):
        raise TypeError(f"localize_classify expects a LocalizerClassifier, "
                        f"got {type(network).__name__}")
    with torch.inference_mode(False), torch.enable_grad():
        images = batch.clone()
        with torch.no_grad():
            boxes = network.predict_boxes(images)
            crops = network.crop(images, boxes)
        logits, roi_maps = _roi_grad_cam(network, crops)
        probs = torch.softmax(logits.float(), dim=1)
        roi_maps = roi_maps * (1.0 - probs[:, 0])[:, None, None]
        heatmaps = paste_roi_maps(roi_maps, boxes, images.shape[-1])
    return probs, heatmaps.clamp(0.0, 1.0)


def _architecture(config: TrainConfig, num_classes: int) -> dict[str, Any]:
    return {
        "num_classes": num_classes,
        "backbone": config.backbone,
        "stages": config.stages,
        "roi_size": int(config.options.get("roi_size", config.input_size // 2)),
        "in_channels": 1,
    }


def _loss(network: nn.Module, batch: TrainBatch, ctx: LossContext) -> torch.Tensor:
    """``WCE(f(crop), y) + loc_weight * L_sloc`` (see the module docstring)."""
    if not isinstance(network, LocalizerClassifier):
        raise TypeError(f"localize_classify expects a LocalizerClassifier, "
                        f"got {type(network).__name__}")
    size = batch.images.shape[-1]
    params = network.localize(batch.images).float()
    l_sloc = roi_l2(params, batch.rois, size)
    known = ~torch.isnan(batch.rois).any(dim=1, keepdim=True)
    boxes = torch.where(known, batch.rois, params_to_box(params.detach(), size))
    logits = network.classifier(network.crop(batch.images, boxes))
    wce = F.cross_entropy(logits.float(), batch.labels, weight=ctx.class_weights)
    return wce + ctx.option("loc_weight", 1.0) * l_sloc


OPTIONS = (  # the --option names this type reads
    "roi_size",
    "loc_weight",
)


register_model_type(
    "localize_classify",
    ModelTypeSpec(
        feature_layer="localizer.features",
        build=LocalizerClassifier,
        infer=_infer,
        training=TrainingSpec(options=OPTIONS, architecture=_architecture, loss=_loss),
    ),
)
