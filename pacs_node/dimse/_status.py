"""The DIMSE statuses this node answers with, named in one place.

Failures raised by the storage package carry their own status (``StorageError.dimse_status``:
0xC210 invalid UID, 0xC000 unreadable header, 0xA700 out of resources, 0x0110 processing
failure); the codes below are the ones the DIMSE layer decides itself.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["FindStatus", "StoreStatus"]


class StoreStatus(IntEnum):
    """C-STORE response statuses (PS3.4 Table B.2-1, PS3.7 Annex C)."""

    SUCCESS = 0x0000
    #: Warning "Coercion of Data Elements": the SOP Instance UID was already stored with
    #: other content and the first copy was kept, so what the node holds (and returns)
    #: under this UID differs from what the sender sent.
    DUPLICATE_CONFLICT_KEPT = 0xB000
    #: Error "Data Set does not match SOP Class": the data set's SOP Class / SOP Instance
    #: UID differ from the command's Affected SOP Class / Instance UID.
    DATASET_MISMATCH = 0xA900
    #: Error "Cannot understand": the data set cannot be decoded.
    CANNOT_UNDERSTAND = 0xC000
    #: Error "Cannot understand" range, used for an unexpected failure inside the node.
    INTERNAL_ERROR = 0xC001


class FindStatus(IntEnum):
    """C-FIND response statuses (PS3.4 Table C.4-1)."""

    SUCCESS = 0x0000
    PENDING = 0xFF00
    CANCEL = 0xFE00
    #: Failure "Identifier does not match SOP Class": no/unknown Query/Retrieve Level,
    #: missing or multi-valued unique keys of the levels above, unusable matching values.
    IDENTIFIER_MISMATCH = 0xA900
    #: Failure "Unable to process": the identifier cannot be decoded.
    UNABLE_TO_PROCESS = 0xC000
    #: Failure "Unable to process" range, used for an unexpected failure inside the node.
    INTERNAL_ERROR = 0xC001
