"""`pacs-node studies` speaks the result vocabulary; `pacs-node rerun` queues studies again."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from pacs_node.cli import app
from storage import (
    FileStore,
    JobRepository,
    JobState,
    StudyRepository,
    create_engine_for,
    ingest,
    migrate,
    run_write,
    session_factory,
)
from tests.storage.storage_helpers import content, meta


def _node(tmp_path: Path) -> tuple[Path, object]:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"storage": {
        "root": str(tmp_path / "store"), "database_url": f"sqlite:///{tmp_path / 'index.db'}"}}))
    engine = create_engine_for(f"sqlite:///{tmp_path / 'index.db'}")
    migrate(engine)
    sessions = session_factory(engine)
    store = FileStore(tmp_path / "store")
    for study in (1, 2, 3):
        m = meta(study=study)
        ingest(store, sessions, content(f"s{study}"), m)
    return config, sessions


def _job(sessions, study: int) -> int:
    def work(session) -> int:
        repo = StudyRepository(session)
        target = repo.get(meta(study=study).study_instance_uid)
        job = repo.mark_settled_and_create_job(target, stable_seconds=0.0)
        assert job is not None
        return job.id

    return run_write(sessions, work)


def _listing(config: Path) -> dict[str, dict]:
    out = CliRunner().invoke(app, ["studies", "--config", str(config), "--json"])
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    return {r["study_instance_uid"]: r for r in rows}


def test_studies_and_rerun(tmp_path: Path) -> None:
    config, sessions = _node(tmp_path)
    positive, not_analysed, failed = (_job(sessions, s) for s in (1, 2, 3))

    def finish(session) -> None:
        jobs = JobRepository(session)
        for job_id in (positive, not_analysed, failed):
            assert jobs.claim(job_id, lease_seconds=30) is not None
        jobs.complete(positive, fracture_probability=0.91, positive=True, aggregation="max",
                      threshold=0.5, summary={}, views_analysed=1, views_total=1)
        jobs.complete(not_analysed, fracture_probability=None, positive=None,
                      aggregation="max", threshold=0.5, summary={},
                      reason="out of scope (CHEST)", views_total=1)
        jobs.fail(failed, "RuntimeError: model crashed", retry=False)

    run_write(sessions, finish)
    rows = _listing(config)
    one, two, three = (rows[meta(study=s).study_instance_uid] for s in (1, 2, 3))
    assert (one["result"], one["fracture_probability"], one["images"]) == ("positive", 0.91, 1)
    assert two["result"] == "not_analysed" and "fracture_probability" not in two
    assert two["reason"] == "out of scope (CHEST)"
    assert three["result"] == "failed" and "fracture_probability" not in three
    assert three["reason"] == "RuntimeError: model crashed"

    table = CliRunner().invoke(app, ["studies", "--config", str(config)],
                               env={"COLUMNS": "200"})
    assert "positive: fracture suspected (p=0.91)" in table.stdout
    assert "not analysed: out of scope (CHEST)" in table.stdout
    assert "failed: RuntimeError: model crashed (pacs-node rerun)" in table.stdout

    out = CliRunner().invoke(app, ["rerun", "--failed", "--config", str(config)])
    assert out.exit_code == 0, out.output
    assert meta(study=3).study_instance_uid in out.output
    rows = _listing(config)
    again = rows[meta(study=3).study_instance_uid]
    assert (again["result"], again["job_state"]) == ("pending", JobState.QUEUED)
    assert again["job_id"] > failed
    with sessions() as session:  # left for the running node's reconciler to dispatch
        assert JobRepository(session).require(again["job_id"]).enqueued_at is None
        assert JobRepository(session).require(failed).state == JobState.SUPERSEDED

    out = CliRunner().invoke(app, ["rerun", meta(study=1).study_instance_uid,
                                   "--config", str(config)])
    assert out.exit_code == 0, out.output
    assert _listing(config)[meta(study=1).study_instance_uid]["result"] == "pending"
    bad = CliRunner().invoke(app, ["rerun", "1.2.3.999", "--config", str(config)])
    assert bad.exit_code == 2 and "not held by this node" in bad.output
    nothing = CliRunner().invoke(app, ["rerun", "--config", str(config)])
    assert nothing.exit_code == 2
