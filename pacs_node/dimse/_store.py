"""The C-STORE handler: validate, store durably as received, index, nudge the tracker."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, cast

from pydicom import Dataset, dcmread
from pydicom.uid import UID
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from sqlalchemy.orm import Session, sessionmaker

from storage import (
    FileStore,
    InstanceMeta,
    InstanceSource,
    InvalidInstance,
    StorageError,
    StoreOutcome,
    check_encoding,
    ingest,
    validate_uid,
)

from ._status import StoreStatus

__all__ = ["StoreContext", "handle_store"]

log = logging.getLogger(__name__)

# Outcomes that put new content in the store: the study tracker is nudged for them.
_NEW_CONTENT = frozenset({StoreOutcome.STORED, StoreOutcome.DUPLICATE_OVERWRITTEN})


@dataclass(frozen=True)
class StoreContext:
    """What the C-STORE handler needs, bound through ``evt_handlers``."""

    store: FileStore
    sessions: sessionmaker[Session]
    overwrite_conflicts: bool = False
    on_stored: Callable[[str], None] | None = None


class _Mismatch(Exception):
    """The data set's SOP Class/Instance UID differ from the command's."""


@dataclass
class _Received:
    """One received instance: where its bytes are and what the index needs."""

    data: bytes | Path
    size: int
    meta: InstanceMeta


def _chunked_path(event: Event) -> Path | None:
    """The temp file pynetdicom streamed the data set to, when
    ``_config.STORE_RECV_CHUNKED_DATASET`` is on; otherwise ``None``."""
    try:
        path = event.dataset_path
    except AttributeError:
        return None
    return path if isinstance(path, Path) else None


def _read_header(source: bytes | Path) -> Dataset:
    """Decode the header (everything before the pixel data) of a Part 10 stream."""
    stream: Any = BytesIO(source) if isinstance(source, bytes) else source
    try:
        ds = dcmread(stream, stop_before_pixels=True, force=False)
        # Touch the UIDs now: pydicom decodes values lazily, garbage fails here.
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID",
                        "SeriesInstanceUID"):
            ds.get(keyword)
    except Exception as exc:  # any decoding failure: the data set is not understood
        raise InvalidInstance(f"cannot decode the data set: {type(exc).__name__}") from None
    return ds


def _receive(event: Event) -> _Received:
    """Read what the index needs from the received data set and check it against the
    command. Raises StorageError subclasses (InvalidUID, InvalidInstance) or _Mismatch."""
    request = cast(C_STORE, event.request)
    transfer_syntax = str(event.context.transfer_syntax)
    path = _chunked_path(event)
    data: bytes | Path
    if path is not None:
        data, size = path, path.stat().st_size
    else:
        data = event.encoded_dataset()
        size = len(data)
    # Success only for a complete, well-formed data set (every length within the data,
    # sequences closed, pixels all there, the codestream's own header agreeing). First:
    # pydicom's header read inflates a whole deflated data set, bomb or not.
    summary = check_encoding(data, transfer_syntax)
    ds = _read_header(data)
    try:
        meta = InstanceMeta.from_dataset(ds, transfer_syntax_uid=transfer_syntax)
        # from_dataset falls back to the file meta (built from the command) for a missing
        # SOP Class UID; the data set must carry its own.
        validate_uid(ds.get("SOPClassUID"), "SOPClassUID")
    except StorageError:
        raise
    except Exception as exc:  # a value pydicom cannot convert
        raise InvalidInstance(f"cannot decode the data set: {type(exc).__name__}") from None
    command_class = validate_uid(request.AffectedSOPClassUID, "AffectedSOPClassUID")
    command_instance = validate_uid(request.AffectedSOPInstanceUID, "AffectedSOPInstanceUID")
    if meta.sop_class_uid != command_class or meta.sop_instance_uid != command_instance:
        raise _Mismatch(f"data set has SOP Class {meta.sop_class_uid} / Instance "
                        f"{meta.sop_instance_uid}, command has {command_class} / "
                        f"{command_instance}")
    negotiated = str(event.context.abstract_syntax)
    if meta.sop_class_uid != negotiated:
        raise _Mismatch(f"data set has SOP Class {meta.sop_class_uid}, the presentation "
                        f"context was negotiated for {negotiated}")
    if summary.pixel_offset is None and _is_image(meta.sop_class_uid):
        # A data set cut between two elements reads as a whole, shorter one: an image
        # without its Pixel Data is one (every Image IOD requires it, PS3.3 C.7.6.3).
        raise InvalidInstance("an image without Pixel Data")
    return _Received(data, size, meta)


def _is_image(sop_class_uid: str) -> bool:
    """Whether the SOP Class is an image storage class (pydicom's name for it says so:
    "Computed Radiography Image Storage", "Digital X-Ray Image Storage - For
    Presentation"...)."""
    return "Image Storage" in UID(sop_class_uid).name


def _nudge(context: StoreContext, study_uid: str) -> None:
    if context.on_stored is None:
        return
    try:
        context.on_stored(study_uid)
    except Exception as exc:  # the instance is stored: never turn this into a failure
        log.error("on_stored callback failed for study %s: %s", study_uid,
                  type(exc).__name__)


def _calling_ae(event: Event) -> str:
    try:
        return str(event.assoc.requestor.ae_title)
    except Exception:
        return "?"


def handle_store(event: Event, context: StoreContext) -> int:
    """EVT_C_STORE handler: answer Success only once the file is durable and the index
    row committed. Never raises; every failure becomes a DIMSE status."""
    started = time.monotonic()
    calling_ae = _calling_ae(event)
    command_uid = str(cast(C_STORE, event.request).AffectedSOPInstanceUID or "")[:64]
    received: _Received | None = None
    outcome: StoreOutcome | None = None
    status: int
    try:
        received = _receive(event)
        outcome = ingest(context.store, context.sessions, received.data, received.meta,
                         overwrite_conflicts=context.overwrite_conflicts,
                         source=InstanceSource.RECEIVED, calling_ae=calling_ae)
        status = (StoreStatus.DUPLICATE_CONFLICT_KEPT
                  if outcome is StoreOutcome.DUPLICATE_CONFLICT_KEPT else StoreStatus.SUCCESS)
    except _Mismatch as exc:
        status = StoreStatus.DATASET_MISMATCH
        log.warning("C-STORE from %r refused: %s", calling_ae, exc)
    except StorageError as exc:
        status = exc.dimse_status
        # Storage messages name UIDs and errno texts, never patient data.
        log.warning("C-STORE from %r of SOP Instance %r refused (0x%04X): %s: %s",
                    calling_ae, command_uid, status, type(exc).__name__, exc)
    except Exception as exc:
        status = StoreStatus.INTERNAL_ERROR
        log.error("C-STORE from %r of SOP Instance %r failed: unexpected %s",
                  calling_ae, command_uid, type(exc).__name__)
    if received is not None and outcome is not None:
        log.info("C-STORE from %r: SOP Instance %s of study %s, %d bytes, %s, %s, "
                 "status 0x%04X, %.0f ms", calling_ae, received.meta.sop_instance_uid,
                 received.meta.study_instance_uid, received.size,
                 received.meta.transfer_syntax_uid, outcome.value, status,
                 (time.monotonic() - started) * 1000)
        if outcome in _NEW_CONTENT:
            _nudge(context, received.meta.study_instance_uid)
    return int(status)
