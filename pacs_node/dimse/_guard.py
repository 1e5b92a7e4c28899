"""Every DIMSE request gets an answer: malformed requests are aborted at once.

pynetdicom drops a request whose command set is incomplete (no Message ID, an empty
Affected SOP Class or Instance UID): ``Association._serve_request`` logs "Received
unexpected ... service message" and returns, so the sender waits for its own timeout. It
also routes a C-STORE by its Affected SOP Class alone, so a C-STORE naming the Verification
SOP Class reaches the Verification service, which answers Success while nothing was stored.

:func:`guard_request` runs on ``EVT_DIMSE_RECV`` (the decoded message, before pynetdicom
turns it into a primitive and picks a service). For such a request it aborts the
association (pynetdicom makes ``abort`` non-blocking inside notification handlers) and
empties the message's command set, so that pynetdicom's own ``message_to_primitive`` fails
instead of serving it: the peer learns at once, the association's slot is freed, and
nothing is acknowledged. (A failure response cannot be sent from this DUL-thread handler.)
"""

from __future__ import annotations

import logging
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.events import Event
from pynetdicom.service_class import StorageServiceClass, VerificationServiceClass
from pynetdicom.sop_class import uid_to_service_class

from storage import is_valid_uid

__all__ = ["guard_request", "request_problem"]

log = logging.getLogger(__name__)

C_STORE_RQ, C_GET_RQ, C_FIND_RQ, C_MOVE_RQ, C_ECHO_RQ = 0x0001, 0x0010, 0x0020, 0x0021, 0x0030
_C_REQUESTS = {C_STORE_RQ: "C-STORE", C_GET_RQ: "C-GET", C_FIND_RQ: "C-FIND",
               C_MOVE_RQ: "C-MOVE", C_ECHO_RQ: "C-ECHO"}


def _text(command: Dataset, keyword: str) -> str:
    value: Any = command.get(keyword)
    return "" if value is None else str(value).strip(" \x00")


def request_problem(command: Dataset) -> str:
    """What is wrong with a DIMSE-C request's command set, or ``""``; other messages
    (responses, C-CANCEL, DIMSE-N) are pynetdicom's to handle."""
    field = command.get("CommandField")
    if field not in _C_REQUESTS:
        return ""
    name = _C_REQUESTS[int(field)]
    if command.get("MessageID") is None:
        return f"{name} request without a Message ID"
    # Missing or empty UIDs make pynetdicom drop the request; a UID that is present but
    # invalid reaches our handlers, which answer it (0xC210), so it is left to them.
    sop_class = _text(command, "AffectedSOPClassUID")
    if not sop_class:
        return f"{name} request without an Affected SOP Class UID"
    service = uid_to_service_class(sop_class)
    if field == C_STORE_RQ:
        if not _text(command, "AffectedSOPInstanceUID"):
            return "C-STORE request without an Affected SOP Instance UID"
        if is_valid_uid(sop_class) and not issubclass(service, StorageServiceClass):
            return f"C-STORE request for SOP Class {sop_class[:64]}, not a storage class"
    if field == C_ECHO_RQ and service is not VerificationServiceClass:
        return f"C-ECHO request for SOP Class {sop_class[:64]}"
    return ""


def guard_request(event: Event) -> None:
    """``EVT_DIMSE_RECV`` handler: abort the association on a malformed request."""
    message = event.message
    command = getattr(message, "command_set", None)
    if not isinstance(command, Dataset):
        return
    try:
        problem = request_problem(command)
    except Exception:  # noqa: BLE001 - a command set we cannot even read is malformed
        problem = "undecodable command set"
    if not problem:
        return
    peer = getattr(event.assoc.requestor, "address", "?")
    log.warning("aborting the association with %s: %s", peer, problem)
    message.command_set = None  # never served: message_to_primitive fails
    event.assoc.abort()
