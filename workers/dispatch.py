"""Waking workers up for a job: Celery in production, a thread in the embedded node.

The job table is the truth; a dispatch is only a wake-up. Both dispatchers run the same
:meth:`workers.pipeline.StudyPipeline.run`, so a job behaves the same whichever one runs it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from storage import LANE_BATCH, LANE_LIVE, LANE_URGENT

from .pipeline import JobFailed, StudyPipeline

__all__ = ["QUEUES", "CeleryDispatcher", "Dispatcher", "LocalDispatcher", "queue_of",
           "retry_delay"]

log = logging.getLogger(__name__)


def retry_delay(attempt: int, *, initial: float = 5.0, cap: float = 300.0) -> float:
    """Exponential backoff before retry number ``attempt`` (1-based), capped."""
    return min(cap, initial * 2 ** max(0, attempt - 1))


class Dispatcher(Protocol):
    def enqueue(self, job_id: int, *, countdown: float = 0.0, lane: int = LANE_LIVE) -> None: ...


#: The Celery queue of each lane (storage.triage): a worker consumes them in this order.
QUEUES = {LANE_URGENT: "pacs-node.urgent", LANE_LIVE: "pacs-node", LANE_BATCH: "pacs-node.batch"}


def queue_of(lane: int) -> str:
    return QUEUES.get(lane, QUEUES[LANE_LIVE])


class CeleryDispatcher:
    """Sends ``pacs_node.process_job`` messages through the Celery broker, each to the
    queue of its lane (:data:`QUEUES`)."""

    def __init__(self, app: object) -> None:
        self._app = app

    def enqueue(self, job_id: int, *, countdown: float = 0.0, lane: int = LANE_LIVE) -> None:
        self._app.send_task(  # type: ignore[attr-defined]
            "pacs_node.process_job", args=[job_id], countdown=countdown or None,
            queue=queue_of(lane))


class LocalDispatcher:
    """Runs jobs in one background thread of this process (the embedded default): due
    jobs by lane (urgent, live, batch), then in the order they were enqueued."""

    def __init__(self, pipeline_factory: Callable[[], StudyPipeline]) -> None:
        self._factory = pipeline_factory
        self._pipeline: StudyPipeline | None = None
        self._delayed: list[tuple[float, int, int, int]] = []  # (due, seq, lane, job)
        self._ready: list[tuple[int, int, int]] = []  # (lane, seq, job)
        self._counter = itertools.count()
        self._attempts: dict[int, int] = {}
        self._lanes: dict[int, int] = {}
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="pacs-node-jobs", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def enqueue(self, job_id: int, *, countdown: float = 0.0, lane: int = LANE_LIVE) -> None:
        with self._cv:
            self._lanes[job_id] = lane
            seq = next(self._counter)
            if countdown > 0:
                heapq.heappush(self._delayed, (time.monotonic() + countdown, seq, lane, job_id))
            else:
                heapq.heappush(self._ready, (lane, seq, job_id))
            self._cv.notify()

    def depth(self) -> dict[int, int]:
        """Jobs waiting per lane (due or not)."""
        with self._cv:
            counts: dict[int, int] = {}
            for lane, _, _ in self._ready:
                counts[lane] = counts.get(lane, 0) + 1
            for _, _, lane, _ in self._delayed:
                counts[lane] = counts.get(lane, 0) + 1
            return counts

    def _next(self) -> int | None:
        with self._cv:
            while not self._stopping:
                now = time.monotonic()
                while self._delayed and self._delayed[0][0] <= now:
                    _, seq, lane, job_id = heapq.heappop(self._delayed)
                    heapq.heappush(self._ready, (lane, seq, job_id))
                if self._ready:
                    return heapq.heappop(self._ready)[2]
                wait = self._delayed[0][0] - now if self._delayed else None
                self._cv.wait(wait)
            return None

    def _loop(self) -> None:
        while (job_id := self._next()) is not None:
            try:
                if self._pipeline is None:
                    self._pipeline = self._factory()
                self._pipeline.run(job_id)
                self._attempts.pop(job_id, None)
                self._lanes.pop(job_id, None)
            except JobFailed as exc:
                if exc.retry:
                    attempt = self._attempts.get(job_id, 0) + 1
                    self._attempts[job_id] = attempt
                    self.enqueue(job_id, countdown=retry_delay(attempt),
                                 lane=self._lanes.get(job_id, LANE_LIVE))
            except Exception:  # noqa: BLE001 - the thread must survive; the reconciler retries
                log.exception("job %s could not run", job_id)
