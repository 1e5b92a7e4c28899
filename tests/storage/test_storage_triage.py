"""Triage priority: from a result at two operating points, the sender's urgency as a floor
no result lowers, and the history of who set it and why."""

from __future__ import annotations

import pytest
from pydicom import Dataset
from sqlalchemy.orm import Session, sessionmaker

from storage import (
    LANE_LIVE,
    LANE_URGENT,
    FileStore,
    PrioritySource,
    Study,
    StudyRepository,
    TriagePriority,
    floored,
    from_result,
    ingest,
    requested_urgency,
    run_write,
)
from storage.triage import RANK

from .storage_helpers import at, content, meta, uid

HIGH, MEDIUM, LOW = TriagePriority.HIGH, TriagePriority.MEDIUM, TriagePriority.LOW
POINTS = {"high_threshold": 0.8, "doubt_threshold": 0.3}


@pytest.mark.parametrize(("state", "probability", "expected"), [
    ("analysed", 0.95, HIGH), ("analysed", 0.8, HIGH), ("analysed", 0.79, MEDIUM),
    ("analysed", 0.3, MEDIUM), ("analysed", 0.29, LOW), ("analysed", 0.0, LOW),
    ("not_analysed", None, TriagePriority.NOT_ANALYSED),
    ("analysed", None, TriagePriority.NOT_ANALYSED), (None, None, TriagePriority.NOT_ANALYSED),
])
def test_a_result_earns_its_priority_at_the_two_operating_points(
        state: str | None, probability: float | None, expected: TriagePriority) -> None:
    assert from_result(state, probability, **POINTS) is expected


@pytest.mark.parametrize("priority", list(TriagePriority))
def test_the_senders_urgency_is_a_floor_never_lowered(priority: TriagePriority) -> None:
    assert floored(priority, "C-STORE Priority HIGH") is HIGH
    assert floored(priority, None) is priority
    assert floored(priority, "") is priority


def test_the_worklist_reads_unknown_before_negative() -> None:
    order = sorted(TriagePriority, key=RANK.__getitem__)
    assert order == [HIGH, MEDIUM, TriagePriority.FAILED, TriagePriority.NOT_ANALYSED, LOW]


def _request(priority: str) -> Dataset:
    item = Dataset()
    item.RequestedProcedurePriority = priority
    return item


@pytest.mark.parametrize(("top", "in_request", "cstore", "expected"), [
    ("STAT", None, None, "Requested Procedure Priority STAT"),
    ("high", None, None, "Requested Procedure Priority HIGH"),
    (None, "STAT", None, "Requested Procedure Priority STAT"),
    ("ROUTINE", "LOW", None, ""),
    ("MEDIUM", None, 0x0000, ""),
    (None, None, 0x0002, ""),  # C-STORE LOW
    (None, None, 0x0001, "C-STORE Priority HIGH"),
])
def test_what_counts_as_the_senders_urgency(top: str | None, in_request: str | None,
                                            cstore: int | None, expected: str) -> None:
    ds = Dataset()
    if top is not None:
        ds.RequestedProcedurePriority = top
    if in_request is not None:
        ds.RequestAttributesSequence = [_request("ROUTINE"), _request(in_request)]
    assert requested_urgency(ds, cstore) == expected


def _study(sessions: sessionmaker[Session], study: int = 1) -> Study:
    with sessions() as session:
        found = StudyRepository(session).get(uid(study))
        assert found is not None
        session.expunge(found)
        return found


def test_a_stat_instance_makes_its_study_urgent_and_says_who(
        store: FileStore, sessions: sessionmaker[Session]) -> None:
    ingest(store, sessions, content("a"), meta(1, 1, 1), calling_ae="CR_ROOM_2", now=at(0))
    assert _study(sessions).triage_priority is None
    stat = meta(1, 1, 2, requested_priority="Requested Procedure Priority STAT")
    ingest(store, sessions, content("b"), stat, calling_ae="CR_ROOM_2", now=at(1))
    study = _study(sessions)
    assert study.triage_priority == HIGH
    assert study.requested_priority == "Requested Procedure Priority STAT"
    with sessions() as session:
        (event,) = StudyRepository(session).priority_history(study.id)
        assert (event.priority, event.source, event.actor) == (HIGH, "sender", "CR_ROOM_2")
        assert "STAT" in event.reason
    # A routine instance afterwards changes nothing: the floor stays.
    ingest(store, sessions, content("c"), meta(1, 1, 3), calling_ae="CR_ROOM_2", now=at(2))
    assert _study(sessions).requested_priority == "Requested Procedure Priority STAT"


def test_a_negative_result_never_lowers_a_stat_study(store: FileStore,
                                                     sessions: sessionmaker[Session]) -> None:
    stat = meta(1, 1, 1, requested_priority="C-STORE Priority HIGH")
    ingest(store, sessions, content("a"), stat, calling_ae="ED", now=at(0))
    study_id = _study(sessions).id
    got = run_write(sessions, lambda s: StudyRepository(s).set_triage(
        study_id, LOW, source=PrioritySource.RESULT, reason="fracture probability 0.05",
        actor="model demo 1"))
    assert got is HIGH and _study(sessions).triage_priority == HIGH
    with sessions() as session:
        events = StudyRepository(session).priority_history(study_id)
        assert [e.source for e in events] == ["sender", "result"]
        assert events[-1].priority == HIGH
        assert "raised to HIGH by the sender: C-STORE Priority HIGH" in events[-1].reason
    # An admin may lower it, with a reason; that is recorded too.
    run_write(sessions, lambda s: StudyRepository(s).set_triage(
        study_id, LOW, source=PrioritySource.USER, reason="read already by Dr A",
        actor="admin-desk"))
    assert _study(sessions).triage_priority == LOW


def test_jobs_of_an_urgent_study_run_in_the_urgent_lane(
        store: FileStore, sessions: sessionmaker[Session]) -> None:
    ingest(store, sessions, content("a"), meta(1, 1, 1), now=at(0))
    ingest(store, sessions, content("b"),
           meta(2, 1, 1, requested_priority="C-STORE Priority HIGH"), now=at(0))

    def settle(session: Session) -> dict[str, int]:
        studies = StudyRepository(session)
        lanes = {}
        for study in studies.settled(at(100), 5):
            job = studies.mark_settled_and_create_job(study, now=at(100), stable_seconds=5)
            assert job is not None
            lanes[study.study_instance_uid] = job.lane
        return lanes

    assert run_write(sessions, settle) == {uid(1): LANE_LIVE, uid(2): LANE_URGENT}
