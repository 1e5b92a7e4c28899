"""Input checks shared by the metric modules (private)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

#: Slack for comparing rates with their targets (1 - 0.05 is not exactly 0.95 in binary floats).
EPS = 1e-12

Box = list[float]


def binary_labels(y_true: ArrayLike, name: str = "y_true") -> np.ndarray:
    """Return ``y_true`` as a 1-D int array of 0/1; raise ValueError if empty or not binary."""
    arr = np.asarray(y_true)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: metrics need at least one sample")
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"{name} must hold numbers or booleans, got dtype {arr.dtype}")
    bad = ~np.isin(arr, (0, 1))
    if bad.any():
        raise ValueError(f"{name} must hold only 0 and 1, found {arr[bad][0]!r}")
    return arr.astype(np.int64)


def finite_scores(y_score: ArrayLike, n: int, name: str = "y_score") -> np.ndarray:
    """Return ``y_score`` as a 1-D float64 array of length ``n`` with finite values."""
    arr = np.asarray(y_score, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size != n:
        raise ValueError(f"{name} has {arr.size} values but y_true has {n}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def check_box(box: Sequence[float], name: str) -> Box:
    """Return ``box`` as ``[x0, y0, x1, y1]`` floats; raise ValueError unless finite and ordered."""
    try:
        values = [float(v) for v in box]
    except TypeError as exc:
        raise TypeError(f"{name} must be a sequence of 4 numbers, got {box!r}") from exc
    if len(values) != 4:
        raise ValueError(f"{name} must have 4 values [x0, y0, x1, y1], got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} has non-finite coordinates: {values}")
    x0, y0, x1, y1 = values
    if x0 > x1 or y0 > y1:
        raise ValueError(f"{name} must satisfy x0 <= x1 and y0 <= y1, got {values}")
    return values


def check_point(point: Sequence[float], name: str) -> tuple[float, float]:
    """Return ``point`` as finite ``(x, y)``; raise ValueError otherwise."""
    try:
        values = [float(v) for v in point]
    except TypeError as exc:
        raise TypeError(f"{name} must be a sequence [x, y], got {point!r}") from exc
    if len(values) != 2 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} must be 2 finite numbers [x, y], got {values}")
    return values[0], values[1]
