"""The paths that keep results flowing, in-process: the tracker (settle, reconcile,
orphans) with a fake dispatcher over a real SQLite index, and the embedded and Celery retry
paths with a stand-in pipeline."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from pacs_node.tracker import StudyTracker
from storage import (
    LANE_BATCH,
    LANE_LIVE,
    LANE_URGENT,
    FileStore,
    Job,
    JobRepository,
    JobState,
    create_engine_for,
    ingest,
    migrate,
    run_write,
    session_factory,
)
from tests.storage.storage_helpers import content, meta
from workers import dispatch
from workers.celery_app import create_celery_app
from workers.dispatch import LocalDispatcher
from workers.pipeline import JobFailed


class FakeDispatcher:
    """Records wake-ups, and checks the job row is committed when it is woken."""

    def __init__(self, sessions) -> None:
        self.sessions = sessions
        self.sent: list[int] = []

    def enqueue(self, job_id: int, *, countdown: float = 0.0, lane: int = 1) -> None:
        with self.sessions() as session:
            job = session.get(Job, job_id)
            assert job is not None, "woken before the commit"
            assert job.lane == lane, "woken in another lane than the job's"
        self.sent.append(job_id)


@pytest.fixture
def index(tmp_path: Path):
    engine = create_engine_for(f"sqlite:///{tmp_path / 'index.db'}")
    migrate(engine)
    sessions = session_factory(engine)
    yield FileStore(tmp_path / "store"), sessions
    engine.dispose()


def _tracker(sessions, dispatcher, **kwargs) -> StudyTracker:
    return StudyTracker(sessions, dispatcher, stable_seconds=0.0, max_attempts=3,
                        max_interruptions=4, enqueue_timeout=60.0, **kwargs)


def _set(sessions, job_id: int, **values) -> None:
    run_write(sessions, lambda s: s.execute(update(Job).where(Job.id == job_id).values(**values)))


def test_settle_creates_one_job_and_wakes_a_worker_after_the_commit(index) -> None:
    store, sessions = index
    ingest(store, sessions, content("a"), meta(study=1))
    fake = FakeDispatcher(sessions)
    tracker = _tracker(sessions, fake)
    created = tracker.settle_once()
    assert created == fake.sent and len(created) == 1
    assert tracker.settle_once() == []  # settled: no second job
    ingest(store, sessions, content("b"), meta(study=1, sop=2))  # new data re-opens it
    again = tracker.settle_once()
    assert len(again) == 1 and again[0] != created[0]
    with sessions() as session:
        assert JobRepository(session).require(created[0]).state == JobState.SUPERSEDED


def test_reconciler_redispatches_lost_wakeups_and_dead_workers(index) -> None:
    store, sessions = index
    for study in (1, 2, 3):
        ingest(store, sessions, content(f"s{study}"), meta(study=study))
    fake = FakeDispatcher(sessions)
    tracker = _tracker(sessions, fake)
    lost, dead, doomed = tracker.settle_once()
    fake.sent.clear()
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    _set(sessions, lost, enqueued_at=long_ago)  # its message was lost
    now = datetime.now(UTC)
    for job_id, interruptions in ((dead, 0), (doomed, 3)):  # their workers died mid-run
        _set(sessions, job_id, state=JobState.RUNNING, attempts=1,
             interruptions=interruptions, enqueued_at=now - timedelta(seconds=30),
             lease_expires_at=now - timedelta(seconds=10))
    assert tracker.reconcile_once() == [lost, dead]
    assert fake.sent == [lost, dead]
    with sessions() as session:
        jobs = JobRepository(session)
        failed = jobs.require(doomed)
        assert (failed.state, failed.interruptions) == (JobState.FAILED, 4)
        assert "interrupted too many times" in (failed.last_error or "")
        assert jobs.require(lost).enqueued_at > long_ago
    fake.sent.clear()
    assert tracker.reconcile_once() == []  # just re-dispatched: nothing overdue


def test_orphans_of_a_crashed_node_are_released_without_spending_attempts(index) -> None:
    store, sessions = index
    ingest(store, sessions, content("a"), meta(study=1))
    fake = FakeDispatcher(sessions)
    tracker = _tracker(sessions, fake)
    (job_id,) = tracker.settle_once()
    for restart in range(1, 4):
        assert run_write(sessions, lambda s: JobRepository(s).claim(
            job_id, lease_seconds=600)) is not None
        fake.sent.clear()
        assert tracker.release_orphans() == [job_id]
        assert fake.sent == [job_id]
        with sessions() as session:
            job = JobRepository(session).require(job_id)
            assert (job.state, job.failures, job.interruptions) == (
                JobState.QUEUED, 0, restart)


class _StandIn:
    """A pipeline whose runs answer from a script: an outcome string or an exception."""

    def __init__(self, script: list[object]) -> None:
        self.script = script
        self.calls: list[int] = []
        self.done = threading.Event()

    def run(self, job_id: int) -> str:
        self.calls.append(job_id)
        step = self.script.pop(0) if self.script else "done"
        if not self.script:
            self.done.set()
        if isinstance(step, BaseException):
            raise step
        return str(step)


def _wait(event: threading.Event, what: str) -> None:
    assert event.wait(30), f"timed out waiting for {what}"


def test_embedded_runner_retries_a_failed_run_and_survives_a_crash(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "retry_delay", lambda attempt: 0.01 * attempt)
    stand_in = _StandIn([JobFailed(7, "boom", retry=True), JobFailed(7, "boom", retry=True),
                         "done"])
    runner = LocalDispatcher(lambda: stand_in)  # type: ignore[arg-type, return-value]
    runner.start()
    try:
        runner.enqueue(7)
        _wait(stand_in.done, "the third run")
        assert stand_in.calls == [7, 7, 7]
        # Out of attempts: not queued again. An unexpected error: the thread lives on.
        stand_in.script = [JobFailed(8, "boom", retry=False), RuntimeError("bug"), "done"]
        stand_in.done.clear()
        runner.enqueue(8)
        runner.enqueue(9)
        runner.enqueue(10)
        _wait(stand_in.done, "the runs after a crash")
        deadline = time.monotonic() + 5
        while len(stand_in.calls) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stand_in.calls[3:] == [8, 9, 10]
    finally:
        runner.stop()


def test_celery_task_retries_with_backoff_then_gives_up(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    stand_in = _StandIn([JobFailed(5, "boom", retry=True), "done"])
    app = create_celery_app("memory://", pipeline_factory=lambda: stand_in,  # type: ignore
                            max_attempts=3)
    app.conf.task_always_eager = True
    task = app.tasks["pacs_node.process_job"]
    assert task.apply(args=[5]).get() == "done"
    assert stand_in.calls == [5, 5]
    # The job row said no retry (attempts spent): the task ends as "failed", not retried.
    stand_in.script = [JobFailed(6, "boom", retry=False)]
    assert task.apply(args=[6]).get() == "failed"
    assert stand_in.calls == [5, 5, 6]


def test_embedded_runner_serves_urgent_then_live_then_batch() -> None:
    """Jobs waiting while one runs: the urgent one first, live ones by arrival, the
    archive's last (storage.triage lanes)."""
    started, release = threading.Event(), threading.Event()
    ran: list[int] = []

    class Blocking:
        def run(self, job_id: int) -> str:
            ran.append(job_id)
            if job_id == 1:
                started.set()
                assert release.wait(30)
            return "done"

    runner = LocalDispatcher(lambda: Blocking())  # type: ignore[arg-type, return-value]
    runner.start()
    try:
        runner.enqueue(1)
        _wait(started, "the first job")
        for job_id, lane in ((2, LANE_LIVE), (3, LANE_BATCH), (4, LANE_LIVE),
                             (5, LANE_URGENT), (6, LANE_BATCH)):
            runner.enqueue(job_id, lane=lane)
        runner.enqueue(7, lane=LANE_URGENT, countdown=30)  # a retry, not due yet
        assert runner.depth() == {LANE_URGENT: 2, LANE_LIVE: 2, LANE_BATCH: 2}
        release.set()
        deadline = time.monotonic() + 10
        while len(ran) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ran == [1, 5, 2, 4, 3, 6]
    finally:
        runner.stop()
