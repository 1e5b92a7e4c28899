"""DICOM result writers: SR (TID 1500) and Secondary Capture overlays, checked as a PACS would.

Every object is saved to bytes, read back strictly (pydicom, highdicom ``srread``) and
validated with dciodvfy (STYLE.md #12).
"""

from __future__ import annotations

import copy
import dataclasses
import io
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from highdicom.sr import Comprehensive3DSR, srread
from pydicom import config
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless

from models.domain import DomainCheck
from models.registry import Finding, ViewPrediction
from tests.dicom_checks import dciodvfy, dciodvfy_errors
from workers.results import (
    IMPLEMENTATION_CLASS_UID,
    AlgorithmInfo,
    SkippedView,
    StudyResult,
    ViewResult,
    algorithm_device_uid,
    banner_lines,
    build_secondary_captures,
    build_sr,
    display_image,
    render_overlay,
    resize_view,
    result_uid,
)

HIGHDICOM_ROOT = "1.2.826.0.1.3680043.10.511."
JOB = "job-0001"
UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")

# ---------------------------------------------------------------- inputs


def _blob(rows: int, cols: int, x: float, y: float, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[0:rows, 0:cols]
    return np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)).astype(np.float32)


def _prediction(p: float, heatmap: np.ndarray, findings: tuple[Finding, ...]) -> ViewPrediction:
    return ViewPrediction({"normal": 1.0 - p, "fracture": p}, p, heatmap, findings)


@pytest.fixture(scope="module")
def rg3() -> Dataset:
    """The real extremity CR: MONOCHROME1, 1760 x 1760, window 550/1024, Laterality R."""
    return pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm"))


def _crafted_view(template: Dataset, *, rows: int = 256, cols: int = 200, body_part: str = "LEG",
                  laterality: str | None = "R", seed: int = 0) -> Dataset:
    """A hand-made MONOCHROME2 CR view in the study of ``template``: a bright bone bar on a
    dark background."""
    rng = np.random.default_rng(seed)
    ds = Dataset()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
                    "ReferringPhysicianName"):
        setattr(ds, keyword, template.get(keyword))
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = result_uid("test-input", "sop", str(seed), body_part)
    ds.SeriesInstanceUID = result_uid("test-input", "series", str(seed), body_part)
    ds.Modality = "CR"
    ds.SeriesNumber = 2
    ds.InstanceNumber = 1
    ds.Manufacturer = "Test"
    ds.BodyPartExamined = body_part
    if laterality is not None:
        ds.Laterality = laterality
    ds.PatientOrientation = ["A", "F"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    img = rng.normal(300, 20, (rows, cols))
    img[:, cols // 3: cols // 2] += 2500  # bone
    ds.PixelData = np.clip(img, 0, 4095).astype(np.uint16).tobytes()
    ds.WindowCenter, ds.WindowWidth = 1500, 3000
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


@pytest.fixture(scope="module")
def second_view(rg3: Dataset) -> Dataset:
    return _crafted_view(rg3)


RG3_BOX = (780.0, 580.0, 1020.0, 820.0)
RG3_POINT = (900.0, 700.0)


@pytest.fixture(scope="module")
def views(rg3: Dataset, second_view: Dataset) -> list[ViewResult]:
    first = _prediction(0.87, _blob(1760, 1760, *RG3_POINT, 80), (
        Finding(0.95, RG3_POINT, RG3_BOX),
        Finding(0.40, (300.0, 1500.0), None),
    ))
    second = _prediction(0.30, _blob(256, 200, 80, 128, 15), (
        Finding(0.55, (80.0, 128.0), (66.0, 112.0, 94.0, 144.0)),
    ))
    return [ViewResult(rg3, first, "LEG R"), ViewResult(second_view, second, "LEG R")]


ALGORITHM = AlgorithmInfo(
    name="demo-global-pool", version="0.3.1",
    notice="Trained only on synthetic radiographs: a software demonstration, not for "
           "diagnostic or clinical use.",
    synthetic_demo=True,
)
CLINICAL = AlgorithmInfo(name="wrist-fx", version="2.0", notice="", synthetic_demo=False)
SKIPPED = SkippedView("1.2.3.4.5.6", "no pixel data")


@pytest.fixture(scope="module")
def study(views: list[ViewResult]) -> StudyResult:
    return StudyResult(0.87, True, "max", 0.5, {"LEG R": 0.87}, list(views), [SKIPPED])


# ---------------------------------------------------------------- checks


@pytest.fixture(autouse=True)
def strict_reading() -> Iterator[None]:
    previous = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.RAISE
    yield
    config.settings.reading_validation_mode = previous


def _to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _dciodvfy(data: bytes, tmp_path: Path, name: str) -> tuple[list[str], list[str]]:
    path = tmp_path / f"{name}.dcm"
    path.write_bytes(data)
    return dciodvfy(path)


def _uids(ds: Dataset) -> list[str]:
    """Every UI value in ``ds``, nested sequences included, in order."""
    found: list[str] = []

    def walk(item: Dataset) -> None:
        for element in item:
            if element.VR == "SQ":
                for child in element.value:
                    walk(child)
            elif element.VR == "UI" and element.value:
                found.append(str(element.value))

    walk(ds)
    return found


def _sc_image_part(sc: Dataset, image_rows: int) -> np.ndarray:
    """The SC pixels below the banner (the banner is on top of ``image_rows`` image rows)."""
    pixels = sc.pixel_array
    return pixels[pixels.shape[0] - image_rows:]


# ---------------------------------------------------------------- UIDs


def test_result_uids_are_deterministic_valid_and_job_specific() -> None:
    uid = result_uid(JOB, "sr")
    assert uid == result_uid(JOB, "sr")
    assert uid.startswith("2.25.") and len(uid) <= 64 and UID_PATTERN.match(uid)
    assert uid.is_valid
    assert result_uid("job-0002", "sr") != uid
    assert result_uid(JOB, "sc", "1.2.3") != result_uid(JOB, "sc", "1.2.4")
    assert result_uid(JOB, "a", "bc") != result_uid(JOB, "ab", "c")
    assert IMPLEMENTATION_CLASS_UID.startswith("2.25.")
    with pytest.raises(ValueError, match="job_key"):
        result_uid("", "sr")
    with pytest.raises(TypeError, match="str"):
        result_uid(JOB, 3)  # type: ignore[arg-type]


# ---------------------------------------------------------------- SR


@pytest.fixture(scope="module")
def sr_bytes(study: StudyResult) -> bytes:
    return _to_bytes(build_sr(study, ALGORITHM, job_key=JOB))


def test_sr_passes_dciodvfy(sr_bytes: bytes, tmp_path: Path) -> None:
    errors, warnings = _dciodvfy(sr_bytes, tmp_path, "sr")
    assert errors == []
    # The only expected warning: dicom3tools does not know our private coding scheme.
    assert all("99PACSNODE" in w for w in warnings), warnings


def test_sr_reads_back_as_a_tid1500_report_in_the_source_study(
    sr_bytes: bytes, study: StudyResult, rg3: Dataset
) -> None:
    ds = pydicom.dcmread(io.BytesIO(sr_bytes))
    sr = srread(io.BytesIO(sr_bytes))
    assert isinstance(sr, Comprehensive3DSR)
    assert ds.StudyInstanceUID == rg3.StudyInstanceUID
    assert ds.PatientID == rg3.PatientID and ds.AccessionNumber == rg3.AccessionNumber
    assert ds.SeriesInstanceUID == result_uid(JOB, "sr-series")
    assert ds.SOPInstanceUID == result_uid(JOB, "sr")
    assert ds.SeriesInstanceUID not in {v.source.SeriesInstanceUID for v in study.views}
    assert (ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer) == (9001, 1, "pacs-node")
    assert (ds.CompletionFlag, ds.VerificationFlag, ds.PreliminaryFlag) == (
        "COMPLETE", "UNVERIFIED", "PRELIMINARY")
    assert "NOT FOR DIAGNOSTIC USE" in ds.SeriesDescription
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    title = ds.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator) == ("126000", "DCM")
    assert ds.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert not [u for u in _uids(ds) if u.startswith(HIGHDICOM_ROOT)]

    report = sr.content
    procedure = [i for i in report[0].ContentSequence
                 if i.ConceptNameCodeSequence[0].CodeValue == "121058"]
    assert procedure[0].ConceptCodeSequence[0].CodeValue == "363680008"
    device = report.get_observer_contexts()[0].observer_identifying_attributes
    assert (device.model_name, device.manufacturer_name) == ("demo-global-pool", "pacs-node")
    assert device.name == "demo-global-pool 0.3.1"


def test_sr_evidence_is_exactly_the_processed_views(sr_bytes: bytes, study: StudyResult) -> None:
    sr = srread(io.BytesIO(sr_bytes))
    evidence = {sop for _, _, sop, _ in sr.get_evidence()}
    assert evidence == {v.sop_instance_uid for v in study.views}
    assert SKIPPED.sop_instance_uid not in evidence
    assert "PertinentOtherEvidenceSequence" not in sr


def _evaluations(data: bytes) -> tuple[list[Dataset], list[str]]:
    """The CODE items and the TEXT comments of the SR's Qualitative Evaluations container."""
    ds = pydicom.dcmread(io.BytesIO(data))
    (container,) = [item for item in ds.ContentSequence
                    if item.ConceptNameCodeSequence[0].CodeValue == "C0034375"]
    items = list(container.ContentSequence)
    return ([i for i in items if i.ValueType == "CODE"],
            [i.TextValue for i in items if i.ValueType == "TEXT"])


def _child(item: Dataset, code: str) -> Dataset | None:
    found = [c for c in item.get("ContentSequence", [])
             if c.ConceptNameCodeSequence[0].CodeValue == code]
    return found[0] if found else None


def test_sr_study_site_and_view_evaluations(sr_bytes: bytes, study: StudyResult) -> None:
    """Present / Absent with a probability for the study, each site and each analysed view,
    in Qualitative Evaluations (not TID 1501 groups: OHIF fails on groups without SCOORD)."""
    codes_, _ = _evaluations(sr_bytes)
    assert len(codes_) == 1 + 1 + 2  # study, site LEG R, two analysed views
    for item in codes_:
        assert item.ConceptNameCodeSequence[0].CodeValue == "125605004"  # Fracture of bone
        assert item.RelationshipType == "CONTAINS"
    study_item, site_item, *view_items = codes_

    def probability(item: Dataset) -> float:
        num = _child(item, "122157")
        assert num is not None and num.RelationshipType == "HAS PROPERTIES"
        unit = num.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0]
        assert (unit.CodeValue, unit.CodingSchemeDesignator) == ("%", "UCUM")
        return float(num.MeasuredValueSequence[0].NumericValue)

    assert probability(study_item) == pytest.approx(87.0)  # percent, one decimal
    assert study_item.ConceptCodeSequence[0].CodeMeaning == "Present"
    parameters = [c.TextValue for c in study_item.ContentSequence
                  if c.ConceptNameCodeSequence[0].CodeValue == "111002"]
    assert parameters == ["aggregation=max", "threshold=50 %"]
    assert _child(study_item, "363698007") is None  # no finding site: the whole study
    site = _child(site_item, "363698007")
    assert site.ConceptCodeSequence[0].CodeValue == "30021000"  # Lower leg
    assert site.ContentSequence[0].ConceptCodeSequence[0].CodeValue == "24028007"  # Right
    assert _child(site_item, "121112") is None
    for item, view in zip(view_items, study.views, strict=True):
        p = view.prediction.fracture_probability
        assert probability(item) == pytest.approx(100 * p)
        expected = "Present" if p >= study.threshold else "Absent"
        assert item.ConceptCodeSequence[0].CodeMeaning == expected
        source = _child(item, "121112")  # Source of Measurement
        assert source.RelationshipType == "INFERRED FROM"
        assert source.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == view.sop_instance_uid
    # Imaging Measurements holds only groups with coordinates (the candidate regions).
    sr = srread(io.BytesIO(sr_bytes))
    assert sr.content.get_image_measurement_groups() == []
    assert all(g.roi is not None for g in sr.content.get_planar_roi_measurement_groups())


def test_sr_findings_land_as_scoord_on_the_right_image(
    sr_bytes: bytes, study: StudyResult
) -> None:
    sr = srread(io.BytesIO(sr_bytes))
    rois = sr.content.get_planar_roi_measurement_groups()
    # One TID 1410 group per finding: view 1 has a boxed and a point-only finding, view 2 one.
    assert [g.tracking_identifier for g in rois] == [
        "View 1 finding 1", "View 1 finding 2", "View 2 finding 1"]
    assert len({g.tracking_uid for g in rois}) == 3
    boxed, lone_point, view2 = rois

    rg3_uid = study.views[0].sop_instance_uid
    assert boxed.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == rg3_uid
    assert boxed.roi.graphic_type.value == "POLYLINE"
    x0, y0, x1, y1 = RG3_BOX
    # SCOORD: the top-left corner of the top-left pixel is (0, 0); boxes enclose whole pixels.
    np.testing.assert_allclose(boxed.roi.value, [
        [x0, y0], [x1 + 1, y0], [x1 + 1, y1 + 1], [x0, y1 + 1], [x0, y0]])
    (score,) = boxed.get_measurements()
    assert score.value == pytest.approx(95.0) and score.unit.value == "%"
    # The score is INFERRED FROM its region first (Cornerstone rebuilds the annotation from
    # the first SCOORD under the measurement), then from the peak inside the box: SCOORD
    # POINT, SELECTED FROM the same view.
    outline, peak = score.referenced_coordinates
    assert outline.name.value == "111041"  # Outline
    assert outline.graphic_type.value == "POLYLINE"
    np.testing.assert_allclose(outline.value, boxed.roi.value)
    assert outline.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == rg3_uid
    assert peak.relationship_type.value == "INFERRED FROM"
    assert peak.name.value == "128140"  # Representative point
    assert peak.graphic_type.value == "POINT"
    np.testing.assert_allclose(peak.value, [[RG3_POINT[0] + 0.5, RG3_POINT[1] + 0.5]])
    selected = peak.ContentSequence[0]
    assert selected.RelationshipType == "SELECTED FROM"
    assert selected.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == rg3_uid

    # Without a box the peak is the region, and the score is inferred from it alone.
    assert lone_point.roi.graphic_type.value == "POINT"
    np.testing.assert_allclose(lone_point.roi.value, [[300.5, 1500.5]])
    (only,) = lone_point.get_measurements()[0].referenced_coordinates
    assert only.name.value == "128140" and only.graphic_type.value == "POINT"
    np.testing.assert_allclose(only.value, lone_point.roi.value)
    view2_uid = study.views[1].sop_instance_uid
    assert (view2.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            == view2_uid)
    view2_outline, view2_peak = view2.get_measurements()[0].referenced_coordinates
    for scoord in (view2_outline, view2_peak):
        assert scoord.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
            view2_uid)


def test_sr_carries_notices_skipped_views_and_ihe_equipment(sr_bytes: bytes) -> None:
    ds = pydicom.dcmread(io.BytesIO(sr_bytes))
    _, texts = _evaluations(sr_bytes)
    assert ds.ContentSequence[-1].ConceptNameCodeSequence[0].CodeValue == "C0034375"
    assert ALGORITHM.notice in texts
    assert "Views analysed: 2 of 3." in texts
    top = {item.TextValue for item in ds.ContentSequence if item.ValueType == "TEXT"}
    assert any("Machine-generated" in t for t in top)
    assert any("NOT FOR DIAGNOSTIC USE" in t and "synthetic" in t for t in top)
    assert any(SKIPPED.sop_instance_uid in t and SKIPPED.reason in t for t in texts)
    ihe = [item for item in ds.ContributingEquipmentSequence
           if item.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"]
    assert len(ihe) == 1
    assert ihe[0].PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "99IHE"
    assert (ihe[0].Manufacturer, ihe[0].ManufacturerModelName, ihe[0].SoftwareVersions) == (
        "pacs-node", "demo-global-pool", "0.3.1")
    schemes = {item.CodingSchemeDesignator for item in ds.CodingSchemeIdentificationSequence}
    assert {"99PACSNODE", "99IHE"} <= schemes


def test_sr_of_a_clinical_model_and_a_negative_study(
    views: list[ViewResult], tmp_path: Path
) -> None:
    # As the pipeline reports it: no candidate region on a negative view.
    quiet = ViewResult(views[1].source,
                       dataclasses.replace(views[1].prediction, findings=()), views[1].site)
    negative = StudyResult(0.12, False, "noisy_or", 0.5, {"LEG R": 0.12}, [quiet], [])
    data = _to_bytes(build_sr(negative, CLINICAL, job_key="job-neg"))
    errors, _ = _dciodvfy(data, tmp_path, "neg")
    assert errors == []
    ds = pydicom.dcmread(io.BytesIO(data))
    text = "\n".join(str(e.value) for e in ds.iterall() if e.VR in ("UT", "LO", "ST"))
    assert "synthetic" not in text.lower() and "NOT FOR DIAGNOSTIC" not in text
    assert "wrist-fx" in ds.SeriesDescription
    study_item = _evaluations(data)[0][0]
    assert study_item.ConceptCodeSequence[0].CodeMeaning == "Absent"
    # No candidate region: no Imaging Measurements container, and the SR still reads back.
    names = [i.ConceptNameCodeSequence[0].CodeValue for i in ds.ContentSequence]
    assert "126010" not in names
    assert srread(io.BytesIO(data)).content.get_planar_roi_measurement_groups() == []
    assert {sop for _, _, sop, _ in srread(io.BytesIO(data)).get_evidence()} == {
        views[1].sop_instance_uid}


def test_sr_needs_a_processed_view() -> None:
    empty = StudyResult(0.0, False, "max", 0.5, {}, [], [SKIPPED])
    with pytest.raises(ValueError, match="no processed view"):
        build_sr(empty, ALGORITHM, job_key=JOB)


# ---------------------------------------------------------------- Secondary Captures


@pytest.fixture(scope="module")
def sc_bytes(study: StudyResult) -> list[bytes]:
    return [_to_bytes(sc) for sc in build_secondary_captures(study, ALGORITHM, job_key=JOB)]


def test_each_sc_passes_dciodvfy(sc_bytes: list[bytes], tmp_path: Path) -> None:
    assert len(sc_bytes) == 2
    for i, data in enumerate(sc_bytes):
        errors, warnings = _dciodvfy(data, tmp_path, f"sc{i}")
        assert errors == [] and warnings == [], (errors, warnings)


def test_sc_is_an_rgb_derived_image_in_a_new_series_of_the_study(
    sc_bytes: list[bytes], study: StudyResult
) -> None:
    for i, (data, view) in enumerate(zip(sc_bytes, study.views, strict=True), start=1):
        sc = pydicom.dcmread(io.BytesIO(data))
        src = view.source
        assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
        # JPEG 2000 Lossless with the reversible colour transform; it decodes to RGB.
        assert (sc.file_meta.TransferSyntaxUID, sc.PhotometricInterpretation,
                sc.SamplesPerPixel, sc.BitsAllocated) == (JPEG2000Lossless, "YBR_RCT", 3, 8)
        assert sc.pixel_array.shape == (sc.Rows, sc.Columns, 3)
        assert sc.StudyInstanceUID == src.StudyInstanceUID
        assert (sc.PatientID, sc.PatientName, sc.AccessionNumber) == (
            src.PatientID, src.PatientName, src.AccessionNumber)
        assert sc.SeriesInstanceUID == result_uid(JOB, "sc-series") != src.SeriesInstanceUID
        assert sc.SOPInstanceUID == result_uid(JOB, "sc", src.SOPInstanceUID)
        assert (sc.SeriesNumber, sc.InstanceNumber) == (9002, i)
        assert list(sc.ImageType[:2]) == ["DERIVED", "SECONDARY"]
        assert (sc.BurnedInAnnotation, sc.ConversionType) == ("YES", "WSD")
        assert sc.Laterality == src.Laterality == "R"
        assert sc.BodyPartExamined == src.BodyPartExamined
        assert list(sc.PatientOrientation) == list(src.PatientOrientation)
        ref = sc.SourceImageSequence[0]
        assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (
            src.SOPClassUID, src.SOPInstanceUID)
        assert sc.DerivationDescription
        assert "NOT FOR DIAGNOSTIC USE" in sc.SeriesDescription
        assert any(item.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"
                   for item in sc.ContributingEquipmentSequence)
        assert not [u for u in _uids(sc) if u.startswith(HIGHDICOM_ROOT)]


def test_sc_of_rg3_shows_bone_bright_through_the_window(
    sc_bytes: list[bytes], rg3: Dataset
) -> None:
    sc = pydicom.dcmread(io.BytesIO(sc_bytes[0]))
    assert sc.Columns == rg3.Columns  # 1760 px: no scaling
    image = _sc_image_part(sc, rg3.Rows).astype(np.float32)
    grey = image.mean(axis=2)
    rows = slice(int(0.15 * 1760), int(0.25 * 1760))  # far from the heatmap blob
    # RG3 is MONOCHROME1 with a WHITE border density: the collimated border is rendered
    # white, as in any viewer, so compare anatomy inside the field: the air beside the leg is
    # dark, the tibial shaft bright.
    air = grey[rows, int(0.29 * 1760):int(0.34 * 1760)].mean()
    tibia = grey[rows, int(0.47 * 1760):int(0.51 * 1760)].mean()
    assert air < 60 and tibia > air + 100, (air, tibia)
    # Bone-bright means the displayed grey falls as MONOCHROME1 stored values rise.
    stored = rg3.pixel_array[rows].astype(np.float32).ravel()
    assert np.corrcoef(stored, grey[rows].ravel())[0, 1] < -0.8


def test_sc_heatmap_is_coloured_and_low_evidence_stays_grey(
    sc_bytes: list[bytes], rg3: Dataset
) -> None:
    sc = pydicom.dcmread(io.BytesIO(sc_bytes[0]))
    image = _sc_image_part(sc, rg3.Rows).astype(np.int32)
    x, y = int(RG3_POINT[0]), int(RG3_POINT[1])
    peak = image[y - 30:y - 10, x + 10:x + 30]  # beside the cross marker, inside the blob
    assert np.abs(peak[..., 0] - peak[..., 2]).mean() > 60
    far = image[100:200, 100:200]  # heatmap ~0
    assert np.all(far[..., 0] == far[..., 1]) and np.all(far[..., 1] == far[..., 2])


def test_sc_banner_is_on_top_and_dark_with_light_text(
    sc_bytes: list[bytes], rg3: Dataset
) -> None:
    sc = pydicom.dcmread(io.BytesIO(sc_bytes[0]))
    pixels = sc.pixel_array
    banner = pixels[: pixels.shape[0] - rg3.Rows]
    assert banner.shape[0] >= 100  # five lines scaled to a 1760 px width
    grey = banner.mean(axis=2)
    assert np.median(grey) < 40 and (grey > 200).mean() > 0.01


def test_sc_rebuild_gives_the_same_uids_and_another_job_new_ones(
    study: StudyResult, sc_bytes: list[bytes], sr_bytes: bytes
) -> None:
    again_sc = [_to_bytes(s) for s in build_secondary_captures(study, ALGORITHM, job_key=JOB)]
    again_sr = _to_bytes(build_sr(study, ALGORITHM, job_key=JOB))
    for first, second in zip([sr_bytes, *sc_bytes], [again_sr, *again_sc], strict=True):
        assert _uids(pydicom.dcmread(io.BytesIO(first))) == _uids(
            pydicom.dcmread(io.BytesIO(second)))
    other = build_sr(study, ALGORITHM, job_key="job-0002")
    other_scs = build_secondary_captures(study, ALGORITHM, job_key="job-0002")
    sources = {u for v in study.views for u in _uids(v.source)}
    ours = {u for data in [sr_bytes, *sc_bytes] for u in _uids(pydicom.dcmread(io.BytesIO(data)))
            if u.startswith("2.25.") and u not in sources}
    theirs = {u for ds in [other, *other_scs] for u in _uids(ds)
              if u.startswith("2.25.") and u not in sources}
    # Only the algorithm's Device Observer UID does not depend on the job.
    device = algorithm_device_uid(ALGORITHM.manufacturer, ALGORITHM.name, ALGORITHM.version)
    assert ours & theirs == {device}
    assert len(ours) >= 2 + 2 + 3  # SR + series, 2 SCs + series, a tracking UID per region


def test_sc_of_a_paired_body_part_without_laterality_keeps_laterality_present(
    rg3: Dataset, tmp_path: Path
) -> None:
    hand = _crafted_view(rg3, body_part="HAND", laterality=None, seed=3)
    del hand.PatientOrientation  # Type 2C in the SC: written empty
    view = ViewResult(hand, _prediction(0.2, np.zeros((256, 200), np.float32), ()), "HAND")
    study = StudyResult(0.2, False, "max", 0.5, {"HAND": 0.2}, [view], [])
    (sc,) = build_secondary_captures(study, CLINICAL, job_key="job-hand")
    data = _to_bytes(sc)
    errors, _ = _dciodvfy(data, tmp_path, "hand")
    assert errors == []
    back = pydicom.dcmread(io.BytesIO(data))
    assert "Laterality" in back and not back.Laterality
    assert "PatientOrientation" in back and not back.PatientOrientation
    assert "NOT FOR DIAGNOSTIC" not in back.SeriesDescription
    errors, _ = _dciodvfy(_to_bytes(build_sr(study, CLINICAL, job_key="job-hand")), tmp_path, "h")
    assert errors == []


def test_sc_of_an_unpaired_body_part_not_analysed_has_no_laterality(
    rg3: Dataset, tmp_path: Path
) -> None:
    chest = _crafted_view(rg3, body_part="CHEST", laterality=None, seed=4)
    refused = ViewPrediction(probabilities=None, fracture_probability=None, heatmap=None,
                             findings=(), domain=DomainCheck(False, 31.0, 24.4))
    view = ViewResult(chest, refused, "CHEST")
    study = StudyResult(None, None, "max", 0.5, {}, [view], [],
                        reason="outside the model's training domain")
    (sc,) = build_secondary_captures(study, ALGORITHM, job_key="job-chest")
    data = _to_bytes(sc)
    errors, _ = _dciodvfy(data, tmp_path, "chest")
    assert errors == []
    back = pydicom.dcmread(io.BytesIO(data))
    assert "Laterality" not in back  # CHEST is not a paired structure
    assert "not analysed" in back.DerivationDescription
    lines = [text for text, _ in banner_lines(study, view, ALGORITHM)]
    assert lines[0].startswith("STUDY: NOT ANALYSED: outside the model's training domain")
    assert lines[1] == ("THIS VIEW (CHEST): NOT ANALYSED: outside the model's training "
                        "domain (score 31.0, threshold 24.4)")
    assert not any("p=" in line for line in lines)
    sr = build_sr(study, ALGORITHM, job_key="job-chest")
    errors, _ = _dciodvfy(_to_bytes(sr), tmp_path, "chest-sr")
    assert errors == []


def test_large_views_are_scaled_down_keeping_the_aspect(rg3: Dataset, tmp_path: Path) -> None:
    big = _crafted_view(rg3, rows=2500, cols=2000, seed=7)
    heat = _blob(2500, 2000, 1000, 1200, 60)
    finding = Finding(0.9, (1000.0, 1200.0), (900.0, 1100.0, 1100.0, 1300.0))
    study = StudyResult(0.9, True, "max", 0.5, {"LEG R": 0.9},
                        [ViewResult(big, _prediction(0.9, heat, (finding,)), "LEG R")], [])
    (sc,) = build_secondary_captures(study, ALGORITHM, job_key="job-big")
    data = _to_bytes(sc)
    back = pydicom.dcmread(io.BytesIO(data))
    assert back.Columns == 1638  # 2000 * 2048 / 2500
    image = _sc_image_part(back, 2048)
    grey = image.astype(np.int32).mean(axis=2)
    assert grey[:600, 560:800].mean() > grey[:600, :500].mean() + 100  # bone bar, scaled 0.82
    assert "scaled" in back.DerivationDescription
    errors, _ = _dciodvfy(data, tmp_path, "big")
    assert errors == []


# ---------------------------------------------------------------- rendering


def test_display_image_is_bone_bright_for_both_photometrics(
    rg3: Dataset, second_view: Dataset
) -> None:
    m1 = display_image(rg3)
    assert m1.dtype == np.uint8 and m1.shape == (1760, 1760)
    assert np.corrcoef(rg3.pixel_array.ravel(), m1.ravel())[0, 1] < -0.8
    m2 = display_image(second_view)
    assert m2[:, 80].mean() > m2[:, 10].mean() + 150  # the bone bar, on a dark background


def test_render_overlay_shapes_colours_and_errors() -> None:
    display = np.full((120, 300), 90, np.uint8)
    heat = _blob(120, 300, 150, 60, 10)
    out = render_overlay(display, heat, [Finding(0.8, (150.0, 60.0), (130.0, 40.0, 170.0, 80.0))],
                         ["FRACTURE SUSPECTED p=0.87", "SYNTHETIC DEMO MODEL - NOT FOR DIAGNOSTIC "
                          "USE (a long line that has to wrap on a narrow image)"])
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[1:] == (300, 3)
    image = out[out.shape[0] - 120:]
    assert np.array_equal(image[:5, :5], np.full((5, 5, 3), 90))  # no evidence: unchanged grey
    assert int(image[55, 155, 0]) - int(image[55, 155, 2]) > 60  # beside the marker: orange
    with pytest.raises(ValueError, match="heatmap shape"):
        render_overlay(display, heat[:-1], [], ["x"])
    with pytest.raises(ValueError, match="2-D uint8"):
        render_overlay(display.astype(np.float32), heat, [], ["x"])
    with pytest.raises(ValueError, match="banner_lines"):
        render_overlay(display, heat, [], [])


def test_resize_view_maps_findings_to_the_new_grid() -> None:
    display = np.zeros((100, 400), np.uint8)
    heat = np.zeros((100, 400), np.float32)
    f = Finding(0.5, (199.5, 49.5), (100.0, 20.0, 299.0, 79.0))
    _, _, (moved,), scale = resize_view(display, heat, [f], max_size=200, min_width=1)
    assert scale == pytest.approx(0.5)
    assert moved.point == pytest.approx((99.5, 24.5))  # the centre stays the centre
    assert moved.box == pytest.approx((50.0, 10.0, 149.0, 39.0))
    small, _, _, up = resize_view(np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.float32),
                                  [], max_size=2048, min_width=512)
    assert up == pytest.approx(8.0) and small.shape == (512, 512)


# ---------------------------------------------------------------- input validation


def test_inputs_are_checked(rg3: Dataset) -> None:
    good = _prediction(0.5, np.zeros((1760, 1760), np.float32), ())
    with pytest.raises(ValueError, match="heatmap shape"):
        ViewResult(rg3, _prediction(0.5, np.zeros((10, 10), np.float32), ()), "LEG R")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        StudyResult(1.5, True, "max", 0.5, {}, [], [])
    broken = copy.deepcopy(rg3)
    del broken.SOPInstanceUID
    with pytest.raises(ValueError, match="SOPInstanceUID"):
        ViewResult(broken, good, "LEG R")
    with pytest.raises(ValueError, match="name"):
        AlgorithmInfo(name="", version="1")
    view = ViewResult(rg3, good, "LEG R")
    with pytest.raises(ValueError, match="more than one view"):
        StudyResult(0.5, True, "max", 0.5, {}, [view, view], [])


def test_algorithm_info_from_a_loaded_model() -> None:
    class Meta:
        name, version, synthetic_demo = "demo-global-pool", "0.3.1", True

    class Model:
        metadata = Meta()
        notice = ALGORITHM.notice

    assert AlgorithmInfo.from_model(Model()) == ALGORITHM  # type: ignore[arg-type]


def test_results_of_every_synthetic_body_part_variant_pass_dciodvfy(tmp_path: Path) -> None:
    """Free-text and misspelt Body Part Examined values (seed 004 §4.2.2.1), paired or not,
    with and without laterality: every SR and SC still passes dciodvfy."""
    from models.registry import Finding, ViewPrediction
    from models.synth import generate_dataset, read_manifest
    from workers.results import (
        AlgorithmInfo,
        StudyResult,
        ViewResult,
        build_secondary_captures,
        build_sr,
    )

    root = tmp_path / "synth"
    generate_dataset(root, studies=14, seed=99, size=128)
    by_study: dict[str, list[pydicom.Dataset]] = {}
    for entry in read_manifest(root):
        by_study.setdefault(entry["study_instance_uid"], []).append(
            pydicom.dcmread(root / entry["path"]))
    algorithm = AlgorithmInfo(name="t", version="1", notice="test", synthetic_demo=True)
    seen_parts = set()
    for n, datasets in enumerate(by_study.values()):
        views = []
        for ds in datasets:
            seen_parts.add(str(ds.get("BodyPartExamined", "")))
            heat = np.zeros((ds.Rows, ds.Columns), np.float32)
            heat[10:20, 10:20] = 0.9
            pred = ViewPrediction({"normal": 0.3, "fracture": 0.7}, 0.7, heat,
                                  (Finding(0.9, (15.0, 15.0), (10.0, 10.0, 19.0, 19.0)),))
            views.append(ViewResult(source=ds, prediction=pred, site="X"))
        study = StudyResult(0.7, True, "max", 0.5, {"X": 0.7}, views, [])
        for i, obj in enumerate([build_sr(study, algorithm, job_key=f"k{n}"),
                                 *build_secondary_captures(study, algorithm, job_key=f"k{n}")]):
            path = tmp_path / f"{n}-{i}.dcm"
            obj.save_as(path, enforce_file_format=True)
            errors = dciodvfy_errors(path)
            assert errors == [], (path, str(datasets[0].get("BodyPartExamined")), errors)
    assert len(seen_parts) >= 4


def test_building_results_never_changes_the_source() -> None:
    """The writers copy the source's attributes: a result's UIDs are its own."""
    from workers.results._common import evidence_header

    source = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    before = source.StudyInstanceUID, source.SeriesInstanceUID
    header = evidence_header(source)
    header.StudyInstanceUID = header.SeriesInstanceUID = "1.2.3"
    assert (source.StudyInstanceUID, source.SeriesInstanceUID) == before
