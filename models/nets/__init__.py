"""Network architectures of the seed papers."""

from .backbones import BACKBONES, build_backbone
from .global_pool import GlobalPoolClassifier, fracture_heatmap
from .pooling import GlobalPool, lse_pool

__all__ = [
    "BACKBONES",
    "GlobalPool",
    "GlobalPoolClassifier",
    "build_backbone",
    "fracture_heatmap",
    "lse_pool",
]
