"""Triage priority: the study-level urgency an admin's worklist sorts by and the SR states.

Derived from the study result at two operating points (``triage.high_threshold``, specific:
"fracture"; ``triage.doubt_threshold``, sensitive: "doubt") the way FDA-cleared triage
products flag a study for the reading list; ``NOT_ANALYSED`` and ``FAILED`` say the node
could not judge it. The sender's own urgency (C-STORE Priority HIGH, or Requested Procedure
Priority STAT/HIGH in the data) is a floor no result lowers: such a study is ``HIGH``
whatever the model says. Every change is recorded with who or what made it and why
(``priority_events``).
"""

from __future__ import annotations

from enum import StrEnum

from pydicom import Dataset

__all__ = [
    "LANE_BATCH",
    "LANE_LIVE",
    "LANE_URGENT",
    "RANK",
    "PrioritySource",
    "TriagePriority",
    "floored",
    "from_result",
    "lane_for",
    "requested_urgency",
]


class TriagePriority(StrEnum):
    HIGH = "HIGH"
    MEDIUM = "MEDIUM"
    LOW = "LOW"
    NOT_ANALYSED = "NOT_ANALYSED"
    FAILED = "FAILED"


class PrioritySource(StrEnum):
    RESULT = "result"  # the node's result
    SENDER = "sender"  # the modality or PACS asked for urgency
    USER = "user"  # an admin, with a reason


#: Worklist order, most urgent first. A study the node could not judge (failed, not
#: analysed) ranks above one it judged negative: unknown is never read as normal.
RANK = {TriagePriority.HIGH: 0, TriagePriority.MEDIUM: 1, TriagePriority.FAILED: 2,
        TriagePriority.NOT_ANALYSED: 3, TriagePriority.LOW: 4}

#: Job lanes of the queue, served in this order: the sender asked for urgency, live
#: studies by arrival, archive re-processing.
LANE_URGENT, LANE_LIVE, LANE_BATCH = 0, 1, 2

_URGENT_VALUES = {"STAT", "HIGH"}  # Requested Procedure Priority (0040,1003), PS3.3 C.4.11
_CSTORE_HIGH = 0x0001  # C-STORE Priority (0000,0700), PS3.7 9.1.1.1.10


def from_result(state: str | None, probability: float | None, *, high_threshold: float,
                doubt_threshold: float) -> TriagePriority:
    """The priority a result earns: HIGH at or above ``high_threshold``, MEDIUM at or above
    ``doubt_threshold``, LOW below; NOT_ANALYSED when no view was judged."""
    if state != "analysed" or probability is None:
        return TriagePriority.NOT_ANALYSED
    if probability >= high_threshold:
        return TriagePriority.HIGH
    if probability >= doubt_threshold:
        return TriagePriority.MEDIUM
    return TriagePriority.LOW


def floored(priority: TriagePriority, requested: str | None) -> TriagePriority:
    """``priority``, raised to HIGH when the sender asked for urgency (``requested``: why,
    or None): the sender's priority is a floor no result lowers."""
    if requested and RANK[priority] > RANK[TriagePriority.HIGH]:
        return TriagePriority.HIGH
    return priority


def requested_urgency(ds: Dataset | None, cstore_priority: int | None = None) -> str:
    """Why the sender wants this instance read urgently, or ``""``: C-STORE Priority HIGH,
    or Requested Procedure Priority STAT/HIGH at the top level or in the Request Attributes
    Sequence (0040,0275)."""
    if cstore_priority == _CSTORE_HIGH:
        return "C-STORE Priority HIGH"
    if ds is None:
        return ""
    items = [ds]
    try:
        items += list(ds.get("RequestAttributesSequence") or [])[:16]
    except (TypeError, ValueError):
        pass
    for item in items:
        try:
            value = str(item.get("RequestedProcedurePriority", "") or "").strip().upper()
        except (TypeError, ValueError):
            continue
        if value in _URGENT_VALUES:
            return f"Requested Procedure Priority {value}"
    return ""


def lane_for(requested: str | None) -> int:
    """The queue lane of a live study's job: urgent when the sender asked for it."""
    return LANE_URGENT if requested else LANE_LIVE
