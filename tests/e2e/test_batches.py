"""Re-processing batches (issue 15, items 3-4) against real archives: Orthanc, started here
on free loopback ports and filled over its REST API with 40 synthetic studies, is the
PACS the batches pull from by C-MOVE (Orthanc 1.10), C-GET (Orthanc 1.12) and DICOMweb
(its plugin); the node runs as `pacs-node serve`, the batches are made and read with the
`pacs-node batch` commands an operator types."""

from __future__ import annotations

import csv
import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from models.synth import generate_dataset, read_manifest
from storage import create_engine_for

from .conftest import (
    PACS_NODE,
    NodeProcess,
    Orthanc,
    index_rows,
    make_node,
    result_uids,
    start_orthanc,
    stop_process,
    storescu,
    wait_for,
)

STUDIES = 40
STABLE_SECONDS = 2.0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained model (64 px, domain check open): jobs of a fraction of a second,
    so a 40-study batch fits in a test. The batches run it through a route."""
    from tests.workers.test_pipeline import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", threshold=1e9)


def _studies(root: Path, count: int, seed: int) -> dict[str, dict[str, Any]]:
    """Synthetic studies: per Study Instance UID its accession, date and files."""
    generate_dataset(root, studies=count, seed=seed, size=96)
    studies: dict[str, dict[str, Any]] = {}
    for entry in read_manifest(root):
        study = studies.setdefault(entry["study_instance_uid"], {"files": []})
        study["files"].append(root / entry["path"])
    import pydicom

    for study in studies.values():
        header = pydicom.dcmread(study["files"][0], stop_before_pixels=True)
        study["accession"] = str(header.AccessionNumber)
        study["date"] = str(header.StudyDate)
    return studies


def _upload(orthanc: Orthanc, studies: dict[str, dict[str, Any]]) -> None:
    for study in studies.values():
        for path in study["files"]:
            request = urllib.request.Request(
                f"http://127.0.0.1:{orthanc.http_port}/instances", data=path.read_bytes(),
                method="POST", headers={"Content-Type": "application/dicom"})
            with urllib.request.urlopen(request, timeout=30) as answer:
                answer.read()


def _cli(node: NodeProcess, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    answer = subprocess.run([PACS_NODE, "batch", *args, "--config", str(node.config)],
                            capture_output=True, text=True, timeout=180, cwd=node.workdir)
    if check:
        assert answer.returncode == 0, answer.stdout + answer.stderr
    return answer


def _create(node: NodeProcess, *args: str) -> int:
    return int(_cli(node, "create", *args).stdout.strip().splitlines()[-1])


def _rows(node: NodeProcess, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of a query on the node's index: its SQLite file, or its PostgreSQL database."""
    url = str(node.settings["storage"]["database_url"])
    if url.startswith("sqlite"):
        return index_rows(node, sql, params)
    engine = create_engine_for(url)
    try:
        with engine.connect() as connection:
            return [tuple(r) for r in connection.exec_driver_sql(sql.replace("?", "%s"),
                                                                 params).fetchall()]
    finally:
        engine.dispose()


def _batch_state(node: NodeProcess, batch_id: int) -> str:
    return str(_rows(node, "SELECT state FROM batches WHERE id = ?", (batch_id,))[0][0])


def _items(node: NodeProcess, batch_id: int) -> dict[str, tuple[str, str | None, int | None]]:
    """Per study of the batch: (item state, reason, job id)."""
    return {uid: (state, reason, job) for uid, state, reason, job in _rows(
        node, "SELECT study_instance_uid, state, reason, job_id FROM batch_items "
              "WHERE batch_id = ?", (batch_id,))}


def _wait_done(node: NodeProcess, batch_id: int, timeout: float) -> None:
    wait_for(lambda: node.process is not None and node.process.poll() is None
             and _batch_state(node, batch_id) in ("done", "failed", "cancelled")
             or _dead(node), timeout=timeout, what=f"batch {batch_id} to end", interval=0.5)
    assert _batch_state(node, batch_id) == "done", (_items(node, batch_id), node.log())


def _dead(node: NodeProcess) -> bool:
    if node.process is not None and node.process.poll() is not None:
        raise AssertionError(f"the node exited: {node.log()}")
    return False


def _node(tmp_path: Path, model: Path, remotes: list[dict[str, Any]], *,
          destinations: list[dict[str, Any]] | None = None,
          batch: dict[str, Any] | None = None, database_url: str | None = None,
          broker_url: str = "memory://") -> NodeProcess:
    node = make_node(tmp_path / "node", destinations=destinations,
                     stable_seconds=STABLE_SECONDS, database_url=database_url,
                     broker_url=broker_url,
                     extra={"batch": {"tick_seconds": 0.3, "max_attempts": 3,
                                      "backoff_initial_seconds": 0.5,
                                      "backoff_max_seconds": 1.0, **(batch or {})},
                            "pipeline": {"routes": [{"name": "tiny", "model": str(model)}]}})
    node.settings["remotes"] = remotes
    node.config.write_text(yaml.safe_dump(node.settings))
    return node


def _accession_file(path: Path, accessions: list[str]) -> Path:
    path.write_text("accession,comment\n" + "".join(f"{a},study\n" for a in accessions))
    return path


def _done_jobs(node: NodeProcess, batch_id: int) -> dict[str, int]:
    """Per study: how many done jobs the batch made for it."""
    return {uid: n for uid, n in _rows(
        node, "SELECT s.study_instance_uid, count(*) FROM jobs j JOIN studies s "
              "ON s.id = j.study_id WHERE j.batch_id = ? AND j.state = 'done' "
              "GROUP BY s.study_instance_uid", (batch_id,))}


def _studies_with_results(orthanc: Orthanc) -> set[str]:
    """The studies the PACS holds an SR for (a node's result)."""
    series = orthanc.get_post("/tools/find", {"Level": "Series", "Query": {"Modality": "SR"}})
    parents = {orthanc.get(f"/series/{s}")["ParentStudy"] for s in series}
    return {orthanc.get(f"/studies/{p}")["MainDicomTags"]["StudyInstanceUID"] for p in parents}


def _other_version(tmp_path: Path, model: Path) -> Path:
    """The same weights under another version: a different model for --skip-done."""
    import torch

    from models.registry import read_checkpoint

    blob = read_checkpoint(model)
    blob["metadata"] = {**blob["metadata"], "version": blob["metadata"]["version"] + "-b"}
    path = tmp_path / "tiny-b.pt"
    torch.save(blob, path)
    return path


def test_three_batches_c_move_c_get_dicomweb_with_a_live_study_between(
        tmp_path: Path, tiny: Path) -> None:
    studies = _studies(tmp_path / "synth", STUDIES, seed=15)
    assert len(studies) == STUDIES
    pacs = start_orthanc(tmp_path / "orthanc")  # 1.10 + DICOMweb: C-MOVE and QIDO/WADO
    getter = start_orthanc(tmp_path / "orthanc-get", trixie=True)  # 1.12: C-GET
    _upload(pacs, studies)
    _upload(getter, studies)
    node = _node(tmp_path, tiny, [
        {"name": "move", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port},
        {"name": "get", "ae_title": getter.aet, "host": "127.0.0.1",
         "port": getter.dicom_port, "retrieve": "c-get"},
        # DICOMweb only: no DIMSE address needed.
        {"name": "web", "retrieve": "dicomweb",
         "url": f"http://127.0.0.1:{pacs.http_port}/dicom-web"},
    ], destinations=[{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1",
                      "port": pacs.dicom_port}])
    node.start()
    pacs.put_modality("node", "PACSNODE", node.port)
    getter.put_modality("node", "PACSNODE", node.port)
    by_uid = sorted(studies)

    # 1. A date range over C-MOVE (all 40 studies), results kept on the node.
    first = _create(node, "--remote", "move", "--from", "19000101", "--to", "20991231",
                    "--modality", "CR", "--modality", "DX", "--max-retrieves", "2",
                    "--name", "all by date")
    # A live study arrives while the batch works: it is served before the batch's jobs.
    wait_for(lambda: sum(1 for s, _, _ in _items(node, first).values() if s == "done") >= 4,
             timeout=180, what="the batch to be under way", interval=0.5)
    live = _studies(tmp_path / "live", 1, seed=77)
    (live_uid, live_study), = live.items()
    storescu(node.port, live_study["files"])
    sent_at = time.monotonic()

    def live_done() -> bool:
        return bool(_rows(node, "SELECT 1 FROM jobs j JOIN studies s ON s.id = j.study_id "
                                     "WHERE s.study_instance_uid = ? AND j.state = 'done'",
                               (live_uid,)))
    wait_for(live_done, timeout=120, what="the live study's result", interval=0.2)
    live_seconds = time.monotonic() - sent_at
    left = [s for s, _, _ in _items(node, first).values() if s not in ("done", "skipped")]
    assert left, "the batch ended before the live study: it did not test the lanes"
    print(f"\nlive study pushed during a 40-study batch: its result after {live_seconds:.1f} s "
          f"(stable_seconds {STABLE_SECONDS:.0f}; {len(left)} batch studies still to go)")
    assert live_seconds <= STABLE_SECONDS + 15, live_seconds
    _wait_done(node, first, timeout=600)
    items = _items(node, first)
    assert sorted(items) == by_uid
    assert {state for state, _, _ in items.values()} == {"done"}
    assert set(_done_jobs(node, first).values()) == {1}
    lanes = _rows(node, "SELECT DISTINCT lane FROM jobs WHERE batch_id = ?", (first,))
    assert lanes == [(2,)]
    # --deliver none: no result of the batch went back to the PACS (the live study's did).
    assert _studies_with_results(pacs) <= {live_uid}

    # The CSV export says what the index holds.
    out = tmp_path / "first.csv"
    _cli(node, "export", str(first), "--csv", str(out))
    with out.open(newline="") as handle:
        rows = {r["study_instance_uid"]: r for r in csv.DictReader(handle)}
    assert sorted(rows) == by_uid
    truth = {uid: (p, priority, version) for uid, p, priority, version in _rows(
        node, "SELECT s.study_instance_uid, r.fracture_probability, s.triage_priority, "
              "j.model_version FROM batch_items i JOIN jobs j ON j.id = i.job_id "
              "JOIN results r ON r.job_id = j.id JOIN studies s ON s.id = j.study_id "
              "WHERE i.batch_id = ?", (first,))}
    for uid, row in rows.items():
        probability, priority, version = truth[uid]
        assert row["item_state"] == "done"
        assert row["accession_number"] == studies[uid]["accession"]
        assert row["triage_priority"] == priority and row["model_version"] == version
        if probability is None:
            assert row["fracture_probability"] == "" and row["result"] == "not_analysed"
        else:
            assert float(row["fracture_probability"]) == pytest.approx(probability)
            assert row["result"] in ("positive", "negative")
        views = json.loads(row["views"])
        assert {v["sop_instance_uid"] for v in views} == {
            p.stem for p in studies[uid]["files"]}

    # 2. An accession list over C-GET, results delivered to the PACS exactly once.
    second_studies = by_uid[:4]
    accessions = _accession_file(tmp_path / "get.csv",
                                 [studies[u]["accession"] for u in second_studies])
    second = _create(node, "--remote", "get", "--accessions", str(accessions),
                     "--deliver", "destinations")
    _wait_done(node, second, timeout=300)
    assert {u: s for u, (s, _, _) in _items(node, second).items()} == {
        u: "done" for u in second_studies}

    def delivered() -> bool:
        return not _rows(node, "SELECT 1 FROM exports e JOIN instances i ON "
                                    "i.id = e.instance_id JOIN jobs j ON j.id = i.job_id "
                                    "WHERE j.batch_id = ? AND e.state != 'sent'", (second,))
    wait_for(delivered, timeout=120, what="the second batch's results at the PACS")
    attempts = _rows(node, "SELECT e.attempts FROM exports e JOIN instances i ON "
                                "i.id = e.instance_id JOIN jobs j ON j.id = i.job_id "
                                "WHERE j.batch_id = ?", (second,))
    assert attempts and {a for a, in attempts} == {1}
    for uid in second_studies:
        srs, _ = result_uids(pacs, uid)
        assert len(srs) == 1, (uid, srs)

    # 3. An accession list over DICOMweb (QIDO-RS + WADO-RS).
    third_studies = by_uid[4:8]
    web_list = _accession_file(tmp_path / "web.txt",
                               [studies[u]["accession"] for u in third_studies])
    web_list.write_text("\n".join(studies[u]["accession"] for u in third_studies) + "\n")
    third = _create(node, "--remote", "web", "--accessions", str(web_list))
    _wait_done(node, third, timeout=300)
    assert {u: s for u, (s, _, _) in _items(node, third).items()} == {
        u: "done" for u in third_studies}
    assert _studies_with_results(pacs) <= {live_uid, *second_studies}  # --deliver none

    # --skip-done: the same model again skips every study, without retrieving it...
    again = _create(node, "--remote", "move", "--accessions", str(web_list), "--skip-done")
    _wait_done(node, again, timeout=120)
    skipped = _items(node, again)
    assert {s for s, _, _ in skipped.values()} == {"skipped"}
    assert all("already processed by" in (r or "") for _, r, _ in skipped.values())
    # ... another model version re-processes them (taken from the node's own index).
    other = _other_version(tmp_path, tiny)
    local = _create(node, "--local", "--accessions", str(web_list), "--skip-done",
                    "--model", str(other))
    _wait_done(node, local, timeout=300)
    assert {s for s, _, _ in _items(node, local).values()} == {"done"}
    versions = _rows(node, "SELECT DISTINCT model_version FROM jobs WHERE batch_id = ?",
                          (local,))
    assert len(versions) == 1 and str(versions[0][0]).endswith("-b")
    shown = _cli(node, "show", str(local), "--json")
    assert json.loads(shown.stdout)["counts"]["done"] == len(third_studies)
    followed = _cli(node, "show", str(first), "--follow")  # the progress bar, to the end
    assert "batch 1 done: 40 done" in followed.stderr and "40 of 40 finished" in followed.stdout
    stop_process(getter.process)


@pytest.mark.parametrize("queue", ["embedded", "celery"])
def test_a_batch_survives_kill_9_of_the_node(tmp_path: Path, tiny: Path, queue: str,
                                              request: pytest.FixtureRequest) -> None:
    """Kill -9 mid-batch: of `pacs-node serve` with its embedded jobs, or of `serve` and its
    `pacs-node worker` together (PostgreSQL index, Redis broker)."""
    studies = _studies(tmp_path / "synth", 8, seed=16)
    pacs = start_orthanc(tmp_path / "orthanc")
    _upload(pacs, studies)
    services: dict[str, Any] = {}
    if queue == "celery":
        services = {"database_url": request.getfixturevalue("postgres_url_factory")(),
                    "broker_url": request.getfixturevalue("redis_url_factory")()}
    node = _node(tmp_path, tiny, [{"name": "move", "ae_title": pacs.aet, "host": "127.0.0.1",
                             "port": pacs.dicom_port}],
                 destinations=[{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1",
                                "port": pacs.dicom_port}], **services)
    with_worker = queue == "celery"
    node.start(with_worker=with_worker)
    pacs.put_modality("node", "PACSNODE", node.port)
    batch = _create(node, "--remote", "move", "--from", "19000101", "--deliver",
                    "destinations")
    wait_for(lambda: sum(1 for s, _, _ in _items(node, batch).values() if s == "done") >= 2,
             timeout=180, what="some studies done", interval=0.3)
    node.stop(kill=True)  # SIGKILL: the node, and the worker with Celery
    before = _items(node, batch)
    assert any(s != "done" for s, _, _ in before.values()), "the batch ended before the kill"
    node.start(with_worker=with_worker)
    _wait_done(node, batch, timeout=300)
    assert sorted(_items(node, batch)) == sorted(studies)
    assert _done_jobs(node, batch) == {uid: 1 for uid in studies}

    def delivered() -> bool:
        return not _rows(node, "SELECT 1 FROM exports WHERE state != 'sent'")
    wait_for(delivered, timeout=120, what="every result at the PACS")
    for uid in studies:
        srs, _ = result_uids(pacs, uid)
        assert len(srs) == 1, (uid, srs)  # exactly one result, none twice


def test_items_wait_retry_and_fail_while_the_archive_is_down(tmp_path: Path, tiny: Path
                                                             ) -> None:
    studies = _studies(tmp_path / "synth", 8, seed=17)
    pacs = start_orthanc(tmp_path / "orthanc", trixie=True)
    _upload(pacs, studies)
    node = _node(tmp_path, tiny, [{"name": "get", "ae_title": pacs.aet, "host": "127.0.0.1",
                             "port": pacs.dicom_port, "retrieve": "c-get"}],
                 # One job waiting at a time: retrieves follow the processing, so the
                 # archive goes down with studies still to pull.
                 batch={"max_attempts": 3, "backoff_initial_seconds": 1.0, "max_queued": 1})
    node.start()
    pacs.put_modality("node", "PACSNODE", node.port)
    accessions = _accession_file(tmp_path / "list.csv",
                                 [s["accession"] for s in studies.values()])
    batch = _create(node, "--remote", "get", "--accessions", str(accessions),
                    "--max-retrieves", "1")

    def states() -> list[str]:  # every item (those of unresolved accessions have no UID)
        return [str(s) for s, in _rows(node, "SELECT state FROM batch_items WHERE batch_id = ?",
                                       (batch,))]
    wait_for(lambda: states().count("done") >= 1 and states().count("pending") >= 2,
             timeout=180, what="a study done, two still to retrieve", interval=0.1)
    # The archive goes down with studies still to pull: paused, nothing new starts (jobs
    # are quick, a retrieve could otherwise outrun Orthanc's stop); what is under way ends.
    _cli(node, "pause", str(batch))
    wait_for(lambda: "retrieving" not in states(), timeout=60, what="retrieves under way")
    assert "pending" in states(), states()
    stop_process(pacs.process)
    _cli(node, "resume", str(batch))
    # Items wait with backoff, then fail with the reason once their attempts are spent.
    _wait_done(node, batch, timeout=180)
    items = _items(node, batch)
    failed = {u: r for u, (s, r, _) in items.items() if s == "failed"}
    done = {u for u, (s, _, _) in items.items() if s == "done"}
    assert failed and done and len(failed) + len(done) == len(items) - sum(
        1 for s, _, _ in items.values() if s == "skipped")
    assert all("failed after 3 attempts" in (r or "") and "no association" in (r or "")
               for r in failed.values()), failed
    attempts = _rows(node, "SELECT DISTINCT attempts FROM batch_items WHERE batch_id = ? "
                                "AND state = 'failed'", (batch,))
    assert attempts == [(3,)]
    jobs_before = _done_jobs(node, batch)
    shown = _cli(node, "show", str(batch), check=False)
    assert "failed" in shown.stdout

    # The archive is back: retry-failed completes those, and only those.
    restarted = start_orthanc(tmp_path / "orthanc", dicom_port=pacs.dicom_port, trixie=True)
    restarted.put_modality("node", "PACSNODE", node.port)
    _cli(node, "retry-failed", str(batch))
    _wait_done(node, batch, timeout=300)
    assert {s for s, _, _ in _items(node, batch).values()} == {"done"}
    jobs_after = _done_jobs(node, batch)
    assert set(jobs_after) == set(studies) and set(jobs_after.values()) == {1}
    for uid in done:
        assert jobs_after[uid] == jobs_before[uid]
