"""A node's storage for in-process pipeline tests, and helpers to fill it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from storage import (
    FileStore,
    InstanceMeta,
    StudyRepository,
    create_engine_for,
    ingest,
    migrate,
    run_write,
    session_factory,
)


@pytest.fixture
def node_storage(tmp_path: Path):
    """(FileStore, sessionmaker) over a fresh SQLite index."""
    engine = create_engine_for(f"sqlite:///{tmp_path / 'index.db'}")
    migrate(engine)
    yield FileStore(tmp_path / "store"), session_factory(engine)
    engine.dispose()


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
