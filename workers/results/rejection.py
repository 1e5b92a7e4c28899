"""The IHE IOCM rejection note that withdraws a superseded result from an archive.

When a new job replaces a study's result, the earlier SR and overlays stay in every archive
that received them. IHE Radiology IOCM (Imaging Object Change Management, RAD TF-1 §42)
lets the node say so: a Key Object Selection document whose title is a rejection reason
(CID 7011) and which references exactly the rejected instances. An IOCM-aware archive hides
them; the new SR names the old one in its Predecessor Documents Sequence either way.

Title: (113001, DCM, "Rejected for Quality Reasons"). Of the CID 7011 reasons it is the one
that fits: the old result is not wrong about the patient (113037 "Rejected for Patient
Safety Reasons" and 113038 "Incorrect Modality Worklist Entry" are for misidentified
data and raise safety workflows), nor expired (113039 "Data Retention Policy Expired"
makes archives delete). A superseded result is "not to be used, kept for the record",
which is how IOCM archives treat 113001: hidden from regular queries, retained.
"""

from __future__ import annotations

from collections.abc import Sequence

from highdicom.ko import KeyObjectSelection, KeyObjectSelectionDocument
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset

from ._common import evidence_header
from .types import AlgorithmInfo
from .uids import result_uid, set_implementation

__all__ = ["REJECTED_FOR_QUALITY_REASONS", "build_rejection_note"]

REJECTED_FOR_QUALITY_REASONS = CodedConcept("113001", "DCM", "Rejected for Quality Reasons")


def build_rejection_note(rejected: Sequence[Dataset], algorithm: AlgorithmInfo | None = None,
                         *, job_key: str, series_number: int = 9000,
                         description: str = "") -> KeyObjectSelectionDocument:
    """A KOS rejecting ``rejected`` (headers of the superseded SR and overlays of one
    study), in a new series of that study; UIDs derive from ``job_key`` (the job whose
    result replaces them), so a retried job builds the same note.

    Raises ``ValueError`` when nothing is rejected or the instances span several studies.
    """
    if not rejected:
        raise ValueError("a rejection note needs at least one rejected instance")
    studies = {str(ds.StudyInstanceUID) for ds in rejected}
    if len(studies) != 1:
        raise ValueError(f"a rejection note covers one study, got {len(studies)}")
    headers = [evidence_header(ds) for ds in rejected]
    content = KeyObjectSelection(
        document_title=REJECTED_FOR_QUALITY_REASONS,
        referenced_objects=headers,
        description=(description or "Superseded by a newer machine-generated result of "
                     "pacs-node")[:1024],
    )
    kos = KeyObjectSelectionDocument(
        evidence=headers,
        content=content,
        series_instance_uid=result_uid(job_key, "rejection-series"),
        series_number=series_number,
        sop_instance_uid=result_uid(job_key, "rejection"),
        instance_number=1,
        manufacturer=algorithm.manufacturer if algorithm else "pacs-node",
    )
    kos.SeriesDescription = "Rejection note (IOCM): superseded AI results"
    set_implementation(kos.file_meta)
    return kos
