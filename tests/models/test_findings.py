"""Findings from a heatmap: what the SR lists as fracture candidates (models.registry)."""

from __future__ import annotations

import numpy as np
import pytest

from models.findings import FINDING_EXTENT, extract_findings


def _blob(shape: tuple[int, int], centre: tuple[int, int], peak: float, sigma: float
          ) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    r2 = (rows - centre[1]) ** 2 + (cols - centre[0]) ** 2
    return (peak * np.exp(-r2 / (2 * sigma**2))).astype(np.float32)


def test_a_finding_box_spans_the_evidence_around_its_peak() -> None:
    heat = _blob((120, 160), (60, 50), 0.9, 10.0)
    before = heat.copy()
    (finding,) = extract_findings(heat, 0.5)
    assert np.array_equal(heat, before)  # the caller's heatmap is left as it was
    assert finding.score == pytest.approx(0.9)
    assert finding.point == (60.0, 50.0)
    # The box reaches out to where the blob falls to FINDING_EXTENT of its peak, not to 0.5.
    radius = 10.0 * np.sqrt(2 * np.log(1 / FINDING_EXTENT))
    x0, y0, x1, y1 = finding.box
    assert x0 == pytest.approx(60 - radius, abs=1.0) and x1 == pytest.approx(60 + radius, abs=1.0)
    assert y0 == pytest.approx(50 - radius, abs=1.0) and y1 == pytest.approx(50 + radius, abs=1.0)
    core = 10.0 * np.sqrt(2 * np.log(0.9 / 0.5))
    assert x1 - x0 > 2 * core + 4  # wider than the part above the threshold


def test_separate_peaks_are_separate_findings_best_first() -> None:
    heat = np.maximum(_blob((100, 200), (40, 50), 0.7, 6.0),
                      _blob((100, 200), (150, 50), 0.95, 6.0))
    findings = extract_findings(heat, 0.5)
    assert [f.point for f in findings] == [(150.0, 50.0), (40.0, 50.0)]
    assert findings[0].score > findings[1].score
    assert findings[0].box[0] > findings[1].box[2]  # the boxes do not overlap


def test_a_peak_inside_a_stronger_findings_extent_is_merged_into_it() -> None:
    # Two bumps above the threshold on one shoulder: one finding, not two.
    heat = np.maximum(_blob((100, 200), (80, 50), 0.9, 12.0),
                      _blob((100, 200), (100, 50), 0.6, 2.0))
    assert heat[50, 100] >= 0.5 and heat[50, 96] < 0.5  # two regions above the threshold
    findings = extract_findings(heat, 0.5)
    assert len(findings) == 1
    assert findings[0].point == (80.0, 50.0)
    assert findings[0].box[2] >= 100  # the box covers the weaker bump too


def test_a_quiet_heatmap_has_no_findings_and_bad_extent_is_refused() -> None:
    assert extract_findings(np.full((32, 32), 0.2, dtype=np.float32), 0.5) == ()
    with pytest.raises(ValueError, match="extent"):
        extract_findings(np.zeros((4, 4), dtype=np.float32), 0.5, extent=0.0)
