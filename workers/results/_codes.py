"""Coded concepts the result writers use, and the anatomy of a source view.

Standard codes are used wherever one exists (SNOMED CT "SCT", DICOM "DCM", UCUM, UMLS).
One private coding scheme, ``99PACSNODE``, holds the concept that has no standard code:

- ``FRX-EVIDENCE`` "Fracture evidence score": the peak of the model's fracture heatmap
  inside a candidate region, in [0, 1]; it is a model score, not a calibrated probability.
- ``TRIAGE-PRIORITY`` "Triage priority", valued ``TRIAGE-HIGH`` / ``-MEDIUM`` / ``-LOW`` /
  ``-NOT-ANALYSED`` / ``-FAILED``: the worklist priority the node gave the study
  (storage.triage; issue 14). No standard code says "AI triage category"; the values are
  operating points of the model, not a clinical urgency scale.

The IHE AI Results profile's ``(Newcode1, 99IHE, "Processing Algorithm")`` is the purpose of
reference of the algorithm in the Contributing Equipment Sequence.
"""

from __future__ import annotations

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept, FindingSite
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from models.preprocess import UNKNOWN, normalise_body_part

PRIVATE_SCHEME = "99PACSNODE"
IHE_SCHEME = "99IHE"

#: TID 1500 document title (CID 7021).
REPORT_TITLE = CodedConcept("126000", "DCM", "Imaging Measurement Report")
#: Procedure Reported: the projection radiography the model analysed.
RADIOGRAPHIC_PROCEDURE = CodedConcept("363680008", "SCT", "Radiographic imaging procedure")
#: Finding type of every measurement group.
FRACTURE = CodedConcept("125605004", "SCT", "Fracture of bone")
#: Qualitative evaluation values (CID 240 "Present-Absent").
PRESENT = CodedConcept("52101004", "SCT", "Present")
ABSENT = CodedConcept("272519000", "SCT", "Absent")
#: Probability of the group's finding, written in percent (UCUM "%", CID 7181; see sr.py).
PROBABILITY = CodedConcept("122157", "DCM", "Probability")
PERCENT = CodedConcept("%", "UCUM", "Percent")
#: Score of a candidate region and how it was derived from the heatmap (CID 7464).
EVIDENCE_SCORE = CodedConcept("FRX-EVIDENCE", PRIVATE_SCHEME, "Fracture evidence score")
MAXIMUM = CodedConcept("56851009", "SCT", "Maximum")
#: The study's triage priority (storage.triage.TriagePriority) and its values.
TRIAGE_PRIORITY = CodedConcept("TRIAGE-PRIORITY", PRIVATE_SCHEME, "Triage priority")
TRIAGE_VALUES = {
    "HIGH": CodedConcept("TRIAGE-HIGH", PRIVATE_SCHEME, "High: fracture suspected"),
    "MEDIUM": CodedConcept("TRIAGE-MEDIUM", PRIVATE_SCHEME, "Medium: fracture in doubt"),
    "LOW": CodedConcept("TRIAGE-LOW", PRIVATE_SCHEME, "Low: no fracture suspected"),
    "NOT_ANALYSED": CodedConcept("TRIAGE-NOT-ANALYSED", PRIVATE_SCHEME, "Not analysed"),
    "FAILED": CodedConcept("TRIAGE-FAILED", PRIVATE_SCHEME, "Analysis failed"),
}
#: Geometric purpose of the candidate regions (CID 219).
OUTLINE = CodedConcept("111041", "DCM", "Outline")
REPRESENTATIVE_POINT = CodedConcept("128140", "DCM", "Representative point")
#: TID 1500 row 12 container and the TEXT items placed in it.
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
COMMENT = CodedConcept("121106", "DCM", "Comment")
#: The one-line summary at the top of the SR. (121073, DCM, "Impression") is a TEXT element
#: of CID 7002 "Diagnostic Imaging Report Elements", the vocabulary of report narrative
#: (TID 2002), so a free-text sentence is its intended value. (111017, DCM, "CAD Processing
#: and Findings Summary") was the other candidate: it is a CODE item of the CAD SR
#: templates (TID 4001, TID 4101) whose values (CID 6047, "All algorithms succeeded; with
#: findings", ...) say nothing about the site, the probability or the views analysed.
IMPRESSION = CodedConcept("121073", "DCM", "Impression")
#: IHE AI Results: purpose of reference of the algorithm in Contributing Equipment.
PROCESSING_ALGORITHM = CodedConcept("Newcode1", IHE_SCHEME, "Processing Algorithm")
#: Purpose of reference of the source image of a Secondary Capture (CID 7202).
SOURCE_FOR_PROCESSING = CodedConcept(
    "121322", "DCM", "Source image for image processing operation"
)

PRIVATE_CODING_SCHEME = CodingSchemeIdentificationItem(
    designator=PRIVATE_SCHEME,
    name="pacs-node private codes",
    responsible_organization="pacs-node",
)
IHE_CODING_SCHEME = CodingSchemeIdentificationItem(
    designator=IHE_SCHEME,
    name="IHE Radiology codes not yet in the DICOM standard",
    responsible_organization="IHE",
)

# Canonical body parts of models.preprocess -> CID 4031 "Common Anatomic Regions".
_ANATOMY = {
    "HIP": codes.cid4031.HipJoint,
    "PELVIS": codes.cid4031.Pelvis,
    "FEMUR": codes.cid4031.Femur,
    "WRIST": codes.cid4031.WristJoint,
    "HAND": codes.cid4031.Hand,
    "FINGER": codes.cid4031.Finger,
    "FOREARM": codes.cid4031.Forearm,
    "ELBOW": codes.cid4031.ElbowJoint,
    "ARM": codes.cid4031.UpperArm,
    "SHOULDER": codes.cid4031.Shoulder,
    "CLAVICLE": codes.cid4031.Clavicle,
    "KNEE": codes.cid4031.Knee,
    "LEG": codes.cid4031.LowerLeg,
    "ANKLE": codes.cid4031.AnkleJoint,
    "FOOT": codes.cid4031.Foot,
    "CHEST": codes.cid4031.Chest,
    "SKULL": codes.cid4031.Skull,
    "CSPINE": codes.cid4031.CervicalSpine,
    "TSPINE": codes.cid4031.ThoracicSpine,
    "LSPINE": codes.cid4031.LumbarSpine,
    "SPINE": codes.cid4031.Spine,
    "ABDOMEN": codes.cid4031.Abdomen,
    "EXTREMITY": codes.cid4031.Extremity,
}
_LATERALITY = {"R": codes.cid244.Right, "L": codes.cid244.Left, "B": codes.cid244.Bilateral}


def laterality_of(ds: Dataset) -> str:
    """``"R"``, ``"L"``, ``"B"`` or ``""``: Image Laterality first, then (series) Laterality."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(ds.get(keyword, "") or "").strip().upper()
        if value in _LATERALITY:
            return value
    return ""


def site_finding_site(label: str) -> FindingSite | None:
    """The coded site of an aggregation site label such as ``"WRIST R"`` (None if unknown)."""
    code = _ANATOMY.get(normalise_body_part(label))
    if code is None:
        return None
    words = label.upper().split()
    laterality = _LATERALITY.get(words[-1]) if len(words) > 1 else None
    return FindingSite(anatomic_location=code, laterality=laterality)


def finding_site(ds: Dataset, site: str = "") -> FindingSite | None:
    """The coded anatomic site of a view (with laterality), or None when unknown.

    The body part comes from Body Part Examined, else from the aggregation's ``site`` label.
    """
    part = normalise_body_part(str(ds.get("BodyPartExamined", "") or ""))
    if part == UNKNOWN and site:
        part = normalise_body_part(site)
    code = _ANATOMY.get(part)
    if code is None:
        return None
    laterality = _LATERALITY.get(laterality_of(ds))
    return FindingSite(anatomic_location=code, laterality=laterality)
