"""Batches and their items: the SQL of re-processing runs (pacs_node.batches drives them).

Item states move by conditional UPDATEs, so a batch runner restarted after a crash, or an
operator's command racing it, cannot move an item twice. An item's job is the ordinary job
of :mod:`storage.repositories.jobs`; :meth:`BatchRepository.sync_with_jobs` carries the
job's state back to the item (processing, done, failed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from .._db import utcnow
from ..errors import NotFound
from ..schema import Batch, BatchItem, BatchState, ItemState, Job, JobState, Result, Study

__all__ = ["ACTIVE_ITEM_STATES", "FINAL_ITEM_STATES", "BatchRepository", "ExportRow"]

#: Items whose study the batch is still bringing in: the study tracker leaves such a study
#: to the batch (no live job for a study that is half retrieved).
ACTIVE_ITEM_STATES = (ItemState.PENDING, ItemState.QUERYING, ItemState.RETRIEVING)
FINAL_ITEM_STATES = (ItemState.DONE, ItemState.SKIPPED, ItemState.FAILED)
_REASON_WIDTH = 2000


@dataclass(frozen=True)
class ExportRow:
    """One study of a batch as ``batch export`` writes it."""

    item_id: int
    study_instance_uid: str
    accession_number: str
    state: str
    reason: str | None
    job_id: int | None
    job_state: str | None
    result_state: str | None
    fracture_probability: float | None
    positive: bool | None
    triage_priority: str | None
    summary: dict[str, Any] | None
    model_name: str | None
    model_version: str | None


class BatchRepository:
    """Batch and item rows. The caller owns the transaction and commits."""

    def __init__(self, session: Session) -> None:
        self.session = session

    # -- batches ------------------------------------------------------------------------

    def create(self, *, source: str, criteria: dict[str, Any],
               items: Sequence[tuple[str, str | None]],
               remote: str | None = None, name: str = "", model: str | None = None,
               model_key: str = "", deliver: str = "none", skip_done: bool = False,
               max_retrieves: int = 2, window: str | None = None, created_by: str = "",
               now: datetime | None = None) -> Batch:
        """A new batch with its items, ``(accession, study uid)`` pairs (either may be
        empty: an accession list knows no UID yet). A remote batch without items asks its
        remote first (``querying``)."""
        now = now or utcnow()
        querying = source == "remote" and not items
        batch = Batch(name=name[:64], source=source, remote=remote, criteria=criteria,
                      model=model, model_key=model_key[:512], deliver=deliver,
                      skip_done=skip_done, max_retrieves=max_retrieves, window=window,
                      state=BatchState.QUERYING if querying else BatchState.RUNNING,
                      query_attempts=0, next_query_at=now if querying else None,
                      created_by=created_by[:64], created_at=now, updated_at=now)
        self.session.add(batch)
        self.session.flush()
        self.add_items(batch.id, items, now=now)
        if not items and not querying:
            batch.state = BatchState.DONE
            batch.finished_at = now
            batch.reason = "no study matched"
        self.session.flush()
        return batch

    def add_items(self, batch_id: int, items: Sequence[tuple[str, str | None]], *,
                  now: datetime | None = None) -> int:
        """Add items, leaving out a study the batch already has; return how many."""
        now = now or utcnow()
        known = set(self.session.scalars(select(BatchItem.study_instance_uid).where(
            BatchItem.batch_id == batch_id, BatchItem.study_instance_uid.is_not(None))))
        added = 0
        for accession, uid in items:
            if uid is not None and uid in known:
                continue
            if uid is not None:
                known.add(uid)
            self.session.add(BatchItem(
                batch_id=batch_id, accession_number=(accession or "")[:16],
                study_instance_uid=uid, state=ItemState.PENDING, attempts=0,
                created_at=now, updated_at=now))
            added += 1
        self.session.flush()
        return added

    def get(self, batch_id: int) -> Batch | None:
        return self.session.get(Batch, batch_id)

    def require(self, batch_id: int) -> Batch:
        batch = self.get(batch_id)
        if batch is None:
            raise NotFound(f"no batch {batch_id}")
        return batch

    def recent(self, limit: int = 100) -> Sequence[Batch]:
        return self.session.scalars(select(Batch).order_by(Batch.id.desc()).limit(limit)).all()

    def working(self) -> Sequence[Batch]:
        """Batches with work left to drive: querying or running, oldest first."""
        return self.session.scalars(select(Batch).where(
            Batch.state.in_([BatchState.QUERYING, BatchState.RUNNING])).order_by(Batch.id)).all()

    def waiting_on_jobs(self, exclude: Sequence[int] = ()) -> list[int]:
        """Batches (other than ``exclude``) with items whose job is queued or running: a
        paused or cancelled batch still learns how the jobs it made ended."""
        stmt = select(BatchItem.batch_id).where(
            BatchItem.state.in_([ItemState.SETTLED, ItemState.PROCESSING])).distinct()
        if exclude:
            stmt = stmt.where(BatchItem.batch_id.not_in(list(exclude)))
        return [int(b) for b in self.session.scalars(stmt)]

    def set_state(self, batch_id: int, state: BatchState, *, reason: str | None = None,
                  from_states: Sequence[BatchState] = (), now: datetime | None = None) -> bool:
        """Move a batch to ``state`` (only from ``from_states`` when given); False when it
        was in another state."""
        now = now or utcnow()
        conditions = [Batch.id == batch_id]
        if from_states:
            conditions.append(Batch.state.in_(list(from_states)))
        final = state in (BatchState.DONE, BatchState.CANCELLED, BatchState.FAILED)
        changed = self.session.execute(
            update(Batch).where(*conditions)
            .values(state=state, reason=reason, updated_at=now,
                    finished_at=now if final else None)
            .execution_options(synchronize_session="fetch"))
        return changed.rowcount == 1  # type: ignore[attr-defined,no-any-return]

    def query_failed(self, batch_id: int, reason: str, *, retry_at: datetime | None,
                     now: datetime | None = None) -> None:
        """Count a failed query; ask again at ``retry_at``, or fail the batch (None)."""
        now = now or utcnow()
        values: dict[str, Any] = {"query_attempts": Batch.query_attempts + 1,
                                  "reason": reason[:_REASON_WIDTH], "updated_at": now}
        if retry_at is None:
            values.update(state=BatchState.FAILED, finished_at=now, next_query_at=None)
        else:
            values.update(next_query_at=retry_at)
        self.session.execute(update(Batch).where(Batch.id == batch_id,
                                                 Batch.state == BatchState.QUERYING)
                             .values(**values).execution_options(synchronize_session="fetch"))

    # -- items --------------------------------------------------------------------------

    def counts(self, batch_id: int) -> dict[str, int]:
        """Items per state (every state present, zeros included)."""
        rows = self.session.execute(select(BatchItem.state, func.count()).where(
            BatchItem.batch_id == batch_id).group_by(BatchItem.state)).all()
        counts = {str(s): 0 for s in ItemState}
        counts.update({str(state): int(n) for state, n in rows})
        return counts

    def finished_since(self, batch_id: int, since: datetime) -> int:
        """Items that reached a final state at ``since`` or later (the rate of an ETA)."""
        return int(self.session.scalar(select(func.count()).where(
            BatchItem.batch_id == batch_id, BatchItem.state.in_(list(FINAL_ITEM_STATES)),
            BatchItem.finished_at >= since)) or 0)

    def items(self, batch_id: int, *, states: Sequence[ItemState] = (), limit: int | None = None,
              due: datetime | None = None) -> Sequence[BatchItem]:
        """Items of a batch in item order, only in ``states`` when given, only those due at
        ``due`` (no retry waiting) when given."""
        stmt = select(BatchItem).where(BatchItem.batch_id == batch_id)
        if states:
            stmt = stmt.where(BatchItem.state.in_(list(states)))
        if due is not None:
            stmt = stmt.where(or_(BatchItem.next_attempt_at.is_(None),
                                  BatchItem.next_attempt_at <= due))
        stmt = stmt.order_by(BatchItem.id)
        if limit is not None:
            stmt = stmt.limit(limit)
        return self.session.scalars(stmt).all()

    def item(self, item_id: int) -> BatchItem | None:
        return self.session.get(BatchItem, item_id)

    def move(self, item_id: int, to: ItemState, *, from_states: Sequence[ItemState],
             reason: str | None = None, job_id: int | None = None,
             study_instance_uid: str | None = None, retry_at: datetime | None = None,
             count_attempt: bool = False, now: datetime | None = None) -> bool:
        """Move one item from one of ``from_states`` to ``to``; False when it was elsewhere
        (another process moved it first)."""
        now = now or utcnow()
        values: dict[str, Any] = {"state": to, "updated_at": now, "next_attempt_at": retry_at,
                                  "reason": None if reason is None else reason[:_REASON_WIDTH]}
        if to in FINAL_ITEM_STATES:
            values["finished_at"] = now
        if job_id is not None:
            values["job_id"] = job_id
        if study_instance_uid is not None:
            values["study_instance_uid"] = study_instance_uid
        if count_attempt:
            values["attempts"] = BatchItem.attempts + 1
        changed = self.session.execute(
            update(BatchItem).where(BatchItem.id == item_id,
                                    BatchItem.state.in_(list(from_states)))
            .values(**values).execution_options(synchronize_session="fetch"))
        return changed.rowcount == 1  # type: ignore[attr-defined,no-any-return]

    def has_study(self, batch_id: int, study_instance_uid: str) -> int | None:
        """The id of the batch's item for that study, if it has one."""
        return self.session.scalar(select(BatchItem.id).where(
            BatchItem.batch_id == batch_id,
            BatchItem.study_instance_uid == study_instance_uid))

    def release_in_flight(self, now: datetime | None = None) -> int:
        """Items a dead runner was querying or retrieving go back to ``pending`` (at
        start: the process that held them is gone). Not an attempt: nothing failed."""
        now = now or utcnow()
        changed = self.session.execute(
            update(BatchItem).where(BatchItem.state.in_([ItemState.QUERYING,
                                                         ItemState.RETRIEVING]))
            .values(state=ItemState.PENDING, updated_at=now, next_attempt_at=None,
                    reason="interrupted: the node restarted; retrieving again")
            .execution_options(synchronize_session="fetch"))
        return int(changed.rowcount)  # type: ignore[attr-defined]

    def sync_with_jobs(self, batch_id: int, now: datetime | None = None) -> int:
        """Carry each queued or running item's job state to the item: running ->
        ``processing``, done -> ``done``, failed -> ``failed`` (with the job's error),
        superseded -> ``skipped`` (new instances arrived; a live job took the study).
        Return how many items changed."""
        now = now or utcnow()
        rows = self.session.execute(
            select(BatchItem.id, BatchItem.state, Job.state, Job.last_error)
            .join(Job, Job.id == BatchItem.job_id)
            .where(BatchItem.batch_id == batch_id,
                   BatchItem.state.in_([ItemState.SETTLED, ItemState.PROCESSING]))).all()
        changed = 0
        for item_id, item_state, job_state, error in rows:
            target: ItemState | None = None
            reason: str | None = None
            if job_state == JobState.RUNNING and item_state == ItemState.SETTLED:
                target = ItemState.PROCESSING
            elif job_state == JobState.DONE:
                target = ItemState.DONE
            elif job_state == JobState.FAILED:
                target, reason = ItemState.FAILED, f"the analysis failed: {error or 'unknown'}"
            elif job_state == JobState.SUPERSEDED:
                target, reason = ItemState.SKIPPED, ("superseded: new instances of the study "
                                                     "arrived and a newer job processes it")
            if target is not None and self.move(item_id, target, reason=reason, now=now,
                                                from_states=[ItemState(item_state)]):
                changed += 1
        return changed

    def in_flight(self, batch_id: int) -> dict[str, int]:
        """Items being brought in (querying, retrieving) and waiting on their job
        (settled, processing)."""
        counts = self.counts(batch_id)
        return {"retrieving": counts[ItemState.QUERYING] + counts[ItemState.RETRIEVING],
                "queued": counts[ItemState.SETTLED] + counts[ItemState.PROCESSING]}

    def skip_waiting(self, batch_id: int, reason: str, now: datetime | None = None) -> int:
        """Every item not yet brought in (pending, querying, retrieving) becomes
        ``skipped`` with ``reason`` (a cancelled batch); return how many."""
        now = now or utcnow()
        changed = self.session.execute(
            update(BatchItem).where(BatchItem.batch_id == batch_id,
                                    BatchItem.state.in_(list(ACTIVE_ITEM_STATES)))
            .values(state=ItemState.SKIPPED, reason=reason[:_REASON_WIDTH], updated_at=now,
                    finished_at=now, next_attempt_at=None)
            .execution_options(synchronize_session="fetch"))
        return int(changed.rowcount)  # type: ignore[attr-defined]

    def retry_failed(self, batch_id: int, now: datetime | None = None) -> int:
        """Failed items start again (``pending``, attempts reset); return how many."""
        now = now or utcnow()
        changed = self.session.execute(
            update(BatchItem).where(BatchItem.batch_id == batch_id,
                                    BatchItem.state == ItemState.FAILED)
            .values(state=ItemState.PENDING, attempts=0, next_attempt_at=None, reason=None,
                    finished_at=None, updated_at=now)
            .execution_options(synchronize_session="fetch"))
        return int(changed.rowcount)  # type: ignore[attr-defined]

    def wake_jobs(self, batch_id: int, now: datetime | None = None) -> int:
        """Queued jobs of the batch count as never enqueued, so the tracker's reconciler
        wakes a worker for each (the batch was resumed or its window opened)."""
        now = now or utcnow()
        changed = self.session.execute(
            update(Job).where(Job.batch_id == batch_id, Job.state == JobState.QUEUED)
            .values(enqueued_at=None, updated_at=now)
            .execution_options(synchronize_session="fetch"))
        return int(changed.rowcount)  # type: ignore[attr-defined]

    def active_study_clause(self) -> Any:
        """A clause true for a study some batch is still bringing in (for the tracker)."""
        return select(BatchItem.id).where(
            BatchItem.study_instance_uid == Study.study_instance_uid,
            BatchItem.state.in_(list(ACTIVE_ITEM_STATES))).exists()

    def done_models(self, study_instance_uid: str) -> tuple[int, list[str]] | None:
        """The study's current job when it is done: its id and the "name version" of each
        model it used (what ``--skip-done`` compares); None otherwise."""
        row = self.session.execute(
            select(Job.id, Job.model_name, Job.model_version)
            .join(Study, Study.current_job_id == Job.id)
            .where(Study.study_instance_uid == study_instance_uid,
                   Job.state == JobState.DONE)).first()
        if row is None:
            return None
        job_id, names, versions = row
        if not names:
            return int(job_id), []
        pairs = [f"{n} {v}" for n, v in zip(names.split(", "), (versions or "").split(", "),
                                            strict=False)]
        return int(job_id), pairs

    def export_rows(self, batch_id: int) -> list[ExportRow]:
        """Every item of the batch with its job, result and the study's triage priority."""
        rows = self.session.execute(
            select(BatchItem, Job, Result, Study.triage_priority)
            .outerjoin(Job, Job.id == BatchItem.job_id)
            .outerjoin(Result, Result.job_id == Job.id)
            .outerjoin(Study, Study.study_instance_uid == BatchItem.study_instance_uid)
            .where(BatchItem.batch_id == batch_id).order_by(BatchItem.id)).all()
        return [ExportRow(
            item_id=item.id, study_instance_uid=item.study_instance_uid or "",
            accession_number=item.accession_number, state=item.state, reason=item.reason,
            job_id=job.id if job else None, job_state=job.state if job else None,
            result_state=result.state if result else None,
            fracture_probability=result.fracture_probability if result else None,
            positive=result.positive if result else None,
            triage_priority=priority if job is not None else None,
            summary=dict(result.summary) if result else None,
            model_name=job.model_name if job else None,
            model_version=job.model_version if job else None)
            for item, job, result, priority in rows]

    def due_retry(self, batch_id: int, now: datetime) -> datetime | None:
        """When the next waiting item of the batch is due (None when none waits)."""
        return self.session.scalar(select(func.min(BatchItem.next_attempt_at)).where(
            BatchItem.batch_id == batch_id, BatchItem.state == ItemState.PENDING,
            BatchItem.next_attempt_at > now))
