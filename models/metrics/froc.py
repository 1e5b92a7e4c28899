"""FROC evaluation of point-annotated fractures (seed 003, "Evaluation Metrics").

Rules, applied at each operating point (heatmap threshold):

* an annotation point is recalled if it lies inside (edges included) any predicted box;
* a box is a false positive if fewer than ``min_overlap`` of its pixels lie in the union of
  disks of radius ``radius`` around that image's points. The box is rasterised on the pixel
  grid (pixel centres at integer coordinates): it covers the pixels whose centres lie inside
  it, and a pixel is in a disk if its centre is within ``radius`` (inclusive) of the point.
  On an image without points every box is a false positive, as is a box covering no pixel
  centre;
* FP rate = false positives / number of images; recall = recalled points / all points;
* recall at rate ``f`` = the highest recall over operating points with FP rate <= ``f``
  (0.0 if there is none); FROC score = mean recall at ``fp_rates`` (0.1 ... 0.5).

Rates and fractions are compared with a slack of 1e-12.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from ._validate import EPS, Box, check_box, check_point
from .boxes import heatmap_boxes

NAN = float("nan")

#: FP-per-image rates averaged by the seed 003 FROC score.
SEED003_FP_RATES: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)

Point = tuple[float, float]


def _pixel_span(lo: float, hi: float) -> tuple[int, int]:
    """Integer pixel centres inside ``[lo, hi]`` as an inclusive range (empty if first > last)."""
    return math.ceil(lo), math.floor(hi)


def _disk_pixels_in_box(box: Box, points: Sequence[Point], radius: float) -> int:
    """Number of pixels covered by ``box`` whose centre lies in some disk around ``points``."""
    bx0, bx1 = _pixel_span(box[0], box[2])
    by0, by1 = _pixel_span(box[1], box[3])
    # Crop the box to the squares enclosing the disks so the mask stays small.
    squares = []
    for cx, cy in points:
        sx0, sx1 = _pixel_span(cx - radius, cx + radius)
        sy0, sy1 = _pixel_span(cy - radius, cy + radius)
        sx0, sx1, sy0, sy1 = max(sx0, bx0), min(sx1, bx1), max(sy0, by0), min(sy1, by1)
        if sx0 <= sx1 and sy0 <= sy1:
            squares.append((cx, cy, sx0, sx1, sy0, sy1))
    if not squares:
        return 0
    rx0 = min(s[2] for s in squares)
    ry0 = min(s[4] for s in squares)
    rx1 = max(s[3] for s in squares)
    ry1 = max(s[5] for s in squares)
    mask = np.zeros((ry1 - ry0 + 1, rx1 - rx0 + 1), dtype=bool)
    r2 = radius * radius
    for cx, cy, sx0, sx1, sy0, sy1 in squares:
        dx2 = (np.arange(sx0, sx1 + 1, dtype=np.float64) - cx) ** 2
        dy2 = (np.arange(sy0, sy1 + 1, dtype=np.float64) - cy) ** 2
        mask[sy0 - ry0 : sy1 - ry0 + 1, sx0 - rx0 : sx1 - rx0 + 1] |= (
            dy2[:, None] + dx2[None, :] <= r2
        )
    return int(mask.sum())


def is_false_positive(
    box: Sequence[float],
    points: Sequence[Sequence[float]],
    *,
    radius: float = 50.0,
    min_overlap: float = 0.1,
) -> bool:
    """Seed 003 rule: True if less than ``min_overlap`` of the box's pixels lie in the disks."""
    b = check_box(box, "box")
    pts = [check_point(p, f"points[{j}]") for j, p in enumerate(points)]
    return _is_fp(b, pts, float(radius), float(min_overlap))


def _is_fp(box: Box, points: Sequence[Point], radius: float, min_overlap: float) -> bool:
    x0, x1 = _pixel_span(box[0], box[2])
    y0, y1 = _pixel_span(box[1], box[3])
    area = max(0, x1 - x0 + 1) * max(0, y1 - y0 + 1)
    if area == 0 or not points:
        return True
    return _disk_pixels_in_box(box, points, radius) / area < min_overlap - EPS


def _inside(point: Point, box: Box) -> bool:
    x, y = point
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


def _check_options(radius: float, min_overlap: float, fp_rates: Sequence[float]) -> list[float]:
    if not (math.isfinite(radius) and radius >= 0):
        raise ValueError(f"radius must be a finite number >= 0, got {radius}")
    if not 0.0 <= min_overlap <= 1.0:
        raise ValueError(f"min_overlap must lie in [0, 1], got {min_overlap}")
    rates = [float(f) for f in fp_rates]
    if not rates:
        raise ValueError("fp_rates is empty")
    if not all(math.isfinite(f) and f >= 0 for f in rates):
        raise ValueError(f"fp_rates must be finite and >= 0, got {rates}")
    return rates


def _recall_at(curve: Sequence[tuple[float, float, float]], rate: float) -> float:
    recalls = [r for fp, r, _ in curve if fp <= rate + EPS]
    return max(recalls) if recalls else 0.0


def froc(
    per_image_boxes: Sequence[Mapping[float, Sequence[Sequence[float]]]],
    per_image_points: Sequence[Sequence[Sequence[float]]],
    *,
    radius: float = 50.0,
    min_overlap: float = 0.1,
    fp_rates: Sequence[float] = SEED003_FP_RATES,
) -> dict[str, object]:
    """Seed 003 FROC over images; see the module docstring for the exact rules.

    Parameters
    ----------
    per_image_boxes: per image, ``{threshold: [box, ...]}``; every image must list the same
        thresholds (use an empty list where nothing was detected).
    per_image_points: per image, the annotated fracture points ``[[x, y], ...]`` (may be empty).
    radius: disk radius in pixels around each point (seed 003: 50).
    min_overlap: minimum fraction of a box's pixels inside the disks (seed 003: 0.1).
    fp_rates: FP-per-image rates averaged by the FROC score.

    Returns
    -------
    ``{"froc_score": float, "recall_at_0.1fp": float, "recall_at_fp": {f"{f:g}": float},
    "curve": [(fp_per_image, recall, threshold), ...]}`` with the curve in decreasing threshold
    order. Recall values are NaN when there is no point at all (recall is undefined).

    Raises
    ------
    ValueError: no image, mismatched lengths, no thresholds, images with different thresholds,
        malformed boxes or points, bad options.
    """
    n = len(per_image_boxes)
    if n == 0:
        raise ValueError("per_image_boxes is empty: froc needs at least one image")
    if len(per_image_points) != n:
        raise ValueError(
            f"per_image_boxes has {n} images but per_image_points has {len(per_image_points)}"
        )
    radius, min_overlap = float(radius), float(min_overlap)
    rates = _check_options(radius, min_overlap, fp_rates)
    thresholds = set(per_image_boxes[0])
    if not thresholds:
        raise ValueError("per_image_boxes[0] has no thresholds")
    if any(math.isnan(float(t)) for t in thresholds):
        raise ValueError("thresholds must not be NaN")
    for i, image in enumerate(per_image_boxes):
        if set(image) != thresholds:
            raise ValueError(
                f"per_image_boxes[{i}] thresholds {sorted(image)} differ from image 0's "
                f"{sorted(thresholds)}"
            )
    points = [
        [check_point(p, f"per_image_points[{i}][{j}]") for j, p in enumerate(pts)]
        for i, pts in enumerate(per_image_points)
    ]
    n_points = sum(len(p) for p in points)

    curve: list[tuple[float, float, float]] = []
    for t in sorted(thresholds, reverse=True):
        false_positives = 0
        recalled = 0
        for i, image in enumerate(per_image_boxes):
            boxes = [
                check_box(b, f"per_image_boxes[{i}][{t}][{k}]") for k, b in enumerate(image[t])
            ]
            recalled += sum(any(_inside(p, b) for b in boxes) for p in points[i])
            false_positives += sum(_is_fp(b, points[i], radius, min_overlap) for b in boxes)
        recall = recalled / n_points if n_points else NAN
        curve.append((false_positives / n, recall, float(t)))

    def recall_at(rate: float) -> float:
        return _recall_at(curve, rate) if n_points else NAN

    at_rates = {f"{f:g}": recall_at(f) for f in rates}
    return {
        "froc_score": sum(at_rates.values()) / len(at_rates),
        "recall_at_0.1fp": recall_at(0.1),
        "recall_at_fp": at_rates,
        "curve": curve,
    }


def froc_from_heatmaps(
    heatmaps: Sequence[ArrayLike],
    points: Sequence[Sequence[Sequence[float]]],
    thresholds: Sequence[float],
    *,
    radius: float = 50.0,
    min_overlap: float = 0.1,
    fp_rates: Sequence[float] = SEED003_FP_RATES,
) -> dict[str, object]:
    """:func:`froc` of the boxes :func:`heatmap_boxes` finds in each heatmap at each threshold.

    Heatmaps must be on the same pixel grid as their points. Raises ValueError for no
    thresholds, NaN or repeated thresholds, and whatever :func:`froc` rejects.
    """
    if len(heatmaps) == 0:
        raise ValueError("heatmaps is empty: froc needs at least one image")
    levels = [float(t) for t in thresholds]
    if not levels:
        raise ValueError("thresholds is empty")
    if any(math.isnan(t) for t in levels) or len(set(levels)) != len(levels):
        raise ValueError(f"thresholds must be distinct numbers, got {levels}")
    per_image = [{t: heatmap_boxes(h, t) for t in levels} for h in heatmaps]
    return froc(per_image, points, radius=radius, min_overlap=min_overlap, fp_rates=fp_rates)
