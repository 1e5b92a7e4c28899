"""The whole store-and-index transaction for one received (or produced) instance."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import cast

from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from ._db import run_write, utcnow
from .content import same_content
from .errors import StorageError
from .filestore import Data, FileStore, StagedFile, StoredFile
from .meta import InstanceMeta, StoreOutcome
from .repositories.instances import InstanceRepository, decide
from .schema import InstanceSource

__all__ = ["BATCH", "index_staged", "ingest", "ingest_many"]

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
        data: the encoded instance (bytes, a file to copy, a :class:`WrittenFile` of the
            store to move, or byte chunks).
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
    outcome = ingest_many(store, sessions, [(data, meta)], overwrite_conflicts=overwrite_conflicts,
                          source=source, calling_ae=calling_ae, now=now)[0]
    if isinstance(outcome, StorageError):
        raise outcome
    return outcome


#: Most instances indexed in one transaction (a writer holds SQLite's lock that long).
BATCH = 50


def ingest_many(store: FileStore, sessions: sessionmaker[Session],
                items: Sequence[tuple[Data | StagedFile, InstanceMeta]], *,
                overwrite_conflicts: bool = False,
                source: InstanceSource | str = InstanceSource.RECEIVED,
                calling_ae: str | None = None, now: datetime | None = None
                ) -> list[StoreOutcome | StorageError]:
    """:func:`ingest` for several instances at once (the parts of one STOW-RS request);
    return each one's outcome, or the storage error that refused it.

    Each instance is staged (written, fsynced) on its own, unless the caller staged it
    already (a :class:`StagedFile` of ``store.stage`` for that instance: it is then
    committed or discarded here like the others); up to :data:`BATCH` are then
    indexed in one write transaction, their folders fsynced once each before the commit,
    so a request of many parts pays one commit instead of one per part. When that
    transaction fails, each instance of it is indexed on its own again, so one bad
    instance fails alone.
    """
    now = now or utcnow()
    results: list[StoreOutcome | StorageError | None] = [None] * len(items)
    staged: dict[int, StagedFile] = {}
    outcome: StoreOutcome | StorageError | None
    try:
        for i, (data, meta) in enumerate(items):
            if isinstance(data, StagedFile):  # staged by the caller already (STOW-RS)
                staged[i] = data
                continue
            try:
                staged[i] = store.stage(meta.study_instance_uid, meta.series_instance_uid,
                                        meta.sop_instance_uid, data)
            except StorageError as exc:
                results[i] = exc
        order = sorted(staged, key=lambda i: items[i][1].sop_instance_uid)  # lock order
        for start in range(0, len(order), BATCH):
            chunk = order[start:start + BATCH]
            equivalent = _equivalent_sha256(store, sessions, [(items[i][1], staged[i])
                                                              for i in chunk])

            def index(session: Session, chunk: list[int] = chunk,
                      equivalent: dict[str, str] = equivalent) -> list[StoreOutcome]:
                folders: set[Path] = set()
                outcomes = []
                for i in chunk:
                    meta = items[i][1]
                    outcomes.append(index_staged(
                        session, store, staged[i], meta, overwrite=overwrite_conflicts,
                        source=source, calling_ae=calling_ae, now=now,
                        equivalent_sha256=equivalent.get(meta.sop_instance_uid),
                        folders=folders))
                store.sync_folders(folders)
                return outcomes

            try:
                for i, outcome in zip(chunk, run_write(sessions, index), strict=True):
                    results[i] = outcome
            except StorageError as exc:
                if len(chunk) == 1:
                    results[chunk[0]] = exc
                    continue
                for i in chunk:  # one by one, so only the instance at fault fails
                    try:
                        results[i] = run_write(sessions, cast(
                            "Callable[[Session], StoreOutcome]",
                            lambda session, i=i: index(session, [i])[0]))
                    except StorageError as single:
                        results[i] = single
    finally:
        for file in staged.values():
            store.discard(file)
    for (_, meta), outcome in zip(items, results, strict=True):
        if outcome is StoreOutcome.DUPLICATE_CONFLICT_KEPT:
            log.warning("SOP Instance %s received again with different content; first copy "
                        "kept", meta.sop_instance_uid)
        else:
            log.debug("SOP Instance %s: %s", meta.sop_instance_uid, outcome)
    return [StorageError("not stored") if outcome is None else outcome for outcome in results]


def _equivalent_sha256(store: FileStore, sessions: sessionmaker[Session],
                       batch: list[tuple[InstanceMeta, StagedFile]]) -> dict[str, str]:
    """For each SOP Instance UID whose stored copy differs from the staged one only in its
    encoding, the stored copy's SHA-256 (checked outside any transaction: decoding takes
    time)."""
    staged = {meta.sop_instance_uid: file for meta, file in batch}
    with sessions() as session:
        held = [(row.sop_instance_uid, row.sha256, row.relpath)
                for row in InstanceRepository(session).get_many(list(staged))
                if row.sha256 != staged[row.sop_instance_uid].sha256]
    equivalent = {}
    for sop_uid, sha256, relpath in held:
        try:
            path = store.path_of(relpath)
        except StorageError:
            continue
        if same_content(path, staged[sop_uid].temp_path):
            equivalent[sop_uid] = sha256
    return equivalent


def index_staged(session: Session, store: FileStore, staged: StagedFile, meta: InstanceMeta, *,
                 overwrite: bool = False, source: InstanceSource | str = InstanceSource.RECEIVED,
                 calling_ae: str | None = None, now: datetime | None = None,
                 equivalent_sha256: str | None = None, job_id: int | None = None,
                 folders: set[Path] | None = None) -> StoreOutcome:
    """Index a staged file in the caller's transaction and move it into place.

    ``equivalent_sha256``: the stored copy's hash when the staged one holds the same
    content in another encoding (an identical duplicate). ``job_id``: the job that produced
    the instance (results only). ``folders``: when given, the folder a file is renamed
    into is added to it instead of fsynced (the caller fsyncs them all before it commits:
    :meth:`FileStore.sync_folders`). The caller commits (and discards ``staged`` afterwards).
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
            _commit(store, staged, folders)  # the row outlived its file: put it back
        return outcome

    old_relpath = existing.relpath if existing is not None else None
    stored = StoredFile(staged.path, staged.relpath, staged.sha256, staged.size)
    repo.record(meta, stored, source=source, calling_ae=calling_ae, overwrite=overwrite, now=now,
                job_id=job_id)
    # SQL done (the likely failures are behind us); now the rename, then the caller commits.
    if staged.done and store.sha256_of(staged.path) != staged.sha256:
        # A retry after a failed commit, and another writer replaced the file meanwhile.
        raise StorageError(f"SOP Instance {meta.sop_instance_uid} changed during a retry")
    _commit(store, staged, folders)
    if old_relpath is not None and old_relpath != staged.relpath:
        _remove_after_commit(session, store, old_relpath)
    return outcome


def _commit(store: FileStore, staged: StagedFile, folders: set[Path] | None) -> None:
    store.commit(staged, sync=folders is None)
    if folders is not None:
        folders.add(staged.path.parent)


def _remove_after_commit(session: Session, store: FileStore, relpath: str) -> None:
    """An overwrite moved the instance to another study/series: drop the old file once the
    row pointing to the new one is committed."""
    def remove(_session: Session) -> None:
        try:
            store.remove(relpath)
        except StorageError:
            log.warning("could not remove replaced file %s", relpath)

    event.listen(session, "after_commit", remove, once=True)
