"""Counts of the index's state for monitoring (``/metrics``): a few grouped queries, read at
scrape time, so they are right whichever process changed the index."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, exists, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session, aliased

from ..schema import Export, ExportState, Instance, Job, JobState, Result, Study

__all__ = ["DeliveredJob", "IndexStats", "StatsRepository"]


@dataclass(frozen=True)
class IndexStats:
    """What the index holds now. Keys are the index's own values (job lanes, result
    states, priorities, destination names); the caller bounds them before using them as
    labels."""

    jobs: dict[tuple[str, int | None], int] = field(default_factory=dict)  # (state, lane)
    results: dict[str, int] = field(default_factory=dict)  # positive/negative/not_analysed
    studies: dict[str | None, int] = field(default_factory=dict)  # by triage priority
    pending: dict[str, tuple[int, datetime]] = field(default_factory=dict)  # count, oldest
    instances: int = 0
    instance_bytes: int = 0
    lanes: bool = False  # whether the schema has job lanes (jobs.lane)


@dataclass(frozen=True)
class DeliveredJob:
    """A job all of whose results reached one destination."""

    job_id: int
    first_received_at: datetime
    priority: str | None


def _column(model: type, name: str) -> InstrumentedAttribute[Any] | None:
    """A column the schema may not have yet (``studies.triage_priority``, ``jobs.lane``:
    added by the triage migration); None when absent."""
    return getattr(model, name, None)


class StatsRepository:
    """Read-only monitoring queries. The caller owns the transaction."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def snapshot(self) -> IndexStats:
        """Jobs by state (and lane), current results by verdict, studies by triage
        priority, pending exports per destination with the oldest one's creation time,
        and the received and produced instances' count and bytes."""
        lane = _column(Job, "lane")
        job_rows = self.session.execute(
            select(Job.state, lane if lane is not None else func.null(), func.count())
            .where(Job.state.in_((JobState.QUEUED, JobState.RUNNING, JobState.FAILED)))
            .group_by(Job.state, *([lane] if lane is not None else []))).all()
        jobs = {(str(state), None if lane_value is None else int(lane_value)): int(n)
                for state, lane_value, n in job_rows}
        verdict = func.coalesce(Result.positive, -1)
        result_rows = self.session.execute(
            select(Result.state, verdict, func.count())
            .where(Result.superseded.is_(False)).group_by(Result.state, verdict)).all()
        results: dict[str, int] = {}
        for state, positive, n in result_rows:
            name = ("not_analysed" if state != "analysed" else
                    "positive" if positive in (1, True) else "negative")
            results[name] = results.get(name, 0) + int(n)
        priority = _column(Study, "triage_priority")
        if priority is not None:
            studies = {None if p is None else str(p): int(n) for p, n in self.session.execute(
                select(priority, func.count()).group_by(priority)).all()}
        else:
            studies = {None: int(self.session.scalar(select(func.count(Study.id))) or 0)}
        pending = {str(dest): (int(n), oldest) for dest, n, oldest in self.session.execute(
            select(Export.destination, func.count(), func.min(Export.created_at))
            .where(Export.state == ExportState.PENDING).group_by(Export.destination)).all()}
        count, size = self.session.execute(
            select(func.count(Instance.id), func.coalesce(func.sum(Instance.size_bytes), 0))
        ).one()
        return IndexStats(jobs=jobs, results=results, studies=studies, pending=pending,
                          instances=int(count), instance_bytes=int(size),
                          lanes=lane is not None)

    def delivered_jobs(self, export_ids: Sequence[int], destination: str
                       ) -> list[DeliveredJob]:
        """The jobs among those of ``export_ids``' instances that have nothing left to send
        to ``destination`` (every export of their results there is sent). Called in the
        transaction that marked these exports sent, a job is reported by the one that sent
        its last object."""
        if not export_ids:
            return []
        job_ids = self.session.scalars(
            select(Instance.job_id).join(Export, Export.instance_id == Instance.id)
            .where(Export.id.in_(export_ids), Instance.job_id.is_not(None)).distinct()).all()
        if not job_ids:
            return []
        other, other_instance = aliased(Export), aliased(Instance)
        unsent = exists().where(and_(
            other.instance_id == other_instance.id, other_instance.job_id == Job.id,
            other.destination == destination, other.state != ExportState.SENT))
        priority = _column(Study, "triage_priority")
        rows = self.session.execute(
            select(Job.id, Study.first_received_at,
                   priority if priority is not None else func.null())
            .join(Study, Job.study_id == Study.id)
            .where(Job.id.in_(job_ids), ~unsent)).all()
        return [DeliveredJob(int(job), received, None if p is None else str(p))
                for job, received, p in rows]
