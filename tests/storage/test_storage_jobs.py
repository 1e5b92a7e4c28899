"""Study settling, jobs (claim, complete, fail, stale, supersede) and exports."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from storage import (
    ExportRepository,
    ExportState,
    FileStore,
    InstanceRepository,
    Job,
    JobRepository,
    JobState,
    Result,
    StudyRepository,
    StudyState,
    ingest,
    run_write,
)

from .storage_helpers import at, content, meta, uid


def _settle(sessions: sessionmaker[Session], now_s: float, stable: float = 30) -> list[int]:
    """What the tracker does: settle every stable study, return the new job ids."""

    def work(session: Session) -> list[int]:
        repo = StudyRepository(session)
        jobs = [repo.mark_settled_and_create_job(s, now=at(now_s), stable_seconds=stable,
                                                 model_name="demo", model_version="1")
                for s in repo.settled(at(now_s), stable)]
        return [j.id for j in jobs if j is not None]

    return run_write(sessions, work)


@pytest.fixture
def received(store: FileStore, sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    ingest(store, sessions, content("1"), meta(study=1, sop=1), now=at(0))
    ingest(store, sessions, content("2"), meta(study=1, sop=2), now=at(10))
    ingest(store, sessions, content("3"), meta(study=2, sop=1), now=at(20))
    return sessions


def _job(sessions: sessionmaker[Session], job_id: int) -> Job:
    with sessions() as session:
        return JobRepository(session).require(job_id)


def test_studies_settle_after_the_stable_time(received: sessionmaker[Session]) -> None:
    with received() as session:
        repo = StudyRepository(session)
        assert repo.settled(at(39), 30) == []
        assert [s.study_instance_uid for s in repo.settled(at(40), 30)] == [uid(1)]
        assert [s.study_instance_uid for s in repo.settled(at(50), 30)] == [uid(1), uid(2)]
    (job_id,) = _settle(received, 45)
    job = _job(received, job_id)
    assert (job.state, job.attempts, job.instance_count_at_creation, job.enqueued_at,
            job.model_name) == (JobState.QUEUED, 0, 2, at(45), "demo")
    with received() as session:
        study = StudyRepository(session).get(uid(1))
        assert study is not None
        assert (study.state, study.current_job_id) == (StudyState.SETTLED, job_id)
    assert _settle(received, 46) == []  # settled studies are not settled twice


def test_an_instance_arriving_meanwhile_stops_the_settle(store: FileStore,
                                                         received: sessionmaker[Session]
                                                         ) -> None:
    with received() as session:
        (study,) = StudyRepository(session).settled(at(40), 30)
    ingest(store, received, content("late"), meta(study=1, sop=3), now=at(41))
    with received() as session:
        repo = StudyRepository(session)
        assert repo.mark_settled_and_create_job(study, now=at(42), stable_seconds=30) is None
        session.commit()
    assert _settle(received, 71) != []


def test_new_data_supersedes_earlier_jobs_and_results(store: FileStore,
                                                      received: sessionmaker[Session]) -> None:
    (first,) = _settle(received, 40)
    with received() as session:
        jobs = JobRepository(session)
        assert jobs.claim(first, lease_seconds=60, now=at(41)) is not None
        assert jobs.complete(first, fracture_probability=0.9, positive=True,
                             aggregation="max", threshold=0.5,
                             summary={"views": [{"sop": uid(1, 1, 1), "p": 0.9}]},
                             now=at(42)) is not None
        session.commit()
    ingest(store, received, content("more"), meta(study=1, sop=3), now=at(100))
    with received() as session:
        assert StudyRepository(session).get(uid(1)).state == StudyState.RECEIVING  # type: ignore[union-attr]
    second = [j for j in _settle(received, 200) if _job(received, j).study_id ==
              _job(received, first).study_id]
    assert len(second) == 1
    assert _job(received, first).state == JobState.SUPERSEDED
    assert _job(received, second[0]).instance_count_at_creation == 3
    with received() as session:
        (result,) = session.scalars(select(Result)).all()
        assert result.superseded and result.summary["views"][0]["p"] == 0.9


def test_only_one_of_two_claims_wins(received: sessionmaker[Session]) -> None:
    job_id = _settle(received, 40)[0]
    with received() as first, received() as second:
        assert JobRepository(first).claim(job_id, lease_seconds=60, now=at(41)) is not None
        first.commit()
        assert JobRepository(second).claim(job_id, lease_seconds=60, now=at(42)) is None
    job = _job(received, job_id)
    assert (job.state, job.attempts, job.lease_expires_at) == (JobState.RUNNING, 1, at(101))


def test_concurrent_claims_one_winner(received: sessionmaker[Session]) -> None:
    job_id = _settle(received, 40)[0]
    start = threading.Barrier(6)

    def claim(_: int) -> bool:
        start.wait(timeout=30)
        return run_write(received, lambda s: JobRepository(s).claim(
            job_id, lease_seconds=60, now=at(41)) is not None)

    with ThreadPoolExecutor(6) as pool:
        wins = list(pool.map(claim, range(6)))
    assert wins.count(True) == 1
    assert _job(received, job_id).attempts == 1


def test_expired_lease_is_reclaimed_and_fences_the_old_worker(
        received: sessionmaker[Session]) -> None:
    job_id = _settle(received, 40)[0]
    with received() as session:
        jobs = JobRepository(session)
        old = jobs.claim(job_id, lease_seconds=60, now=at(50))
        assert old is not None and old.attempts == 1
        assert jobs.claim(job_id, lease_seconds=60, now=at(109)) is None  # lease valid
        assert [j.id for j in jobs.stale(at(111), enqueue_timeout=600)] == [job_id]
        new = jobs.claim(job_id, lease_seconds=60, now=at(111))
        # The first worker died: an interruption, not a failure.
        assert new is not None and (new.attempts, new.failures, new.interruptions) == (2, 0, 1)
        assert jobs.complete(job_id, fracture_probability=0.1, positive=False,
                             aggregation="max", threshold=0.5, summary={}, attempt=1,
                             now=at(120)) is None
        assert not jobs.renew_lease(job_id, lease_seconds=60, attempt=1, now=at(120))
        assert jobs.renew_lease(job_id, lease_seconds=60, attempt=2, now=at(120))
        result = jobs.complete(job_id, fracture_probability=0.1, positive=False,
                               aggregation="max", threshold=0.5, summary={"views": []},
                               attempt=2, now=at(130))
        assert result is not None and result.job_id == job_id
        session.commit()
    job = _job(received, job_id)
    assert (job.state, job.finished_at, job.lease_expires_at) == (JobState.DONE, at(130), None)
    with received() as session:
        jobs = JobRepository(session)
        assert jobs.claim(job_id, lease_seconds=60, now=at(500)) is None  # done stays done
        assert jobs.stale(at(10_000), enqueue_timeout=1) == []


def test_fail_retries_until_attempts_run_out(received: sessionmaker[Session]) -> None:
    job_id = _settle(received, 40)[0]
    with received() as session:
        jobs = JobRepository(session)
        for attempt in (1, 2):
            assert jobs.claim(job_id, lease_seconds=60, now=at(50 + attempt)) is not None
            job = jobs.fail(job_id, "model crashed", retry=True, attempt=attempt,
                            now=at(60 + attempt))
            assert job is not None and job.state == JobState.QUEUED
        assert jobs.claim(job_id, lease_seconds=60, now=at(70)) is not None
        job = jobs.fail(job_id, "x" * 10_000, retry=True, attempt=3, now=at(71))
        assert job is not None and job.state == JobState.FAILED
        assert (job.attempts, job.failures, job.interruptions) == (3, 3, 0)
        assert len(job.last_error or "") <= 4000
        assert jobs.claim(job_id, lease_seconds=60, now=at(80)) is None
        session.commit()


def test_stale_jobs_and_expired_leases(received: sessionmaker[Session]) -> None:
    a, b = _settle(received, 60)
    with received() as session:
        jobs = JobRepository(session)
        assert jobs.stale(at(100), enqueue_timeout=60) == []
        assert {j.id for j in jobs.stale(at(121), enqueue_timeout=60)} == {a, b}
        jobs.touch_enqueued(a, now=at(120))
        assert [j.id for j in jobs.stale(at(121), enqueue_timeout=60)] == [b]
        claimed = jobs.claim(b, lease_seconds=30, now=at(121))
        assert claimed is not None
        assert jobs.stale(at(150), enqueue_timeout=60) == []
        assert [j.id for j in jobs.stale(at(152), enqueue_timeout=60)] == [b]
        # One interruption short of the bound: still re-dispatched, not failed.
        session.execute(Job.__table__.update().where(Job.id == b).values(interruptions=18))
        assert [j.id for j in jobs.stale(at(152), enqueue_timeout=60)] == [b]
        assert jobs.expire_leases(at(152)) == 0
        session.execute(Job.__table__.update().where(Job.id == b).values(interruptions=19))
        assert jobs.stale(at(152), enqueue_timeout=60) == []
        assert jobs.expire_leases(at(152)) == 1
        session.expire_all()
        failed = jobs.require(b)
        assert (failed.state, failed.interruptions) == (JobState.FAILED, 20)
        assert "interrupted too many times" in (failed.last_error or "")
        session.commit()


def test_interruptions_do_not_spend_attempts(received: sessionmaker[Session]) -> None:
    """A worker killed mid-job five times (more than max_attempts) leaves a job that still
    runs and completes; only runs that raised count against max_attempts."""
    job_id = _settle(received, 40)[0]
    with received() as session:
        jobs = JobRepository(session)
        now = 50
        for _ in range(5):
            assert jobs.claim(job_id, lease_seconds=30, now=at(now)) is not None
            now += 31  # the worker dies; its lease lapses
        job = jobs.claim(job_id, lease_seconds=30, now=at(now))
        assert job is not None
        assert (job.attempts, job.failures, job.interruptions) == (6, 0, 5)
        assert jobs.complete(job_id, fracture_probability=0.2, positive=False,
                             aggregation="max", threshold=0.5, summary={},
                             attempt=6, now=at(now + 1)) is not None
        session.commit()


def test_release_running_at_start(received: sessionmaker[Session]) -> None:
    a, b = _settle(received, 60)
    with received() as session:
        jobs = JobRepository(session)
        jobs.claim(a, lease_seconds=600, now=at(61))
        jobs.claim(b, lease_seconds=600, now=at(61))
        session.execute(Job.__table__.update().where(Job.id == b).values(interruptions=19))
        assert jobs.release_running(now=at(70)) == [a]
        session.expire_all()
        released = jobs.require(a)
        assert (released.state, released.enqueued_at) == (JobState.QUEUED, at(70))
        assert (released.failures, released.interruptions) == (0, 1)
        assert jobs.require(b).state == JobState.FAILED
        assert "interrupted too many times" in (jobs.require(b).last_error or "")
        assert jobs.claim(a, lease_seconds=600, now=at(71)) is not None
        session.commit()

def test_listing_shows_latest_job_and_result(received: sessionmaker[Session]) -> None:
    a, b = _settle(received, 60)
    with received() as session:
        jobs = JobRepository(session)
        jobs.claim(a, lease_seconds=60, now=at(61))
        jobs.complete(a, fracture_probability=0.75, positive=True, aggregation="noisy_or",
                      threshold=0.5, summary={}, now=at(62))
        StudyRepository(session).set_priority(jobs.require(a).study_id, 0.75)
        session.commit()
    with received() as session:
        listing = StudyRepository(session).list_with_latest(limit=10)
    assert [row.study_instance_uid for row in listing] == [uid(2), uid(1)]
    by_uid = {row.study_instance_uid: row for row in listing}
    assert (by_uid[uid(1)].job_state, by_uid[uid(1)].fracture_probability,
            by_uid[uid(1)].positive, by_uid[uid(1)].priority) == ("done", 0.75, True, 0.75)
    assert (by_uid[uid(2)].job_id, by_uid[uid(2)].job_state,
            by_uid[uid(2)].fracture_probability) == (b, "queued", None)


def test_a_study_not_analysed_has_a_reason_and_no_number(
        received: sessionmaker[Session]) -> None:
    a, b = _settle(received, 60)
    with received() as session:
        jobs = JobRepository(session)
        jobs.claim(a, lease_seconds=60, now=at(61))
        with pytest.raises(ValueError, match="needs a reason"):
            jobs.complete(a, fracture_probability=None, positive=None, aggregation="max",
                          threshold=0.5, summary={}, now=at(62))
        with pytest.raises(ValueError, match="or neither"):
            jobs.complete(a, fracture_probability=0.2, positive=None, aggregation="max",
                          threshold=0.5, summary={}, now=at(62))
        with pytest.raises(ValueError, match="views_analysed"):
            jobs.complete(a, fracture_probability=0.2, positive=False, aggregation="max",
                          threshold=0.5, summary={}, views_analysed=3, views_total=2)
        jobs.complete(a, fracture_probability=None, positive=None, aggregation="max",
                      threshold=0.5, summary={}, reason="out of scope (CHEST)",
                      views_analysed=0, views_total=2, now=at(62))
        session.commit()
    with received() as session:
        row = next(r for r in StudyRepository(session).list_with_latest(limit=10)
                   if r.job_id == a)
    assert (row.result_state, row.reason, row.fracture_probability, row.positive) == \
        ("not_analysed", "out of scope (CHEST)", None, None)
    assert (row.views_analysed, row.views_total) == (0, 2)


def test_exports(store: FileStore, received: sessionmaker[Session]) -> None:
    sr = meta(study=1, series=90, sop=1, modality="SR")
    ingest(store, received, content("sr"), sr, source="produced", now=at(70))
    with received() as session:
        instance = InstanceRepository(session).get(sr.sop_instance_uid)
        assert instance is not None
        exports = ExportRepository(session)
        added = exports.add(instance.id, ["PACS", "ARCHIVE", "PACS"], now=at(70))
        assert [e.destination for e in added] == ["PACS", "ARCHIVE"]
        again = exports.add(instance.id, ["PACS"], now=at(80))  # a retried job
        assert [e.id for e in again] == [added[0].id]
        session.commit()
        pacs, archive = (e.id for e in added)
    with received() as session:
        exports = ExportRepository(session)
        assert [e.id for e in exports.due(at(70), limit=10)] == [pacs, archive]
        exports.mark_sent(pacs, now=at(71))
        exports.mark_failed(archive, error="association rejected", next_attempt_at=at(130))
        session.commit()
    with received() as session:
        exports = ExportRepository(session)
        assert exports.due(at(100), limit=10) == []
        assert [e.id for e in exports.pending_for_study(uid(1))] == [archive]
        assert [e.id for e in exports.due(at(130), limit=10)] == [archive]
        exports.mark_failed(archive, error="still down", next_attempt_at=None)
        session.commit()
    with received() as session:
        exports = ExportRepository(session)
        assert exports.pending_for_study(uid(1)) == []
        failed = exports.get(archive)
        assert failed is not None
        assert (failed.state, failed.attempts, failed.last_error) == (ExportState.FAILED, 2,
                                                                      "still down")
        sent = exports.get(pacs)
        assert sent is not None and (sent.state, sent.sent_at) == (ExportState.SENT, at(71))
