"""ResNet + FPN with dense fracture probability maps at four scales (seed 003 §3).

Seed 003 "Network Architecture": a ResNet-50 bottom-up path of four blocks, an FPN top-down
path that upsamples and fuses them, and a 1x1 convolution that turns every pyramid level into
a dense fracture probability map. Every annotation point supervises all four levels (the
Window Loss, :mod:`models.zoo.window_fpn`); at inference the four maps are upsampled to the
input and averaged (:meth:`WindowFPN.probability_map`).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

from .backbones import build_backbone

__all__ = ["WindowFPN"]

LEVELS = 4


def _stage_channels(stage: nn.Module) -> int:
    """Output channels of a torchvision ResNet stage: those of its last batch norm (bn3 of
    the last Bottleneck, bn2 of the last BasicBlock; only the first block downsamples)."""
    norms = [m for m in stage.modules() if isinstance(m, nn.BatchNorm2d)]
    return int(norms[-1].num_features)


class WindowFPN(nn.Module):
    """ResNet bottom-up path, FPN top-down path, one 1x1 probability head for all levels.

    Args:
        backbone: a ResNet of :data:`models.nets.backbones.BACKBONES` (``"resnet50"`` in the
            paper); randomly initialised.
        fpn_channels: channels of every FPN level (256 in Lin et al. 2017, cited by §3).
        in_channels: input channels (1 for radiographs).

    Raises:
        ValueError: for a backbone that is not a ResNet or non-positive ``fpn_channels``.
    """

    def __init__(
        self,
        *,
        backbone: str = "resnet50",
        fpn_channels: int = 256,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if not backbone.startswith("resnet"):
            raise ValueError(f"window_fpn needs a ResNet backbone (seed 003 §3), got {backbone!r}")
        if fpn_channels < 1:
            raise ValueError(f"fpn_channels must be positive, got {fpn_channels}")
        body, _ = build_backbone(backbone, in_channels=in_channels, stages=LEVELS)
        # build_backbone's body is (conv1, bn1, relu, maxpool, layer1, ..., layer4).
        parts = list(body.children())
        self.stem = nn.Sequential(*parts[:4])
        self.stages = nn.ModuleList(parts[4:])
        self.fpn = FeaturePyramidNetwork([_stage_channels(s) for s in self.stages], fpn_channels)
        # "a 1x1 convolution" shared by the four levels, which live in one FPN feature space.
        self.head = nn.Conv2d(fpn_channels, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of the fracture probability maps, finest level first.

        Returns four tensors (N, 1, H/4, W/4), (N, 1, H/8, W/8), ... (strides 4 to 32).
        """
        features: OrderedDict[str, torch.Tensor] = OrderedDict()
        x = self.stem(x)
        for k, stage in enumerate(self.stages):
            x = stage(x)
            features[f"c{k + 2}"] = x
        return [self.head(level) for level in self.fpn(features).values()]

    def probability_map(self, x: torch.Tensor) -> torch.Tensor:
        """The ensembled map (N, H, W) in [0, 1]: the mean of the four level maps (σ of the
        logits) upsampled bilinearly to the input (seed 003 §3, inference)."""
        maps = [
            F.interpolate(torch.sigmoid(z.float()), size=x.shape[-2:], mode="bilinear",
                          align_corners=False)
            for z in self(x)
        ]
        return torch.stack(maps).mean(dim=0)[:, 0]
