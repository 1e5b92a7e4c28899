"""What the index needs from an instance header, and the outcome of storing one."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from .errors import InvalidInstance
from .triage import requested_urgency
from .uids import validate_uid

__all__ = ["NODE_MANUFACTURER", "RESULT_SOP_CLASSES", "InstanceMeta", "StoreOutcome"]

#: The Manufacturer every object the node writes carries.
NODE_MANUFACTURER = "pacs-node"
#: SOP classes of the node's results: Comprehensive 3D SR, Secondary Capture, Key Object
#: Selection (IOCM rejection notes).
RESULT_SOP_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7",
    "1.2.840.10008.5.1.4.1.1.88.59",
})


class StoreOutcome(StrEnum):
    """What storing an instance did.

    ``DUPLICATE_CONFLICT_KEPT`` is the one the DIMSE layer answers with a warning: the SOP
    Instance UID was already stored with different content, and the first copy was kept.
    """

    STORED = "stored"
    DUPLICATE_IDENTICAL = "duplicate_identical"
    DUPLICATE_CONFLICT_KEPT = "duplicate_conflict_kept"
    DUPLICATE_OVERWRITTEN = "duplicate_overwritten"
    #: One of the node's own results sent back to it: the node's copy is kept.
    OWN_RESULT = "own_result"


# Widths of the index columns; longer (non-conformant) values are cut to fit.
_WIDTH = {"PN": 256, "LO": 64, "SH": 16, "CS": 16, "DA": 16, "TM": 16, "LIST": 128}


def _text(ds: Dataset, keyword: str, width: int) -> str:
    value: Any = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, list | tuple | MultiValue):
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    return text.strip(" \x00")[:width]


def _int(ds: Dataset, keyword: str) -> int | None:
    value: Any = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, list | tuple | MultiValue):
        if not value:
            return None
        value = value[0]
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if -(2**31) <= number < 2**31 else None


@dataclass(frozen=True)
class InstanceMeta:
    """Header attributes of one instance, as the index stores them.

    Patient fields are left out of ``repr`` so a logged object never carries patient data.
    """

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str = ""
    patient_id: str = field(default="", repr=False)
    patient_name: str = field(default="", repr=False)
    patient_birth_date: str = field(default="", repr=False)
    patient_sex: str = field(default="", repr=False)
    study_date: str = ""
    study_time: str = ""
    accession_number: str = field(default="", repr=False)
    study_description: str = ""
    modality: str = ""
    series_number: int | None = None
    series_description: str = ""
    body_part_examined: str = ""
    laterality: str = ""
    instance_number: int | None = None
    rows: int | None = None
    columns: int | None = None
    view_position: str = ""
    image_laterality: str = ""
    photometric_interpretation: str = ""
    # Made by a pacs-node (Manufacturer "pacs-node" on an SR, SC or KOS): a result, which
    # never re-opens its study for processing (loop protection).
    node_result: bool = False
    # Why the sender wants the study read urgently (storage.triage.requested_urgency:
    # STAT in the data, or C-STORE Priority HIGH added by the C-STORE handler), or "".
    requested_priority: str = ""

    def __post_init__(self) -> None:
        for name, keyword in (("sop_instance_uid", "SOPInstanceUID"),
                              ("sop_class_uid", "SOPClassUID"),
                              ("study_instance_uid", "StudyInstanceUID"),
                              ("series_instance_uid", "SeriesInstanceUID")):
            object.__setattr__(self, name, validate_uid(getattr(self, name), keyword))
        if self.transfer_syntax_uid:
            object.__setattr__(self, "transfer_syntax_uid",
                               validate_uid(self.transfer_syntax_uid, "TransferSyntaxUID"))

    @classmethod
    def from_dataset(cls, ds: Dataset, transfer_syntax_uid: str | None = None) -> InstanceMeta:
        """Extract the index attributes from a decoded header.

        Args:
            ds: the dataset (pixel data not needed).
            transfer_syntax_uid: the transfer syntax the instance is stored in; defaults to
                the dataset's file meta, if any.

        Raises:
            InvalidUID: a required UID is missing or not valid.
        """
        if transfer_syntax_uid is None:
            meta = getattr(ds, "file_meta", None)
            transfer_syntax_uid = str(getattr(meta, "TransferSyntaxUID", "") or "")
        sop_class = ds.get("SOPClassUID")
        if sop_class is None and getattr(ds, "file_meta", None) is not None:
            sop_class = ds.file_meta.get("MediaStorageSOPClassUID")
        return cls(
            sop_instance_uid=ds.get("SOPInstanceUID"),
            sop_class_uid=sop_class,
            study_instance_uid=ds.get("StudyInstanceUID"),
            series_instance_uid=ds.get("SeriesInstanceUID"),
            transfer_syntax_uid=transfer_syntax_uid,
            patient_id=_text(ds, "PatientID", _WIDTH["LO"]),
            patient_name=_text(ds, "PatientName", _WIDTH["PN"]),
            patient_birth_date=_text(ds, "PatientBirthDate", _WIDTH["DA"]),
            patient_sex=_text(ds, "PatientSex", _WIDTH["CS"]),
            study_date=_text(ds, "StudyDate", _WIDTH["DA"]),
            study_time=_text(ds, "StudyTime", _WIDTH["TM"]),
            accession_number=_text(ds, "AccessionNumber", _WIDTH["SH"]),
            study_description=_text(ds, "StudyDescription", _WIDTH["LO"]),
            modality=_text(ds, "Modality", _WIDTH["CS"]),
            series_number=_int(ds, "SeriesNumber"),
            series_description=_text(ds, "SeriesDescription", _WIDTH["LO"]),
            body_part_examined=_text(ds, "BodyPartExamined", _WIDTH["CS"]),
            laterality=_text(ds, "Laterality", _WIDTH["CS"]),
            instance_number=_int(ds, "InstanceNumber"),
            rows=_int(ds, "Rows"),
            columns=_int(ds, "Columns"),
            view_position=_text(ds, "ViewPosition", _WIDTH["CS"]),
            image_laterality=_text(ds, "ImageLaterality", _WIDTH["CS"]),
            photometric_interpretation=_text(ds, "PhotometricInterpretation", _WIDTH["CS"]),
            node_result=(_text(ds, "Manufacturer", _WIDTH["LO"]) == NODE_MANUFACTURER
                         and str(sop_class) in RESULT_SOP_CLASSES),
            requested_priority=requested_urgency(ds),
        )

    @classmethod
    def read(cls, source: bytes | Path) -> InstanceMeta:
        """Read the header of an encoded instance (Part 10 file or bytes) and extract it.

        Raises:
            InvalidUID: a required UID is missing or not valid.
            InvalidInstance: the content is not DICOM.
        """
        stream: Any = BytesIO(source) if isinstance(source, bytes | bytearray) else source
        try:
            ds = dcmread(stream, stop_before_pixels=True, force=False)
        except (InvalidDicomError, EOFError, ValueError, TypeError, AttributeError) as exc:
            raise InvalidInstance(f"cannot read DICOM header: {type(exc).__name__}") from exc
        return cls.from_dataset(ds)
