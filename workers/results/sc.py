"""One Secondary Capture per view the model was given: the view with the heatmap, boxes and
a banner. A view the model did not analyse (outside its training domain) is shown plain,
without heatmap or boxes, its banner saying "NOT ANALYSED" and why. The banner uses the
words of the SR and of ``pacs-node studies``: POSITIVE, NEGATIVE, NOT ANALYSED.

Built with :meth:`highdicom.sc.SCImage.from_ref_dataset`, so patient and study attributes
come from the source. Each SC is RGB 8-bit, in a new series of the source study, derived
(``DERIVED\\SECONDARY``), references its source (Source Image Sequence), carries the
source's laterality and orientation (Laterality is Type 2C in General Series) and says
that text is burned in (Burned In Annotation ``YES``: the banner, and whatever the source
pixels already carried). Its pixels are compressed losslessly, JPEG 2000 Lossless by default
(about a fifth of the uncompressed size, where RLE keeps about 0.5-0.7: a radiograph's noise
leaves few runs; see :data:`SC_TRANSFER_SYNTAXES`); delivery decompresses for a destination
that does not accept the stored syntax.
"""

from __future__ import annotations

from collections.abc import Callable

import pydicom
from highdicom import PatientOrientationValuesBiped
from highdicom.sc import SCImage
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from . import _codes as c
from ._common import contributing_algorithm, series_description, tolerant_header
from .overlay import BANNER_TEXT, BANNER_WARN, display_image, render_overlay, resize_view
from .sr import as_percent
from .types import AlgorithmInfo, StudyResult, ViewResult
from .uids import result_uid, set_implementation

__all__ = ["SC_TRANSFER_SYNTAXES", "banner_lines", "build_secondary_captures", "study_verdict"]

#: Transfer syntaxes an SC can be written in, each with the Photometric Interpretation its
#: pixels are stored in (they decode to RGB). Measured on a 2048 px synthetic hip view with
#: heatmap: RLE Lossless ~0.7 of the uncompressed size (~0.5 on RG3), JPEG 2000 Lossless with
#: the reversible colour transform ~0.2, but stored as YBR_RCT, which not every viewer decodes.
SC_TRANSFER_SYNTAXES: dict[str, str] = {
    RLELossless: "RGB",
    JPEG2000Lossless: "YBR_RCT",
    ExplicitVRLittleEndian: "RGB",
}

_NOT_DIAGNOSTIC = "SYNTHETIC DEMO MODEL - NOT FOR DIAGNOSTIC USE"
_ORIENTATION_LETTERS = {v.value for v in PatientOrientationValuesBiped}
# Body Part Examined defined terms (PS3.16 Annex L) of structures that are not paired, as
# dciodvfy reads them: the SC of such a view has no Laterality (checked with dciodvfy).
UNPAIRED_BODY_PARTS = frozenset({
    "ABDOMEN", "ABDOMENPELVIS", "BRAIN", "CHEST", "CHESTABDOMEN", "CHESTABDPELVIS", "COCCYX",
    "CSPINE", "CTSPINE", "HEAD", "HEADNECK", "HEART", "LSPINE", "LSSPINE", "NECK", "PELVIS",
    "SKULL", "SPINE", "SSPINE", "TLSPINE", "TSPINE", "WHOLEBODY",
})


def study_verdict(study: StudyResult) -> str:
    """The study's result in the node's vocabulary, as the SR words it:
    ``"POSITIVE - FRACTURE SUSPECTED (87.0 %)"``, ``"NEGATIVE - NO FRACTURE DETECTED
    (12.0 %)"`` or ``"NOT ANALYSED: <reason>"``."""
    if study.fracture_probability is None:
        return f"NOT ANALYSED: {study.reason}"
    verdict = ("POSITIVE - FRACTURE SUSPECTED" if study.positive
               else "NEGATIVE - NO FRACTURE DETECTED")
    return f"{verdict} ({as_percent(study.fracture_probability):.1f} %)"


def banner_lines(study: StudyResult, view: ViewResult, algorithm: AlgorithmInfo
                 ) -> list[tuple[str, tuple[int, int, int]]]:
    """The banner of one view's SC: (text, colour) per line. A view is POSITIVE or
    NEGATIVE at the study threshold, with its probability, or NOT ANALYSED and why."""
    p = view.prediction.fracture_probability
    n = len(view.prediction.findings)
    site = f" ({view.site})" if view.site else ""
    analysed = f"{study.views_analysed} of {len(study.views) + len(study.skipped)} views analysed"
    if p is None:
        this_view = (f"THIS VIEW{site}: NOT ANALYSED: {view.prediction.not_analysed_reason}",
                     BANNER_WARN)
    else:
        state = "POSITIVE" if p >= study.threshold else "NEGATIVE"
        this_view = (f"THIS VIEW{site}: {state} ({as_percent(p):.1f} %), {n} candidate "
                     f"region{'s' if n != 1 else ''}", BANNER_TEXT)
    # "50%" without a space: the banner wraps at spaces, and a lone "%" reads badly.
    parameters = (f"  [{study.aggregation}, threshold {as_percent(study.threshold):g}%; "
                  f"{analysed}]" if study.analysed else f"  [{analysed}]")
    lines = [
        (f"STUDY: {study_verdict(study)}{parameters}",
         BANNER_WARN if study.positive else BANNER_TEXT),
        this_view,
        (f"AI model {algorithm.name} {algorithm.version}: machine-generated, not reviewed",
         BANNER_TEXT),
    ]
    if algorithm.synthetic_demo:
        lines.append((_NOT_DIAGNOSTIC, BANNER_WARN))
    return lines


def _orientation(ds: Dataset) -> list[str] | None:
    """The source's Patient Orientation when it is valid, else None (left empty: Type 2C).

    It is set after construction: highdicom accepts single letters only ("L", not "LF").
    """
    value = ds.get("PatientOrientation")
    values = [str(v).strip().upper() for v in (value or [])] if value is not None else []
    valid = len(values) == 2 and all(v and set(v) <= _ORIENTATION_LETTERS for v in values)
    return values if valid else None


def _derivation(algorithm: AlgorithmInfo, scale: float, analysed: bool) -> str:
    if analysed:
        text = (
            f"Source rendered through its VOI LUT/window, bone bright; fracture evidence heatmap "
            f"of {algorithm.name} {algorithm.version} blended in (JET, opacity grows with "
            "evidence), candidate boxes and result banner burned in"
        )
    else:
        text = (
            "Source rendered through its VOI LUT/window, bone bright; not analysed by "
            f"{algorithm.name} {algorithm.version} (no heatmap, no boxes); result banner "
            "burned in"
        )
    if abs(scale - 1.0) > 1e-9:
        text += f"; image scaled by {scale:.4g}"
    return text + "."


def _build_one(index: int, view: ViewResult, study: StudyResult, algorithm: AlgorithmInfo,
               job_key: str, series_number: int, max_size: int, syntax: str) -> SCImage:
    source = view.source
    display = display_image(source)
    display, heatmap, findings, scale = resize_view(
        display, view.prediction.heatmap, view.prediction.findings, max_size=max_size
    )
    lines = banner_lines(study, view, algorithm)
    pixels = render_overlay(display, heatmap, findings, [t for t, _ in lines],
                            line_colours=[col for _, col in lines])
    laterality = c.laterality_of(source)
    # Laterality (General Series, Type 2C) is required for a paired structure when Image
    # Laterality is not sent, and must be absent when it is or when the body part is a
    # defined term for an unpaired one (CHEST, PELVIS...). A free-text body part cannot be
    # told apart, so it counts as paired.
    unpaired = str(source.get("BodyPartExamined", "") or "") in UNPAIRED_BODY_PARTS
    needs_laterality = not source.get("ImageLaterality") and not unpaired
    header, out_of_spec = tolerant_header(source)
    sc = SCImage.from_ref_dataset(
        ref_dataset=header,
        pixel_array=pixels,
        photometric_interpretation=SC_TRANSFER_SYNTAXES[syntax],
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=result_uid(job_key, "sc-series"),
        series_number=series_number,
        sop_instance_uid=result_uid(job_key, "sc", view.sop_instance_uid),
        instance_number=index,
        manufacturer=algorithm.manufacturer,
        laterality=laterality if needs_laterality and laterality in ("R", "L") else None,
        patient_orientation=("L", "F"),  # replaced below
        series_description=series_description("AI fracture heatmap", algorithm),
        coding_schemes=[c.IHE_CODING_SCHEME],
        transfer_syntax_uid=syntax,
    )
    # highdicom infers list[str] from its own assignment; None leaves the Type 2C value empty
    sc.PatientOrientation = _orientation(source)  # type: ignore[assignment]
    if needs_laterality and "Laterality" not in sc:
        sc.Laterality = None  # type: ignore[assignment]  # Type 2C: the side is unknown
    elif not needs_laterality and "Laterality" in sc:
        del sc.Laterality  # Type 2C: Image Laterality carries the side
    if source.get("ImageLaterality"):
        sc.ImageLaterality = source.ImageLaterality
    if source.get("BodyPartExamined"):
        sc.BodyPartExamined = source.BodyPartExamined
    sc.BurnedInAnnotation = "YES"
    sc.ConversionType = "WSD"
    sc.SecondaryCaptureDeviceManufacturer = algorithm.manufacturer
    sc.SecondaryCaptureDeviceManufacturerModelName = algorithm.name[:64]
    sc.SecondaryCaptureDeviceSoftwareVersions = algorithm.version[:64]
    sc.DerivationDescription = _derivation(algorithm, scale, view.analysed)[:1024]
    purpose = Dataset()
    purpose.CodeValue = c.SOURCE_FOR_PROCESSING.value
    purpose.CodingSchemeDesignator = c.SOURCE_FOR_PROCESSING.scheme_designator
    purpose.CodeMeaning = c.SOURCE_FOR_PROCESSING.meaning
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    reference.PurposeOfReferenceCodeSequence = [purpose]
    sc.SourceImageSequence = [reference]
    notice = algorithm.notice or ""
    repaired = ("Source attributes out of spec, repaired or left empty: "
                + ", ".join(out_of_spec) + ".") if out_of_spec else ""
    sc.ImageComments = " ".join(
        part for part in ("Machine-generated result, not reviewed by a physician.", notice,
                          repaired) if part
    )[:10240]
    # highdicom's inferred item type; a plain Dataset item is valid
    sc.ContributingEquipmentSequence.append(contributing_algorithm(algorithm))  # type: ignore[arg-type]
    set_implementation(sc.file_meta)
    return sc


def build_secondary_captures(
    study: StudyResult,
    algorithm: AlgorithmInfo,
    *,
    job_key: str,
    series_number: int = 9002,
    max_size: int = 2048,
    transfer_syntax_uid: str = JPEG2000Lossless,
    on_error: Callable[[ViewResult, Exception], None] | None = None,
) -> list[pydicom.Dataset]:
    """One Secondary Capture per view the model was given, in order, in one new series.

    Views larger than ``max_size`` on their longer side are scaled down (aspect kept).
    UIDs derive from ``job_key``. Pixels are encoded in ``transfer_syntax_uid``, one of
    :data:`SC_TRANSFER_SYNTAXES`. Raises ``ValueError`` on another syntax. A view whose
    overlay cannot be built (its pixels cannot be decoded...) raises, or, with
    ``on_error``, is reported to it and left out: one bad view never costs the others.
    """
    if transfer_syntax_uid not in SC_TRANSFER_SYNTAXES:
        raise ValueError(f"transfer_syntax_uid must be one of {sorted(SC_TRANSFER_SYNTAXES)}, "
                         f"got {transfer_syntax_uid!r}")
    out: list[pydicom.Dataset] = []
    for i, view in enumerate(study.views, start=1):
        try:
            out.append(_build_one(i, view, study, algorithm, job_key, series_number, max_size,
                                  transfer_syntax_uid))
        except Exception as exc:
            if on_error is None:
                raise
            on_error(view, exc)
    return out
