"""Migrations and engine set-up on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, select, text

from storage import (
    Base,
    FileStore,
    Job,
    JobState,
    Study,
    create_engine_for,
    ingest,
    migrate,
    session_factory,
)

from .storage_helpers import content, meta

TABLES = {"patients", "studies", "series", "instances", "jobs", "results", "exports",
          "api_tokens", "priority_events", "node_controls", "notifications", "batches",
          "batch_items"}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'new' / 'folder' / 'index.sqlite'}"
    make: Callable[[], str] = request.getfixturevalue("make_postgres_database")
    return make()


@pytest.fixture
def empty_engine(empty_url: str) -> Iterator[Engine]:
    engine = create_engine_for(empty_url)
    yield engine
    engine.dispose()


def _diff(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def test_migrate_creates_the_schema_of_the_models(empty_engine: Engine) -> None:
    assert set(inspect(empty_engine).get_table_names()) == set()
    migrate(empty_engine)
    assert set(inspect(empty_engine).get_table_names()) == TABLES | {"alembic_version"}
    assert _diff(empty_engine) == []  # the migration builds exactly the ORM schema


def test_migrate_twice_is_a_no_op(empty_url: str) -> None:
    migrate(empty_url)  # from a URL, as the CLI does
    engine = create_engine_for(empty_url)
    try:
        with engine.connect() as conn:
            before = conn.execute(text("SELECT version_num FROM alembic_version")).all()
        migrate(engine)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).all() == before
        assert len(before) == 1
        assert _diff(engine) == []
    finally:
        engine.dispose()


def test_concurrent_migrate_calls(empty_engine: Engine) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            migrate(empty_engine)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert set(inspect(empty_engine).get_table_names()) == TABLES | {"alembic_version"}


def test_sqlite_settings(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "index.sqlite"
    engine = create_engine_for(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert path.exists()
    finally:
        engine.dispose()


def test_postgresql_urls_use_psycopg3() -> None:
    engine = create_engine_for("postgresql://someone@db.example/pacs")
    assert engine.dialect.driver == "psycopg"
    engine.dispose()


def test_foreign_keys_are_enforced(engine: Engine) -> None:
    sessions = session_factory(engine)
    with sessions() as session, pytest.raises(Exception, match="(?i)foreign key"):
        now = datetime.now(UTC)
        session.add(Job(study_id=12345, state=JobState.QUEUED, created_at=now, updated_at=now))
        session.commit()


def test_timestamps_round_trip_as_aware_utc(engine: Engine, tmp_path: Path) -> None:
    sessions = session_factory(engine)
    cet = timezone(timedelta(hours=1))
    when = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=cet)
    ingest(FileStore(tmp_path / "s"), sessions, content("x"), meta(), now=when)
    with sessions() as session:
        study = session.scalars(select(Study)).one()
        assert study.last_received_at == when
        assert study.last_received_at.utcoffset() == timedelta(0)
        assert session.scalars(select(Study).where(
            Study.last_received_at < when + timedelta(microseconds=1))).one() is study
        study.last_received_at = datetime(2026, 3, 1, 12, 0)  # naive: refused
        with pytest.raises(Exception, match="naive"):
            session.flush()


def test_result_states_migration_keeps_old_results_and_allows_not_analysed(
        empty_engine: Engine, tmp_path: Path) -> None:
    migrate(empty_engine, "0001")
    now = datetime(2026, 11, 1, tzinfo=UTC)
    with empty_engine.begin() as conn:  # the rows of one received study, as 0001 holds them
        conn.execute(text("INSERT INTO patients (id, patient_id, patient_name, birth_date, "
                          "sex) VALUES (1, 'P1', '', '', '')"))
        conn.execute(text(
            "INSERT INTO studies (id, study_instance_uid, patient_id, study_date, study_time, "
            "accession_number, study_description, modalities_in_study, instance_count, "
            "first_received_at, last_received_at, state) VALUES (1, '1.2.3', 1, '', '', '', "
            "'', 'CR', 1, :t, :t, 'settled')"), {"t": now})
        conn.execute(text(
            "INSERT INTO jobs (id, study_id, state, attempts, max_attempts, created_at, "
            "updated_at, instance_count_at_creation) VALUES (1, 1, 'done', 1, 3, :t, :t, 1)"),
            {"t": now})
        conn.execute(text(
            "INSERT INTO results (id, job_id, study_id, fracture_probability, positive, "
            "aggregation, threshold, summary, created_at, superseded) "
            "VALUES (1, 1, 1, 0.8, true, 'max', 0.5, '{}', :t, false)"), {"t": now})
    migrate(empty_engine)
    assert _diff(empty_engine) == []
    with empty_engine.begin() as conn:
        old = conn.execute(text("SELECT state, reason, fracture_probability FROM results")).one()
        assert tuple(old) == ("analysed", None, 0.8)
        conn.execute(text(
            "INSERT INTO jobs (id, study_id, state, attempts, max_attempts, created_at, "
            "updated_at, instance_count_at_creation, failures, interruptions, "
            "max_interruptions) VALUES (2, 1, 'done', 1, 3, :t, :t, 1, 0, 0, 20)"),
            {"t": now})
        conn.execute(text(
            "INSERT INTO results (id, job_id, study_id, state, reason, views_analysed, "
            "views_total, aggregation, threshold, summary, created_at, superseded) "
            "VALUES (2, 2, 1, 'not_analysed', 'out of scope (CHEST)', 0, 1, 'max', 0.5, "
            "'{}', :t, false)"), {"t": now})
    with pytest.raises(Exception, match="(?i)check|constraint"), empty_engine.begin() as conn:
        conn.execute(text(
            "UPDATE results SET state = 'maybe' WHERE id = 2"))
    with empty_engine.begin() as conn:
        # 0003: failures and interruptions counted apart; an old job has neither.
        counts = conn.execute(text("SELECT failures, interruptions, max_interruptions "
                                   "FROM jobs WHERE id = 1")).one()
        assert tuple(counts) == (0, 0, 20)
        # Altering the parent tables (jobs, instances) kept their children.
        assert conn.execute(text("SELECT count(*) FROM results")).scalar_one() == 2
