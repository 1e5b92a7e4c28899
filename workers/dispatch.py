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

from .pipeline import JobFailed, StudyPipeline

__all__ = ["CeleryDispatcher", "Dispatcher", "LocalDispatcher", "retry_delay"]

log = logging.getLogger(__name__)


def retry_delay(attempt: int, *, initial: float = 5.0, cap: float = 300.0) -> float:
    """Exponential backoff before retry number ``attempt`` (1-based), capped."""
    return min(cap, initial * 2 ** max(0, attempt - 1))


class Dispatcher(Protocol):
    def enqueue(self, job_id: int, *, countdown: float = 0.0) -> None: ...


class CeleryDispatcher:
    """Sends ``pacs_node.process_job`` messages through the Celery broker."""

    def __init__(self, app: object) -> None:
        self._app = app

    def enqueue(self, job_id: int, *, countdown: float = 0.0) -> None:
        self._app.send_task(  # type: ignore[attr-defined]
            "pacs_node.process_job", args=[job_id], countdown=countdown or None)


class LocalDispatcher:
    """Runs jobs in one background thread of this process (the embedded default)."""

    def __init__(self, pipeline_factory: Callable[[], StudyPipeline]) -> None:
        self._factory = pipeline_factory
        self._pipeline: StudyPipeline | None = None
        self._heap: list[tuple[float, int, int]] = []
        self._counter = itertools.count()
        self._attempts: dict[int, int] = {}
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

    def enqueue(self, job_id: int, *, countdown: float = 0.0) -> None:
        with self._cv:
            heapq.heappush(self._heap, (time.monotonic() + countdown, next(self._counter), job_id))
            self._cv.notify()

    def _next(self) -> int | None:
        with self._cv:
            while not self._stopping:
                if self._heap and self._heap[0][0] <= time.monotonic():
                    return heapq.heappop(self._heap)[2]
                wait = self._heap[0][0] - time.monotonic() if self._heap else None
                self._cv.wait(wait)
            return None

    def _loop(self) -> None:
        while (job_id := self._next()) is not None:
            try:
                if self._pipeline is None:
                    self._pipeline = self._factory()
                self._pipeline.run(job_id)
                self._attempts.pop(job_id, None)
            except JobFailed as exc:
                if exc.retry:
                    attempt = self._attempts.get(job_id, 0) + 1
                    self._attempts[job_id] = attempt
                    self.enqueue(job_id, countdown=retry_delay(attempt))
            except Exception:  # noqa: BLE001 - the thread must survive; the reconciler retries
                log.exception("job %s could not run", job_id)
