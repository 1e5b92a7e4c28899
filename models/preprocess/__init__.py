"""DICOM preprocessing for fracture models (seed 004 §4.2, §6.2.2.1).

Each step is a function on arrays; every geometric step returns the :class:`Affine2D` from
its input to its output pixel grid ((x, y) = (column, row), centre of the top-left pixel at
(0, 0)), so model outputs map back onto the stored pixel grid.
"""

from .affine import Affine2D
from .body_part import CANONICAL_BODY_PARTS, UNKNOWN, body_part_of, normalise_body_part
from .dicom import (
    DEFAULT_MAX_PIXELS,
    ImageTooLargeError,
    PreprocessError,
    apply_window,
    corner_mean,
    looks_inverted,
    pixels_from_dataset,
    to_bone_bright,
)
from .geometry import (
    align_rotation,
    pad_resize,
    principal_angle,
    resize,
    split_anatomy,
    warp_to_original,
)
from .pipeline import PreparedView, prepare_array, prepare_view

__all__ = [
    "CANONICAL_BODY_PARTS",
    "DEFAULT_MAX_PIXELS",
    "UNKNOWN",
    "Affine2D",
    "ImageTooLargeError",
    "PreparedView",
    "PreprocessError",
    "align_rotation",
    "apply_window",
    "body_part_of",
    "corner_mean",
    "looks_inverted",
    "normalise_body_part",
    "pad_resize",
    "pixels_from_dataset",
    "prepare_array",
    "prepare_view",
    "principal_angle",
    "resize",
    "split_anatomy",
    "to_bone_bright",
    "warp_to_original",
]
