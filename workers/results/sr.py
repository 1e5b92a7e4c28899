"""The study result as a Comprehensive 3D SR: a TID 1500 Imaging Measurement Report.

Content tree, in reading order (IHE AI Results; PS3.16 template numbers):

- TID 1500 root "Imaging Measurement Report": language (TID 1204), the model as a device
  observer (TID 1001, 1002, 1004), Procedure Reported "Radiographic imaging procedure".
- Impression (TEXT (121073, DCM, "Impression")): one line a reader takes in at once, e.g.
  "Fracture suspected: right wrist joint (93.0 %), 2 of 2 views analysed", "No fracture
  detected (4.1 %) in 3 analysed views", "Not analysed: outside the model's training domain",
  with "; k of n views not analysed" when some views were not.
- Comment (TEXT (121106, DCM, "Comment")): the machine-generated / not-for-diagnostic-use
  statement (:func:`machine_generated_statement`).
  Both TEXT items are a TID 1500 extension placed before the measurements: TID 1500 is
  extensible and PS3.16 section 6.2.5 allows added items "at any semantically appropriate
  location ... regardless of whether the order ... is significant".
- Imaging Measurements (TID 1500 row 6), left out when no view has a candidate region: one
  TID 1410 group per candidate region (tracking identifier and UID): its region is the box
  (closed POLYLINE, purpose "Outline"), or the peak (POINT, purpose "Representative point")
  when the region has no box; its TID 1419 measurement "Fracture evidence score" (derivation
  Maximum) is INFERRED FROM the region (a SCOORD SELECTED FROM the view) and, for a box, from
  its peak, a second SCOORD POINT "Representative point" (the TID 300 / TID 320 rows 3-4
  pattern; an extension of the extensible TID 1419, whose single Image Region is the box).
  SCOORD is in DICOM image coordinates: the top-left corner of the top-left pixel is (0, 0).
- Qualitative Evaluations (TID 1500 rows 12-14): CODE items "Fracture of bone" = Present /
  Absent for the study (with the algorithm, TID 4019, its aggregation and threshold as
  parameters), for each anatomic site of the aggregation (finding site) and for each analysed
  view (finding site, INFERRED FROM the view), each with its Probability (HAS PROPERTIES
  NUM); then TEXT comments with the model's notice (the synthetic-data warning for demo
  models), how many views were analysed ("Views analysed: n of m."), and one line per view
  received but not analysed, with the reason (out of scope, outside the model's training
  domain, cannot be decoded).

Why the study, site and view results are not TID 1501 measurement groups: every group in
Imaging Measurements must carry spatial coordinates for OHIF (3.13.2), whose SR loader reads
``coords[0]`` of each group and fails on a TID 1501 group without SCOORD, taking the whole
viewer down ("Something went wrong") for the study. Only the candidate regions have
coordinates, so only they are measurement groups; a viewer draws them on the view with their
evidence score. The score's first INFERRED FROM SCOORD is the region itself because
Cornerstone, when a reader tracks the SR's measurements, rebuilds the box (a RectangleROI) or
the point (a Probe) from the first SCOORD under the group's measurement.

Probabilities and evidence scores are written as percentages with one decimal, UCUM "%"
(CID 7181, like "1"), e.g. "87.0 %": a viewer shows the number with its unit as is (dsr2html
and OHIF print the unit's code value, and "0.87 1" reads as two numbers), one decimal is finer
than the model's calibration warrants yet keeps 99.6 apart from 99.9, and a value strictly
between 0 and 1 never shows as 0.0 % or 100.0 % (it is held to 0.1 % .. 99.9 %). The
impression line uses the same numbers. Every container is SEPARATE (not CONTINUOUS
narrative), so a renderer prints each item's concept name ("Probability: 87.0 %").

A study none of whose views could be analysed has no study evaluation and no probability,
and a comment "Study not analysed: <reason>": the report says that the node looked and why it
gives no answer, never a number it did not compute.

Evidence is the views the model was given (the Current Requested Procedure Evidence
Sequence); views that never reached the model are named in the comments only. Earlier SRs
this one replaces go to the Predecessor Documents Sequence (``previous_versions``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pydicom
from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    Comprehensive3DSR,
    ContainerContentItem,
    ContentSequence,
    CoordinatesForMeasurement,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    GraphicTypeValues,
    ImageRegion,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    NumContentItem,
    ObservationContext,
    ObserverContext,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    RelationshipTypeValues,
    SourceImageForMeasurement,
    SourceImageForRegion,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.sr.codedict import codes

from models.registry import Finding

from . import _codes as c
from ._common import (
    contributing_algorithm,
    evidence_header,
    series_description,
    tolerant_header,
)
from .types import AlgorithmInfo, StudyResult, ViewResult
from .uids import algorithm_device_uid, result_uid, set_implementation

__all__ = ["as_percent", "build_sr", "machine_generated_statement", "study_impression"]


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


def as_percent(value: float) -> float:
    """A probability or score in [0, 1] as the percentage the SR writes: one decimal, and a
    value strictly between 0 and 1 held to 0.1 .. 99.9 so it never reads as certain."""
    shown = round(100.0 * float(value), 1)
    if 0.0 < value < 1.0:
        shown = min(max(shown, 0.1), 99.9)
    return shown


def _shown(value: float) -> str:
    return f"{as_percent(value):.1f} %"


def _views(n: int) -> str:
    return f"{n} view{'s' if n != 1 else ''}"


def _site_words(label: str) -> str:
    """An aggregation site label as words: ``"WRIST R"`` -> ``"right wrist joint"``."""
    site = c.site_finding_site(label)
    if site is None:
        return label
    words = [site.value.meaning.lower()]
    if site.laterality is not None:
        words.insert(0, site.laterality.meaning.lower())
    return " ".join(words)


def study_impression(study: StudyResult) -> str:
    """The one line that opens the SR, e.g. ``"Fracture suspected: right lower leg (87.0 %),
    2 of 2 views analysed"``, ``"No fracture detected (12.0 %) in 3 analysed views"`` or
    ``"Not analysed: <reason>"``, followed by ``"; k of n views not analysed"`` when views
    were left out. Sites at or above the threshold are named, highest first."""
    total = len(study.views) + len(study.skipped)
    analysed = study.views_analysed
    missing = total - analysed
    if study.fracture_probability is None:
        text = f"Not analysed: {study.reason}"
    elif study.positive:
        sites = sorted(((p, label) for label, p in study.site_probabilities.items()
                        if p >= study.threshold), reverse=True)
        where = ", ".join(f"{_site_words(label)} ({_shown(p)})" for p, label in sites)
        text = (f"Fracture suspected: {where}" if where
                else f"Fracture suspected ({_shown(study.fracture_probability)})")
        text += (f", {analysed} of {_views(total)} analysed" if not missing
                 else f", {_views(analysed)} analysed")
    else:
        text = (f"No fracture detected ({_shown(study.fracture_probability)}) in "
                f"{analysed} analysed view{'s' if analysed != 1 else ''}")
    if missing:
        text += f"; {missing} of {_views(total)} not analysed"
    return text


def _tracking(job_key: str, label: str, *parts: str) -> TrackingIdentifier:
    return TrackingIdentifier(uid=result_uid(job_key, "tracking", *parts), identifier=label)


def _evaluation(positive: bool, p: float, *, site: FindingSite | None = None,
                algorithm: AlgorithmIdentification | None = None,
                source: pydicom.Dataset | None = None) -> CodeContentItem:
    """"Fracture of bone" = Present / Absent with its probability (HAS PROPERTIES), where
    (finding site), by which algorithm, and from which view (INFERRED FROM IMAGE)."""
    item = CodeContentItem(name=c.FRACTURE, value=c.PRESENT if positive else c.ABSENT,
                           relationship_type=RelationshipTypeValues.CONTAINS)
    children = ContentSequence()
    if site is not None:
        children.append(site)
    children.append(NumContentItem(name=c.PROBABILITY, value=as_percent(p), unit=c.PERCENT,
                                   relationship_type=RelationshipTypeValues.HAS_PROPERTIES))
    if algorithm is not None:
        children.extend(algorithm)
    if source is not None:
        children.append(SourceImageForMeasurement.from_source_image(source))
    item.ContentSequence = children
    return item


def _evaluations(study: StudyResult, algorithm: AlgorithmInfo) -> list[CodeContentItem]:
    """The study's verdict, then each aggregation site's, then each analysed view's."""
    if study.fracture_probability is None or study.positive is None:
        return []  # not analysed: the comments say why
    parameters = [f"aggregation={study.aggregation}", f"threshold={100 * study.threshold:g} %"]
    items = [_evaluation(study.positive, study.fracture_probability,
                         algorithm=_algorithm_id(algorithm, parameters))]
    items += [_evaluation(p >= study.threshold, p, site=c.site_finding_site(label))
              for label, p in sorted(study.site_probabilities.items())]
    for view in study.views:
        p = view.prediction.fracture_probability
        if p is None:
            continue  # named in the comments with the reason
        items.append(_evaluation(p >= study.threshold, p, source=view.source,
                                 site=c.finding_site(view.source, view.site)))
    return items


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
    """One TID 1410 group per candidate region: the box is the region and the peak is the
    point its evidence score was read at; without a box the peak is the region."""
    site = c.finding_site(view.source, view.site)
    groups = []
    for k, finding in enumerate(view.prediction.findings, start=1):
        point = scoord_point(finding.point)
        evidence = _evidence(finding)
        if finding.box is not None:
            region = ImageRegion(GraphicTypeValues.POLYLINE, box_polyline(finding.box),
                                 SourceImageForRegion.from_source_image(view.source))
            purpose = c.OUTLINE
        else:
            region = ImageRegion(GraphicTypeValues.POINT, point,
                                 SourceImageForRegion.from_source_image(view.source))
            purpose = c.REPRESENTATIVE_POINT
        groups.append(PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=_tracking(
                job_key, f"View {index} finding {k}", "finding", view.sop_instance_uid, str(k)
            ),
            referenced_region=region,
            finding_type=c.FRACTURE,
            algorithm_id=_algorithm_id(algorithm),
            finding_sites=[site] if site is not None else None,
            measurements=[evidence],
            geometric_purpose=purpose,
        ))
        # highdicom refuses coordinates on a measurement of a TID 1410 group (TID 1419 does
        # not invoke TID 320), so they are added to the NUM item, which the group holds by
        # reference, once the group is built: INFERRED FROM SCOORD SELECTED FROM the view, as
        # TID 320 rows 3-4 encode it. The region comes first (Cornerstone rebuilds the
        # annotation from the first one), then the peak inside a box.
        inferred_from = [(region.graphic_type, region.value, purpose)]
        if finding.box is not None:
            inferred_from.append((GraphicTypeValues.POINT, point, c.REPRESENTATIVE_POINT))
        for graphic_type, data, why in inferred_from:
            evidence[0].ContentSequence.append(CoordinatesForMeasurement(
                graphic_type, data, SourceImageForRegion.from_source_image(view.source),
                purpose=why,
            ))
    return groups


def _evidence(finding: Finding) -> Measurement:
    return Measurement(
        name=c.EVIDENCE_SCORE,
        value=as_percent(finding.score),
        unit=c.PERCENT,
        derivation=c.MAXIMUM,
    )


def _opening(study: StudyResult, algorithm: AlgorithmInfo) -> list[TextContentItem]:
    """The impression and the machine-generated statement, read before any number."""
    return [
        TextContentItem(name=c.IMPRESSION, value=study_impression(study),
                        relationship_type=RelationshipTypeValues.CONTAINS),
        TextContentItem(name=c.COMMENT, value=machine_generated_statement(algorithm),
                        relationship_type=RelationshipTypeValues.CONTAINS),
    ]


def _triage(triage: tuple[str, str] | None) -> list[CodeContentItem]:
    """The study's triage priority as a coded evaluation, its reason as the comment
    after it (TID 1500 rows 13-14)."""
    if triage is None:
        return []
    return [CodeContentItem(name=c.TRIAGE_PRIORITY, value=c.TRIAGE_VALUES[triage[0]],
                            relationship_type=RelationshipTypeValues.CONTAINS)]


def _qualitative_evaluations(study: StudyResult, algorithm: AlgorithmInfo,
                             triage: tuple[str, str] | None = None) -> ContainerContentItem:
    """TID 1500 row 12: the study, site and view verdicts and the triage priority (row 13),
    then the comments (row 14)."""
    texts = [algorithm.notice] if algorithm.notice else []
    if triage is not None:
        texts.append(f"Triage priority {triage[0]}: {triage[1]}.")
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
    out_of_spec = sorted({k for v in study.views for k in tolerant_header(v.source)[1]})
    if out_of_spec:
        texts.append("Source attributes out of spec, repaired or left empty in this report: "
                     + ", ".join(out_of_spec) + ".")
    container = ContainerContentItem(
        name=c.QUALITATIVE_EVALUATIONS, relationship_type=RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = ContentSequence([
        *_evaluations(study, algorithm),
        *_triage(triage),
        *(TextContentItem(name=c.COMMENT, value=text,
                          relationship_type=RelationshipTypeValues.CONTAINS)
          for text in texts),
    ])
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


def _check_previous_versions(previous_versions: Sequence[pydicom.Dataset], study_uid: str,
                             sop_instance_uid: str) -> None:
    for i, pre in enumerate(previous_versions):
        if not isinstance(pre, pydicom.Dataset):
            raise TypeError(
                f"previous_versions[{i}] must be a pydicom Dataset, got {type(pre).__name__}")
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                        "SOPClassUID"):
            if not pre.get(keyword):
                raise ValueError(f"previous_versions[{i}] has no {keyword}")
        if str(pre.StudyInstanceUID) != study_uid:
            raise ValueError(f"previous_versions[{i}] belongs to study {pre.StudyInstanceUID}, "
                             f"not to {study_uid}")
        if str(pre.SOPInstanceUID) == sop_instance_uid:
            raise ValueError(f"previous_versions[{i}] is the SR being built ({sop_instance_uid})")


def _separate(item: pydicom.Dataset) -> None:
    """Mark every container under ``item`` SEPARATE: its items are not one narrative text,
    and renderers then print each item with its concept name."""
    if item.get("ValueType") == "CONTAINER":
        item.ContinuityOfContent = "SEPARATE"
    for child in item.get("ContentSequence", []):
        _separate(child)


def _placeholder_group(job_key: str) -> MeasurementsAndQualitativeEvaluations:
    """A group that only satisfies highdicom's MeasurementReport; never written."""
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(job_key, "placeholder", "placeholder"))


def build_sr(
    study: StudyResult,
    algorithm: AlgorithmInfo,
    *,
    job_key: str,
    series_number: int = 9001,
    instance_number: int = 1,
    previous_versions: Sequence[pydicom.Dataset] = (),
    triage: tuple[str, str] | None = None,
) -> Comprehensive3DSR:
    """The study result as a Comprehensive 3D SR in a new series of the source study.

    ``triage``: the study's triage priority (a storage.triage.TriagePriority value) and
    why, written as a coded qualitative evaluation with its reason as a comment.

    UIDs derive from ``job_key`` (:func:`~workers.results.result_uid`), so a retried job
    builds the same instance. Preliminary (``PRELIMINARY``), complete and unverified.
    ``previous_versions`` are the headers of earlier SRs of the study this one replaces
    (Study, Series, SOP Instance and SOP Class UIDs); they are listed in the Predecessor
    Documents Sequence.

    Raises ``ValueError`` when the model was given no view of the study, or a previous
    version lacks a UID, belongs to another study or is this SR itself; ``TypeError`` when a
    previous version is not a dataset.
    """
    if not study.views:
        raise ValueError("the study result has no processed view to report on")
    sop_instance_uid = result_uid(job_key, "sr")
    _check_previous_versions(previous_versions, str(study.views[0].source.StudyInstanceUID),
                             sop_instance_uid)
    groups = [group for index, view in enumerate(study.views, start=1) if view.analysed
              for group in _finding_groups(index, view, algorithm, job_key)]
    report = MeasurementReport(
        observation_context=_observation_context(algorithm),
        procedure_reported=c.RADIOGRAPHIC_PROCEDURE,
        # highdicom wants at least one group; without a candidate region the container is
        # taken out below (TID 1500 needs row 6, 10 or 12: Qualitative Evaluations is there).
        imaging_measurements=groups or [_placeholder_group(job_key)],
        title=c.REPORT_TITLE,
    )
    root = report[0]
    at = next(i for i, item in enumerate(root.ContentSequence)
              if item.name == codes.DCM.ImagingMeasurements)
    if not groups:
        del root.ContentSequence[at]
    for offset, item in enumerate(_opening(study, algorithm)):
        root.ContentSequence.insert(at + offset, item)
    root.ContentSequence.append(_qualitative_evaluations(study, algorithm, triage))
    _separate(root)
    schemes = [c.IHE_CODING_SCHEME]
    if triage is not None or any(v.prediction.findings for v in study.views):
        schemes.insert(0, c.PRIVATE_CODING_SCHEME)
    sr = Comprehensive3DSR(
        evidence=[evidence_header(v.source) for v in study.views],
        content=root,
        series_instance_uid=result_uid(job_key, "sr-series"),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=algorithm.manufacturer,
        is_complete=True,
        is_final=False,
        is_verified=False,
        record_evidence=False,
        series_description=series_description("AI fracture report", algorithm),
        coding_schemes=schemes,
        previous_versions=list(previous_versions) or None,
    )
    # highdicom's inferred item type; a plain Dataset item is valid
    sr.ContributingEquipmentSequence.append(contributing_algorithm(algorithm))  # type: ignore[arg-type]
    set_implementation(sr.file_meta)
    return sr
