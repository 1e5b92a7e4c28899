"""Input validation and binarisation shared by the preprocessing steps."""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import ArrayLike

__all__ = ["as_image", "otsu_mask", "to_uint8"]


def as_image(img: ArrayLike, *, name: str = "img") -> np.ndarray:
    """A finite 2-D float32 array (a copy only when a conversion is needed)."""
    arr = np.asarray(img)
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, columns), got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} contains non-finite values")
    return out


def to_uint8(img01: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 (values outside [0, 1] are clipped)."""
    return np.rint(np.clip(img01, 0.0, 1.0) * 255.0).astype(np.uint8)


def otsu_mask(img01: np.ndarray) -> np.ndarray:
    """Seed 004 §4.2.2.3: Otsu binarisation (OpenCV, on 8 bits); uint8 mask with 1 = foreground.

    A constant image has no foreground.
    """
    u8 = to_uint8(img01)
    if int(u8.min()) == int(u8.max()):
        return np.zeros(u8.shape, dtype=np.uint8)
    _, mask = cv2.threshold(u8, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return mask
