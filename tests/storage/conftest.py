"""Fixtures of the storage tests: the index on SQLite and on PostgreSQL, built by the
migrations (the PostgreSQL server fixtures live in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from storage import Base, FileStore, create_engine_for, migrate, session_factory


@pytest.fixture(scope="session")
def postgres_url(make_postgres_database: Callable[[], str]) -> str:
    """The session's PostgreSQL test database, migrated once."""
    url = make_postgres_database()
    migrate(url)
    return url


def _empty_tables(engine: Engine) -> None:
    names = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on a migrated, empty index: a new SQLite file per test, or the session's
    PostgreSQL database with its tables emptied."""
    if request.param == "sqlite":
        eng = create_engine_for(f"sqlite:///{tmp_path / 'db' / 'index.sqlite'}")
        migrate(eng)
    else:
        eng = create_engine_for(request.getfixturevalue("postgres_url"))
        _empty_tables(eng)
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")
