"""Engines, sessions and migrations. Nothing here runs at import time: entry points call
:func:`create_engine_for`, :func:`migrate` and :func:`session_factory` and pass the results
down.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

__all__ = ["begin_write", "create_engine_for", "migrate", "session_factory"]

SQLITE_BUSY_TIMEOUT_S = 30.0
_IMMEDIATE = "pacs_node_begin_immediate"
_MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _normalise_url(url: str | URL) -> URL:
    parsed = make_url(url)
    if parsed.drivername in {"postgresql", "postgres"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _sqlite_connect_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the sqlite3 module (it skips it for SELECT and DDL) and emit
        # it ourselves in the "begin" hook: real transactions, transactional migrations.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            cursor.execute("PRAGMA journal_mode = WAL")
            # FULL: a commit is on disk when it returns (NORMAL may lose the last commits
            # on power loss in WAL mode, after we answered Success).
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute("PRAGMA foreign_keys = ON")
            # LIKE case-sensitive as on PostgreSQL (DICOM matching is case-sensitive).
            cursor.execute("PRAGMA case_sensitive_like = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(_IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def create_engine_for(url: str | URL, **kwargs: Any) -> Engine:
    """Build the engine for the index database.

    SQLite: WAL journal, ``synchronous=FULL``, foreign keys on, a 30 s busy timeout,
    usable from several threads; the folder of the database file is created.
    PostgreSQL: psycopg 3 (``postgresql://`` is rewritten to ``postgresql+psycopg://``).
    SQL parameters are hidden from logs and error messages (they hold patient data).

    Args:
        url: a SQLAlchemy database URL.
        **kwargs: passed to :func:`sqlalchemy.create_engine`.
    """
    parsed = _normalise_url(url)
    # Bound values (patient names among them) never appear in logs or error messages.
    kwargs.setdefault("hide_parameters", True)
    if parsed.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(parsed, **kwargs)

    connect_args = dict(kwargs.pop("connect_args", {}))
    connect_args.setdefault("check_same_thread", False)
    connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_S)
    database = parsed.database or ""
    if database in {"", ":memory:"} or "mode=memory" in str(parsed):
        # One shared connection; only for single-threaded tools and quick experiments.
        kwargs.setdefault("poolclass", StaticPool)
    elif not database.startswith("file:"):
        Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, connect_args=connect_args, **kwargs)
    _sqlite_connect_hooks(engine)
    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Return the session factory the services use (``expire_on_commit=False``)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def begin_write(session: Session) -> None:
    """Start ``session``'s transaction as a write transaction.

    On SQLite this is ``BEGIN IMMEDIATE``: the write lock is taken (waiting up to the busy
    timeout) before the first read, so a read-then-write transaction never fails on a
    lock upgrade. Elsewhere it only starts the transaction. Call it before the first
    statement of the transaction; once the transaction has begun it does nothing.
    """
    if not session.in_transaction():
        session.connection(execution_options={_IMMEDIATE: True})


def _alembic_config() -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return config


def migrate(engine_or_url: Engine | str | URL, revision: str = "head") -> None:
    """Run the Alembic migrations up to ``revision`` (default: the newest).

    Safe to call at every start: an up-to-date database is left alone. Processes that
    start together migrate one after the other (PostgreSQL: an advisory lock; SQLite: the
    write lock).
    """
    from alembic import command

    engine = (engine_or_url if isinstance(engine_or_url, Engine)
              else create_engine_for(engine_or_url))
    try:
        with engine.connect() as connection:
            sqlite = connection.dialect.name == "sqlite"
            raw: Any = connection.connection.dbapi_connection if sqlite else None
            if sqlite:
                # SQLite alters a table by copying it and dropping the old one; with foreign
                # keys on, that drop would cascade into the child tables (results, exports)
                # and delete them. The pragma only takes effect outside a transaction.
                raw.execute("PRAGMA foreign_keys = OFF")
            try:
                # One transaction; SQLite takes its write lock up front (BEGIN IMMEDIATE).
                connection.execution_options(**{_IMMEDIATE: True})
                with connection.begin():
                    if connection.dialect.name == "postgresql":
                        key = int.from_bytes(
                            hashlib.sha256(b"pacs-node migrate").digest()[:8], "big",
                            signed=True)
                        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"),
                                           {"k": key})
                    config = _alembic_config()
                    config.attributes["connection"] = connection
                    command.upgrade(config, revision)
                    if sqlite and connection.exec_driver_sql(
                            "PRAGMA foreign_key_check").first() is not None:
                        raise RuntimeError("migration left rows whose foreign keys point "
                                           "nowhere; rolled back")
            finally:
                if sqlite:
                    raw.execute("PRAGMA foreign_keys = ON")
    finally:
        if engine is not engine_or_url:
            engine.dispose()
