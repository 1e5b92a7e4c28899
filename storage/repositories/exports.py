"""Exports: result objects waiting to be sent to destinations, with retries."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .._db import insert_ignore, utcnow
from ..schema import Export, ExportState, Instance, Series, Study

__all__ = ["ExportRepository"]

_ERROR_WIDTH = 4000


class ExportRepository:
    """Export rows, one per (instance, destination). The caller owns the transaction."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, instance_id: int, destinations: Iterable[str], *,
            now: datetime | None = None) -> Sequence[Export]:
        """Queue an instance for each destination; existing pairs are left as they are
        (a retried job adds nothing twice). Returns the rows for these destinations."""
        now = now or utcnow()
        wanted = list(dict.fromkeys(destinations))
        for destination in wanted:
            if not destination or len(destination) > 64:
                raise ValueError(f"destination name must have 1 to 64 characters: "
                                 f"{destination[:80]!r}")
        for destination in wanted:
            existing = self.session.scalar(select(Export.id).where(
                Export.instance_id == instance_id, Export.destination == destination))
            if existing is None:
                insert_ignore(self.session, Export, dict(
                    instance_id=instance_id, destination=destination,
                    state=ExportState.PENDING, attempts=0, next_attempt_at=now,
                    created_at=now), ("instance_id", "destination"))
        return self.session.scalars(select(Export).where(
            Export.instance_id == instance_id, Export.destination.in_(wanted))
            .order_by(Export.id)).all()

    def get(self, export_id: int) -> Export | None:
        return self.session.get(Export, export_id)

    def due(self, now: datetime, limit: int = 100) -> Sequence[Export]:
        """Pending exports whose next attempt is due, oldest first.

        On PostgreSQL the rows are locked ``FOR UPDATE SKIP LOCKED`` until the transaction
        ends, so concurrent senders take different rows.
        """
        return self.session.scalars(
            select(Export).where(Export.state == ExportState.PENDING,
                                 Export.next_attempt_at <= now)
            .order_by(Export.next_attempt_at, Export.id).limit(limit)
            .with_for_update(skip_locked=True)).all()

    def mark_sent(self, export_id: int, now: datetime | None = None) -> None:
        now = now or utcnow()
        self.session.execute(
            update(Export).where(Export.id == export_id)
            .values(state=ExportState.SENT, sent_at=now, attempts=Export.attempts + 1,
                    last_error=None)
            .execution_options(synchronize_session="fetch"))

    def mark_failed(self, export_id: int, *, error: str, next_attempt_at: datetime | None,
                    ) -> None:
        """Record a failed attempt: retry at ``next_attempt_at``, or give up (``failed``)
        when it is ``None``."""
        values: dict[str, object] = {"attempts": Export.attempts + 1,
                                     "last_error": error[:_ERROR_WIDTH]}
        if next_attempt_at is None:
            values["state"] = ExportState.FAILED
        else:
            values["next_attempt_at"] = next_attempt_at
        self.session.execute(update(Export).where(Export.id == export_id).values(**values)
                             .execution_options(synchronize_session="fetch"))

    def cancel_pending(self, instance_ids: Sequence[int], *, error: str) -> int:
        """Give up the unsent exports of these instances (a superseded result is never
        delivered); return how many."""
        if not instance_ids:
            return 0
        changed = self.session.execute(
            update(Export).where(Export.instance_id.in_(instance_ids),
                                 Export.state == ExportState.PENDING)
            .values(state=ExportState.FAILED, last_error=error[:_ERROR_WIDTH])
            .execution_options(synchronize_session="fetch"))
        return int(changed.rowcount)  # type: ignore[attr-defined]

    def sent_destinations(self, instance_ids: Sequence[int]) -> set[str]:
        """The destinations that received at least one of these instances."""
        if not instance_ids:
            return set()
        return set(self.session.scalars(
            select(Export.destination).where(Export.instance_id.in_(instance_ids),
                                             Export.state == ExportState.SENT)))

    def pending_for_study(self, study_instance_uid: str) -> Sequence[Export]:
        """Exports of a study not yet sent (pending ones; failed ones are final)."""
        return self.session.scalars(
            select(Export).join(Instance, Export.instance_id == Instance.id)
            .join(Series, Instance.series_id == Series.id)
            .join(Study, Series.study_id == Study.id)
            .where(Study.study_instance_uid == study_instance_uid,
                   Export.state == ExportState.PENDING)
            .order_by(Export.id)).all()


    def retry_failed(self, job_id: int, now: datetime | None = None) -> int:
        """Send again the exports of a job's current results that gave up (``failed``): they
        become ``pending``, due now, with their attempts counted from zero; return how many.
        Superseded results stay withdrawn."""
        now = now or utcnow()
        instance_ids = select(Instance.id).where(Instance.job_id == job_id,
                                                 Instance.superseded.is_(False))
        changed = self.session.execute(
            update(Export).where(Export.instance_id.in_(instance_ids),
                                 Export.state == ExportState.FAILED)
            .values(state=ExportState.PENDING, attempts=0, next_attempt_at=now)
            .execution_options(synchronize_session="fetch"))
        return int(changed.rowcount)  # type: ignore[attr-defined]
