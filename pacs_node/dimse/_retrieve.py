"""The C-GET and C-MOVE handlers: Study Root and Patient Root retrieve of what the node
holds (current results only), at PATIENT, STUDY, SERIES and IMAGE level.

pynetdicom runs the sub-operations: for C-GET, C-STOREs back over the requestor's own
association (the requestor proposes the storage contexts with SCP/SCU role selection);
for C-MOVE, over a new association to the move destination, which must be configured
(``destinations`` or ``remotes``, by AE title; another is 0xA801). An instance stored
compressed goes as stored when the peer accepted that transfer syntax, and is decoded to
Explicit VR Little Endian otherwise (within ``storage.max_pixels``; over it, that
sub-operation fails)."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import pydicom
from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context, evt
from pynetdicom.dimse_primitives import C_MOVE
from pynetdicom.events import Event
from sqlalchemy.orm import Session, sessionmaker

from storage import (
    FileStore,
    InstanceMatch,
    InvalidInstance,
    InvalidUID,
    QueryRepository,
    StorageError,
    too_large,
    validate_uid,
)

from ._find import _BadIdentifier, _check_values, _identifier

__all__ = ["GET_MODELS", "MOVE_MODELS", "MoveDestination", "RetrieveContext",
           "handle_get", "handle_move"]

log = logging.getLogger(__name__)

STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
_STUDY_LEVELS = ("STUDY", "SERIES", "IMAGE")
_PATIENT_LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
MOVE_MODELS: Mapping[str, tuple[str, ...]] = {STUDY_ROOT_MOVE: _STUDY_LEVELS,
                                              PATIENT_ROOT_MOVE: _PATIENT_LEVELS}
GET_MODELS: Mapping[str, tuple[str, ...]] = {STUDY_ROOT_GET: _STUDY_LEVELS,
                                             PATIENT_ROOT_GET: _PATIENT_LEVELS}
_UNIQUE_KEY = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID",
               "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}
_PENDING, _CANCEL = 0xFF00, 0xFE00
_IDENTIFIER_MISMATCH, _UNABLE = 0xA900, 0xC000
_MOVE_DESTINATION_UNKNOWN = 0xA801
_OUT_OF_RESOURCES_MATCHES = 0xA701  # more matches than one C-MOVE/C-GET may carry
_MAX_SUBOPERATIONS = 65535
_NATIVE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_MAX_CONTEXTS = 128
_NEVER_NEGOTIATED = "2.25.1"  # a valid UID that is no transfer syntax (see _unsendable)


@dataclass(frozen=True)
class MoveDestination:
    """Where C-MOVE sends to an AE title."""

    host: str
    port: int
    ssl_context: ssl.SSLContext | None = None


@dataclass(frozen=True)
class RetrieveContext:
    """What the C-GET/C-MOVE handlers need, bound through ``evt_handlers``."""

    sessions: sessionmaker[Session]
    store: FileStore
    max_pixels: int
    move_destinations: Mapping[str, MoveDestination] = field(default_factory=dict)


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _calling_ae(event: Event) -> str:
    try:
        return str(event.assoc.requestor.ae_title)
    except Exception:
        return "?"


def _key(elements: Mapping[str, DataElement], keyword: str) -> str:
    elem = elements.get(keyword)
    if elem is None or elem.value is None:
        return ""
    value = elem.value
    if not isinstance(value, str):
        value = "\\".join(str(v) for v in value)
    return value.strip(" \x00")


def _instances(event: Event, models: Mapping[str, tuple[str, ...]],
               sessions: sessionmaker[Session]) -> tuple[str, list[InstanceMatch]]:
    """(level, the current instances the identifier names).

    Only unique keys select (PS3.4 C.4.2.2.1: no wildcards, UID lists allowed at the
    retrieve level); the level's own key is required, keys of the levels above are used
    when present.

    Raises:
        _Refused: 0xA900 (a missing, wildcard or invalid key; an unknown level or model),
            0xC000 (an identifier that does not decode completely).
    """
    model = str(event.request.AffectedSOPClassUID or "")
    if model not in models:
        raise _Refused(_IDENTIFIER_MISMATCH, f"information model {model[:64]!r} is not "
                                             "supported")
    try:
        elements = _identifier(event)
    except InvalidInstance as exc:
        raise _Refused(_UNABLE, f"the identifier is incomplete or malformed ({exc})") \
            from None
    except Exception as exc:  # noqa: BLE001 - anything pydicom cannot decode
        raise _Refused(_UNABLE, f"cannot decode the identifier ({type(exc).__name__})") \
            from None
    try:
        _check_values(elements)
    except _BadIdentifier as exc:
        raise _Refused(_IDENTIFIER_MISMATCH, str(exc)) from None
    levels = models[model]
    level = _key(elements, "QueryRetrieveLevel").upper()
    if level not in levels:
        raise _Refused(_IDENTIFIER_MISMATCH, f"QueryRetrieveLevel {level[:16]!r} is not one "
                                             f"of {levels}")
    filters: dict[str, str] = {}
    for upper in levels[: levels.index(level) + 1]:
        keyword = _UNIQUE_KEY[upper]
        value = _key(elements, keyword)
        if not value:
            if upper == level:
                raise _Refused(_IDENTIFIER_MISMATCH, f"a {level} retrieve needs {keyword}")
            continue
        if any(c in value for c in "*?"):
            raise _Refused(_IDENTIFIER_MISMATCH, f"{keyword} holds a wildcard: retrieve "
                                                 "keys must be values")
        if keyword != "PatientID":
            try:
                value = "\\".join(validate_uid(part, keyword) for part in value.split("\\"))
            except InvalidUID as exc:
                raise _Refused(_IDENTIFIER_MISMATCH, str(exc)) from None
        elif "\\" in value:
            raise _Refused(_IDENTIFIER_MISMATCH, "PatientID must be a single value")
        filters[keyword] = value
    with sessions() as session:
        found = QueryRepository(session, relational=True).find_instances(
            filters, limit=_MAX_SUBOPERATIONS + 1)
    if len(found) > _MAX_SUBOPERATIONS:
        raise _Refused(_OUT_OF_RESOURCES_MATCHES, f"more than {_MAX_SUBOPERATIONS} "
                                                  "instances match: retrieve a lower level")
    return level, found


def _accepted(contexts: Any, sop_class: str, syntax: str) -> bool:
    return any(str(cx.abstract_syntax) == sop_class and str(cx.transfer_syntax[0]) == syntax
               for cx in contexts)


def _dataset(context: RetrieveContext, match: InstanceMatch, accepted: Any) -> Dataset:
    """The instance to send: as stored if the peer accepted its transfer syntax for its
    SOP class, otherwise decoded to Explicit VR Little Endian (bounded by max_pixels).

    Raises:
        _Refused: it cannot be decoded (too large, no codec); this sub-operation fails.
    """
    ds = pydicom.dcmread(context.store.path_of(match.relpath))
    syntax = str(ds.file_meta.TransferSyntaxUID)
    if accepted is None or _accepted(accepted, match.SOPClassUID, syntax) or \
            not UID(syntax).is_compressed:
        return ds
    reason = too_large(ds, context.max_pixels)
    if reason:
        raise _Refused(0xA702, f"cannot be sent decoded: the image is {reason}")
    try:
        ds.decompress()
    except Exception as exc:  # noqa: BLE001
        raise _Refused(0xA702, f"cannot be decoded ({type(exc).__name__})") from None
    return ds


def _sub_operations(event: Event, context: RetrieveContext, found: list[InstanceMatch],
                    accepted: Any, what: str) -> Iterator[tuple[int, Dataset | None]]:
    started, sent = time.monotonic(), 0
    for match in found:
        if event.is_cancelled:
            log.info("%s cancelled after %d of %d instances", what, sent, len(found))
            yield _CANCEL, None
            return
        try:
            ds = _dataset(context, match, accepted() if callable(accepted) else accepted)
            sent += 1
        except (_Refused, StorageError, OSError) as exc:
            log.warning("%s: SOP Instance %s not sent: %s", what, match.SOPInstanceUID, exc)
            ds = _unsendable(match)
        yield _PENDING, ds
    log.info("%s: %d instances offered, %.0f ms", what, sent,
             (time.monotonic() - started) * 1000)


def _unsendable(match: InstanceMatch) -> Dataset:
    """A stand-in whose transfer syntax no peer negotiated: pynetdicom's C-STORE of it
    fails at once, so the sub-operation is counted failed and its SOP Instance UID listed
    in the Failed SOP Instance UID List, and the retrieve goes on with the next one."""
    stub = Dataset()
    stub.SOPClassUID = match.SOPClassUID
    stub.SOPInstanceUID = match.SOPInstanceUID
    stub.file_meta = pydicom.dataset.FileMetaDataset()
    # pydicom types the attribute as UID; a str is converted to one on assignment
    stub.file_meta.TransferSyntaxUID = _NEVER_NEGOTIATED  # type: ignore[assignment]
    return stub


def handle_get(event: Event, context: RetrieveContext) -> Iterator[Any]:
    """EVT_C_GET handler: yields the number of sub-operations, then ``(0xFF00, dataset)``
    per instance (pynetdicom sends each back over this association). Never raises."""
    calling_ae = _calling_ae(event)
    try:
        level, found = _instances(event, GET_MODELS, context.sessions)
    except _Refused as exc:
        log.warning("C-GET from %r refused (0x%04X): %s", calling_ae, exc.status, exc)
        yield 1  # pynetdicom answers 0 sub-operations with Success: one, then the failure
        yield exc.status, None
        return
    except Exception as exc:
        log.error("C-GET from %r failed: unexpected %s", calling_ae, type(exc).__name__)
        yield 1
        yield 0xC001, None
        return
    log.info("C-GET from %r: %s level, %d instances", calling_ae, level, len(found))
    yield len(found)
    accepted = [cx for cx in event.assoc.accepted_contexts if cx.as_scp]
    yield from _sub_operations(event, context, found, accepted, f"C-GET from {calling_ae!r}")


def _contexts(found: list[InstanceMatch]) -> list[Any]:
    """Presentation contexts for the move destination: per SOP class, one with the
    compressed syntaxes it is stored in (if any) and one uncompressed."""
    by_class: dict[str, set[str]] = {}
    for match in found:
        by_class.setdefault(match.SOPClassUID, set()).add(match.transfer_syntax_uid)
    contexts = []
    for sop_class, syntaxes in sorted(by_class.items()):
        compressed = sorted(s for s in syntaxes if UID(s).is_compressed)
        if compressed:
            contexts.append(build_context(sop_class, compressed))
        contexts.append(build_context(sop_class, list(_NATIVE)))
    return contexts[:_MAX_CONTEXTS]


def handle_move(event: Event, context: RetrieveContext) -> Iterator[Any]:
    """EVT_C_MOVE handler: yields the destination ``(host, port, options)``, the number of
    sub-operations, then ``(0xFF00, dataset)`` per instance. Never raises."""
    calling_ae = _calling_ae(event)
    destination_ae = str(cast(C_MOVE, event.request).MoveDestination or "").strip()
    destination = context.move_destinations.get(destination_ae)
    if destination is None:
        log.warning("C-MOVE from %r refused: move destination %r is not configured "
                    "(destinations or remotes)", calling_ae, destination_ae[:16])
        yield None, None  # 0xA801
        return
    refused: tuple[int, str] | None = None
    found: list[InstanceMatch] = []
    level = ""
    try:
        level, found = _instances(event, MOVE_MODELS, context.sessions)
    except _Refused as exc:
        refused = (exc.status, str(exc))
    except Exception as exc:
        refused = (0xC001, f"unexpected {type(exc).__name__}")
    if refused is not None:
        log.warning("C-MOVE from %r refused (0x%04X): %s", calling_ae, *refused)
        # pynetdicom asks for the destination and a count before it takes a status.
        yield destination.host, destination.port, {"contexts": [build_context(
            "1.2.840.10008.1.1")]}
        yield 1
        yield refused[0], None
        return
    store: dict[str, Any] = {}
    options: dict[str, Any] = {
        "contexts": _contexts(found) if found else [build_context(
            "1.2.840.10008.1.1")],
        "evt_handlers": [(evt.EVT_ACCEPTED, lambda e: store.update(assoc=e.assoc))],
    }
    if destination.ssl_context is not None:
        options["tls_args"] = (destination.ssl_context, destination.host)
    log.info("C-MOVE from %r to %r: %s level, %d instances", calling_ae, destination_ae,
             level, len(found))
    yield destination.host, destination.port, options
    yield len(found)

    def accepted() -> Any:
        assoc = store.get("assoc")
        return assoc.accepted_contexts if assoc is not None else None

    yield from _sub_operations(event, context, found, accepted,
                               f"C-MOVE from {calling_ae!r} to {destination_ae!r}")
