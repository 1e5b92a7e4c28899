"""Supervised ROI localizer and ROI classifier (seed 000 §II.B "Sup.+UBM"; seed 002).

Two independent networks (seed 000 Fig. 2b): the localizer ``g`` regresses the anatomical
ROI box (femoral head/neck, distal radius) from the whole view with the L2 loss of seed 000
eq. 3; the view is cropped at that box and resized to a fixed ROI size (seed 000's warping
``W_p``; seed 002 "Data Annotation and Model Development": localizer crops, downscaled
256 x 256 classifier inputs) and the classifier ``f`` (the UBM of §II.A) labels the crop.

Boxes are XYXY on the input grid in pixel-centre coordinates (centre of the top-left pixel
at (0, 0)) and inclusive: a box ``(x0, y0, x1, y1)`` covers the pixels ``x0..x1`` and so
the extent ``[x0 - 1/2, x1 + 1/2]``. The localizer works in normalised parameters
``p = (cx, cy, w, h)``: centre and size of that extent as fractions of the image side
(seed 000 §II regresses ``p = {t_r, t_c, s}``; ours has separate width and height because
the data's ROI boxes are not square).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from .backbones import build_backbone

__all__ = [
    "LocalizerClassifier",
    "box_to_params",
    "crop_rois",
    "params_to_box",
    "paste_roi_maps",
    "roi_l2",
]

# The localizer starts from a centred box of 0.9 x the image side, so the classifier sees
# (nearly) the whole view until the localizer has learned (as seed 000 §V starts its STN).
_INITIAL_PARAMS = (0.5, 0.5, 0.9, 0.9)


def box_to_params(boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Normalised ``(cx, cy, w, h)`` (..., 4) of XYXY pixel-centre boxes on a ``size`` grid."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1 + 1) / (2 * size), (y0 + y1 + 1) / (2 * size),
                        (x1 - x0 + 1) / size, (y1 - y0 + 1) / size], dim=-1)


def params_to_box(params: torch.Tensor, size: int) -> torch.Tensor:
    """XYXY pixel-centre boxes (..., 4) of normalised ``(cx, cy, w, h)`` (inverse of
    :func:`box_to_params`)."""
    cx, cy, w, h = params.unbind(-1)
    return torch.stack([(cx - w / 2) * size, (cy - h / 2) * size,
                        (cx + w / 2) * size - 1, (cy + h / 2) * size - 1], dim=-1)


def roi_l2(params: torch.Tensor, rois: torch.Tensor, size: int) -> torch.Tensor:
    """Seed 000 eq. 3, ``1/2 ||p - p_hat||^2`` on normalised parameters, mean over views.

    Args:
        params: predicted ``(cx, cy, w, h)`` (N, 4).
        rois: true XYXY boxes (N, 4) on the ``size`` grid; rows with a NaN (unknown ROI)
            are left out.

    Returns:
        The mean over views with a known ROI; 0 when there is none.
    """
    known = ~torch.isnan(rois).any(dim=-1)
    if not bool(known.any()):
        return params.new_zeros(())
    target = box_to_params(rois[known], size)
    return 0.5 * ((params[known] - target) ** 2).sum(dim=-1).mean()


def crop_rois(images: torch.Tensor, boxes: torch.Tensor, roi_size: int) -> torch.Tensor:
    """The ROI of each image, bilinearly resampled to ``roi_size`` x ``roi_size``.

    ``roi_align`` averages an adaptive number of samples per output pixel, so shrinking a
    box is area averaging and a box of exactly ``roi_size`` pixels is a plain slice.

    Args:
        images: (N, C, S, S).
        boxes: (N, 4) XYXY pixel-centre boxes, one per image (no gradient flows into them).

    Returns:
        (N, C, roi_size, roi_size).
    """
    extent = torch.cat([boxes[:, :2] - 0.5, boxes[:, 2:] + 0.5], dim=1)
    index = torch.arange(len(boxes), device=boxes.device, dtype=extent.dtype)[:, None]
    rois = torch.cat([index, extent], dim=1).to(images.dtype)
    return roi_align(images, rois, output_size=roi_size, spatial_scale=1.0,
                     sampling_ratio=-1, aligned=False)


def paste_roi_maps(maps: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Maps on ROI crops (N, R, R) put back on the ``size`` input grid at ``boxes``.

    The inverse of :func:`crop_rois`: each input pixel whose centre lies in its box's extent
    reads the crop bilinearly; pixels outside the box are 0.

    Returns:
        (N, size, size).
    """
    coords = torch.arange(size, device=maps.device, dtype=maps.dtype)
    lo = boxes[:, :2].to(maps.dtype) - 0.5
    hi = boxes[:, 2:].to(maps.dtype) + 0.5
    # grid_sample's normalised coordinates: -1 and 1 are the outer edges of the crop.
    gx = 2 * (coords[None, :] - lo[:, :1]) / (hi[:, :1] - lo[:, :1]) - 1  # (N, S)
    gy = 2 * (coords[None, :] - lo[:, 1:]) / (hi[:, 1:] - lo[:, 1:]) - 1
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
    pasted = F.grid_sample(maps[:, None], grid, mode="bilinear", padding_mode="border",
                           align_corners=False)[:, 0]
    inside = (gx.abs() <= 1)[:, None, :] & (gy.abs() <= 1)[:, :, None]
    return pasted * inside


class _RoiRegressor(nn.Module):
    """Backbone -> global average pool -> 4 sigmoid outputs ``(cx, cy, w, h)``."""

    def __init__(self, backbone: str, stages: int, in_channels: int) -> None:
        super().__init__()
        self.features, channels = build_backbone(backbone, in_channels=in_channels,
                                                 stages=stages)
        self.head = nn.Linear(channels, 4)
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            self.head.bias.copy_(torch.logit(torch.tensor(_INITIAL_PARAMS)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return torch.sigmoid(self.head(pooled))


class _CropClassifier(nn.Module):
    """Backbone -> global average pool -> class logits; ``features`` ends in the last
    convolutional stage, the Grad-CAM layer (seed 002 "Learning Visualizations")."""

    def __init__(self, num_classes: int, backbone: str, stages: int, in_channels: int) -> None:
        super().__init__()
        self.features, channels = build_backbone(backbone, in_channels=in_channels,
                                                 stages=stages)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class LocalizerClassifier(nn.Module):
    """ROI localizer ``g`` and ROI classifier ``f``, independent networks (seed 000 §II.B).

    ``forward`` crops every view at its predicted ROI and classifies the crop; training
    (see :mod:`models.zoo.localize_classify`) crops at the true ROI instead where it is known.

    Args:
        num_classes: classes of ``f``; class 0 is "normal" (2 binary, 3 for normal / AO A /
            AO B or normal / Garden I-II / Garden III-IV).
        backbone: see :func:`models.nets.backbones.build_backbone`, for both networks.
        stages: residual stages kept in a ResNet backbone, for both networks.
        roi_size: side of the ROI crop the classifier sees (seed 002: 256).
        in_channels: input channels (1 for radiographs).

    Raises:
        ValueError: ``num_classes`` below 2 or ``roi_size`` below 32.
    """

    def __init__(
        self,
        *,
        num_classes: int = 2,
        backbone: str = "resnet18",
        stages: int = 4,
        roi_size: int = 128,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if roi_size < 32:
            raise ValueError(f"roi_size must be at least 32, got {roi_size}")
        self.roi_size = roi_size
        self.localizer = _RoiRegressor(backbone, stages, in_channels)
        self.classifier = _CropClassifier(num_classes, backbone, stages, in_channels)

    def localize(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted ROI parameters ``(cx, cy, w, h)`` (N, 4) in (0, 1)."""
        return self.localizer(x)

    def predict_boxes(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted ROI boxes (N, 4), XYXY on the input grid, detached."""
        return params_to_box(self.localize(x).detach().float(), x.shape[-1])

    def crop(self, x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """The ROI crops (N, C, roi_size, roi_size) of ``x`` at ``boxes``."""
        return crop_rois(x, boxes, self.roi_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N, C) of the crops at the predicted ROIs."""
        return self.classifier(self.crop(x, self.predict_boxes(x)))

