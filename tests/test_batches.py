"""Batches in-process (pacs_node.batches): input checks, the runner over the node's own
index (local batches), the model and delivery a batch gives its jobs, --skip-done, pause,
resume, the off-peak window, cancel, and the export."""

from __future__ import annotations

import csv
import io
import json
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from models.synth import generate_dataset, read_manifest
from pacs_node.batches import (
    BatchError,
    BatchRunner,
    BatchSpec,
    cancel_batch,
    create_batch,
    export_batch,
    pause_batch,
    progress,
    read_accessions,
    resume_batch,
)
from pacs_node.config import Settings
from storage import (
    LANE_BATCH,
    BatchRepository,
    Export,
    Instance,
    Job,
    JobState,
    StudyRepository,
    run_write,
)
from tests.workers.conftest import ingest_file
from tests.workers.test_pipeline import tiny_checkpoint
from workers.batch_options import parse_deliver, parse_window
from workers.pipeline import ModelCache, PipelineOptions, StudyPipeline


class Recorder:
    """A dispatcher that remembers the jobs it was asked to run, and their lanes."""

    def __init__(self) -> None:
        self.jobs: list[tuple[int, int]] = []

    def enqueue(self, job_id: int, *, countdown: float = 0.0, lane: int = 1) -> None:
        self.jobs.append((job_id, lane))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", threshold=1e9)


@pytest.fixture
def held(node_storage, tmp_path: Path) -> list[str]:
    """Three synthetic studies in the node's index; their Study Instance UIDs."""
    store, sessions = node_storage
    root = tmp_path / "synth"
    generate_dataset(root, studies=3, seed=8, size=96)
    for entry in read_manifest(root):
        ingest_file(store, sessions, root / entry["path"])
    return sorted({e["study_instance_uid"] for e in read_manifest(root)})


def _settings(tmp_path: Path, **extra: object) -> Settings:
    return Settings(storage={"root": str(tmp_path / "store"),
                             "database_url": f"sqlite:///{tmp_path / 'index.db'}"},
                    destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                                   "port": 104}],
                    remotes=[{"name": "archive", "ae_title": "ARCHIVE", "host": "127.0.0.1",
                              "port": 104}], **extra)  # type: ignore[arg-type]


def _run(runner: BatchRunner, recorder: Recorder, pipeline: StudyPipeline) -> list[str]:
    """One runner pass, then every job it dispatched, like a worker; the runs' outcomes."""
    runner.tick()
    outcomes = [pipeline.run(job_id) for job_id, _ in recorder.jobs]
    recorder.jobs.clear()
    runner.tick()
    return outcomes


def test_accession_lists_are_read_from_lines_or_csv() -> None:
    assert read_accessions("A1\n\nA2\nA1\n") == ["A1", "A2"]
    assert read_accessions("patient,accession\nx,A7\ny,A8\n") == ["A7", "A8"]
    assert read_accessions("AccessionNumber\r\nZ9\r\n") == ["Z9"]
    with pytest.raises(BatchError, match="not an accession number"):
        read_accessions("A1\n" + "X" * 17 + "\n")
    with pytest.raises(BatchError, match="no accession number"):
        read_accessions("\n \n")


def test_windows_and_deliveries_are_checked() -> None:
    night = parse_window("20:00-06:00")
    assert night is not None
    assert night.open_at(datetime(2026, 1, 1, 23, 0).astimezone())
    assert night.open_at(datetime(2026, 1, 1, 5, 59).astimezone())
    assert not night.open_at(datetime(2026, 1, 1, 12, 0).astimezone())
    assert parse_window(None) is None
    for bad in ("8:00-9:00", "25:00-06:00", "20:00", "20:00-06:00x"):
        with pytest.raises(ValueError, match="HH:MM-HH:MM"):
            parse_window(bad)
    assert parse_deliver("none") == ("none", None)
    assert parse_deliver("folder:/data/out") == ("folder", Path("/data/out"))
    for bad in ("folder:relative/path", "pacs", ""):
        with pytest.raises(ValueError):
            parse_deliver(bad)


def test_bad_batches_are_refused_with_the_reason(node_storage, tmp_path: Path) -> None:
    _, sessions = node_storage
    settings = _settings(tmp_path)
    cases = {
        "no remote named 'nowhere'": BatchSpec(remote="nowhere", date_from="20200101"),
        "would ask the archive for everything": BatchSpec(remote="archive"),
        "not both": BatchSpec(remote="archive", accessions=("A1",), date_from="20200101"),
        "is not a date": BatchSpec(remote="archive", date_from="2020-13"),
        "HH:MM-HH:MM": BatchSpec(remote="archive", date_from="20200101", window="nightly"),
        "expected none, destinations or folder": BatchSpec(deliver="pacs"),
        "neither a route's name": BatchSpec(model=str(tmp_path / "missing.pt")),
    }
    for message, spec in cases.items():
        with pytest.raises(BatchError, match=message):
            create_batch(settings, sessions, spec, actor="test")
    without = Settings(storage=settings.storage)
    with pytest.raises(BatchError, match="no destinations"):
        create_batch(without, sessions, BatchSpec(deliver="destinations"), actor="test")
    with sessions() as session:
        assert BatchRepository(session).recent() == []


def test_a_local_batch_runs_each_study_once_with_its_model_into_a_folder(
        node_storage, held: list[str], checkpoint: Path, tmp_path: Path) -> None:
    store, sessions = node_storage
    settings = _settings(tmp_path)
    recorder = Recorder()
    runner = BatchRunner(settings, sessions, store, recorder)
    pipeline = StudyPipeline(store, sessions, PipelineOptions(destinations=("pacs",)),
                             ModelCache(device="cpu"))
    out = tmp_path / "results"
    batch_id = create_batch(settings, sessions, BatchSpec(
        model=str(checkpoint), deliver=f"folder:{out}", skip_done=True), actor="test")

    runner.tick()
    assert len(recorder.jobs) == 3 and {lane for _, lane in recorder.jobs} == {LANE_BATCH}
    assert _run(runner, recorder, pipeline) == ["done"] * 3
    with sessions() as session:
        p = progress(session, batch_id)
        jobs = session.query(Job).filter(Job.batch_id == batch_id).all()
        exports = session.query(Export).count()
    assert p.batch["state"] == "done" and p.counts["done"] == 3 and p.finished == 3
    assert {(j.model_name, j.model_version) for j in jobs} == {("tiny-test", "0.0.1")}
    assert exports == 0  # folder delivery: nothing queued for the destinations
    written = sorted(p.relative_to(out).parts[0] for p in out.rglob("*.dcm"))
    with sessions() as session:
        produced = session.query(Instance).filter(Instance.job_id.is_not(None)).count()
    assert sorted(set(written)) == held and len(written) == produced  # SR + overlays each
    assert not list(out.rglob("*.tmp"))

    # The same model again with --skip-done: every study skipped, with why; no job.
    again = create_batch(settings, sessions, BatchSpec(model=str(checkpoint), skip_done=True),
                         actor="test")
    assert _run(runner, recorder, pipeline) == []
    with sessions() as session:
        items = BatchRepository(session).items(again)
        assert {i.state for i in items} == {"skipped"}
        assert all("already processed by tiny-test 0.0.1" in (i.reason or "") for i in items)
        assert BatchRepository(session).require(again).state == "done"

    # The export holds one row per study with what the index says.
    with sessions() as session:
        text = io.StringIO()
        assert export_batch(session, batch_id, text, "csv") == 3
        lines = io.StringIO()
        export_batch(session, batch_id, lines, "jsonl")
        listing = {r.study_instance_uid: r for r in StudyRepository(session).list_with_latest(
            study_uids=held)}
    rows = list(csv.DictReader(io.StringIO(text.getvalue())))
    assert sorted(r["study_instance_uid"] for r in rows) == held
    for row in rows:
        study = listing[row["study_instance_uid"]]
        assert row["result"] == study.result and row["item_state"] == "done"
        assert row["triage_priority"] == study.triage_priority
        assert row["model_version"] == "0.0.1"
        assert row["synthetic_data_weights"] == "true"  # the tiny test model says so
        assert float(row["fracture_probability"]) == pytest.approx(study.fracture_probability)
        assert len(json.loads(row["views"])) == study.images
    records = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert [r["study_instance_uid"] for r in records] == [r["study_instance_uid"] for r in rows]
    assert {r["synthetic_data_weights"] for r in records} == {True}


def test_paused_or_out_of_window_batches_start_nothing_and_resume(
        node_storage, held: list[str], checkpoint: Path, tmp_path: Path) -> None:
    store, sessions = node_storage
    settings = _settings(tmp_path, batch={"max_queued": 2})
    recorder = Recorder()
    runner = BatchRunner(settings, sessions, store, recorder)
    pipeline = StudyPipeline(store, sessions, PipelineOptions(), ModelCache(device="cpu"))
    batch_id = create_batch(settings, sessions, BatchSpec(model=str(checkpoint)), actor="t")
    runner.tick()
    assert len(recorder.jobs) == 2  # batch.max_queued: no more jobs waiting at a time
    pause_batch(sessions, batch_id, actor="t")
    assert [pipeline.run(j) for j, _ in recorder.jobs] == ["skipped", "skipped"]
    with sessions() as session:
        assert {j.state for j in session.query(Job)} == {JobState.QUEUED}
    with pytest.raises(BatchError, match="only a querying or running batch"):
        pause_batch(sessions, batch_id, actor="t")
    resume_batch(sessions, batch_id, actor="t")
    with sessions() as session:  # woken: the reconciler dispatches them again
        assert {j.enqueued_at for j in session.query(Job)} == {None}
    assert [pipeline.run(j) for j, _ in recorder.jobs] == ["done", "done"]
    recorder.jobs.clear()
    assert _run(runner, recorder, pipeline) == ["done"]
    with sessions() as session:
        assert BatchRepository(session).require(batch_id).state == "done"

    # A window that is closed now: nothing starts, its queued jobs are not claimed.
    now = datetime.now().astimezone()
    closed = f"{(now + timedelta(hours=2)):%H:%M}-{(now + timedelta(hours=3)):%H:%M}"
    night = create_batch(settings, sessions, BatchSpec(model=str(checkpoint), window=closed),
                         actor="t")
    runner.tick()
    assert recorder.jobs == []
    with sessions() as session:
        p = progress(session, night)
    assert not p.window_open and p.counts["pending"] == 3

    # Cancel: the studies not yet started are skipped, saying so.
    assert cancel_batch(sessions, night, actor="admin") == 3
    with sessions() as session:
        items = BatchRepository(session).items(night)
        assert {(i.state, i.reason) for i in items} == {("skipped", "batch cancelled by admin")}
        assert BatchRepository(session).require(night).state == "cancelled"
    with pytest.raises(BatchError, match="already cancelled"):
        cancel_batch(sessions, night, actor="admin")


def test_the_tracker_leaves_a_study_a_batch_is_retrieving_to_the_batch(
        node_storage, held: list[str], tmp_path: Path) -> None:
    _, sessions = node_storage
    with sessions() as session:
        repo = StudyRepository(session)
        assert len(repo.settled(datetime.now().astimezone(), 0.0)) == 3

    def add(session):  # type: ignore[no-untyped-def]
        batch = BatchRepository(session).create(source="remote", remote="archive",
                                                criteria={}, items=[("", held[0])])
        return batch.id
    run_write(sessions, add)
    with sessions() as session:
        settled = StudyRepository(session).settled(datetime.now().astimezone(), 0.0)
    assert sorted(s.study_instance_uid for s in settled) == held[1:]


def test_a_local_selection_matches_whole_modality_codes(
        node_storage, held: list[str], tmp_path: Path) -> None:
    _, sessions = node_storage
    settings = _settings(tmp_path)
    with sessions() as session:
        modalities = {s.modalities_in_study for s in StudyRepository(session).settled(
            datetime.now().astimezone(), 0.0)}
    code = sorted(modalities)[0]
    partial = create_batch(settings, sessions, BatchSpec(modalities=(code[:1],)), actor="t")
    whole = create_batch(settings, sessions, BatchSpec(modalities=(code.lower(),),
                                                       window=" 20:00-06:00 "), actor="t")
    with sessions() as session:
        repo = BatchRepository(session)
        assert repo.items(partial) == [] and repo.require(partial).reason == "no study matched"
        assert len(repo.items(whole)) >= 1
        assert repo.require(whole).window == "20:00-06:00"


def test_a_cancelled_batch_lets_its_queued_jobs_finish_and_records_them(
        node_storage, held: list[str], checkpoint: Path, tmp_path: Path) -> None:
    store, sessions = node_storage
    settings = _settings(tmp_path)
    recorder = Recorder()
    runner = BatchRunner(settings, sessions, store, recorder)
    pipeline = StudyPipeline(store, sessions, PipelineOptions(), ModelCache(device="cpu"))
    batch_id = create_batch(settings, sessions, BatchSpec(model=str(checkpoint)), actor="t")
    runner.tick()
    assert len(recorder.jobs) == 3
    assert cancel_batch(sessions, batch_id, actor="t") == 0  # nothing left to retrieve
    assert [pipeline.run(j) for j, _ in recorder.jobs] == ["done"] * 3
    runner.tick()
    with sessions() as session:
        repo = BatchRepository(session)
        assert {i.state for i in repo.items(batch_id)} == {"done"}
        assert repo.require(batch_id).state == "cancelled"


PATIENT = "Doe" + "^Jane"


class Broken:
    """An archive whose every retrieve raises something other than an ArchiveError."""

    def __init__(self, uid: str) -> None:
        self.uid = uid
        self.remote = type("R", (), {"name": "archive"})()

    def find(self, **_criteria: object) -> list[object]:
        from pacs_node.archive import StudyRef

        return [StudyRef(self.uid, "ACC1")]

    def retrieve(self, _uid: str) -> object:
        raise RuntimeError(PATIENT)  # a message that could quote patient data


def test_an_unexpected_error_fails_the_item_after_its_attempts_not_forever(
        node_storage, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store, sessions = node_storage
    settings = _settings(tmp_path, batch={"max_attempts": 2, "backoff_initial_seconds": 0.01,
                                          "backoff_max_seconds": 0.01})
    runner = BatchRunner(settings, sessions, store, Recorder(),
                         source_factory=lambda _remote: Broken("1.2.3.4"))  # type: ignore[arg-type,return-value]
    batch_id = create_batch(settings, sessions, BatchSpec(remote="archive", accessions=("ACC1",)),
                            actor="t")

    def item() -> tuple[str, str | None]:
        with sessions() as session:
            (row,) = BatchRepository(session).items(batch_id)
            return row.state, row.reason

    deadline = time.monotonic() + 20
    while item()[0] != "failed" and time.monotonic() < deadline:
        runner.tick()
        time.sleep(0.05)
    state, reason = item()
    assert state == "failed" and reason == ("failed after 2 attempts: RuntimeError (see the "
                                            "node's log)")
    assert PATIENT not in caplog.text and "RuntimeError" in caplog.text
    runner.tick()
    with sessions() as session:
        assert BatchRepository(session).require(batch_id).state == "done"
    runner.stop()
