"""Notifications: webhook calls owed for studies triaged HIGH, retried like exports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .._db import insert_ignore, utcnow
from ..schema import ExportState, Notification

__all__ = ["NotificationRepository"]

_ERROR_WIDTH = 2000


class NotificationRepository:
    """Notification rows. The caller owns the transaction and commits."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, study_id: int, job_id: int, payload: Mapping[str, Any], *,
            now: datetime | None = None) -> None:
        """Owe one call for ``job_id`` (a retried job's second result owes none more)."""
        now = now or utcnow()
        insert_ignore(self.session, Notification, dict(
            study_id=study_id, job_id=job_id, payload=dict(payload),
            state=str(ExportState.PENDING), attempts=0, next_attempt_at=now, created_at=now),
            ("job_id",))

    def due(self, now: datetime, limit: int = 50) -> Sequence[Notification]:
        """Pending calls whose next attempt is due, oldest first (locked ``SKIP LOCKED`` on
        PostgreSQL, so two nodes never send one twice at once)."""
        return self.session.scalars(
            select(Notification).where(Notification.state == ExportState.PENDING,
                                       Notification.next_attempt_at <= now)
            .order_by(Notification.next_attempt_at, Notification.id).limit(limit)
            .with_for_update(skip_locked=True)).all()

    def mark_sent(self, notification_id: int, now: datetime | None = None) -> None:
        self.session.execute(
            update(Notification).where(Notification.id == notification_id)
            .values(state=ExportState.SENT, sent_at=now or utcnow(), last_error=None,
                    attempts=Notification.attempts + 1)
            .execution_options(synchronize_session="fetch"))

    def mark_failed(self, notification_id: int, *, error: str,
                    next_attempt_at: datetime | None) -> None:
        """A failed attempt: retry at ``next_attempt_at``, or give up when it is None."""
        values: dict[str, object] = {"attempts": Notification.attempts + 1,
                                     "last_error": error[:_ERROR_WIDTH]}
        if next_attempt_at is None:
            values["state"] = ExportState.FAILED
        else:
            values["next_attempt_at"] = next_attempt_at
        self.session.execute(update(Notification).where(Notification.id == notification_id)
                             .values(**values).execution_options(synchronize_session="fetch"))
