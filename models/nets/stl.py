"""Self-transfer learning network (seed 000 §II.C.2, after Hwang & Kim [14]).

Shared convolutional layers feed two branches: a classification branch ``f`` (fully
connected layers and dropout) and a localization branch ``g`` (convolutions down to C score
maps and global average pooling). Both output C logits and are trained jointly with
eq. 6, see :func:`stl_alpha`. The paper feeds the shared layers slightly larger inputs than
a usual ConvNet (500 px) "to create larger activation maps"; here the input size is the
model's ``input_size`` and the map size is set by how many backbone ``stages`` are kept
(stride 8 or 16 instead of 32 keeps the score maps large).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import build_backbone

__all__ = ["SelfTransferNet", "stl_alpha"]


class SelfTransferNet(nn.Module):
    """Shared trunk -> classification branch (FC + dropout) and localization branch (maps).

    Args:
        num_classes: C, classes of both branches; class 0 is "normal".
        backbone: the shared layers, see :func:`models.nets.backbones.build_backbone`.
        stages: residual stages kept in a ResNet backbone.
        hidden_features: width of the classification branch's hidden fully connected layer.
        dropout: dropout probability before the classification branch's last layer.
        pooled_grid: the shared maps are average-pooled to ``pooled_grid`` x ``pooled_grid``
            before the fully connected layers, so any input size gives the same weights.
        loc_channels: width of the localization branch's 3x3 convolution.
        in_channels: input channels (1 for radiographs).
    """

    def __init__(
        self,
        *,
        num_classes: int = 2,
        backbone: str = "resnet18",
        stages: int = 3,
        hidden_features: int = 256,
        dropout: float = 0.5,
        pooled_grid: int = 4,
        loc_channels: int = 256,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        if pooled_grid < 1 or hidden_features < 1 or loc_channels < 1:
            raise ValueError("pooled_grid, hidden_features and loc_channels must be positive")
        self.shared, channels = build_backbone(backbone, in_channels=in_channels, stages=stages)
        self.classification = nn.Sequential(
            nn.AdaptiveAvgPool2d(pooled_grid),
            nn.Flatten(),
            nn.Linear(channels * pooled_grid * pooled_grid, hidden_features),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden_features, num_classes),
        )
        self.localization = nn.Sequential(
            nn.Conv2d(channels, loc_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(loc_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(loc_channels, num_classes, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classification-branch logits (N, C): the model's prediction."""
        return self.classification(self.shared(x))

    def forward_branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Classification logits (N, C) and localization logits (N, C).

        The localization logits are the global average of the score maps (§II.C.2).
        """
        maps = self.shared(x)
        return self.classification(maps), self.localization(maps).mean(dim=(2, 3))

    def forward_with_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Classification logits (N, C) and the localization score maps (N, C, H, W).

        The score maps are upsampled bilinearly to the input size (§III).
        """
        maps = self.shared(x)
        scores = F.interpolate(self.localization(maps), size=x.shape[-2:], mode="bilinear",
                               align_corners=False)
        return self.classification(maps), scores


def stl_alpha(alpha: float, progress: float, switch: float) -> float:
    """The weight of the localization loss in eq. 6 at ``progress`` (fraction of training).

    §II.C.2: alpha "is initially kept small" so the shared filters learn to classify; "when
    reaching convergence" it is complemented to ``1 - alpha`` to focus on the localizer.
    Convergence is taken to be the fraction ``switch`` of the schedule: the result is
    ``alpha`` while ``progress < switch``, then ``1 - alpha``. ``switch = 1`` keeps alpha
    fixed, as in Table III's runs at alpha = 0 and 1.
    """
    for name, value in (("alpha", alpha), ("progress", progress), ("switch", switch)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
    return alpha if progress < switch else 1.0 - alpha
