"""Network architectures of the seed papers."""

from .backbones import BACKBONES, build_backbone
from .global_pool import GlobalPoolClassifier, fracture_heatmap
from .localize_classify import LocalizerClassifier
from .mvcnn import MultiViewClassifier, view_max_pool
from .pooling import GlobalPool, lse_pool
from .stl import SelfTransferNet, stl_alpha
from .stn import SpatialTransformerClassifier, square_roi_boxes
from .two_stage import TwoStageMIL
from .window_fpn import WindowFPN

__all__ = [
    "BACKBONES",
    "GlobalPool",
    "GlobalPoolClassifier",
    "LocalizerClassifier",
    "MultiViewClassifier",
    "SelfTransferNet",
    "SpatialTransformerClassifier",
    "TwoStageMIL",
    "WindowFPN",
    "build_backbone",
    "fracture_heatmap",
    "lse_pool",
    "square_roi_boxes",
    "stl_alpha",
    "view_max_pool",
]
