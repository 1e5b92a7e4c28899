"""Settled studies and stale jobs.

DICOM has no "study complete" message: a study is settled after ``stable_seconds`` with no
new instance (state kept in the index, so it survives restarts). Settling creates a job row,
and only after that commit is a worker woken up. The reconciler re-dispatches jobs whose
wake-up was lost (a broker message gone, a worker killed) so nothing is lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from storage import LANE_LIVE, JobRepository, StudyRepository, run_write
from workers.dispatch import Dispatcher

__all__ = ["StudyTracker"]


def utcnow() -> datetime:
    return datetime.now(UTC)

log = logging.getLogger(__name__)


class StudyTracker:
    """A background thread: settle studies, create and dispatch jobs, reconcile."""

    def __init__(self, sessions: sessionmaker[Session], dispatcher: Dispatcher, *,
                 stable_seconds: float, max_attempts: int = 3, max_interruptions: int = 20,
                 enqueue_timeout: float = 120.0, reconcile_interval: float = 10.0) -> None:
        self.sessions = sessions
        self.dispatcher = dispatcher
        self.stable_seconds = stable_seconds
        self.max_attempts = max_attempts
        self.max_interruptions = max_interruptions
        self.enqueue_timeout = enqueue_timeout
        self.reconcile_interval = reconcile_interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pacs-node-tracker",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def nudge(self, _study_uid: str | None = None) -> None:
        """Called after an instance is stored: look again soon."""
        self._wake.set()

    def settle_once(self) -> list[int]:
        """Create jobs for every settled study; dispatch them after the commit."""

        def work(session: Session) -> list[int]:
            studies = StudyRepository(session)
            created = []
            for study in studies.settled(utcnow(), self.stable_seconds):
                job = studies.mark_settled_and_create_job(
                    study, stable_seconds=self.stable_seconds, max_attempts=self.max_attempts,
                    max_interruptions=self.max_interruptions)
                if job is not None:
                    created.append(job.id)
            return created

        return self._commit_then_dispatch(work, "settled studies: dispatched jobs %s")

    def release_orphans(self) -> list[int]:
        """At start of a node that is the only worker: jobs left ``running`` by a crashed
        process are queued and dispatched again at once instead of after their lease."""
        return self._commit_then_dispatch(lambda s: JobRepository(s).release_running(),
                                          "released jobs left running before: %s")

    def reconcile_once(self) -> list[int]:
        """Re-dispatch queued jobs whose wake-up is overdue and jobs with expired leases."""

        def work(session: Session) -> list[int]:
            jobs = JobRepository(session)
            jobs.expire_leases()
            now = utcnow()
            stale = [j.id for j in jobs.stale(now, self.enqueue_timeout)]
            for job_id in stale:
                jobs.touch_enqueued(job_id, now)
            return stale

        return self._commit_then_dispatch(work, "reconciler re-dispatched jobs %s")

    def _commit_then_dispatch(self, work: Callable[[Session], list[int]], message: str
                              ) -> list[int]:
        """Run ``work`` in a committed transaction, then wake a worker for each job id it
        returns: never before the commit (a worker must find the row)."""
        job_ids = run_write(self.sessions, work)
        if job_ids:
            with self.sessions() as session:
                lanes = JobRepository(session).lanes(job_ids)
            # Most urgent lane first: in the embedded runner order is the lane's anyway,
            # and a Celery worker then sees the urgent message before the others.
            for job_id in sorted(job_ids, key=lambda j: (lanes.get(j, LANE_LIVE), j)):
                self.dispatcher.enqueue(job_id, lane=lanes.get(job_id, LANE_LIVE))
        if job_ids:
            log.info(message, job_ids)
        return job_ids

    def _loop(self) -> None:
        last_reconcile = 0.0
        tick = max(0.2, min(1.0, self.stable_seconds / 2))
        while not self._stop.is_set():
            try:
                self.settle_once()
                if time.monotonic() - last_reconcile >= self.reconcile_interval:
                    self.reconcile_once()
                    last_reconcile = time.monotonic()
            except Exception:  # noqa: BLE001 - keep tracking; the next tick retries
                log.exception("study tracker tick failed")
            self._wake.wait(tick)
            self._wake.clear()
