"""Every DIMSE request gets an answer: malformed requests are aborted at once.

pynetdicom drops a request whose command set is incomplete (no Message ID, an empty
Affected SOP Class or Instance UID): ``Association._serve_request`` logs "Received
unexpected ... service message" and returns, so the sender waits for its own timeout. It
also routes a C-STORE by its Affected SOP Class alone, so a C-STORE naming the Verification
SOP Class reaches the Verification service, which answers Success while nothing was stored.

:func:`guard_request` runs on ``EVT_DIMSE_RECV`` (the decoded message, before pynetdicom
turns it into a primitive and picks a service). For such a request it empties the
message's command set, so that pynetdicom's own ``message_to_primitive`` fails instead of
serving it, and pynetdicom answers a message it cannot convert with an A-ABORT ("invalid
PDU", Evt19): the peer learns at once, the association's slot is freed, and nothing is
acknowledged. (A failure response cannot be sent from this DUL-thread handler.) It used to
call ``abort`` as well, which queued a second A-ABORT that pynetdicom's state machine,
already aborting, raised on (``InvalidEventError`` in Sta13): the DUL thread ended with a
traceback for every malformed request.

The same holds for every request pynetdicom would drop as invalid (``is_valid_request``:
any DIMSE-N request without its Message ID, SOP Class or Instance UIDs, event or action
type: pynetdicom dropped those without a word), for a C-FIND, C-GET or C-MOVE whose SOP
Class is not a model of its kind or not the presentation context's (a C-MOVE on a FIND
context made pynetdicom's Query/Retrieve service raise, a C-FIND naming a storage class its
storage service, each with a traceback), and for a command set that does not parse to its
last byte (pydicom reads a value cut short as if it were whole).

:func:`install_message_guard` covers what happens before ``EVT_DIMSE_RECV``: pynetdicom's
``DIMSEMessage.decode_msg`` raised inside its state machine on a command set it could not
decode (an unknown Command Field, no Command Field or Command Data Set Type, a value of the
wrong length), which logged the state machine's traceback. The wrapper logs one line and
hands on a message without command set, which pynetdicom answers with an A-ABORT.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID, ImplicitVRLittleEndian
from pynetdicom import dimse_messages, dimse_primitives
from pynetdicom.events import Event
from pynetdicom.service_class import StorageServiceClass, VerificationServiceClass
from pynetdicom.sop_class import uid_to_service_class

from storage import StorageError, check_encoding, is_valid_uid

__all__ = ["guard_request", "install_message_guard", "request_problem"]

log = logging.getLogger(__name__)

C_STORE_RQ, C_GET_RQ, C_FIND_RQ, C_MOVE_RQ, C_ECHO_RQ = 0x0001, 0x0010, 0x0020, 0x0021, 0x0030
# Request Command Fields: name, and pynetdicom's primitive (whose REQUEST_KEYWORDS it
# needs to serve the request at all).
_REQUESTS: dict[int, tuple[str, Any]] = {
    C_STORE_RQ: ("C-STORE", dimse_primitives.C_STORE),
    C_GET_RQ: ("C-GET", dimse_primitives.C_GET),
    C_FIND_RQ: ("C-FIND", dimse_primitives.C_FIND),
    C_MOVE_RQ: ("C-MOVE", dimse_primitives.C_MOVE),
    C_ECHO_RQ: ("C-ECHO", dimse_primitives.C_ECHO),
    0x0100: ("N-EVENT-REPORT", dimse_primitives.N_EVENT_REPORT),
    0x0110: ("N-GET", dimse_primitives.N_GET),
    0x0120: ("N-SET", dimse_primitives.N_SET),
    0x0130: ("N-ACTION", dimse_primitives.N_ACTION),
    0x0140: ("N-CREATE", dimse_primitives.N_CREATE),
    0x0150: ("N-DELETE", dimse_primitives.N_DELETE),
}
# Request parameters not looked for in the command set: those that come with the data
# set, and Priority (advice only; pynetdicom takes a missing one as LOW and serves it).
_NOT_CHECKED = frozenset({"DataSet", "Identifier", "ModificationList", "Priority"})
_lock = threading.Lock()
_installed = False


def _text(command: Dataset, keyword: str) -> str:
    value: Any = command.get(keyword)
    return "" if value is None else str(value).strip(" \x00")


def request_problem(command: Dataset, abstract_syntax: str | None = None) -> str:
    """What is wrong with a DIMSE request's command set (sent on a presentation context
    of ``abstract_syntax``, when known), or ``""``; other messages (responses, C-CANCEL)
    are pynetdicom's to handle."""
    field = command.get("CommandField")
    if field not in _REQUESTS:
        return ""
    name, primitive = _REQUESTS[int(field)]
    # Missing or empty parameters make pynetdicom drop the request; a UID that is present but
    # invalid reaches our handlers, which answer it (0xC210), so it is left to them.
    for keyword in primitive.REQUEST_KEYWORDS:
        if keyword not in _NOT_CHECKED and not _text(command, keyword):
            return f"{name} request without {'a' if keyword[0] != 'A' else 'an'} {keyword}"
    sop_class = _text(command, "AffectedSOPClassUID")
    if field == C_STORE_RQ and is_valid_uid(sop_class) and \
            not issubclass(uid_to_service_class(sop_class), StorageServiceClass):
        return f"C-STORE request for SOP Class {sop_class[:64]}, not a storage class"
    if field == C_ECHO_RQ and uid_to_service_class(sop_class) is not VerificationServiceClass:
        return f"C-ECHO request for SOP Class {sop_class[:64]}"
    if field in (C_FIND_RQ, C_GET_RQ, C_MOVE_RQ):
        # "Study Root Query/Retrieve Information Model - MOVE": the model says its kind.
        if f"- {name[2:]}" not in UID(sop_class).name:
            return f"{name} request for SOP Class {sop_class[:64]}, not a {name[2:]} model"
        if abstract_syntax is not None and sop_class != abstract_syntax:
            return f"{name} request for SOP Class {sop_class[:64]} on a presentation " \
                   f"context for {abstract_syntax}"
    return ""


def _cut_short(message: Any) -> bool:
    """Whether the encoded command set does not parse to its last byte."""
    encoded = getattr(message, "encoded_command_set", None)
    if encoded is None:
        return False
    try:
        check_encoding(encoded.getvalue(), ImplicitVRLittleEndian)
    except StorageError:
        return True
    return False


def guard_request(event: Event) -> None:
    """``EVT_DIMSE_RECV`` handler: abort the association on a malformed request."""
    message = event.message
    command = getattr(message, "command_set", None)
    if not isinstance(command, Dataset):
        return
    try:
        problem = request_problem(command, _abstract_syntax(event.assoc, message))
        if not problem and _cut_short(message):
            problem = "command set cut short or malformed"
    except Exception:  # noqa: BLE001 - a command set we cannot even read is malformed
        problem = "undecodable command set"
    if not problem:
        return
    peer = getattr(event.assoc.requestor, "address", "?")
    log.warning("aborting the association with %s: %s", peer, problem)
    message.command_set = None  # type: ignore[assignment]  # never served: A-ABORT


def _abstract_syntax(assoc: Any, message: Any) -> str | None:
    """The abstract syntax of the accepted context the message came on (None: not an
    accepted context, which pynetdicom refuses itself)."""
    context_id = getattr(message, "context_id", None)
    for context in getattr(assoc, "accepted_contexts", []):
        if context.context_id == context_id:
            return str(context.abstract_syntax)
    return None


def _peer(assoc: Any) -> str:
    try:
        return f"{assoc.requestor.address}:{assoc.requestor.port}"
    except Exception:  # noqa: BLE001 - no association or no address
        return "unknown peer"


def _decoded(original: Any) -> Any:
    @functools.wraps(original)
    def decode_msg(self: Any, primitive: Any, assoc: Any = None) -> bool:
        try:
            return bool(original(self, primitive, assoc))
        except Exception as exc:  # noqa: BLE001 - the peer's command set, not our bug
            log.warning("%s: sent a DIMSE command set that cannot be decoded (%s); "
                        "association aborted", _peer(assoc), type(exc).__name__)
            self.command_set = None  # message_to_primitive fails: pynetdicom's A-ABORT
            return True

    return decode_msg


def install_message_guard() -> None:
    """Wrap pynetdicom's ``DIMSEMessage.decode_msg`` once per process (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        message = dimse_messages.DIMSEMessage
        message.decode_msg = _decoded(message.decode_msg)  # type: ignore[method-assign]
        _installed = True
