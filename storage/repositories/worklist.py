"""The admin worklist: studies by triage priority then waiting time, one study's whole
history, the queues and the destinations' health. Read-only SQL; no patient data leaves
(no name, ID or birth date is selected)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import and_, case, exists, func, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from ..schema import (
    Export,
    ExportState,
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
from ..triage import RANK

__all__ = ["DeliveryCount", "DestinationHealth", "FailedJob", "ProducedInstance",
           "StudyHistory", "WORK_STATES", "WorklistFilter", "WorklistRepository",
           "WorklistRow"]

#: What a worklist line's ``state`` may be: still receiving, or its current job's state.
WORK_STATES = ("receiving", "queued", "running", "done", "failed")


@dataclass(frozen=True)
class WorklistFilter:
    """What the worklist shows; every field is optional. ``text`` matches the accession
    number or the study description (contains, case-insensitive)."""

    priorities: tuple[str, ...] = ()  # TriagePriority values; "NONE" for not yet set
    states: tuple[str, ...] = ()  # WORK_STATES
    body_part: str | None = None
    received_from: datetime | None = None
    received_before: datetime | None = None
    text: str | None = None
    limit: int = 100
    offset: int = 0


@dataclass
class DeliveryCount:
    pending: int = 0
    sent: int = 0
    failed: int = 0
    attempts: int = 0
    last_error: str | None = None
    last_sent_at: datetime | None = None


@dataclass(frozen=True)
class WorklistRow:
    study: Study
    job: Job | None
    result: Result | None
    body_parts: tuple[str, ...]
    deliveries: dict[str, DeliveryCount] = field(default_factory=dict)


@dataclass(frozen=True)
class ProducedInstance:
    job_id: int
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    relpath: str
    superseded: bool


@dataclass(frozen=True)
class StudyHistory:
    """Everything the study page shows."""

    row: WorklistRow
    jobs: Sequence[Job]
    results: dict[int, Result]
    deliveries: dict[int, dict[str, DeliveryCount]]  # job id -> destination -> counts
    produced: Sequence[ProducedInstance]
    priority_events: Sequence[PriorityEvent]


@dataclass(frozen=True)
class FailedJob:
    study_instance_uid: str
    accession_number: str
    job_id: int
    error: str | None
    failures: int
    finished_at: datetime | None


@dataclass(frozen=True)
class DestinationHealth:
    name: str
    pending: int
    failed: int
    sent: int
    last_error: str | None
    last_success_at: datetime | None


def _rank() -> ColumnElement[int]:
    return case({str(p): r for p, r in RANK.items()}, value=Study.triage_priority,
                else_=len(RANK))


class WorklistRepository:
    """Reads for the admin pages. The caller owns the transaction."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def _conditions(self, f: WorklistFilter) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = []
        if f.priorities:
            named = [p for p in f.priorities if p != "NONE"]
            either: list[ColumnElement[bool]] = (
                [Study.triage_priority.in_(named)] if named else [])
            if "NONE" in f.priorities:
                either.append(Study.triage_priority.is_(None))
            where.append(or_(*either))
        if f.states:
            states: list[ColumnElement[bool]] = []
            if "receiving" in f.states:
                states.append(Study.state == StudyState.RECEIVING)
            jobs = [s for s in f.states if s != "receiving"]
            if jobs:
                states.append(and_(Study.state == StudyState.SETTLED, Job.state.in_(jobs)))
            where.append(or_(*states))
        if f.body_part:
            where.append(exists().where(Series.study_id == Study.id,
                                        func.upper(Series.body_part_examined)
                                        == f.body_part.upper()))
        if f.received_from is not None:
            where.append(Study.first_received_at >= f.received_from)
        if f.received_before is not None:
            where.append(Study.first_received_at < f.received_before)
        if f.text:
            pattern = "%" + f.text.lower().replace("\\", "\\\\").replace("%", "\\%") \
                .replace("_", "\\_") + "%"
            where.append(or_(func.lower(Study.accession_number).like(pattern, escape="\\"),
                             func.lower(Study.study_description).like(pattern, escape="\\")))
        return where

    def rows(self, f: WorklistFilter) -> tuple[list[WorklistRow], int]:
        """The studies matching ``f``, most urgent first (storage.triage.RANK, studies with
        no priority yet last), longest waiting first within a priority; and how many match
        in all."""
        where = self._conditions(f)
        base = select(Study, Job).outerjoin(Job, Job.id == Study.current_job_id).where(*where)
        total = int(self.session.scalar(select(func.count()).select_from(
            base.with_only_columns(Study.id).subquery())) or 0)
        pairs = self.session.execute(
            base.order_by(_rank(), Study.first_received_at, Study.id)
            .limit(f.limit).offset(f.offset)).all()
        return self._rows([(s, j) for s, j in pairs]), total

    def _rows(self, pairs: list[tuple[Study, Job | None]]) -> list[WorklistRow]:
        study_ids = [s.id for s, _ in pairs]
        job_ids = [j.id for _, j in pairs if j is not None]
        results = self._results(job_ids)
        parts: dict[int, list[str]] = defaultdict(list)
        if study_ids:
            for study_id, part in self.session.execute(
                    select(Series.study_id, Series.body_part_examined).distinct()
                    .join(Instance, Instance.series_id == Series.id)
                    .where(Series.study_id.in_(study_ids), Series.body_part_examined != "",
                           Instance.source == InstanceSource.RECEIVED)
                    .order_by(Series.body_part_examined)):
                parts[study_id].append(part)
        deliveries = self._deliveries(job_ids)
        return [WorklistRow(s, j, results.get(j.id) if j else None, tuple(parts[s.id]),
                            deliveries.get(j.id, {}) if j else {}) for s, j in pairs]

    def _results(self, job_ids: Sequence[int]) -> dict[int, Result]:
        if not job_ids:
            return {}
        return {r.job_id: r for r in self.session.scalars(
            select(Result).where(Result.job_id.in_(list(job_ids))))}

    def _deliveries(self, job_ids: Sequence[int]) -> dict[int, dict[str, DeliveryCount]]:
        """Per job and destination: exports of the job's results by state, attempts, the
        last error and the last success."""
        out: dict[int, dict[str, DeliveryCount]] = defaultdict(dict)
        if not job_ids:
            return out
        rows = self.session.execute(
            select(Instance.job_id, Export.destination, Export.state, func.count(Export.id),
                   func.sum(Export.attempts), func.max(Export.sent_at))
            .join(Instance, Instance.id == Export.instance_id)
            .where(Instance.job_id.in_(list(job_ids)))
            .group_by(Instance.job_id, Export.destination, Export.state))
        for job_id, destination, state, count, attempts, sent_at in rows:
            if job_id is None:
                continue
            counts = out[job_id].setdefault(destination, DeliveryCount())
            setattr(counts, state, int(count))
            counts.attempts += int(attempts or 0)
            if sent_at is not None:
                counts.last_sent_at = max(filter(None, (counts.last_sent_at, sent_at)))
        errors = self.session.execute(
            select(Instance.job_id, Export.destination, Export.last_error)
            .join(Instance, Instance.id == Export.instance_id)
            .where(Instance.job_id.in_(list(job_ids)), Export.last_error.is_not(None))
            .order_by(Export.id))
        for job_id, destination, error in errors:
            if job_id is None:
                continue
            out[job_id].setdefault(destination, DeliveryCount()).last_error = error
        return out

    def history(self, study_instance_uid: str) -> StudyHistory | None:
        """The study page of one study, or None when the node holds no such study."""
        pair = self.session.execute(
            select(Study, Job).outerjoin(Job, Job.id == Study.current_job_id)
            .where(Study.study_instance_uid == study_instance_uid)).one_or_none()
        if pair is None:
            return None
        study, job = pair
        (row,) = self._rows([(study, job)])
        jobs = self.session.scalars(select(Job).where(Job.study_id == study.id)
                                    .order_by(Job.id)).all()
        produced = [ProducedInstance(int(job_id or 0), series_uid, sop_uid, sop_class, relpath,
                                     bool(superseded))
                    for job_id, series_uid, sop_uid, sop_class, relpath, superseded
                    in self.session.execute(
                        select(Instance.job_id, Series.series_instance_uid,
                               Instance.sop_instance_uid, Instance.sop_class_uid,
                               Instance.relpath, Instance.superseded)
                        .join(Series, Series.id == Instance.series_id)
                        .where(Series.study_id == study.id,
                               Instance.source == InstanceSource.PRODUCED,
                               Instance.job_id.is_not(None))
                        .order_by(Instance.id))]
        events = self.session.scalars(select(PriorityEvent).where(
            PriorityEvent.study_id == study.id).order_by(PriorityEvent.id)).all()
        job_ids = [j.id for j in jobs]
        return StudyHistory(row, jobs, self._results(job_ids), self._deliveries(job_ids),
                            produced, events)

    def lane_depths(self) -> dict[tuple[int, str], int]:
        """Jobs queued or running, by (lane, state)."""
        return {(int(lane), str(state)): int(count) for lane, state, count in
                self.session.execute(
                    select(Job.lane, Job.state, func.count(Job.id))
                    .where(Job.state.in_([JobState.QUEUED, JobState.RUNNING]))
                    .group_by(Job.lane, Job.state))}

    def failed_jobs(self, limit: int = 100) -> list[FailedJob]:
        """Studies whose current job failed for good, the latest failure first."""
        rows = self.session.execute(
            select(Study.study_instance_uid, Study.accession_number, Job.id, Job.last_error,
                   Job.failures, Job.finished_at)
            .join(Job, Job.id == Study.current_job_id).where(Job.state == JobState.FAILED)
            .order_by(Job.finished_at.desc(), Job.id.desc()).limit(limit))
        return [FailedJob(*row) for row in rows]

    def destination_health(self, names: Sequence[str]) -> list[DestinationHealth]:
        """Per destination (those configured, and any others exports name): exports of
        current results pending, failed and sent, the last error, the last success."""
        current = Instance.superseded.is_(False)
        counts: dict[str, dict[str, int]] = defaultdict(dict)
        for destination, state, count in self.session.execute(
                select(Export.destination, Export.state, func.count(Export.id))
                .join(Instance, Instance.id == Export.instance_id).where(current)
                .group_by(Export.destination, Export.state)):
            counts[destination][state] = int(count)
        last_sent = dict(self.session.execute(  # type: ignore[arg-type]
            select(Export.destination, func.max(Export.sent_at)).group_by(Export.destination)
        ).all())
        last_error: dict[str, str | None] = {}
        for destination, error in self.session.execute(
                select(Export.destination, Export.last_error)
                .join(Instance, Instance.id == Export.instance_id)
                .where(current, Export.last_error.is_not(None),
                       Export.state != ExportState.SENT).order_by(Export.id)):
            last_error[destination] = error
        every = list(dict.fromkeys([*names, *sorted(counts)]))
        return [DestinationHealth(name, counts[name].get(ExportState.PENDING, 0),
                                  counts[name].get(ExportState.FAILED, 0),
                                  counts[name].get(ExportState.SENT, 0),
                                  last_error.get(name), last_sent.get(name))
                for name in every]
