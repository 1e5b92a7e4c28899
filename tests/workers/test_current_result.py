"""One current result per study: a new job's SR names the one it replaces, the earlier
results are hidden from queries and withdrawn by an IOCM rejection note where they were
sent, and a job superseded while it runs leaves nothing behind."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from storage import (
    Export,
    ExportState,
    Instance,
    InstanceSource,
    Job,
    JobRepository,
    JobState,
    QueryRepository,
    Result,
    run_write,
)
from tests.dicom_checks import dciodvfy_errors
from tests.workers.conftest import ingest_file, settle_job
from tests.workers.test_pipeline import _study_files, tiny_checkpoint
from workers.pipeline import ModelCache, PipelineOptions, StudyPipeline, _Heartbeat
from workers.routing import Route

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
KOS_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", threshold=1e9)


def _produced(sessions, job_id: int | None = None) -> list[Instance]:
    with sessions() as session:
        stmt = select(Instance).where(Instance.source == InstanceSource.PRODUCED)
        if job_id is not None:
            stmt = stmt.where(Instance.job_id == job_id)
        return list(session.scalars(stmt.order_by(Instance.id)))


def test_a_late_instance_replaces_the_result_names_its_predecessor_and_withdraws_it(
        node_storage, checkpoint: Path, tmp_path: Path) -> None:
    store, sessions = node_storage
    files = _study_files(tmp_path)
    for f in files[:-1]:
        ingest_file(store, sessions, f)
    options = PipelineOptions(routes=(Route(model=str(checkpoint)),),
                              destinations=("pacs", "viewer"), withdraw_destinations=("pacs",))
    pipeline = StudyPipeline(store, sessions, options, ModelCache(device="cpu"))
    first_job = settle_job(sessions)
    assert pipeline.run(first_job) == "done"
    first = _produced(sessions, first_job)
    with sessions() as session:  # the PACS received the first results; the viewer did not
        for export in session.scalars(select(Export)):
            if export.destination == "pacs":
                export.state = ExportState.SENT
        session.commit()

    ingest_file(store, sessions, files[-1])  # a view that arrives late re-opens the study
    second_job = settle_job(sessions)
    assert pipeline.run(second_job) == "done"

    second = _produced(sessions, second_job)
    new_sr = next(i for i in second if i.sop_class_uid == SR_CLASS)
    old_sr = next(i for i in first if i.sop_class_uid == SR_CLASS)
    sr = pydicom.dcmread(store.path_of(new_sr.relpath))
    predecessors = [ref.ReferencedSOPInstanceUID
                    for study in sr.PredecessorDocumentsSequence
                    for series in study.ReferencedSeriesSequence
                    for ref in series.ReferencedSOPSequence]
    assert predecessors == [old_sr.sop_instance_uid]
    assert dciodvfy_errors(store.path_of(new_sr.relpath)) == []

    kos_row = next(i for i in second if i.sop_class_uid == KOS_CLASS)
    kos = pydicom.dcmread(store.path_of(kos_row.relpath))
    assert kos.ConceptNameCodeSequence[0].CodeValue == "113001"  # Rejected for Quality Reasons
    rejected = {ref.ReferencedSOPInstanceUID
                for series in kos.CurrentRequestedProcedureEvidenceSequence[0]
                .ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    assert rejected == {i.sop_instance_uid for i in first}  # exactly the old SR and overlays
    assert dciodvfy_errors(store.path_of(kos_row.relpath)) == []

    with sessions() as session:
        old = session.scalars(select(Instance).where(Instance.job_id == first_job)).all()
        assert old and all(i.superseded for i in old)
        exports = session.scalars(select(Export)).all()
        by_instance = {(e.instance_id, e.destination): e for e in exports}
        # The rejection note goes only where the old results went and asked for IOCM.
        assert {d for (i, d) in by_instance if i == kos_row.id} == {"pacs"}
        # The viewer never got the old results: they are not sent to it any more.
        for item in old:
            assert by_instance[(item.id, "viewer")].state == ExportState.FAILED
            assert "superseded" in (by_instance[(item.id, "viewer")].last_error or "")
        queries = QueryRepository(session)
        series = queries.find_series({"StudyInstanceUID": sr.StudyInstanceUID})
        assert [s.Modality for s in series].count("SR") == 1
        assert {i.SOPInstanceUID for i in queries.find_instances(
            {"StudyInstanceUID": sr.StudyInstanceUID, "SOPClassUID": SR_CLASS})} \
            == {new_sr.sop_instance_uid}
        history = QueryRepository(session, history=True).find_series(
            {"StudyInstanceUID": sr.StudyInstanceUID})
        assert [s.Modality for s in history].count("SR") == 2


def test_a_job_superseded_while_it_runs_leaves_no_indexed_result(
        node_storage, checkpoint: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    store, sessions = node_storage
    files = _study_files(tmp_path)
    for f in files[:-1]:
        ingest_file(store, sessions, f)
    job_id = settle_job(sessions)
    inferring, release = threading.Event(), threading.Event()
    original = StudyPipeline._study_result

    def slow(self, *args, **kwargs):  # a stand-in for a slow model
        inferring.set()
        assert release.wait(60)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StudyPipeline, "_study_result", slow)
    options = PipelineOptions(routes=(Route(model=str(checkpoint)),), destinations=("pacs",))
    pipeline = StudyPipeline(store, sessions, options, ModelCache(device="cpu"))
    outcome: list[str] = []
    runner = threading.Thread(target=lambda: outcome.append(pipeline.run(job_id)))
    runner.start()
    try:
        assert inferring.wait(60)
        ingest_file(store, sessions, files[-1])
        newer = settle_job(sessions)
    finally:
        release.set()
        runner.join(120)
    assert outcome == ["discarded"]
    assert _produced(sessions) == []
    with sessions() as session:
        assert session.scalars(select(Result)).all() == []
        assert session.scalars(select(Export)).all() == []
        assert session.get(Job, job_id).state == JobState.SUPERSEDED
    assert not any(".tmp-" in p.name for p in store.root.rglob("*"))
    assert pipeline.run(newer) == "done"
    assert _produced(sessions, newer)


def test_a_running_job_renews_its_lease_and_a_dead_one_lapses(node_storage,
                                                              tmp_path: Path) -> None:
    store, sessions = node_storage
    for f in _study_files(tmp_path):
        ingest_file(store, sessions, f)
    job_id = settle_job(sessions)
    claimed = run_write(sessions, lambda s: JobRepository(s).claim(job_id, lease_seconds=3))
    assert claimed is not None
    attempt = claimed.attempts

    def lease_end():
        with sessions() as session:
            return session.get(Job, job_id).lease_expires_at

    first = lease_end()
    with _Heartbeat(sessions, job_id, attempt, lease_seconds=3.0):
        deadline = time.monotonic() + 10
        while lease_end() <= first:
            assert time.monotonic() < deadline, "the heartbeat never renewed the lease"
            time.sleep(0.1)
        time.sleep(3.5)  # longer than the lease: the heartbeat must have kept it
        assert run_write(sessions, lambda s: JobRepository(s).claim(
            job_id, lease_seconds=3)) is None
    # No heartbeat any more (the worker died): the lease lapses and another worker takes
    # the job, counting an interruption, not a failure.
    deadline = time.monotonic() + 10
    while (taken := run_write(sessions, lambda s: JobRepository(s).claim(
            job_id, lease_seconds=3))) is None:
        assert time.monotonic() < deadline, "the lease never lapsed"
        time.sleep(0.2)
    assert (taken.failures, taken.interruptions) == (0, 1)
