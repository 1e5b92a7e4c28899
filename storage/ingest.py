"""The whole store-and-index transaction for one received (or produced) instance."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from ._db import run_write, utcnow
from .content import same_content
from .errors import StorageError
from .filestore import Data, FileStore, StagedFile, StoredFile
from .meta import InstanceMeta, StoreOutcome
from .repositories.instances import InstanceRepository, decide
from .schema import InstanceSource

__all__ = ["index_staged", "ingest"]

log = logging.getLogger(__name__)


def ingest(store: FileStore, sessions: sessionmaker[Session], data: Data, meta: InstanceMeta, *,
           overwrite_conflicts: bool = False,
           source: InstanceSource | str = InstanceSource.RECEIVED,
           calling_ae: str | None = None, now: datetime | None = None) -> StoreOutcome:
    """Store an encoded instance durably and index it; return what happened.

    Steps: the content is written and fsynced to a temp file (outside any transaction);
    when the SOP Instance UID is held with other bytes, both copies are compared decoded
    (:func:`storage.content.same_content`: the same attributes and pixels in another
    transfer syntax is an identical duplicate); then, in one write transaction holding a
    lock on the SOP Instance UID, the index decides (new, identical duplicate, conflicting
    duplicate, the node's own result coming back), the temp file is renamed into place or
    dropped, and the rows are committed. It returns only once file and rows are durable.
    Safe to call from many threads (and processes) at once.

    Neither a duplicate nor the node's own result sent back to it (a PACS that forwards
    whole studies) re-opens a study, whatever ``overwrite_conflicts`` says: a result never
    triggers the job that would produce it again.

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
        equivalent = _equivalent_sha256(store, sessions, meta, staged)
        outcome = run_write(sessions, lambda session: index_staged(
            session, store, staged, meta, overwrite=overwrite_conflicts, source=source,
            calling_ae=calling_ae, now=now, equivalent_sha256=equivalent))
    finally:
        store.discard(staged)
    if outcome is StoreOutcome.DUPLICATE_CONFLICT_KEPT:
        log.warning("SOP Instance %s received again with different content; first copy kept",
                    meta.sop_instance_uid)
    else:
        log.debug("SOP Instance %s: %s", meta.sop_instance_uid, outcome)
    return outcome


def _equivalent_sha256(store: FileStore, sessions: sessionmaker[Session], meta: InstanceMeta,
                       staged: StagedFile) -> str | None:
    """The stored copy's SHA-256 when it differs from ``staged`` only in its encoding
    (checked outside any transaction: decoding takes time); else None."""
    with sessions() as session:
        existing = InstanceRepository(session).get(meta.sop_instance_uid)
        if existing is None or existing.sha256 == staged.sha256:
            return None
        sha256, relpath = existing.sha256, existing.relpath
    try:
        path = store.path_of(relpath)
    except StorageError:
        return None
    return sha256 if same_content(path, staged.temp_path) else None


def index_staged(session: Session, store: FileStore, staged: StagedFile, meta: InstanceMeta, *,
                 overwrite: bool = False, source: InstanceSource | str = InstanceSource.RECEIVED,
                 calling_ae: str | None = None, now: datetime | None = None,
                 equivalent_sha256: str | None = None, job_id: int | None = None
                 ) -> StoreOutcome:
    """Index a staged file in the caller's transaction and move it into place.

    ``equivalent_sha256``: the stored copy's hash when the staged one holds the same
    content in another encoding (an identical duplicate). ``job_id``: the job that produced
    the instance (results only). The caller commits (and discards ``staged`` afterwards).
    """
    now = now or utcnow()
    source = InstanceSource(source)
    repo = InstanceRepository(session)
    repo.lock(meta.sop_instance_uid)
    existing = repo.get(meta.sop_instance_uid)
    if (existing is not None and source is InstanceSource.RECEIVED
            and existing.source == InstanceSource.PRODUCED):
        return StoreOutcome.OWN_RESULT  # ours, sent back: keep ours, re-open nothing
    if existing is not None and equivalent_sha256 is not None \
            and existing.sha256 == equivalent_sha256:
        return StoreOutcome.DUPLICATE_IDENTICAL
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
    repo.record(meta, stored, source=source, calling_ae=calling_ae, overwrite=overwrite, now=now,
                job_id=job_id)
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
