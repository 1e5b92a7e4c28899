"""Studies: settling, job creation, triage priority and the operator listing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from .._db import utcnow
from ..schema import (
    Instance,
    InstanceSource,
    Job,
    JobState,
    PriorityEvent,
    Result,
    Series,
    Study,
    StudyState,
)
from ..triage import LANE_BATCH, PrioritySource, TriagePriority, floored, lane_for
from .batches import BatchRepository

__all__ = ["StudyListing", "StudyRepository"]


@dataclass(frozen=True)
class StudyListing:
    """One line of ``pacs-node studies``: a study, its latest job and that job's result."""

    study_instance_uid: str
    study_date: str
    study_description: str
    modalities_in_study: str
    instance_count: int
    state: str
    last_received_at: datetime
    priority: float | None
    job_id: int | None
    job_state: str | None
    job_attempts: int | None
    fracture_probability: float | None
    positive: bool | None
    accession_number: str = field(default="", repr=False)
    # The result's state ("analysed" / "not_analysed", None before a result), why views
    # were not analysed, and how many were.
    result_state: str | None = None
    reason: str | None = None
    views_analysed: int | None = None
    views_total: int | None = None
    # Instances received (the node's own results left out), and the job's counters.
    images: int = 0
    job_failures: int | None = None
    job_interruptions: int | None = None
    job_error: str | None = None
    # storage.triage.TriagePriority (None before a result or the sender's urgency).
    triage_priority: str | None = None

    @property
    def result(self) -> str:
        """The study's result in the node's vocabulary: ``positive``, ``negative``,
        ``not_analysed``, ``failed``, or ``pending`` (no result yet: receiving, queued,
        running)."""
        if self.job_state == JobState.FAILED:
            return "failed"
        if self.result_state is None:
            return "pending"
        if self.result_state != "analysed" or self.fracture_probability is None:
            return "not_analysed"
        return "positive" if self.positive else "negative"


class StudyRepository:
    """Study rows. The caller owns the transaction and commits."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, study_instance_uid: str) -> Study | None:
        return self.session.scalars(
            select(Study).where(Study.study_instance_uid == study_instance_uid)).one_or_none()

    def get_by_id(self, study_id: int) -> Study | None:
        return self.session.get(Study, study_id)

    def settled(self, now: datetime, stable_seconds: float) -> Sequence[Study]:
        """Studies still ``receiving`` whose last instance arrived ``stable_seconds`` ago or
        earlier, oldest first; not those a batch is still bringing in (the batch settles
        them when its retrieve has ended: :meth:`settle_for_batch`)."""
        cutoff = now - timedelta(seconds=stable_seconds)
        return self.session.scalars(
            select(Study).where(Study.state == StudyState.RECEIVING,
                                Study.last_received_at <= cutoff,
                                ~BatchRepository(self.session).active_study_clause())
            .order_by(Study.last_received_at, Study.id)).all()

    def mark_settled_and_create_job(
        self, study: Study, *, now: datetime | None = None, stable_seconds: float = 0.0,
        model_name: str | None = None, model_version: str | None = None,
        max_attempts: int = 3, max_interruptions: int = 20,
    ) -> Job | None:
        """Mark ``study`` settled and create its queued job; supersede its earlier jobs.

        The state change is a conditional UPDATE (still ``receiving``, nothing received
        in the last ``stable_seconds``), so an instance that arrived since :meth:`settled`
        or a second tracker makes this return ``None`` and create nothing. Earlier jobs of
        the study (any state) become ``superseded`` and their results are flagged too:
        new data arrived after them. The new job counts as enqueued at ``now``; enqueue it
        after the commit.
        """
        now = now or utcnow()
        cutoff = now - timedelta(seconds=stable_seconds)
        changed = self.session.execute(
            update(Study)
            .where(Study.id == study.id, Study.state == StudyState.RECEIVING,
                   Study.last_received_at <= cutoff)
            .values(state=StudyState.SETTLED)
            .execution_options(synchronize_session="fetch"))
        if changed.rowcount != 1:  # type: ignore[attr-defined]
            return None
        return self._new_job(study, now=now, enqueued_at=now, model_name=model_name,
                             model_version=model_version, max_attempts=max_attempts,
                             max_interruptions=max_interruptions)

    def rerun(self, study: Study, *, now: datetime | None = None, max_attempts: int = 3,
              max_interruptions: int = 20) -> Job:
        """Queue a new job for a settled study (an operator's re-run), superseding its
        earlier jobs. The job is not enqueued: the tracker's reconciler wakes a worker for
        it within ``queue.reconcile_interval_seconds``, so this works from any process."""
        return self._new_job(study, now=now or utcnow(), enqueued_at=None,
                             max_attempts=max_attempts, max_interruptions=max_interruptions)

    def settle_for_batch(self, study: Study, batch_id: int, *, now: datetime | None = None,
                         max_attempts: int = 3, max_interruptions: int = 20) -> Job:
        """Mark ``study`` settled (its retrieve has ended: every instance is in) and queue a
        job of batch ``batch_id`` for it in the batch lane, superseding earlier jobs. The
        job counts as enqueued at ``now``; enqueue it after the commit."""
        now = now or utcnow()
        self.session.execute(update(Study).where(Study.id == study.id)
                             .values(state=StudyState.SETTLED)
                             .execution_options(synchronize_session="fetch"))
        return self._new_job(study, now=now, enqueued_at=now, max_attempts=max_attempts,
                             max_interruptions=max_interruptions, lane=LANE_BATCH,
                             batch_id=batch_id)

    def settle_without_job(self, study_instance_uid: str) -> None:
        """A study a batch stopped bringing in (cancelled, failed) is held as it is, not
        processed as a live study: mark it settled without a job. New instances make it
        ``receiving`` again, and then it is processed."""
        self.session.execute(update(Study).where(
            Study.study_instance_uid == study_instance_uid,
            Study.state == StudyState.RECEIVING).values(state=StudyState.SETTLED)
            .execution_options(synchronize_session="fetch"))

    def _new_job(self, study: Study, *, now: datetime, enqueued_at: datetime | None,
                 model_name: str | None = None, model_version: str | None = None,
                 max_attempts: int, max_interruptions: int, lane: int | None = None,
                 batch_id: int | None = None) -> Job:
        if max_attempts < 1 or max_interruptions < 1:
            raise ValueError(f"max_attempts and max_interruptions must be >= 1, got "
                             f"{max_attempts}, {max_interruptions}")
        self.session.execute(
            update(Job).where(Job.study_id == study.id, Job.state != JobState.SUPERSEDED)
            .values(state=JobState.SUPERSEDED, updated_at=now, lease_expires_at=None)
            .execution_options(synchronize_session="fetch"))
        self.session.execute(
            update(Result).where(Result.study_id == study.id, Result.superseded.is_(False))
            .values(superseded=True).execution_options(synchronize_session="fetch"))
        self.session.refresh(study)
        job = Job(study_id=study.id, state=JobState.QUEUED, attempts=0, failures=0,
                  max_attempts=max_attempts, interruptions=0,
                  max_interruptions=max_interruptions, created_at=now, updated_at=now,
                  enqueued_at=enqueued_at,
                  instance_count_at_creation=study.instance_count, model_name=model_name,
                  model_version=model_version, batch_id=batch_id,
                  lane=lane_for(study.requested_priority) if lane is None else lane)
        self.session.add(job)
        self.session.flush()
        study.current_job_id = job.id
        self.session.flush()
        return job

    def failed(self) -> Sequence[Study]:
        """Studies whose current job failed."""
        return self.session.scalars(
            select(Study).join(Job, Job.id == Study.current_job_id)
            .where(Job.state == JobState.FAILED).order_by(Study.id)).all()

    def set_triage(self, study_id: int, priority: TriagePriority | str, *,
                   source: PrioritySource | str, reason: str, actor: str,
                   job_id: int | None = None, now: datetime | None = None) -> TriagePriority:
        """Set a study's triage priority and record the change (:class:`PriorityEvent`);
        return the priority set.

        A result never lowers the sender's urgency (:func:`storage.triage.floored`): the
        priority recorded is then HIGH, and the reason says both. A user (an admin, with a
        reason) may set any priority; it holds until the next result.
        """
        now = now or utcnow()
        source = PrioritySource(source)
        priority = TriagePriority(priority)
        study = self._lock(study_id)
        if source is PrioritySource.RESULT:
            floor = floored(priority, study.requested_priority)
            if floor is not priority:
                reason = f"{reason}; raised to {floor} by the sender: {study.requested_priority}"
                priority = floor
        study.triage_priority = str(priority)
        self.session.add(PriorityEvent(study_id=study_id, priority=str(priority),
                                       source=str(source), reason=reason[:1000],
                                       actor=actor[:64], job_id=job_id, created_at=now))
        self.session.flush()
        return priority

    def priority_history(self, study_id: int) -> Sequence[PriorityEvent]:
        """Every priority change of a study, oldest first."""
        return self.session.scalars(select(PriorityEvent).where(
            PriorityEvent.study_id == study_id).order_by(PriorityEvent.id)).all()

    def _lock(self, study_id: int) -> Study:
        return self.session.scalars(
            select(Study).where(Study.id == study_id).with_for_update(key_share=True)
            .execution_options(populate_existing=True)).one()

    def set_priority(self, study_id: int, priority: float | None) -> None:
        """Set the worklist priority of a study (``None`` clears it)."""
        self.session.execute(update(Study).where(Study.id == study_id)
                             .values(priority=priority)
                             .execution_options(synchronize_session="fetch"))

    def list_with_latest(self, limit: int = 50, *, study_uids: Sequence[str] = ()
                         ) -> list[StudyListing]:
        """The ``limit`` most recently received studies (or those of ``study_uids``) with
        their latest job and result."""
        stmt = select(Study)
        if study_uids:
            stmt = stmt.where(Study.study_instance_uid.in_(list(study_uids)))
        studies = self.session.scalars(
            stmt.order_by(Study.last_received_at.desc(), Study.id.desc()).limit(limit)).all()
        ids = [s.id for s in studies]
        if not ids:
            return []
        latest = (select(func.max(Job.id)).where(Job.study_id.in_(ids))
                  .group_by(Job.study_id).scalar_subquery())
        jobs = {j.study_id: j for j in self.session.scalars(
            select(Job).where(Job.id.in_(latest)))}
        results = {r.job_id: r for r in self.session.scalars(
            select(Result).where(Result.job_id.in_([j.id for j in jobs.values()])))}
        images: dict[int, int] = dict(self.session.execute(  # type: ignore[arg-type]
            select(Series.study_id, func.count(Instance.id))
            .join(Instance, Instance.series_id == Series.id)
            .where(Series.study_id.in_(ids), Instance.source == InstanceSource.RECEIVED)
            .group_by(Series.study_id)).all())
        listing = []
        for s in studies:
            job = jobs.get(s.id)
            result = results.get(job.id) if job is not None else None
            listing.append(StudyListing(
                study_instance_uid=s.study_instance_uid, study_date=s.study_date,
                study_description=s.study_description,
                modalities_in_study=s.modalities_in_study, instance_count=s.instance_count,
                state=s.state, last_received_at=s.last_received_at, priority=s.priority,
                job_id=job.id if job else None, job_state=job.state if job else None,
                job_attempts=job.attempts if job else None,
                fracture_probability=result.fracture_probability if result else None,
                positive=result.positive if result else None,
                accession_number=s.accession_number,
                result_state=result.state if result else None,
                reason=result.reason if result else None,
                views_analysed=result.views_analysed if result else None,
                views_total=result.views_total if result else None,
                images=int(images.get(s.id, 0)), triage_priority=s.triage_priority,
                job_failures=job.failures if job else None,
                job_interruptions=job.interruptions if job else None,
                job_error=job.last_error if job else None))
        return listing
