"""Private SQL helpers shared by the repositories: dialect-aware upserts, locks, retries."""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from .engine import begin_write
from .errors import OutOfResources, StorageError

log = logging.getLogger(__name__)
T = TypeVar("T")

# PostgreSQL SQLSTATEs worth a retry: serialization failure, deadlock, unique violation
# (a concurrent insert of the same patient/study/series won the race).
_PG_RETRY = frozenset({"40001", "40P01", "23505"})
_SQLITE_BUSY = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED
_SQLITE_FULL = 13


def utcnow() -> datetime:
    return datetime.now(UTC)


def dialect_name(session: Session) -> str:
    return session.get_bind().dialect.name


def insert_ignore(session: Session, model: type[DeclarativeBase], values: Mapping[str, Any],
                  keys: Sequence[str]) -> None:
    """INSERT ... ON CONFLICT (keys) DO NOTHING on SQLite and PostgreSQL."""
    name = dialect_name(session)
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    else:
        raise StorageError(f"unsupported database dialect {name!r}")
    session.execute(insert(model).values(**values).on_conflict_do_nothing(index_elements=list(keys)))


def lock_key(session: Session, namespace: str, key: str) -> None:
    """Hold a transaction-scoped lock on ``namespace:key``.

    PostgreSQL: ``pg_advisory_xact_lock``. SQLite: nothing to do, a write transaction
    (:func:`~storage.engine.begin_write`) already excludes every other writer.
    """
    if dialect_name(session) == "postgresql":
        digest = hashlib.sha256(f"{namespace}:{key}".encode()).digest()
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"),
                        {"k": int.from_bytes(digest[:8], "big", signed=True)})


def _sqlstate(exc: DBAPIError) -> str:
    return str(getattr(exc.orig, "sqlstate", "") or "")


def is_transient(exc: BaseException) -> bool:
    """Whether a database error is worth retrying the whole transaction for."""
    if not isinstance(exc, DBAPIError):
        return False
    if _sqlstate(exc) in _PG_RETRY:
        return True
    code = getattr(exc.orig, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _SQLITE_BUSY
    return "database is locked" in str(exc.orig)


def translate(exc: DBAPIError) -> StorageError:
    """Map a database error to a storage error whose message holds no SQL parameters."""
    state = _sqlstate(exc)
    code = getattr(exc.orig, "sqlite_errorcode", None)
    what = f"{type(exc.orig).__name__} {state or code or ''}".strip()
    if state.startswith("53") or (code is not None and code & 0xFF == _SQLITE_FULL):
        return OutOfResources(f"index database out of resources ({what})")
    return StorageError(f"index database error ({what})")


def run_write(sessions: sessionmaker[Session], work: Callable[[Session], T], *,
              attempts: int = 8) -> T:
    """Run ``work(session)`` in a write transaction, commit, and return its result.

    Transient conflicts (SQLite busy, PostgreSQL deadlock / serialization / unique race)
    roll back and run ``work`` again, up to ``attempts`` times, so ``work`` must be safe to
    repeat. Other database errors become :class:`StorageError` (``OutOfResources`` when the
    database is full).
    """
    for attempt in range(1, attempts + 1):
        try:
            with sessions() as session:
                begin_write(session)
                result = work(session)
                session.commit()
                return result
        except DBAPIError as exc:
            if attempt < attempts and is_transient(exc):
                log.debug("transient database conflict, retry %d: %s", attempt, _sqlstate(exc))
                time.sleep(min(0.5, 0.005 * 2**attempt) * random.random())
                continue
            raise translate(exc) from exc
    raise AssertionError("unreachable")  # pragma: no cover
