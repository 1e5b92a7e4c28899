"""DICOM encoding of synthetic views: CR Image Storage or DX Image Storage - For Presentation.

Every file is Explicit VR Little Endian with a complete file meta header and passes dciodvfy
(tests/models/test_synth.py). UIDs are ``2.25.`` UUIDs derived from the set seed and study
index, so a rerun reproduces the same objects.
"""

from __future__ import annotations

import uuid
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian

from ._study import SynthStudy, SynthView

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://pacs-node.invalid/models/synth")
IMPLEMENTATION_CLASS_UID = f"2.25.{uuid.uuid5(_NAMESPACE, 'implementation').int}"
IMPLEMENTATION_VERSION = "PACSNODE_SYN1"
MANUFACTURER = "pacs-node synthetic"
NOTICE = "Synthetic radiograph (pacs-node models.synth): not a patient image"
# SNOMED CT anatomic regions (DICOM CID 4031)
_REGIONS = {"hip": ("24136001", "Hip joint"), "wrist": ("74670003", "Wrist joint")}


def synth_uid(seed: int, index: int, *parts: object) -> str:
    """Deterministic ``2.25.`` UID (a UUID5 of the set seed, study index and ``parts``)."""
    name = "/".join(str(p) for p in (seed, index, *parts))
    return f"2.25.{uuid.uuid5(_NAMESPACE, name).int}"


def study_uids(study: SynthStudy) -> tuple[str, list[tuple[str, str]]]:
    """Study Instance UID and ``(series, instance)`` UIDs of each view."""
    study_uid = synth_uid(study.seed, study.index, "study")
    per_view = [(synth_uid(study.seed, study.index, "series", v.number),
                 synth_uid(study.seed, study.index, "instance", v.number)) for v in study.views]
    return study_uid, per_view


def build_dataset(study: SynthStudy, view: SynthView, study_uid: str, series_uid: str,
                  sop_uid: str) -> Dataset:
    """The complete DICOM data set (with file meta) of one synthetic view."""
    dx = study.modality == "DX"
    sop_class = DX_PRESENTATION_STORAGE if dx else CR_IMAGE_STORAGE
    rows, cols = view.pixels.shape
    date = study.study_date.strftime("%Y%m%d")
    minute = int(study.study_time[2:4]) + 2 * view.number
    content_time = f"{study.study_time[:2]}{min(minute, 59):02d}{study.study_time[4:]}"
    spacing = f"{view.record['pixel_spacing_mm']:.5f}"
    accession = f"SY{study.seed % 10000:04d}{study.index:06d}"

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
    ds.StudyTime = study.study_time
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = content_time
    ds.AccessionNumber = accession
    ds.Modality = study.modality
    if dx:
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = "SYNTHETIC"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study.description
    ds.SeriesDescription = view.series_description
    ds.ManufacturerModelName = "models.synth"
    ds.PatientName = study.patient["name"]
    ds.PatientID = study.patient["id"]
    ds.PatientBirthDate = study.patient["birth_date"]
    ds.PatientSex = study.patient["sex"]
    ds.PatientAge = study.patient["age"]
    ds.BodyPartExamined = study.body_part
    ds.KVP = "75" if study.anatomy == "hip" else "55"
    ds.ViewPosition = view.position
    if dx:
        ds.DetectorType = "SCINTILLATOR"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = accession[-8:]
    ds.SeriesNumber = view.number
    ds.InstanceNumber = 1
    ds.PatientOrientation = list(view.orientation)
    if dx:
        ds.ImageLaterality = study.side
        region = Dataset()
        region.CodeValue, region.CodeMeaning = _REGIONS[study.anatomy]
        region.CodingSchemeDesignator = "SCT"
        ds.AnatomicRegionSequence = Sequence([region])
        ds.ViewCodeSequence = Sequence([_view_code(view)])
        ds.PositionerType = "COLUMN"
    elif study.body_part != "PELVIS":  # Laterality is only for paired body parts
        ds.Laterality = study.side
    ds.BurnedInAnnotation = "YES" if view.burned_text else "NO"
    ds.ImageComments = NOTICE
    ds.LossyImageCompression = "00"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = study.photometric
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelSpacing = [spacing, spacing]
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.BitsAllocated = 16
    ds.BitsStored = view.bits
    ds.HighBit = view.bits - 1
    ds.PixelRepresentation = 0
    if dx:
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1 if study.photometric == "MONOCHROME1" else -1
    ds.WindowCenter = f"{view.window[0]:.1f}"
    ds.WindowWidth = f"{view.window[1]:.1f}"
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    if dx:
        ds.PresentationLUTShape = (
            "INVERSE" if study.photometric == "MONOCHROME1" else "IDENTITY")
        ds.AcquisitionContextSequence = Sequence()
    ds.PixelData = view.pixels.astype("<u2").tobytes()
    ds["PixelData"].VR = "OW"
    return ds


# View Code Sequence items (DICOM CID 4010) by View Position; the values are pydicom's
# ``codes.cid4010`` (not imported: it costs every worker process ~0.1 s)
VIEW_CODES = {
    "AP": ("399348003", "antero-posterior"),
    "PA": ("272479007", "postero-anterior"),
    "LL": ("399173006", "left lateral"),
    "RL": ("399198007", "right lateral"),
    "": ("399059000", "postero-anterior oblique"),
}


def _view_code(view: SynthView) -> Dataset:
    """View Code Sequence item (DICOM CID 4010) of the view."""
    value, meaning = VIEW_CODES[view.position]
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "SCT"
    item.CodeMeaning = meaning
    return item


def encode(ds: Dataset) -> bytes:
    """The Part 10 file bytes of ``ds`` (preamble, file meta, Explicit VR Little Endian)."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_study(study: SynthStudy, root: Path) -> list[dict[str, object]]:
    """Write every view under ``root/<study>/<series>/<instance>.dcm``; their manifest entries."""
    study_uid, per_view = study_uids(study)
    records = []
    for view, (series_uid, sop_uid) in zip(study.views, per_view, strict=True):
        rel = Path(study_uid) / series_uid / f"{sop_uid}.dcm"
        data = encode(build_dataset(study, view, study_uid, series_uid, sop_uid))
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        record = dict(view.record)
        record.update(path=rel.as_posix(), study_instance_uid=study_uid,
                      series_instance_uid=series_uid, sop_instance_uid=sop_uid)
        records.append(record)
    return records

