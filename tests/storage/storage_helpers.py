"""Builders shared by the storage tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from io import BytesIO
from typing import Any

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from storage import InstanceMeta

ROOT = "1.2.826.0.1.3680043.10.1234"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
T0 = datetime(2026, 1, 5, 8, 0, 0, tzinfo=UTC)


def uid(*parts: int) -> str:
    return ".".join([ROOT, *(str(p) for p in parts)])


def meta(study: int = 1, series: int = 1, sop: int = 1, **fields: Any) -> InstanceMeta:
    values: dict[str, Any] = dict(
        sop_instance_uid=uid(study, series, sop), sop_class_uid=CR_IMAGE,
        study_instance_uid=uid(study), series_instance_uid=uid(study, series),
        transfer_syntax_uid=ExplicitVRLittleEndian, patient_id=f"PID{study:04d}",
        patient_name=f"Doe^Jane{study}", patient_birth_date="19700101", patient_sex="F",
        study_date="20260105", study_time="080000", accession_number=f"ACC{study}",
        study_description="WRIST 2 VIEWS", modality="CR", series_number=series,
        series_description="PA", body_part_examined="WRIST", laterality="L",
        instance_number=sop, rows=512, columns=512, view_position="PA",
        photometric_interpretation="MONOCHROME2")
    values.update(fields)
    return InstanceMeta(**values)


def content(tag: str) -> bytes:
    return f"DICM-ish content {tag}".encode() * 32


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def encoded_instance(m: InstanceMeta) -> bytes:
    """A small real Part 10 file carrying ``m``'s attributes."""
    ds = Dataset()
    ds.SOPClassUID = m.sop_class_uid
    ds.SOPInstanceUID = m.sop_instance_uid
    ds.StudyInstanceUID = m.study_instance_uid
    ds.SeriesInstanceUID = m.series_instance_uid
    ds.PatientName = m.patient_name
    ds.PatientID = m.patient_id
    ds.PatientBirthDate = m.patient_birth_date
    ds.PatientSex = m.patient_sex
    ds.StudyDate = m.study_date
    ds.StudyTime = m.study_time
    ds.AccessionNumber = m.accession_number
    ds.StudyDescription = m.study_description
    ds.Modality = m.modality
    ds.SeriesNumber = m.series_number
    ds.SeriesDescription = m.series_description
    ds.BodyPartExamined = m.body_part_examined
    ds.Laterality = m.laterality
    ds.InstanceNumber = m.instance_number
    ds.ViewPosition = m.view_position
    ds.Rows = m.rows
    ds.Columns = m.columns
    ds.PhotometricInterpretation = m.photometric_interpretation
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = m.sop_class_uid
    ds.file_meta.MediaStorageSOPInstanceUID = m.sop_instance_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
