"""Receiving an instance, whatever brought it (STOW-RS today): the checks that decide
whether the node may say it holds it, then the durable ingest and the tracker nudge.

A Success (C-STORE 0x0000, STOW-RS Referenced SOP) is the node's most important claim: the
sender may delete its copy. So before it, the bytes must parse completely in their
transfer syntax with the codestream agreeing with the header
(:func:`storage.check_encoding`), the UIDs must be valid, and the file must be on disk and
indexed (:func:`storage.ingest`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID
from pynetdicom import AllStoragePresentationContexts
from sqlalchemy.orm import Session, sessionmaker

from storage import (
    FileStore,
    InstanceMeta,
    InstanceSource,
    InvalidInstance,
    OutOfResources,
    StagedFile,
    StorageError,
    StoreOutcome,
    WrittenFile,
    check_encoding,
    ingest_many,
    validate_uid,
)

__all__ = ["NEW_CONTENT", "Receiver", "Refused", "check_instance", "ensure_free_space",
           "read_header"]

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


def _is_image(sop_class_uid: str) -> bool:
    """Whether the SOP Class is an image storage class (pydicom's name for it says so:
    "Computed Radiography Image Storage", "Digital X-Ray Image Storage - For
    Presentation"...)."""
    return "Image Storage" in UID(sop_class_uid).name


def check_instance(data: bytes | Path, transfer_syntax: str) -> tuple[Dataset, InstanceMeta]:
    """The checks every received instance passes before the node may say it holds it,
    whatever brought it (C-STORE, STOW-RS): its header and index attributes.

    The bytes are walked first (:func:`storage.check_encoding`: every length within the
    data, sequences and encapsulation closed, pixels all there, the codestream's own
    header agreeing; a deflated data set inflated within a cap, before pydicom's header
    read would inflate all of it), then the header is read, the SOP Class UID must be the
    data set's own, and an image must have its Pixel Data (a data set cut between two
    elements reads as a whole, shorter one; every Image IOD requires it, PS3.3 C.7.6.3).

    Raises:
        storage.InvalidInstance, storage.InvalidUID, storage.OutOfResources.
    """
    summary = check_encoding(data, transfer_syntax)
    header = read_header(data)
    try:
        meta = InstanceMeta.from_dataset(header, transfer_syntax_uid=transfer_syntax)
        # from_dataset falls back to the file meta (built from a C-STORE command) for a
        # missing SOP Class UID; the data set must carry its own.
        validate_uid(header.get("SOPClassUID"), "SOPClassUID")
    except StorageError:
        raise
    except Exception as exc:  # a value pydicom cannot convert
        raise InvalidInstance(f"cannot decode the data set: {type(exc).__name__}") from None
    if summary.pixel_offset is None and _is_image(meta.sop_class_uid):
        raise InvalidInstance("an image without Pixel Data")
    return header, meta


def _size(n: int) -> str:
    return f"{n / 1024 ** 2:.0f} MiB" if n >= 1024 ** 2 else f"{n} bytes"


def ensure_free_space(store: FileStore, min_free_bytes: int, incoming: int = 0) -> int:
    """The free-space watermark (``storage.min_free_bytes``), checked before anything of a
    received instance is written to the store: it must leave at least ``min_free_bytes``
    free once ``incoming`` more bytes are written. Checked afresh every time (one
    ``statvfs``), so ingest resumes by itself once space is freed. 0 disables it.

    Returns:
        The free bytes (0 when disabled and not asked).

    Raises:
        storage.OutOfResources: below the watermark (C-STORE 0xA700, STOW-RS 503); the
            message says how much is free and what the watermark is, never a path.
    """
    if min_free_bytes <= 0:
        return 0
    try:
        free = store.free_bytes()
    except OSError as exc:
        raise OutOfResources(f"the store's free space cannot be read: {exc.strerror}") \
            from None
    if free - max(0, incoming) < min_free_bytes:
        raise OutOfResources(
            f"the store has {_size(free)} free, below storage.min_free_bytes "
            f"({_size(min_free_bytes)}){f' with {_size(incoming)} more' if incoming else ''}:"
            " ingest is paused until space is freed")
    return free


@dataclass(frozen=True)
class Received:
    """A stored instance: its header attributes and what the index decided."""

    meta: InstanceMeta
    outcome: StoreOutcome


def _file_syntax(path: Path) -> str:
    """The Transfer Syntax UID of a Part 10 file's meta group (read alone: a deflated data
    set is not inflated here)."""
    try:
        meta = read_file_meta_info(path)
    except Exception as exc:  # noqa: BLE001 - no or broken file meta
        raise InvalidInstance(f"cannot read the file meta: {type(exc).__name__}") from None
    syntax = str(meta.get("TransferSyntaxUID") or "")
    if not syntax:
        raise InvalidInstance("the file meta has no Transfer Syntax UID")
    return syntax


class Receiver:
    """Validates and stores Part 10 instances.

    Args:
        store, sessions: the file store and the index.
        overwrite_conflicts: ``node.overwrite_conflicting_duplicates``.
        min_free_bytes: ``storage.min_free_bytes`` (:meth:`ensure_space`).
        on_stored: called with the Study Instance UID after new content is stored
            (exceptions are logged, never turned into a failure: the instance is stored).
    """

    def __init__(self, store: FileStore, sessions: sessionmaker[Session], *,
                 overwrite_conflicts: bool = False, min_free_bytes: int = 0,
                 on_stored: Callable[[str], None] | None = None) -> None:
        self.store = store
        self._sessions = sessions
        self._overwrite = overwrite_conflicts
        self.min_free_bytes = min_free_bytes
        self._on_stored = on_stored

    def ensure_space(self, incoming: int = 0) -> None:
        """:func:`ensure_free_space` for this receiver's store.

        Raises:
            Refused: with 0xA700 below the watermark.
        """
        try:
            ensure_free_space(self.store, self.min_free_bytes, incoming)
        except OutOfResources as exc:
            raise Refused(exc.dimse_status, str(exc)) from None

    def validate(self, data: Path, *, study: str | None = None) -> InstanceMeta:
        """Check a Part 10 file (:func:`check_instance`); return its header attributes.

        Args:
            study: the Study Instance UID it must belong to (STOW-RS to a study's URL).

        Raises:
            Refused: with 0xC000 (cannot be parsed completely), 0xC210 (a UID is
                invalid), 0xA900 (not a storage SOP class, or another study).
        """
        try:
            syntax = _file_syntax(data)
            _, meta = check_instance(data, syntax)
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

    def store_instance(self, data: bytes | Path | WrittenFile, meta: InstanceMeta, *,
                       calling_ae: str) -> Received:
        """Store a validated instance durably and index it; nudge the tracker.

        Raises:
            Refused: with the storage error's status (0xA700 out of resources, 0x0110).
        """
        outcome = self.store_many([(data, meta)], calling_ae=calling_ae)[0]
        if isinstance(outcome, Refused):
            raise outcome
        return outcome

    def store_many(self, items: Sequence[tuple[bytes | Path | WrittenFile | StagedFile,
                                               InstanceMeta]], *,
                   calling_ae: str) -> list[Received | Refused]:
        """:meth:`store_instance` for several validated instances (one STOW-RS request:
        indexed in few transactions, :func:`storage.ingest_many`); each one's result."""
        outcomes = ingest_many(self.store, self._sessions, items,
                               overwrite_conflicts=self._overwrite,
                               source=InstanceSource.RECEIVED, calling_ae=calling_ae)
        results: list[Received | Refused] = []
        nudged: set[str] = set()
        for (_, meta), outcome in zip(items, outcomes, strict=True):
            if isinstance(outcome, StorageError):
                results.append(Refused(outcome.dimse_status,
                                       f"{type(outcome).__name__}: {outcome}"))
                continue
            results.append(Received(meta, outcome))
            if outcome in NEW_CONTENT:
                nudged.add(meta.study_instance_uid)
        for study in sorted(nudged):
            if self._on_stored is None:
                break
            try:
                self._on_stored(study)
            except Exception as exc:  # the instance is stored: never a failure
                log.error("on_stored callback failed for study %s: %s", study,
                          type(exc).__name__)
        return results
