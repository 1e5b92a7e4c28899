"""Spatial-transformer attention classifier, USTN (seed 000 §II.C.1, after Jaderberg et al. [12]).

A localization network regresses the warp parameters ``p`` from the image; the warp
``W_p`` (eq. 4) samples the ROI with bilinear interpolation; a classifier sees only the ROI.
Only the classification loss trains the whole (the localization is unsupervised).

Transforms (§II.C.1): ``"similarity"`` (a-STN, three parameters: isotropic scale ``s`` and
translation ``tx, ty``; theta = [[s, 0, tx], [0, s, ty]]) or ``"affine"`` (aff-STN, the six
entries of theta). The last localization layer starts at the identity, so the first crop is
the whole image and the classifier starts as the lower-bound model (§V).

Sampling uses ``align_corners=False``: the normalised coordinates -1 and 1 are the outer
edges of the image, so ``s`` is the ROI's side as a fraction of the image's whatever the
resolution, the identity warp reproduces the image exactly, and a warp to another size at
the identity is ``F.interpolate(..., mode="bilinear", align_corners=False)``. Samples that
fall outside the image read zeros, the black of the padded preprocessing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import build_backbone
from .pooling import GlobalPool

__all__ = ["TRANSFORMS", "SpatialTransformerClassifier", "box_mask", "square_roi_boxes"]

TRANSFORMS = ("similarity", "affine")
_IDENTITY = {"similarity": (1.0, 0.0, 0.0), "affine": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)}
_LOC_HIDDEN = 64  # width of the localization network's hidden fully connected layer


class SpatialTransformerClassifier(nn.Module):
    """Localization network -> warp to the ROI -> classifier of the ROI.

    Args:
        num_classes: classes of the prediction layer; class 0 is "normal".
        transform: ``"similarity"`` (a-STN) or ``"affine"`` (aff-STN).
        backbone: backbone of both the localization network and the ROI classifier, see
            :func:`models.nets.backbones.build_backbone` (each has its own weights).
        stages: residual stages of the ROI classifier's backbone.
        loc_stages: residual stages of the localization network's backbone.
        pooling: the ROI classifier's global pooling, ``"avg"``, ``"max"`` or ``"lse"``
            (Table V).
        lse_r: LSE sharpness ``r``.
        roi_size: side of the warped ROI in pixels; None keeps the input's size.
        in_channels: input channels (1 for radiographs).
    """

    def __init__(
        self,
        *,
        num_classes: int = 2,
        transform: str = "similarity",
        backbone: str = "resnet18",
        stages: int = 3,
        loc_stages: int = 2,
        pooling: str = "avg",
        lse_r: float = 10.0,
        roi_size: int | None = None,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
        if roi_size is not None and roi_size < 8:
            raise ValueError(f"roi_size must be at least 8 pixels, got {roi_size}")
        self.transform = transform
        self.roi_size = roi_size
        loc_body, loc_channels = build_backbone(backbone, in_channels=in_channels,
                                                stages=loc_stages)
        regressor = nn.Linear(_LOC_HIDDEN, len(_IDENTITY[transform]))
        nn.init.zeros_(regressor.weight)
        with torch.no_grad():
            regressor.bias.copy_(torch.tensor(_IDENTITY[transform]))
        self.localization = nn.Sequential(
            loc_body,
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(loc_channels, _LOC_HIDDEN),
            nn.ReLU(inplace=True),
            regressor,
        )
        self.features, channels = build_backbone(backbone, in_channels=in_channels,
                                                 stages=stages)
        self.pool = GlobalPool(pooling, r=lse_r)
        self.prediction = nn.Linear(channels, num_classes)

    def theta(self, x: torch.Tensor) -> torch.Tensor:
        """The warp matrices (N, 2, 3), float32, regressed from ``x`` (N, C, H, W)."""
        p = self.localization(x).float()
        if self.transform == "affine":
            return p.view(-1, 2, 3)
        s, tx, ty = p.unbind(dim=1)
        zero = torch.zeros_like(s)
        return torch.stack([s, zero, tx, zero, s, ty], dim=1).view(-1, 2, 3)

    def warp(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """The ROI images (N, C, R, R) sampled from ``x`` with ``theta`` (eq. 4)."""
        n, c, h, w = x.shape
        size = (h, w) if self.roi_size is None else (self.roi_size, self.roi_size)
        grid = F.affine_grid(theta.float(), [n, c, *size], align_corners=False)
        return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros",
                             align_corners=False)

    def classify(self, roi: torch.Tensor) -> torch.Tensor:
        """Class logits (N, num_classes) of ROI images."""
        return self.prediction(self.pool(self.features(roi)))

    def forward_with_theta(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits (N, num_classes) and the warp matrices (N, 2, 3)."""
        theta = self.theta(x)
        return self.classify(self.warp(x, theta)), theta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N, num_classes) of the ROI the network attends to."""
        return self.forward_with_theta(x)[0]

    def roi_boxes(self, x: torch.Tensor) -> torch.Tensor:
        """The attended ROI of each image as an XYXY box (N, 4) on ``x``'s grid."""
        return square_roi_boxes(self.theta(x), x.shape[-2], x.shape[-1])


def square_roi_boxes(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The axis-aligned square ROI boxes (N, 4) of warp matrices ``theta`` (N, 2, 3).

    §III: the box comes from applying the transformation to the canonical grid; for
    aff-STN, whose grid need not be axis-aligned, the nearest square is taken. Here that
    square has the grid's centre (theta's translation) and its area (side
    ``2 * sqrt(|det A|)`` in normalised units, A the 2 x 2 part), so for a similarity
    transform it is the grid itself. Boxes are in pixels with pixel centres at integers,
    (x0, y0) and (x1, y1) the first and last covered pixel centres (the manifest's and
    :func:`models.findings.extract_findings`' convention): the identity gives
    ``(0, 0, width - 1, height - 1)``. Boxes are not clipped to the image.
    """
    if theta.dim() != 3 or theta.shape[1:] != (2, 3):
        raise ValueError(f"theta must have shape (N, 2, 3), got {tuple(theta.shape)}")
    theta = theta.float()
    half = torch.linalg.det(theta[:, :, :2]).abs().sqrt()
    cx, cy = theta[:, 0, 2], theta[:, 1, 2]
    # Normalised u in [-1, 1] (image edges) -> pixel edge coordinate (u + 1) * size / 2 - 1/2;
    # the first covered pixel centre lies half a pixel inside the low edge, the last one half
    # a pixel inside the high edge.
    x0 = (cx - half + 1.0) * width / 2.0
    x1 = (cx + half + 1.0) * width / 2.0 - 1.0
    y0 = (cy - half + 1.0) * height / 2.0
    y1 = (cy + half + 1.0) * height / 2.0 - 1.0
    return torch.stack([x0, y0, x1, y1], dim=1)


def box_mask(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Soft masks (N, height, width) in [0, 1]: each pixel's area covered by its box.

    ``boxes`` (N, 4) XYXY in the convention of :func:`square_roi_boxes`: the box covers
    the pixel area from ``x0 - 1/2`` to ``x1 + 1/2`` (and the same in y), so pixels fully
    inside are 1, pixels cut by an edge hold the covered fraction, the others 0.
    """
    boxes = boxes.float()
    xs = torch.arange(width, device=boxes.device, dtype=torch.float32)
    ys = torch.arange(height, device=boxes.device, dtype=torch.float32)

    def cover(centres: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        left = torch.maximum(centres - 0.5, lo[:, None] - 0.5)
        right = torch.minimum(centres + 0.5, hi[:, None] + 0.5)
        return (right - left).clamp(0.0, 1.0)

    cover_x = cover(xs, boxes[:, 0], boxes[:, 2])
    cover_y = cover(ys, boxes[:, 1], boxes[:, 3])
    return cover_y[:, :, None] * cover_x[:, None, :]
