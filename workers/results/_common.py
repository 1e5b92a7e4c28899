"""Pieces shared by the SR and Secondary Capture writers."""

from __future__ import annotations

import copy

from pydicom.dataset import Dataset

from ._codes import PROCESSING_ALGORITHM
from .types import AlgorithmInfo

_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}  # Pixel Data, Float / Double Float Pixel Data
#: Type 2 Patient / Study attributes highdicom reads from the evidence.
_TYPE2 = (
    "PatientID", "PatientName", "PatientBirthDate", "PatientSex",
    "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName",
)


def evidence_header(ds: Dataset) -> Dataset:
    """A copy of the source's attributes without its pixels, with absent Type 2 Patient /
    Study attributes present and empty (some modalities leave them out; highdicom needs them)."""
    header = Dataset()
    for element in ds:
        if element.tag not in _PIXEL_TAGS:
            # A copy: the result must never share (and so change) the source's elements.
            header.add(copy.deepcopy(element))
    for keyword in _TYPE2:
        if keyword not in header:
            setattr(header, keyword, None)
    return header


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
