"""Global pooling classifier with class activation maps (seed 000 §II.C.3).

The lower-bound model of seed 000 and the CheXNet-GAP / Wang-LSE baselines of seed 001
Table 1 and seed 003 Table 1: a ConvNet, a transition layer, a global pooling layer (AVG,
MAX or LSE) and a prediction layer. The heatmap is the prediction layer's weights convolved
with the transition layer's maps (the CAM), so localisation comes for free.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import build_backbone
from .pooling import GlobalPool

__all__ = ["GlobalPoolClassifier"]


class GlobalPoolClassifier(nn.Module):
    """Backbone -> transition layer -> global pooling -> prediction layer; CAM heatmaps.

    Args:
        num_classes: classes of the prediction layer; class 0 is "normal".
        backbone: see :func:`models.nets.backbones.build_backbone`.
        stages: residual stages kept in a ResNet backbone.
        pooling: ``"avg"``, ``"max"`` or ``"lse"``.
        lse_r: LSE sharpness ``r``.
        transition_channels: ``D``, the unified channel count of the transition layer.
        in_channels: input channels (1 for radiographs).
    """

    def __init__(
        self,
        *,
        num_classes: int = 2,
        backbone: str = "resnet18",
        stages: int = 4,
        pooling: str = "lse",
        lse_r: float = 10.0,
        transition_channels: int = 256,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.features, channels = build_backbone(backbone, in_channels=in_channels, stages=stages)
        # Transition layer (§II.C.3 1): maps the backbone maps to S x S x D.
        self.transition = nn.Sequential(
            nn.Conv2d(channels, transition_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(transition_channels),
            nn.ReLU(inplace=True),
        )
        self.pool = GlobalPool(pooling, r=lse_r)
        self.prediction = nn.Linear(transition_channels, num_classes)

    def transition_maps(self, x: torch.Tensor) -> torch.Tensor:
        return self.transition(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N, C)."""
        return self.prediction(self.pool(self.transition_maps(x)))

    def forward_with_cam(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits (N, C) and class activation maps (N, C, H, W) at the input size.

        The maps are the prediction weights applied at every position of the transition
        maps (plus the bias), upsampled bilinearly to the input (seed 000 §III).
        """
        maps = self.transition_maps(x)
        logits = self.prediction(self.pool(maps))
        cams = torch.einsum("cd,ndhw->nchw", self.prediction.weight, maps)
        cams = cams + self.prediction.bias.view(1, -1, 1, 1)
        cams = F.interpolate(cams, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits, cams


def fracture_heatmap(cams: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
    """Per-pixel fracture evidence (N, H, W) in [0, 1] from class maps and image probabilities.

    ``cams`` (N, C, H, W) are the class activation maps (§II.C.3; class 0 is normal) and
    ``probabilities`` (N, C) the image's softmax. The map is the CAM fracture log-odds
    ``d = logsumexp(M_1..M_C-1) - M_0``, normalised as seed 000 §III normalises CAMs before
    thresholding them, and scaled by the image's fracture probability ``p``:
    ``p * clip((d - median d) / (max d - median d), 0, 1)``.

    So the map peaks at the CAM peak with the value ``p``: a view the model calls normal gets
    a faint map and no finding above 0.5, and a positive view keeps only the regions that rise
    well above its median evidence. (A per-pixel softmax instead is ~1 wherever the normal map
    is low, on normal views too: max pooling leaves most of the map unconstrained.) The median,
    not the minimum, is the floor because the minimum sits in padding or collimation. A flat
    map carries no location and gives zeros.
    """
    d = torch.logsumexp(cams[:, 1:], dim=1) - cams[:, 0]
    # Row by row: median(dim=) also returns indices, which CUDA cannot make deterministic.
    floor = torch.stack([row.median() for row in d.flatten(1)]).view(-1, 1, 1)
    peak = d.amax(dim=(1, 2), keepdim=True)
    scaled = ((d - floor) / (peak - floor).clamp_min(1e-6)).clamp(0.0, 1.0)
    return (1.0 - probabilities[:, 0]).view(-1, 1, 1) * scaled
