"""Urgent first (issue 14, item 2): a STAT study pushed after 20 routine studies is analysed
before every routine study still waiting, in the embedded node and with Redis +
`pacs-node worker`; its study is HIGH at once (the sender's urgency), its job runs in the
urgent lane."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy import text

from models.synth import generate_dataset, read_manifest
from storage import create_engine_for

from .conftest import NodeProcess, make_node, order_stat, storescu, wait_for

ROUTINE = 20


def _studies(root: Path) -> list[list[Path]]:
    """21 small synthetic studies; the last one's views carry Requested Procedure Priority
    STAT in their Request Attributes Sequence, as a RIS order would put it."""
    generate_dataset(root, studies=ROUTINE + 1, seed=41, size=256)
    by_study: dict[str, list[Path]] = {}
    for entry in read_manifest(root):
        by_study.setdefault(entry["study_instance_uid"], []).append(root / entry["path"])
    studies = list(by_study.values())
    assert len(studies) == ROUTINE + 1
    order_stat(studies[-1])
    return studies


def _jobs(url: str) -> list[dict[str, Any]]:
    engine = create_engine_for(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text(
                "SELECT s.study_instance_uid, s.triage_priority, s.requested_priority, j.lane, "
                "j.state, j.created_at, j.started_at, j.finished_at FROM jobs j "
                "JOIN studies s ON s.id = j.study_id WHERE j.state != 'superseded'")).all()
    finally:
        engine.dispose()
    return [dict(row._mapping) for row in rows]


def _push_and_check(node: NodeProcess, tmp_path: Path) -> None:
    studies = _studies(tmp_path / "synth")
    stat_uid = str(pydicom.dcmread(studies[-1][0]).StudyInstanceUID)
    url = node.settings["storage"]["database_url"]
    routine = [path for files in studies[:-1] for path in files]
    assert storescu(node.port, routine).returncode == 0
    # The routine studies settle and the runner starts on them: a backlog.
    wait_for(lambda: any(j["started_at"] for j in _jobs(url)), timeout=120,
             what="the first routine job to start", interval=0.2)
    assert storescu(node.port, studies[-1]).returncode == 0
    wait_for(lambda: len([j for j in _jobs(url) if j["state"] == "done"]) == ROUTINE + 1,
             timeout=600, what="every study to be analysed", interval=1.0)

    jobs = _jobs(url)
    (stat,) = [j for j in jobs if j["study_instance_uid"] == stat_uid]
    others = [j for j in jobs if j["study_instance_uid"] != stat_uid]
    assert stat["lane"] == 0 and {j["lane"] for j in others} == {1}
    assert stat["requested_priority"] == "Requested Procedure Priority STAT"
    assert stat["triage_priority"] == "HIGH"
    waiting = [j for j in others if j["started_at"] > stat["created_at"]]
    # Meaningful only with a backlog: most routine studies were still waiting for it.
    assert len(waiting) >= ROUTINE // 2, f"only {len(waiting)} routine jobs were waiting"
    assert all(stat["started_at"] < j["started_at"] for j in waiting), \
        "a routine job that was waiting started before the STAT one"
    assert all(stat["finished_at"] < j["finished_at"] for j in waiting)


def test_a_stat_study_is_analysed_before_the_routine_backlog_embedded(tmp_path: Path) -> None:
    node = make_node(tmp_path / "node", stable_seconds=1.0)
    node.start()
    _push_and_check(node, tmp_path)


def test_a_stat_study_is_analysed_before_the_routine_backlog_with_celery(
        tmp_path: Path, postgres_url_factory: Callable[[], str],
        redis_url_factory: Callable[[], str]) -> None:
    node = make_node(tmp_path / "node", stable_seconds=1.0,
                     database_url=postgres_url_factory(), broker_url=redis_url_factory())
    node.start(with_worker=True)
    worker_log = node.workdir / f"worker-{node.starts}.log"
    wait_for(lambda: worker_log.exists() and "ready." in worker_log.read_text(errors="replace"),
             timeout=120, what="the worker to be ready", interval=0.5)
    _push_and_check(node, tmp_path)
    log = worker_log.read_text(errors="replace")
    assert "pacs-node.urgent" in log  # the worker consumes the urgent queue
