"""Jobs: the source of truth for study processing (a Celery message is only a wake-up)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, or_, select, update
from sqlalchemy.orm import Session

from .._db import utcnow
from ..errors import NotFound
from ..schema import Job, JobState, Result, ResultState

__all__ = ["JobRepository"]

_ERROR_WIDTH = 4000


def _too_many_interruptions() -> str:
    return ("interrupted too many times: its worker died during every run (a view that "
            "crashes or exhausts the worker?); see the worker logs, then `pacs-node rerun`")


class JobRepository:
    """Job rows. State changes are conditional UPDATEs, so two workers racing for the
    same job cannot both win. The caller owns the transaction and commits."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, job_id: int) -> Job | None:
        return self.session.get(Job, job_id)

    def require(self, job_id: int) -> Job:
        """Return the job or raise :class:`~storage.errors.NotFound`."""
        job = self.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        return job

    def latest_for_study(self, study_id: int) -> Job | None:
        return self.session.scalars(select(Job).where(Job.study_id == study_id)
                                    .order_by(Job.id.desc()).limit(1)).first()

    def result_for(self, job_id: int) -> Result | None:
        return self.session.scalars(select(Result).where(Result.job_id == job_id)).first()

    def _update(self, job_id: int, *conditions: Any, **values: Any) -> Job | None:
        changed = self.session.execute(
            update(Job).where(Job.id == job_id, *conditions).values(**values)
            .execution_options(synchronize_session="fetch"))
        if changed.rowcount != 1:  # type: ignore[attr-defined]
            return None
        job = self.session.get(Job, job_id, populate_existing=True)
        return job

    def claim(self, job_id: int, *, lease_seconds: float, now: datetime | None = None
              ) -> Job | None:
        """Take a job for running: ``queued`` (or ``running`` with an expired lease: its
        worker died, which counts as an interruption, not a failure) becomes ``running``
        with ``attempts + 1`` and a lease until ``now + lease_seconds``.

        Returns ``None`` when the job is gone, done, failed, superseded, held under a valid
        lease, or out of failures or interruptions. The returned ``attempts`` is the
        fencing token to pass to :meth:`renew_lease`, :meth:`complete` and :meth:`fail`.
        """
        now = now or utcnow()
        expired = and_(Job.state == JobState.RUNNING, Job.lease_expires_at < now)
        return self._update(
            job_id,
            Job.failures < Job.max_attempts,
            Job.interruptions + case((expired, 1), else_=0) < Job.max_interruptions,
            or_(Job.state == JobState.QUEUED, expired),
            state=JobState.RUNNING, attempts=Job.attempts + 1, started_at=now, updated_at=now,
            interruptions=Job.interruptions + case((expired, 1), else_=0),
            lease_expires_at=now + timedelta(seconds=lease_seconds), finished_at=None)

    def renew_lease(self, job_id: int, *, lease_seconds: float, attempt: int,
                    now: datetime | None = None) -> bool:
        """Extend the lease of a running job (a heartbeat); False if the job was lost."""
        now = now or utcnow()
        return self._update(job_id, Job.state == JobState.RUNNING, Job.attempts == attempt,
                            lease_expires_at=now + timedelta(seconds=lease_seconds),
                            updated_at=now) is not None

    def complete(self, job_id: int, *, fracture_probability: float | None,
                 positive: bool | None, aggregation: str, threshold: float,
                 summary: Mapping[str, Any], reason: str | None = None,
                 views_analysed: int = 0, views_total: int = 0,
                 attempt: int | None = None, now: datetime | None = None,
                 models: Sequence[tuple[str, str]] = ()) -> Result | None:
        """Finish a running job with its study result.

        A result with a probability is ``analysed``; one without (no view could be judged)
        is ``not_analysed`` and must say why in ``reason``.

        Args:
            attempt: the ``attempts`` value returned by :meth:`claim`; when given, a worker
                whose lease expired and whose job was claimed again cannot complete it.
            models: ``(name, version)`` of each model that judged views, recorded on the
                job (what a batch's ``--skip-done`` compares).

        Returns:
            The result row, or ``None`` when the job is no longer running under this
            attempt (superseded by new data, or taken over): the result is discarded.
        """
        if (fracture_probability is None) != (positive is None):
            raise ValueError("a result has both a probability and a verdict, or neither")
        if fracture_probability is None and not reason:
            raise ValueError("a study that was not analysed needs a reason")
        if not 0 <= views_analysed <= views_total:
            raise ValueError(f"views_analysed {views_analysed} must lie in [0, {views_total}]")
        now = now or utcnow()
        fence = [Job.attempts == attempt] if attempt is not None else []
        named = {"model_name": ", ".join(n for n, _ in models)[:128] or None,
                 "model_version": ", ".join(v for _, v in models)[:64] or None} if models else {}
        job = self._update(job_id, Job.state == JobState.RUNNING, *fence,
                           state=JobState.DONE, finished_at=now, updated_at=now,
                           lease_expires_at=None, last_error=None, **named)
        if job is None:
            return None
        probability = None if fracture_probability is None else float(fracture_probability)
        analysed = probability is not None
        result = Result(job_id=job.id, study_id=job.study_id,
                        state=ResultState.ANALYSED if analysed else ResultState.NOT_ANALYSED,
                        reason=reason or None, views_analysed=views_analysed,
                        views_total=views_total,
                        fracture_probability=probability,
                        positive=bool(positive) if analysed else None, aggregation=aggregation,
                        threshold=float(threshold), summary=dict(summary), created_at=now,
                        superseded=False)
        self.session.add(result)
        self.session.flush()
        return result

    def fail(self, job_id: int, error: str, *, retry: bool, attempt: int | None = None,
             now: datetime | None = None) -> Job | None:
        """Record a run that raised: one more failure. With ``retry`` and failures left
        (fewer than ``max_attempts``) the job is ``queued`` again (enqueue it after the
        commit); otherwise it is ``failed`` for good.

        Returns the job, or ``None`` when it is no longer running under this attempt.
        """
        now = now or utcnow()
        fence = [Job.attempts == attempt] if attempt is not None else []
        running = [Job.state == JobState.RUNNING, *fence]
        error = error[:_ERROR_WIDTH]
        if retry:
            job = self._update(job_id, *running, Job.failures + 1 < Job.max_attempts,
                               state=JobState.QUEUED, last_error=error, updated_at=now,
                               failures=Job.failures + 1, lease_expires_at=None,
                               enqueued_at=now)
            if job is not None:
                return job
        return self._update(job_id, *running, state=JobState.FAILED, last_error=error,
                            failures=Job.failures + 1, updated_at=now, finished_at=now,
                            lease_expires_at=None)

    def stale(self, now: datetime, enqueue_timeout: float) -> Sequence[Job]:
        """Jobs that need a new wake-up message: ``queued`` ones not enqueued for
        ``enqueue_timeout`` seconds (or never), and ``running`` ones whose lease expired
        (their worker died) with interruptions left, once when the lease lapses and again
        every ``enqueue_timeout`` until a worker takes them (see :meth:`expire_leases` for
        the others)."""
        cutoff = now - timedelta(seconds=enqueue_timeout)
        return self.session.scalars(select(Job).where(or_(
            and_(Job.state == JobState.QUEUED,
                 or_(Job.enqueued_at.is_(None), Job.enqueued_at <= cutoff)),
            and_(Job.state == JobState.RUNNING, Job.lease_expires_at < now,
                 Job.interruptions + 1 < Job.max_interruptions,
                 # once when the lease lapses, then again after enqueue_timeout
                 or_(Job.enqueued_at.is_(None), Job.enqueued_at < Job.lease_expires_at,
                     Job.enqueued_at <= cutoff)),
        )).order_by(Job.id)).all()

    def expire_leases(self, now: datetime | None = None) -> int:
        """Fail running jobs whose lease expired for the last allowed time (a job that kills
        its worker every time); return how many. Expired jobs with interruptions left stay
        claimable: :meth:`claim` takes them and counts the interruption."""
        now = now or utcnow()
        changed = self.session.execute(
            update(Job).where(Job.state == JobState.RUNNING, Job.lease_expires_at < now,
                              Job.interruptions + 1 >= Job.max_interruptions)
            .values(state=JobState.FAILED, interruptions=Job.interruptions + 1,
                    last_error=_too_many_interruptions(), finished_at=now, updated_at=now,
                    lease_expires_at=None)
            .execution_options(synchronize_session="fetch"))
        return int(changed.rowcount)  # type: ignore[attr-defined]

    def release_running(self, now: datetime | None = None) -> list[int]:
        """Give back every ``running`` job at once (a node that is the only worker, at
        start: whatever ran before died with the previous process). Each counts one
        interruption, not a failure: jobs with interruptions left become ``queued``
        (enqueued at ``now``: dispatch them after the commit) and their ids are returned;
        the others become ``failed``, saying so."""
        now = now or utcnow()
        self.session.execute(
            update(Job).where(Job.state == JobState.RUNNING,
                              Job.interruptions + 1 >= Job.max_interruptions)
            .values(state=JobState.FAILED, interruptions=Job.interruptions + 1,
                    last_error=_too_many_interruptions(), finished_at=now, updated_at=now,
                    lease_expires_at=None)
            .execution_options(synchronize_session="fetch"))
        released = self.session.execute(
            update(Job).where(Job.state == JobState.RUNNING)
            .values(state=JobState.QUEUED, lease_expires_at=None, enqueued_at=now,
                    interruptions=Job.interruptions + 1, updated_at=now,
                    last_error="interrupted: released at start")
            .returning(Job.id)
            .execution_options(synchronize_session="fetch")).scalars().all()
        return sorted(released)

    def lanes(self, job_ids: Sequence[int]) -> dict[int, int]:
        """The queue lane of each job (storage.triage: 0 urgent, 1 live, 2 batch)."""
        if not job_ids:
            return {}
        rows = self.session.execute(select(Job.id, Job.lane).where(Job.id.in_(list(job_ids))))
        return {int(job_id): int(lane) for job_id, lane in rows}

    def touch_enqueued(self, job_id: int, now: datetime | None = None) -> None:
        """Record that a wake-up message for the job was just sent."""
        now = now or utcnow()
        self.session.execute(update(Job).where(Job.id == job_id)
                             .values(enqueued_at=now, updated_at=now)
                             .execution_options(synchronize_session="fetch"))

    def wake_queued(self, now: datetime | None = None) -> int:
        """Mark every ``queued`` job as never enqueued, so the tracker's reconciler wakes a
        worker for each at its next pass (processing resumed); return how many."""
        now = now or utcnow()
        changed = self.session.execute(
            update(Job).where(Job.state == JobState.QUEUED)
            .values(enqueued_at=None, updated_at=now)
            .execution_options(synchronize_session="fetch"))
        return int(changed.rowcount)  # type: ignore[attr-defined]
