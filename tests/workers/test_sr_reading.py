"""The SR as a reader sees it, rendered by dcmtk's ``dsr2html``: the impression and the
machine-generated statement come before the measurements, each candidate region is one
measurement group, numbers are percentages with one decimal; an SR that replaces earlier
ones names them in the Predecessor Documents Sequence and still passes dciodvfy."""

from __future__ import annotations

import html
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from highdicom.sr import srread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from models.domain import DomainCheck
from models.registry import Finding, ViewPrediction
from workers.results import StudyResult, ViewResult, as_percent, build_sr, study_impression

from .test_results import (
    ALGORITHM,
    CLINICAL,
    RG3_BOX,
    RG3_POINT,
    SKIPPED,
    _blob,
    _crafted_view,
    _prediction,
    _to_bytes,
)

DSR2HTML = Path("/usr/bin/dsr2html")
DCIODVFY = Path("/usr/bin/dciodvfy")
#: A decimal number on its own (not a piece of a UID) with four or more decimals.
LONG_DECIMAL = re.compile(r"(?<![\d.])\d+\.\d{4,}(?![\d.])")
PERCENT_VALUE = re.compile(r"^\d{1,3}\.\d %$")


@pytest.fixture(scope="module")
def rg3() -> Dataset:
    return pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm"))


@pytest.fixture(scope="module")
def positive(rg3: Dataset) -> StudyResult:
    """Two analysed views of a right lower leg: a boxed and a point-only candidate on the
    first, a boxed one on the second; the second view's probability is 0.999799, the value
    that used to show as "0.999799 1"."""
    first = _prediction(0.87, _blob(1760, 1760, *RG3_POINT, 80), (
        Finding(0.95, RG3_POINT, RG3_BOX),
        Finding(0.40, (300.0, 1500.0), None),
    ))
    second = _prediction(0.999799, _blob(256, 200, 80, 128, 15), (
        Finding(0.55, (80.0, 128.0), (66.0, 112.0, 94.0, 144.0)),
    ))
    views = [ViewResult(rg3, first, "LEG R"), ViewResult(_crafted_view(rg3), second, "LEG R")]
    return StudyResult(0.999799, True, "max", 0.5, {"LEG R": 0.999799}, views, [])


def _render(ds: Dataset, tmp_path: Path, name: str) -> list[str]:
    """The non-empty text lines of the dsr2html rendering of ``ds``, tags removed."""
    if not DSR2HTML.is_file() or shutil.which(str(DSR2HTML)) is None:
        pytest.fail("dsr2html (dcmtk) is required: apt-get install dcmtk")
    path = tmp_path / f"{name}.dcm"
    path.write_bytes(_to_bytes(ds))
    run = subprocess.run([str(DSR2HTML), str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    text = html.unescape(re.sub(r"<[^>]*>", "", run.stdout))
    return [line.strip() for line in text.splitlines() if line.strip()]


def _dciodvfy_clean(data: bytes, tmp_path: Path, name: str) -> None:
    if not DCIODVFY.is_file() or shutil.which(str(DCIODVFY)) is None:
        pytest.fail("dciodvfy (dicom3tools) is required: apt-get install dicom3tools")
    path = tmp_path / f"{name}.dcm"
    path.write_bytes(data)
    run = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True, timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    assert run.returncode == 0, lines
    assert not [ln for ln in lines if ln.startswith(("Error", "Abort"))], lines


def _header(ds: Dataset) -> Dataset:
    """What a caller keeps of an earlier SR: its four UIDs, as new values (the SR's own
    elements are shared with its source's, so they are not to be edited)."""
    header = Dataset()
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        setattr(header, keyword, str(ds[keyword].value))
    return header


def _index(lines: list[str], predicate) -> int:
    return next(i for i, line in enumerate(lines) if predicate(line))


def test_impression_and_statement_come_before_the_measurements(
    positive: StudyResult, tmp_path: Path
) -> None:
    lines = _render(build_sr(positive, ALGORITHM, job_key="job-read"), tmp_path, "pos")
    impression = "Fracture suspected: right lower leg (99.9 %), 2 of 2 views analysed"
    at_impression = lines.index(impression)
    assert lines[at_impression - 1] == "Impression:"
    at_statement = _index(lines, lambda ln: ln.startswith("Machine-generated result"))
    assert "NOT FOR DIAGNOSTIC USE" in lines[at_statement]
    at_measurements = lines.index("Imaging Measurements")
    at_first_group = lines.index("Measurement Group")
    assert at_impression < at_statement < at_measurements < at_first_group
    # Nothing but the header and the observation context precedes the impression.
    assert not any("Probability" in ln or "%" in ln for ln in lines[:at_impression])


def test_each_finding_is_one_group_with_its_outline_and_point(
    positive: StudyResult, tmp_path: Path
) -> None:
    lines = _render(build_sr(positive, ALGORITHM, job_key="job-read"), tmp_path, "pos")
    findings = ["View 1 finding 1", "View 1 finding 2", "View 2 finding 1"]
    for label in findings:
        assert lines.count(f'Observation Context: Tracking Identifier = "{label}"') == 1, label
    # One group per finding, nothing else: the study, site and view verdicts are qualitative
    # evaluations (OHIF fails on a measurement group without coordinates).
    assert lines.count("Measurement Group") == 3
    # Each box twice: as the region, and as the Outline its score is inferred from.
    assert lines.count("Polyline") == 4
    assert sum(ln.startswith("Inferred from: Outline") for ln in lines) == 2
    # Every score names the point it was read at: the boxed ones their peak, the point-only
    # one its region.
    assert sum(ln.startswith("Inferred from: Representative point") for ln in lines) == 3
    group = lines.index('Observation Context: Tracking Identifier = "View 1 finding 1"')
    end = lines.index('Observation Context: Tracking Identifier = "View 1 finding 2"')
    block = lines[group:end]
    assert "Fracture evidence score:" in block and "95.0 %" in block
    assert any(ln.startswith("Inferred from: Representative point") for ln in block)
    assert "Outline (111041, DCM)" in block and "Polyline" in block


def test_numbers_read_as_percentages_with_one_decimal(
    positive: StudyResult, tmp_path: Path
) -> None:
    lines = _render(build_sr(positive, ALGORITHM, job_key="job-read"), tmp_path, "pos")
    assert not [ln for ln in lines if LONG_DECIMAL.search(ln)]
    assert not [ln for ln in lines if re.search(r"\d 1$", ln)]  # the old "0.87 1"
    scores = [lines[i + 1] for i, ln in enumerate(lines) if ln == "Fracture evidence score:"]
    prefix = "Properties: Probability = "
    probabilities = [ln.removeprefix(prefix) for ln in lines if ln.startswith(prefix)]
    assert len(scores) == 3 and len(probabilities) == 4  # three regions; study, site, 2 views
    values = scores + probabilities
    assert all(PERCENT_VALUE.match(v) for v in values), values
    assert values.count("99.9 %") == 3  # 0.999799 never reads as 100 %
    assert "100.0 %" not in lines
    assert 'Concept Modifier: Algorithm Parameters = "threshold=50 %"' in lines


def test_percent_rounds_to_one_decimal_and_never_claims_certainty() -> None:
    assert as_percent(0.87) == 87.0
    assert as_percent(0.8768) == 87.7
    assert as_percent(0.999799) == 99.9
    assert as_percent(0.00004) == 0.1
    assert (as_percent(0.0), as_percent(1.0)) == (0.0, 100.0)


def test_impressions_of_negative_partial_and_unanalysed_studies(
    rg3: Dataset, tmp_path: Path
) -> None:
    views = [ViewResult(_crafted_view(rg3, seed=10 + i),
                        _prediction(0.12, np.zeros((256, 200), np.float32), ()), "LEG R")
             for i in range(3)]
    negative = StudyResult(0.12, False, "noisy_or", 0.5, {"LEG R": 0.12}, views, [])
    assert study_impression(negative) == "No fracture detected (12.0 %) in 3 analysed views"
    partial = StudyResult(0.12, False, "noisy_or", 0.5, {"LEG R": 0.12}, views[:2], [SKIPPED])
    assert study_impression(partial) == (
        "No fracture detected (12.0 %) in 2 analysed views; 1 of 3 views not analysed")

    refused = ViewPrediction(probabilities=None, fracture_probability=None, heatmap=None,
                             findings=(), domain=DomainCheck(False, 31.0, 24.4))
    outside = StudyResult(None, None, "max", 0.5, {},
                          [ViewResult(_crafted_view(rg3, seed=20), refused, "LEG R")], [],
                          reason="outside the model's training domain")
    text = "Not analysed: outside the model's training domain; 1 of 1 view not analysed"
    assert study_impression(outside) == text
    lines = _render(build_sr(outside, CLINICAL, job_key="job-out"), tmp_path, "out")
    assert lines.index(text) < lines.index("Qualitative Evaluations")
    assert "Imaging Measurements" not in lines  # no candidate region, no empty container
    # No number the node did not compute.
    assert not [ln for ln in lines if "Probability" in ln or "evidence score" in ln]
    assert "Study not analysed: outside the model's training domain." in lines

    two_sites = StudyResult(0.9, True, "noisy_or", 0.5, {"WRIST L": 0.61, "WRIST R": 0.9},
                            views, [SKIPPED])
    assert study_impression(two_sites) == (
        "Fracture suspected: right wrist joint (90.0 %), left wrist joint (61.0 %), "
        "3 views analysed; 1 of 4 views not analysed")


def test_a_replacing_sr_names_its_predecessor(
    positive: StudyResult, tmp_path: Path
) -> None:
    earlier = build_sr(positive, ALGORITHM, job_key="job-earlier")
    data = _to_bytes(build_sr(positive, ALGORITHM, job_key="job-later",
                              previous_versions=[_header(earlier)]))
    _dciodvfy_clean(data, tmp_path, "later")
    back = pydicom.dcmread(io.BytesIO(data))
    (study_item,) = back.PredecessorDocumentsSequence
    assert study_item.StudyInstanceUID == positive.views[0].source.StudyInstanceUID
    (series_item,) = study_item.ReferencedSeriesSequence
    assert series_item.SeriesInstanceUID == earlier.SeriesInstanceUID
    (ref,) = series_item.ReferencedSOPSequence
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (
        earlier.SOPClassUID, earlier.SOPInstanceUID)
    assert srread(io.BytesIO(data)).content.get_planar_roi_measurement_groups()
    assert "PredecessorDocumentsSequence" not in pydicom.dcmread(io.BytesIO(_to_bytes(earlier)))


def test_previous_versions_are_checked(positive: StudyResult) -> None:
    earlier = _header(build_sr(positive, ALGORITHM, job_key="job-earlier"))
    other_study = _header(earlier)
    other_study.StudyInstanceUID = "1.2.3"
    with pytest.raises(ValueError, match=r"previous_versions\[0\] belongs to study 1.2.3"):
        build_sr(positive, ALGORITHM, job_key="job-later", previous_versions=[other_study])
    with pytest.raises(ValueError, match="is the SR being built"):
        build_sr(positive, ALGORITHM, job_key="job-earlier", previous_versions=[earlier])
    no_class = _header(earlier)
    del no_class.SOPClassUID
    with pytest.raises(ValueError, match=r"previous_versions\[1\] has no SOPClassUID"):
        build_sr(positive, ALGORITHM, job_key="job-later", previous_versions=[earlier, no_class])
    with pytest.raises(TypeError, match="pydicom Dataset"):
        build_sr(positive, ALGORITHM, job_key="job-later",
                 previous_versions=["1.2.3"])  # type: ignore[list-item]
