"""The C-STORE handler: validate, store durably as received, index, nudge the tracker."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import cast

from pydicom.filereader import read_file_meta_info
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from sqlalchemy.orm import Session, sessionmaker

from storage import (
    FileStore,
    InstanceMeta,
    InstanceSource,
    StorageError,
    StoreOutcome,
    ingest,
    requested_urgency,
    validate_uid,
)
from workers.metrics import instruments

from ..receive import NEW_CONTENT, check_instance, ensure_free_space
from ._status import StoreStatus

__all__ = ["StoreContext", "handle_store"]

log = logging.getLogger(__name__)



@dataclasses.dataclass(frozen=True)
class StoreContext:
    """What the C-STORE handler needs, bound through ``evt_handlers``."""

    store: FileStore
    sessions: sessionmaker[Session]
    overwrite_conflicts: bool = False
    on_stored: Callable[[str], None] | None = None
    min_free_bytes: int = 0  # storage.min_free_bytes: below it, 0xA700 before any write


class _Mismatch(Exception):
    """The data set's SOP Class/Instance UID differ from the command's."""


@dataclasses.dataclass
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
    # Success only for a complete, well-formed data set: the checks STOW-RS runs too.
    _, meta = check_instance(data, transfer_syntax)
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
    if not meta.requested_priority:  # the command's Priority: HIGH is the sender's urgency
        urgency = requested_urgency(None, getattr(request, "Priority", None))
        if urgency:
            meta = dataclasses.replace(meta, requested_priority=urgency)
    return _Received(data, size, meta)


def _dataset_size(event: Event) -> int:
    """Bytes of the data set as it came over the network (without the file meta the node
    adds); 0 when it cannot be told."""
    try:
        path = _chunked_path(event)
        if path is not None:  # pynetdicom wrote preamble, "DICM" and its file meta first
            group_length = int(read_file_meta_info(path).FileMetaInformationGroupLength)
            return max(0, path.stat().st_size - 132 - 12 - group_length)
        with cast(BytesIO, cast(C_STORE, event.request).DataSet).getbuffer() as view:
            return view.nbytes
    except Exception:  # noqa: BLE001 - a count only; the checks judge the data set
        return 0


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
    size = _dataset_size(event)
    try:
        # The watermark first: below it nothing is read further or written.
        ensure_free_space(context.store, context.min_free_bytes, size)
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
        if outcome in NEW_CONTENT:
            _nudge(context, received.meta.study_instance_uid)
    instruments().cstore(int(status), size)
    return int(status)
