"""The whole store-and-index transaction for one received (or produced) instance."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from ._db import run_write, utcnow
from .errors import StorageError
from .filestore import Data, FileStore, StagedFile, StoredFile
from .meta import InstanceMeta, StoreOutcome
from .repositories.instances import InstanceRepository, decide
from .schema import InstanceSource

__all__ = ["ingest"]

log = logging.getLogger(__name__)


def ingest(store: FileStore, sessions: sessionmaker[Session], data: Data, meta: InstanceMeta, *,
           overwrite_conflicts: bool = False,
           source: InstanceSource | str = InstanceSource.RECEIVED,
           calling_ae: str | None = None, now: datetime | None = None) -> StoreOutcome:
    """Store an encoded instance durably and index it; return what happened.

    Steps: the content is written and fsynced to a temp file (outside any transaction);
    then, in one write transaction holding a lock on the SOP Instance UID, the index
    decides (new, identical duplicate, conflicting duplicate), the temp file is renamed into
    place or dropped, and the rows are committed. It returns only once file and rows are
    durable. Safe to call from many threads (and processes) at once.

    Args:
        store: the file store.
        sessions: the session factory of the index.
        data: the encoded instance (bytes, a file to copy, or byte chunks).
        meta: its header attributes (``InstanceMeta.from_dataset`` / ``InstanceMeta.read``).
        overwrite_conflicts: replace the stored copy when the content differs, instead of
            keeping the first one.
        source: ``received`` from the network, or ``produced`` by the node itself (results:
            they never re-trigger processing of the study).
        calling_ae: the sender's AE title, kept for audit.

    Raises:
        InvalidUID: a UID in ``meta`` is not valid (nothing was written).
        OutOfResources: the disk or the database is full.
        StorageError: another I/O or database failure; nothing was acknowledged.
    """
    now = now or utcnow()
    staged = store.stage(meta.study_instance_uid, meta.series_instance_uid,
                         meta.sop_instance_uid, data)
    try:
        outcome = run_write(sessions, lambda session: _index(
            session, store, staged, meta, overwrite_conflicts, source, calling_ae, now))
    finally:
        store.discard(staged)
    if outcome is StoreOutcome.DUPLICATE_CONFLICT_KEPT:
        log.warning("SOP Instance %s received again with different content; first copy kept",
                    meta.sop_instance_uid)
    else:
        log.debug("SOP Instance %s: %s", meta.sop_instance_uid, outcome)
    return outcome


def _index(session: Session, store: FileStore, staged: StagedFile, meta: InstanceMeta,
           overwrite: bool, source: InstanceSource | str, calling_ae: str | None,
           now: datetime) -> StoreOutcome:
    repo = InstanceRepository(session)
    repo.lock(meta.sop_instance_uid)
    existing = repo.get(meta.sop_instance_uid)
    outcome = decide(existing.sha256 if existing else None, staged.sha256, overwrite)

    if outcome is StoreOutcome.DUPLICATE_CONFLICT_KEPT:
        return outcome
    if outcome is StoreOutcome.DUPLICATE_IDENTICAL:
        if existing is not None and existing.relpath == staged.relpath \
                and not staged.path.exists():
            store.commit(staged)  # the row outlived its file: put the same content back
        return outcome

    old_relpath = existing.relpath if existing is not None else None
    stored = StoredFile(staged.path, staged.relpath, staged.sha256, staged.size)
    repo.record(meta, stored, source=source, calling_ae=calling_ae, overwrite=overwrite, now=now)
    # SQL done (the likely failures are behind us); now the rename, then the caller commits.
    if staged.done and store.sha256_of(staged.path) != staged.sha256:
        # A retry after a failed commit, and another writer replaced the file meanwhile.
        raise StorageError(f"SOP Instance {meta.sop_instance_uid} changed during a retry")
    store.commit(staged)
    if old_relpath is not None and old_relpath != staged.relpath:
        _remove_after_commit(session, store, old_relpath)
    return outcome


def _remove_after_commit(session: Session, store: FileStore, relpath: str) -> None:
    """An overwrite moved the instance to another study/series: drop the old file once the
    row pointing to the new one is committed."""
    def remove(_session: Session) -> None:
        try:
            store.remove(relpath)
        except StorageError:
            log.warning("could not remove replaced file %s", relpath)

    event.listen(session, "after_commit", remove, once=True)
