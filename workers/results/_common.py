"""Pieces shared by the SR and Secondary Capture writers."""

from __future__ import annotations

import copy
import re
import warnings

from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.valuerep import validate_value

from ._codes import PROCESSING_ALGORITHM
from .types import AlgorithmInfo

_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}  # Pixel Data, Float / Double Float Pixel Data
#: Type 2 Patient / Study attributes highdicom reads from the evidence.
_TYPE2 = (
    "PatientID", "PatientName", "PatientBirthDate", "PatientSex",
    "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName",
)


#: Patient and study attributes the writers copy into every result. Real modalities send
#: out-of-spec values (a birth date written 1901-02-03); they are repaired where the intent
#: is plain, else left empty, and never stop a result.
_COPIED = (*_TYPE2, "PatientAge", "StudyDescription", "SeriesDate", "SeriesTime",
           "ContentDate", "ContentTime", "AcquisitionDate", "AcquisitionTime")
_DATE_FORMS = (re.compile(r"(\d{4})[-/.](\d{2})[-/.](\d{2})"),)
_DATE_DMY = re.compile(r"(\d{2})\.(\d{2})\.(\d{4})")
_TIME_FORM = re.compile(r"(\d{2}):(\d{2})(?::(\d{2})(\.\d{1,6})?)?")
_WIDTH = {"SH": 16, "LO": 64, "CS": 16, "AS": 4, "PN": 64 * 5}


def _valid(vr: str, value: object) -> bool:
    if any(ord(ch) < 32 and ch != "\x1b" for ch in str(value)):
        return False  # a control character (ESC aside, for character sets) in a name or code
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            validate_value(vr, value, pydicom_config.RAISE)
    except Exception:  # noqa: BLE001 - any complaint means "not valid"
        return False
    return True


def _repair(vr: str, value: object) -> object | None:
    """A valid form of an out-of-spec value when its meaning is plain, else None."""
    text = str(value).strip()
    if vr == "DA":
        if match := _DATE_FORMS[0].fullmatch(text):
            return "".join(match.groups())
        if match := _DATE_DMY.fullmatch(text):
            day, month, year = match.groups()
            return f"{year}{month}{day}"
    if vr == "TM" and (match := _TIME_FORM.fullmatch(text)):
        hours, minutes, seconds, fraction = match.groups()
        return f"{hours}{minutes}{seconds or ''}{fraction or ''}"
    if vr in _WIDTH:
        cleaned = "".join(ch for ch in text if ch.isprintable())[:_WIDTH[vr]]
        return cleaned if cleaned != text else None
    return None


def tolerant_header(ds: Dataset) -> tuple[Dataset, list[str]]:
    """A copy of the source's attributes without its pixels, ready for the writers, and
    the keywords of copied patient/study attributes that were out of spec (repaired where
    the intent is plain, such as 1901-02-03 for 19010203, else left empty). Absent Type 2
    Patient / Study attributes are present and empty (highdicom needs them). Values are
    never reported, only keywords."""
    header = Dataset()
    for element in ds:
        if element.tag not in _PIXEL_TAGS:
            # A copy: the result must never share (and so change) the source's elements.
            header.add(copy.deepcopy(element))
    fixed: list[str] = []
    for keyword in _COPIED:
        if keyword not in header:
            continue
        element = header[keyword]
        if element.value in (None, "") or _valid(element.VR, element.value):
            continue
        repaired = _repair(element.VR, element.value)
        element.value = repaired if repaired is not None and _valid(element.VR, repaired) \
            else None
        fixed.append(keyword)
    for keyword in _TYPE2:
        if keyword not in header:
            setattr(header, keyword, None)
    return header, fixed


def evidence_header(ds: Dataset) -> Dataset:
    """The source's attributes as the writers copy them (:func:`tolerant_header`)."""
    return tolerant_header(ds)[0]


def series_description(what: str, algorithm: AlgorithmInfo) -> str:
    """A Series Description (LO, at most 64 characters): the demo warning when the model is
    a synthetic demo, else the model's name and version."""
    if algorithm.synthetic_demo:
        return f"{what[:22]} - SYNTHETIC DEMO, NOT FOR DIAGNOSTIC USE"
    return f"{what} ({algorithm.name} {algorithm.version}"[:63] + ")"


def contributing_algorithm(algorithm: AlgorithmInfo) -> Dataset:
    """IHE AI Results Contributing Equipment item: purpose (Newcode1, 99IHE, "Processing
    Algorithm"), the algorithm's manufacturer, name (model name) and version."""
    purpose = Dataset()
    purpose.CodeValue = PROCESSING_ALGORITHM.value
    purpose.CodingSchemeDesignator = PROCESSING_ALGORITHM.scheme_designator
    purpose.CodeMeaning = PROCESSING_ALGORITHM.meaning
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = [purpose]
    item.Manufacturer = algorithm.manufacturer
    item.ManufacturerModelName = algorithm.name[:64]
    item.SoftwareVersions = algorithm.version[:64]
    item.ContributionDescription = (
        "Fracture detection algorithm that produced this result"
        + (" (synthetic demo model, not for diagnostic use)" if algorithm.synthetic_demo else "")
    )
    return item
