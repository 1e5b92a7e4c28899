"""A node's storage for in-process pipeline tests, and helpers to fill it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from storage import (
    FileStore,
    InstanceMeta,
    StudyRepository,
    ingest,
    run_write,
)


def ingest_file(store: FileStore, sessions, path: Path) -> InstanceMeta:
    """Store one DICOM file as if it had arrived by C-STORE."""
    data = path.read_bytes()
    meta = InstanceMeta.read(data)
    ingest(store, sessions, data, meta)
    return meta


def settle_job(sessions) -> int:
    """Settle the one stored study now and return the id of its new job."""
    def work(session) -> int:
        repo = StudyRepository(session)
        (study,) = repo.settled(datetime.now(UTC), 0.0)
        job = repo.mark_settled_and_create_job(study, stable_seconds=0.0)
        assert job is not None
        return job.id

    return run_write(sessions, work)
