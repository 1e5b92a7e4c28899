"""The study result as a Comprehensive 3D SR: a TID 1500 Imaging Measurement Report.

Content tree (IHE AI Results):

- Procedure Reported: radiographic imaging procedure; observer: the model as a device.
- Imaging Measurements:
  - one TID 1501 group for the study: Finding "Fracture of bone", a qualitative evaluation
    Present / Absent, its Probability and the algorithm with the aggregation as parameters;
  - one TID 1501 group per anatomic site of the aggregation (finding site, Probability,
    Present / Absent);
  - one TID 1501 group per analysed view (source image, finding site, Probability,
    Present / Absent at the study threshold);
  - per finding two TID 1410 groups sharing one tracking UID: the box (closed POLYLINE,
    purpose "Outline") and the peak (POINT, purpose "Representative point"), each with its
    "Fracture evidence score" (derivation Maximum). SCOORD is in DICOM image coordinates:
    the top-left corner of the top-left pixel is (0, 0).
- Qualitative Evaluations (TID 1500 row 12): TEXT comments saying the result is
  machine-generated, the model's notice (the synthetic-data warning for demo models), how
  many views were analysed ("Views analysed: n of m."), and one line per view received but
  not analysed, with the reason (out of scope, outside the model's training domain, cannot
  be decoded).

A study none of whose views could be analysed keeps its study group without a probability
or a Present / Absent evaluation, and a comment "Study not analysed: <reason>": the report
says that the node looked and why it gives no answer, never a number it did not compute.

Evidence is the views the model was given (the Current Requested Procedure Evidence
Sequence); views that never reached the model are named in the comments only.
"""

from __future__ import annotations

import numpy as np
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    Comprehensive3DSR,
    ContainerContentItem,
    DeviceObserverIdentifyingAttributes,
    GraphicTypeValues,
    ImageRegion,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForMeasurementGroup,
    SourceImageForRegion,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.sr.codedict import codes

from models.registry import Finding

from . import _codes as c
from ._common import contributing_algorithm, evidence_header, series_description
from .types import AlgorithmInfo, StudyResult, ViewResult
from .uids import algorithm_device_uid, result_uid, set_implementation

__all__ = ["build_sr", "machine_generated_statement"]


def machine_generated_statement(algorithm: AlgorithmInfo) -> str:
    """The sentence that says who made the result and how far it may be trusted."""
    text = (
        f"Machine-generated result of the fracture detection algorithm {algorithm.name} "
        f"version {algorithm.version} ({algorithm.manufacturer}); not reviewed by a physician."
    )
    if algorithm.synthetic_demo:
        text += (
            " SYNTHETIC DEMO MODEL: trained on synthetic radiographs only; NOT FOR DIAGNOSTIC"
            " USE."
        )
    return text


def _algorithm_id(algorithm: AlgorithmInfo, parameters: list[str] | None = None
                  ) -> AlgorithmIdentification:
    return AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        manufacturer=algorithm.manufacturer,
        parameters=parameters,
    )


def _probability(value: float) -> Measurement:
    return Measurement(name=c.PROBABILITY, value=round(float(value), 6), unit=c.NO_UNITS)


def _presence(positive: bool) -> QualitativeEvaluation:
    return QualitativeEvaluation(name=c.FRACTURE, value=c.PRESENT if positive else c.ABSENT)


def _tracking(job_key: str, label: str, *parts: str) -> TrackingIdentifier:
    return TrackingIdentifier(uid=result_uid(job_key, "tracking", *parts), identifier=label)


def _study_group(study: StudyResult, algorithm: AlgorithmInfo, job_key: str
                 ) -> MeasurementsAndQualitativeEvaluations:
    parameters = [f"aggregation={study.aggregation}", f"threshold={study.threshold:g}"]
    analysed = study.fracture_probability is not None and study.positive is not None
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(job_key, "Study result", "study"),
        finding_type=c.FRACTURE,
        algorithm_id=_algorithm_id(algorithm, parameters),
        measurements=([_probability(study.fracture_probability)]
                      if study.fracture_probability is not None else None),
        qualitative_evaluations=([_presence(study.positive)]
                                 if analysed and study.positive is not None else None),
    )


def _site_group(label: str, p: float, study: StudyResult, algorithm: AlgorithmInfo,
                job_key: str) -> MeasurementsAndQualitativeEvaluations:
    site = c.site_finding_site(label)
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(job_key, f"Site {label}"[:64], "site", label),
        finding_type=c.FRACTURE,
        algorithm_id=_algorithm_id(algorithm, [f"aggregation={study.aggregation}"]),
        finding_sites=[site] if site is not None else None,
        measurements=[_probability(p)],
        qualitative_evaluations=[_presence(p >= study.threshold)],
    )


def _view_group(index: int, view: ViewResult, study: StudyResult, algorithm: AlgorithmInfo,
                job_key: str) -> MeasurementsAndQualitativeEvaluations:
    site = c.finding_site(view.source, view.site)
    p = view.prediction.fracture_probability
    assert p is not None, "only analysed views have a view group"
    label = f"View {index}" + (f" {view.site}" if view.site else "")
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(job_key, label[:64], "view", view.sop_instance_uid),
        finding_type=c.FRACTURE,
        algorithm_id=_algorithm_id(algorithm),
        finding_sites=[site] if site is not None else None,
        measurements=[_probability(p)],
        qualitative_evaluations=[_presence(p >= study.threshold)],
        source_images=[SourceImageForMeasurementGroup.from_source_image(view.source)],
    )


def box_polyline(box: tuple[float, float, float, float]) -> np.ndarray:
    """A closed 5-point SCOORD polyline around pixels x0..x1, y0..y1 (pixel-centre
    coordinates, inclusive) in DICOM image coordinates."""
    x0, y0, x1, y1 = box
    left, top, right, bottom = x0, y0, x1 + 1.0, y1 + 1.0  # pixel edges = centre -/+ 0.5, +0.5
    return np.array(
        [[left, top], [right, top], [right, bottom], [left, bottom], [left, top]],
        dtype=np.float32,
    )


def scoord_point(point: tuple[float, float]) -> np.ndarray:
    """A SCOORD POINT for a pixel-centre coordinate (the centre of pixel (0, 0) is (0.5, 0.5))."""
    return np.array([[point[0] + 0.5, point[1] + 0.5]], dtype=np.float32)


def _finding_groups(index: int, view: ViewResult, algorithm: AlgorithmInfo, job_key: str
                    ) -> list[PlanarROIMeasurementsAndQualitativeEvaluations]:
    source = SourceImageForRegion.from_source_image(view.source)
    site = c.finding_site(view.source, view.site)
    groups = []
    for k, finding in enumerate(view.prediction.findings, start=1):
        regions: list[tuple[ImageRegion, CodedConcept]] = []
        if finding.box is not None:
            regions.append((ImageRegion(GraphicTypeValues.POLYLINE, box_polyline(finding.box),
                                        source), c.OUTLINE))
        regions.append((ImageRegion(GraphicTypeValues.POINT, scoord_point(finding.point), source),
                        c.REPRESENTATIVE_POINT))
        for region, purpose in regions:
            groups.append(PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=_tracking(
                    job_key, f"View {index} finding {k}", "finding", view.sop_instance_uid, str(k)
                ),
                referenced_region=region,
                finding_type=c.FRACTURE,
                algorithm_id=_algorithm_id(algorithm),
                finding_sites=[site] if site is not None else None,
                measurements=[_evidence(finding)],
                geometric_purpose=purpose,
            ))
    return groups


def _evidence(finding: Finding) -> Measurement:
    return Measurement(
        name=c.EVIDENCE_SCORE,
        value=round(float(finding.score), 6),
        unit=c.NO_UNITS,
        derivation=c.MAXIMUM,
    )


def _comments(study: StudyResult, algorithm: AlgorithmInfo) -> ContainerContentItem:
    texts = [machine_generated_statement(algorithm)]
    if algorithm.notice:
        texts.append(algorithm.notice)
    total = len(study.views) + len(study.skipped)
    texts.append(f"Views analysed: {study.views_analysed} of {total}.")
    if not study.analysed:
        texts.append(f"Study not analysed: {study.reason}.")
    texts += [
        f"View not analysed: SOP Instance UID {v.sop_instance_uid}: "
        f"{v.prediction.not_analysed_reason or 'no reason given'}"
        for v in study.views if not v.analysed
    ]
    texts += [
        f"View not analysed: SOP Instance UID {s.sop_instance_uid}: {s.reason or 'no reason given'}"
        for s in study.skipped
    ]
    container = ContainerContentItem(
        name=c.QUALITATIVE_EVALUATIONS, relationship_type=RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = [
        TextContentItem(name=c.COMMENT, value=text,
                        relationship_type=RelationshipTypeValues.CONTAINS)
        for text in texts
    ]
    return container


def _observation_context(algorithm: AlgorithmInfo) -> ObservationContext:
    device = DeviceObserverIdentifyingAttributes(
        uid=algorithm_device_uid(algorithm.manufacturer, algorithm.name, algorithm.version),
        name=f"{algorithm.name} {algorithm.version}"[:64],
        manufacturer_name=algorithm.manufacturer,
        model_name=algorithm.name,
    )
    return ObservationContext(
        observer_device_context=ObserverContext(
            observer_type=codes.cid270.Device, observer_identifying_attributes=device
        )
    )


def build_sr(
    study: StudyResult,
    algorithm: AlgorithmInfo,
    *,
    job_key: str,
    series_number: int = 9001,
    instance_number: int = 1,
) -> Comprehensive3DSR:
    """The study result as a Comprehensive 3D SR in a new series of the source study.

    UIDs derive from ``job_key`` (:func:`~workers.results.result_uid`), so a retried job
    builds the same instance. Preliminary (``PRELIMINARY``), complete and unverified.
    Raises ``ValueError`` when the model was given no view of the study.
    """
    if not study.views:
        raise ValueError("the study result has no processed view to report on")
    groups: list[MeasurementsAndQualitativeEvaluations
                 | PlanarROIMeasurementsAndQualitativeEvaluations] = [
        _study_group(study, algorithm, job_key)
    ]
    groups += [_site_group(label, p, study, algorithm, job_key)
               for label, p in sorted(study.site_probabilities.items())]
    for index, view in enumerate(study.views, start=1):
        if not view.analysed:
            continue  # named in the comments with the reason
        groups.append(_view_group(index, view, study, algorithm, job_key))
        groups.extend(_finding_groups(index, view, algorithm, job_key))
    report = MeasurementReport(
        observation_context=_observation_context(algorithm),
        procedure_reported=c.RADIOGRAPHIC_PROCEDURE,
        imaging_measurements=groups,
        title=c.REPORT_TITLE,
    )
    report[0].ContentSequence.append(_comments(study, algorithm))
    schemes = [c.IHE_CODING_SCHEME]
    if any(v.prediction.findings for v in study.views):
        schemes.insert(0, c.PRIVATE_CODING_SCHEME)
    sr = Comprehensive3DSR(
        evidence=[evidence_header(v.source) for v in study.views],
        content=report[0],
        series_instance_uid=result_uid(job_key, "sr-series"),
        series_number=series_number,
        sop_instance_uid=result_uid(job_key, "sr"),
        instance_number=instance_number,
        manufacturer=algorithm.manufacturer,
        is_complete=True,
        is_final=False,
        is_verified=False,
        record_evidence=False,
        series_description=series_description("AI fracture report", algorithm),
        coding_schemes=schemes,
    )
    sr.ContributingEquipmentSequence.append(contributing_algorithm(algorithm))
    set_implementation(sr.file_meta)
    return sr
