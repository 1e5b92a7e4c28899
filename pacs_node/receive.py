"""Receiving an instance, whatever brought it (STOW-RS today): the checks that decide
whether the node may say it holds it, then the durable ingest and the tracker nudge.

A Success (C-STORE 0x0000, STOW-RS Referenced SOP) is the node's most important claim: the
sender may delete its copy. So before it, the bytes must parse completely in their
transfer syntax with the codestream agreeing with the header
(:func:`storage.check_encoding`), the UIDs must be valid, and the file must be on disk and
indexed (:func:`storage.ingest`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pynetdicom import AllStoragePresentationContexts
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

__all__ = ["NEW_CONTENT", "Receiver", "Refused", "read_header"]

log = logging.getLogger(__name__)

#: Outcomes that put new content in the store: the study tracker is nudged for them.
NEW_CONTENT = frozenset({StoreOutcome.STORED, StoreOutcome.DUPLICATE_OVERWRITTEN})
_STORAGE_CLASSES = frozenset(str(c.abstract_syntax) for c in AllStoragePresentationContexts)


class Refused(Exception):
    """The instance is not stored; ``status`` is the DICOM status saying why (PS3.4
    Annex B / PS3.18 Failure Reason)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def read_header(source: bytes | Path) -> Dataset:
    """The header (everything before the pixel data) of a Part 10 stream, with its UIDs
    decoded (pydicom decodes lazily: garbage fails here).

    Raises:
        InvalidInstance: it cannot be decoded.
    """
    stream: Any = BytesIO(source) if isinstance(source, bytes) else source
    try:
        ds = dcmread(stream, stop_before_pixels=True, force=False)
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID",
                        "SeriesInstanceUID"):
            ds.get(keyword)
    except Exception as exc:  # any decoding failure: the data set is not understood
        raise InvalidInstance(f"cannot decode the data set: {type(exc).__name__}") from None
    return ds


@dataclass(frozen=True)
class Received:
    """A stored instance: its header attributes and what the index decided."""

    meta: InstanceMeta
    outcome: StoreOutcome


class Receiver:
    """Validates and stores Part 10 instances.

    Args:
        store, sessions: the file store and the index.
        overwrite_conflicts: ``node.overwrite_conflicting_duplicates``.
        on_stored: called with the Study Instance UID after new content is stored
            (exceptions are logged, never turned into a failure: the instance is stored).
    """

    def __init__(self, store: FileStore, sessions: sessionmaker[Session], *,
                 overwrite_conflicts: bool = False,
                 on_stored: Callable[[str], None] | None = None) -> None:
        self.store = store
        self._sessions = sessions
        self._overwrite = overwrite_conflicts
        self._on_stored = on_stored

    def validate(self, data: bytes | Path, *, study: str | None = None) -> InstanceMeta:
        """Check a Part 10 instance; return its header attributes.

        Args:
            study: the Study Instance UID it must belong to (STOW-RS to a study's URL).

        Raises:
            Refused: with 0xC000 (cannot be parsed completely), 0xC210 (a UID is
                invalid), 0xA900 (not a storage SOP class, or another study).
        """
        try:
            header = read_header(data)
            syntax = str(header.file_meta.get("TransferSyntaxUID") or "")
            if not syntax:
                raise InvalidInstance("the file meta has no Transfer Syntax UID")
            meta = InstanceMeta.from_dataset(header, transfer_syntax_uid=syntax)
            validate_uid(header.get("SOPClassUID"), "SOPClassUID")
            check_encoding(data, syntax)
        except StorageError as exc:
            raise Refused(exc.dimse_status, str(exc)) from None
        except Exception as exc:  # a value pydicom cannot convert
            raise Refused(0xC000, f"cannot decode the data set: {type(exc).__name__}") \
                from None
        if meta.sop_class_uid not in _STORAGE_CLASSES:
            raise Refused(0xA900, f"SOP Class {meta.sop_class_uid} is not a storage class")
        if study is not None and meta.study_instance_uid != study:
            raise Refused(0xA900, f"the instance belongs to study {meta.study_instance_uid}, "
                                  f"not to {study}")
        return meta

    def store_instance(self, data: bytes | Path, meta: InstanceMeta, *,
                       calling_ae: str) -> Received:
        """Store a validated instance durably and index it; nudge the tracker.

        Raises:
            Refused: with the storage error's status (0xA700 out of resources, 0x0110).
        """
        try:
            outcome = ingest(self.store, self._sessions, data, meta,
                             overwrite_conflicts=self._overwrite,
                             source=InstanceSource.RECEIVED, calling_ae=calling_ae)
        except StorageError as exc:
            raise Refused(exc.dimse_status, f"{type(exc).__name__}: {exc}") from None
        if outcome in NEW_CONTENT and self._on_stored is not None:
            try:
                self._on_stored(meta.study_instance_uid)
            except Exception as exc:  # the instance is stored: never a failure
                log.error("on_stored callback failed for study %s: %s",
                          meta.study_instance_uid, type(exc).__name__)
        return Received(meta, outcome)
