"""Interrupted is not failed, and a dead worker is noticed fast.

- Four pushes with the embedded node SIGKILLed 2-5 s after each: after the last restart
  every study is delivered exactly once and none is failed (an interruption does not spend
  one of ``queue.max_attempts``).
- PostgreSQL, Redis and two ``pacs-node worker`` processes: the worker running a study is
  SIGKILLed; its job's lease lapses (no heartbeat), the reconciler re-dispatches it and the
  other worker delivers the study within 60 s of the kill.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pydicom
from sqlalchemy import text

from storage import create_engine_for

from .conftest import (
    _STARTED,
    PACS_NODE,
    Orthanc,
    index_rows,
    make_node,
    result_uids,
    rg3_copy,
    stop_process,
    storescu,
    wait_for,
)

# RG3 (a lower leg, EXTREMITY) is outside the demo model's scope: a route sends it through
# the model on purpose so that every job runs inference.
LEGS = {"pipeline": {"routes": [{"name": "legs", "model": "demo",
                                 "body_parts": ["EXTREMITY"]}]}}


def _study_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _delivered_once(orthanc: Orthanc, study_uid: str) -> bool:
    srs, scs = result_uids(orthanc, study_uid)
    return len(srs) == 1 and len(scs) == 1


def test_four_restarts_leave_no_failed_study(orthanc: Orthanc, tmp_path: Path) -> None:
    dest = [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1",
             "port": orthanc.dicom_port}]
    node = make_node(tmp_path / "node", destinations=dest, stable_seconds=1.0, extra=LEGS)
    rng = random.Random(11)
    files = [rg3_copy(tmp_path / "films" / str(i)) for i in range(4)]
    node.start()
    try:
        for path in files:
            assert storescu(node.port, [path]).returncode == 0
            # The kill lands at a chosen moment of the study's life (settling, running,
            # delivering): that moment is the point of the test, not a wait.
            time.sleep(rng.uniform(2.0, 5.0))
            node.stop(kill=True)
            node.start()
        uids = [_study_uid(p) for p in files]
        for uid in uids:
            wait_for(lambda uid=uid: _delivered_once(orthanc, uid), timeout=180,
                     what=f"the results of {uid} in Orthanc", interval=1.0)
        wait_for(lambda: not index_rows(node, "SELECT id FROM exports WHERE state = 'pending'"),
                 timeout=90, what="every export to be sent", interval=0.5)
        listing = {s["study_instance_uid"]: s for s in node.studies()}
        for uid in uids:
            assert listing[uid]["result"] != "failed", listing[uid]
            assert listing[uid]["job_state"] == "done", listing[uid]
            assert listing[uid]["failures"] == 0, listing[uid]
            srs, scs = result_uids(orthanc, uid)
            assert (len(srs), len(scs)) == (1, 1), (uid, srs, scs)
        interruptions = sum(s["interruptions"] for s in listing.values())
        print(f"\n4 restarts: interruptions over the 4 studies' current jobs: {interruptions}")
        assert not index_rows(node, "SELECT id FROM exports WHERE state = 'failed'")
    finally:
        node.stop()


def _running_task_worker(logs: list[Path]) -> int | None:
    """Which worker (index into ``logs``) received a task, from Celery's own log line."""
    for index, log in enumerate(logs):
        if log.exists() and re.search(r"Task pacs_node\.process_job\[[^]]+\] received",
                                      log.read_text(errors="replace")):
            return index
    return None


def test_a_killed_celery_worker_is_noticed_and_its_study_delivered_within_a_minute(
        orthanc: Orthanc, tmp_path: Path, postgres_url_factory, redis_url_factory) -> None:
    dest = [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1",
             "port": orthanc.dicom_port}]
    node = make_node(tmp_path / "node", destinations=dest, stable_seconds=1.0,
                     database_url=postgres_url_factory(), broker_url=redis_url_factory(),
                     extra={**LEGS, "queue": {"reconcile_interval_seconds": 2.0,
                                              "enqueue_timeout_seconds": 20.0,
                                              "lease_seconds": 20.0}})
    node.start(with_worker=True)
    env = {**os.environ, **node.env}
    second_log = node.workdir / "worker-b.log"
    with second_log.open("wb") as log:
        second = subprocess.Popen([PACS_NODE, "worker", "--config", str(node.config)],
                                  cwd=node.workdir, stdout=log, stderr=subprocess.STDOUT,
                                  env=env)
    _STARTED.append(second)
    workers = [node.worker, second]
    logs = [node.workdir / f"worker-{node.starts}.log", second_log]
    try:
        for log in logs:
            wait_for(lambda log=log: log.exists() and "ready." in log.read_text(errors="replace"),
                     timeout=120, what=f"{log.name} to be ready", interval=0.5)
        path = rg3_copy(tmp_path / "films")
        study_uid = _study_uid(path)
        assert storescu(node.port, [path]).returncode == 0

        engine = create_engine_for(node.settings["storage"]["database_url"])

        def running() -> bool:
            with engine.connect() as connection:
                state = connection.execute(text(
                    "SELECT j.state FROM jobs j JOIN studies s ON s.id = j.study_id "
                    "WHERE s.study_instance_uid = :uid ORDER BY j.id DESC LIMIT 1"),
                    {"uid": study_uid}).scalar()
            return state == "running"

        try:
            wait_for(running, timeout=120, what="the job to run", interval=0.05)
        finally:
            engine.dispose()
        victim = _running_task_worker(logs)
        assert victim is not None, "no worker log shows the task"
        process = workers[victim]
        assert process is not None
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        killed = time.monotonic()
        wait_for(lambda: _delivered_once(orthanc, study_uid), timeout=60,
                 what="the study's results within 60 s of the kill", interval=0.5)
        print(f"\nworker killed mid-job: results in Orthanc {time.monotonic() - killed:.1f} s "
              "after the kill")
        study = next(s for s in node.studies() if s["study_instance_uid"] == study_uid)
        assert (study["job_state"], study["failures"], study["interruptions"]) == ("done", 0, 1)
    finally:
        stop_process(second)
        node.stop()
