"""Fracture candidates ("findings") from a heatmap, in original pixel coordinates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import cv2
import numpy as np

__all__ = ["FINDING_EXTENT", "Finding", "extract_findings", "reported_findings"]


@dataclass(frozen=True)
class Finding:
    """A fracture candidate in original pixel coordinates."""

    score: float
    point: tuple[float, float]
    box: tuple[float, float, float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "point": list(self.point),
            "box": None if self.box is None else list(self.box),
        }



# Seed 000 §III draws a CAM's boxes around the regions above 60 of its [0, 255]-normalised
# intensities: a finding's box spans the pixels connected to its peak that reach this
# fraction of the peak's value.
FINDING_EXTENT = 60.0 / 255.0


def extract_findings(heatmap: np.ndarray, threshold: float,
                     extent: float = FINDING_EXTENT) -> tuple[Finding, ...]:
    """Fracture candidates in ``heatmap``, best first.

    A finding is a connected region of ``heatmap >= threshold``; its score is the region's
    peak value and its point the peak's location (seed 003 "Evaluation metrics": components
    become boxes). Its box is the extent of the pixels connected to that peak where
    ``heatmap >= extent * score`` (:data:`FINDING_EXTENT`, seed 000 §III) and that no
    stronger finding holds, so the box covers the evidence around a peak rather than only the
    pixels above the decision threshold, and boxes of separate findings do not overlap.
    A region whose peak lies inside a stronger finding's extent is merged into it.
    """
    if not 0.0 < extent <= 1.0:
        raise ValueError(f"extent must lie in (0, 1], got {extent}")
    heat = np.ascontiguousarray(heatmap, dtype=np.float32)
    mask = (heat >= threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    peaks = []
    for label in range(1, count):
        x, y, w, h = (int(v) for v in stats[label, :4])
        window = np.where(labels[y:y + h, x:x + w] == label, heat[y:y + h, x:x + w], -1.0)
        row, col = np.unravel_index(int(np.argmax(window)), window.shape)
        peaks.append((float(window[row, col]), x + int(col), y + int(row)))
    peaks.sort(key=lambda p: -p[0])
    findings: list[Finding] = []
    # One flood-fill mask for all findings (1 px border, as cv2.floodFill wants): the cost
    # follows the size of each extent, not of the image.
    claimed = np.zeros((heat.shape[0] + 2, heat.shape[1] + 2), dtype=np.uint8)
    flags = 8 | cv2.FLOODFILL_MASK_ONLY | cv2.FLOODFILL_FIXED_RANGE | (1 << 8)
    for score, px, py in peaks:
        if claimed[py + 1, px + 1]:
            continue  # inside a stronger finding's extent
        _, _, _, (x, y, w, h) = cv2.floodFill(heat, claimed, (px, py), 0.0,
                                              loDiff=score * (1.0 - extent), upDiff=1.0,
                                              flags=flags)
        findings.append(Finding(
            score=score,
            point=(float(px), float(py)),
            box=(float(x), float(y), float(x + w - 1), float(y + h - 1)),
        ))
    return tuple(findings)


_F = TypeVar("_F")


def reported_findings(findings: Sequence[_F], probability: float | None, threshold: float,
                      max_findings: int) -> tuple[_F, ...]:
    """The findings a reader is shown: none on a view the model calls negative or did not
    analyse (boxes on a "no fracture" overlay read as findings), at most ``max_findings``
    (the strongest, ``findings`` being best first) on a positive one."""
    if max_findings < 0:
        raise ValueError(f"max_findings must be >= 0, got {max_findings}")
    if probability is None or probability < threshold:
        return ()
    return tuple(findings[:max_findings])
