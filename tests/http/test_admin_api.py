"""The admin API (issue 14, item 3) as a client meets it: the worklist in triage order with
its filters, a study's history and actions, the queues, pausing and resuming a running
embedded node; who may call it (admin only) and the CSRF rule for a signed-in browser."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import update

from pacs_node.config import Settings
from pacs_node.node import Node
from storage import (
    ExportRepository,
    Instance,
    InstanceMeta,
    JobRepository,
    StudyRepository,
    ingest,
    run_write,
)
from tests.dimse.dimse_helpers import (
    BIRTH_DATE,
    PATIENT_ID,
    PATIENT_NAME,
    free_port,
    make_instance,
    part10,
    uid,
)

from .conftest import Web, create

PARTS = {1: "WRIST", 2: "HAND", 3: "ANKLE", 4: "WRIST", 5: "HIP", 6: "KNEE"}
PRIORITY = {1: "LOW", 2: "HIGH", 3: None, 4: "HIGH", 5: "FAILED", 6: "MEDIUM"}


def _settle(web: Web, study: int) -> int:
    def work(session: Any) -> int:
        repo = StudyRepository(session)
        found = repo.get(uid(study))
        assert found is not None
        job = repo.mark_settled_and_create_job(found, stable_seconds=0.0)
        assert job is not None
        return job.id

    return run_write(web.sessions, work)


def _finish(web: Web, study: int, probability: float | None) -> int:
    job_id = _settle(web, study)

    def work(session: Any) -> None:
        jobs = JobRepository(session)
        job = jobs.claim(job_id, lease_seconds=60)
        assert job is not None
        jobs.complete(job_id, fracture_probability=probability,
                      positive=None if probability is None else probability >= 0.5,
                      aggregation="max", threshold=0.5, summary={},
                      reason=None if probability is not None else "outside the model's scope",
                      views_analysed=0 if probability is None else 1, views_total=1)

    run_write(web.sessions, work)
    return job_id


def _triage(web: Web, study: int, priority: str) -> None:
    def work(session: Any) -> None:
        repo = StudyRepository(session)
        found = repo.get(uid(study))
        assert found is not None
        repo.set_triage(found.id, priority, source="result", reason="test", actor="demo")

    run_write(web.sessions, work)


@pytest.fixture
def worklist_web(make_web: Callable[..., Web]) -> Web:
    """Six studies received in order 1..6, with the priorities of PRIORITY; study 2 analysed
    (97 %), study 4 not analysed, the others without a result."""
    web = make_web()
    for study, part in PARTS.items():
        web.add(make_instance(study, 1, 1, BodyPartExamined=part,
                              AccessionNumber=f"ACC{study}",
                              StudyDescription=f"{part} 2 VIEWS"))
    _finish(web, 2, 0.97)
    _finish(web, 4, None)
    for study, priority in PRIORITY.items():
        if priority:
            _triage(web, study, priority)
    return web


def _list(web: Web, query: str = "", **headers: str) -> requests.Response:
    return requests.get(f"{web.url}/api/v1/worklist{query}", headers=headers, timeout=30)


def _order(answer: requests.Response) -> list[str]:
    assert answer.status_code == 200, answer.text
    return [line["accession_number"] for line in answer.json()["studies"]]


def test_the_worklist_is_in_triage_order_then_waiting_time(worklist_web: Web) -> None:
    answer = _list(worklist_web)
    # HIGH (oldest first), MEDIUM, FAILED, LOW, then studies without a priority.
    assert _order(answer) == ["ACC2", "ACC4", "ACC6", "ACC5", "ACC1", "ACC3"]
    lines = {line["accession_number"]: line for line in answer.json()["studies"]}
    assert lines["ACC2"]["result"] == {"state": "positive", "probability": 0.97,
                                       "text": "97.0 % (positive)", "views": "1 of 1"}
    assert lines["ACC4"]["result"]["probability"] is None
    assert lines["ACC4"]["result"]["text"] == "not analysed (outside the model's scope)"
    assert lines["ACC1"]["result"]["text"] == "pending (receiving)"
    assert lines["ACC2"]["state"] == "done" and lines["ACC2"]["job"]["lane"] == "live"
    assert lines["ACC3"]["body_parts"] == ["ANKLE"] and lines["ACC3"]["sla"] == "ok"
    # Patient data never leaves through the admin API.
    for value in (PATIENT_NAME, PATIENT_ID, BIRTH_DATE):
        assert str(value) not in answer.text


@pytest.mark.parametrize(("query", "expected"), [
    ("?priority=HIGH", ["ACC2", "ACC4"]),
    ("?priority=LOW&priority=NONE", ["ACC1", "ACC3"]),
    ("?state=done", ["ACC2", "ACC4"]),
    ("?state=receiving", ["ACC6", "ACC5", "ACC1", "ACC3"]),
    ("?body_part=wrist", ["ACC4", "ACC1"]),
    ("?q=acc5", ["ACC5"]),
    ("?q=knee%202", ["ACC6"]),
    ("?q=%25", []),  # a literal %, not a wildcard
    ("?limit=2&offset=1", ["ACC4", "ACC6"]),
])
def test_the_worklist_filters(worklist_web: Web, query: str, expected: list[str]) -> None:
    assert _order(_list(worklist_web, query)) == expected


def test_the_worklist_filters_by_date_and_bounds_what_a_client_asks(worklist_web: Web) -> None:
    today = datetime.now(UTC).date()
    yesterday = today - timedelta(days=1)
    assert len(_order(_list(worklist_web, f"?received_from={today}&received_to={today}"))) == 6
    assert _order(_list(worklist_web, f"?received_to={yesterday}")) == []
    answer = _list(worklist_web, "?limit=2")
    assert answer.json()["total"] == 6 and len(answer.json()["studies"]) == 2
    for bad in ("?limit=501", "?limit=0", "?priority=URGENT", "?state=lost",
                "?received_from=yesterday", "?q=" + "x" * 65, "?body_part=" + "X" * 17):
        assert _list(worklist_web, bad).status_code == 422, bad


def test_a_study_page_has_its_timeline_history_and_actions(worklist_web: Web) -> None:
    web = worklist_web
    url = f"{web.url}/api/v1/studies/{uid(2)}"
    study = requests.get(url, timeout=30).json()
    assert [e["step"] for e in study["timeline"]] == ["received", "settled", "queued",
                                                      "running", "result"]
    assert study["timeline"][-1]["detail"].endswith("97.0 % (positive)")
    assert study["viewer"] == f"/viewer/viewer?StudyInstanceUIDs={uid(2)}"
    assert study["overlays"] == [] and study["report"] is None

    # Re-run: a new job, queued; the old result is superseded.
    rerun = requests.post(f"{url}/rerun", timeout=30)
    assert rerun.status_code == 202
    study = requests.get(url, timeout=30).json()
    assert study["job"]["id"] == rerun.json()["job_id"] and study["state"] == "queued"
    assert "(superseded)" in " ".join(e["detail"] for e in study["timeline"])
    # A study still receiving cannot be re-run yet.
    assert requests.post(f"{web.url}/api/v1/studies/{uid(1)}/rerun",
                         timeout=30).status_code == 400

    # Retry delivery: an export that gave up is pending again.
    job_id = study["job"]["id"]

    def failed_export(session: Any) -> None:
        session.execute(update(Instance).values(job_id=job_id))
        (export,) = ExportRepository(session).add(1, ["PACS"])
        ExportRepository(session).mark_failed(export.id, error="association rejected",
                                              next_attempt_at=None)

    run_write(web.sessions, failed_export)
    before = requests.get(url, timeout=30).json()["deliveries"]["PACS"]
    assert before["state"] == "failed" and before["last_error"] == "association rejected"
    retried = requests.post(f"{url}/retry-delivery", timeout=30)
    assert retried.status_code == 200 and retried.json() == {"retried": 1}
    assert requests.get(url, timeout=30).json()["deliveries"]["PACS"]["state"] == "pending"

    for bad, status in ((f"{web.url}/api/v1/studies/1.2.3.4.999", 404),
                        (f"{web.url}/api/v1/studies/1.2.abc", 400),
                        (f"{web.url}/api/v1/studies/{'1' * 65}", 422)):
        assert requests.get(bad, timeout=30).status_code == status, bad
        assert requests.post(f"{bad}/rerun", timeout=30).status_code == status, bad


def test_setting_a_priority_needs_a_reason_and_is_recorded(secured: tuple[Web, Path]) -> None:
    web, config = secured
    admin = {"Authorization": f"Bearer {create(config, 'head-radiographer', 'admin')}"}
    url = f"{web.url}/api/v1/studies/{uid(1)}/priority"
    for body, status in (({"priority": "HIGH"}, 422), ({"priority": "HIGH", "reason": ""}, 422),
                         ({"priority": "HIGH", "reason": "   "}, 400),
                         ({"priority": "HIGH", "reason": "x" * 501}, 422),
                         ({"priority": "URGENT", "reason": "why"}, 422)):
        assert requests.post(url, json=body, headers=admin, timeout=30).status_code == status
    answer = requests.post(url, json={"priority": "MEDIUM", "reason": "clinician called"},
                           headers=admin, timeout=30)
    assert answer.status_code == 200 and answer.json() == {"triage_priority": "MEDIUM"}
    study = requests.get(f"{web.url}/api/v1/studies/{uid(1)}", headers=admin, timeout=30).json()
    assert study["triage_priority"] == "MEDIUM"
    (event,) = study["priority_history"]
    assert (event["priority"], event["source"], event["actor"], event["reason"]) == (
        "MEDIUM", "user", "head-radiographer", "clinician called")
    assert requests.post(f"{web.url}/api/v1/studies/1.2.3.999/priority", headers=admin,
                         json={"priority": "LOW", "reason": "x"}, timeout=30).status_code == 404


def test_only_an_admin_reaches_the_api_and_the_pages(secured: tuple[Web, Path]) -> None:
    web, config = secured
    reader = {"Authorization": f"Bearer {create(config, 'viewer', 'reader')}"}
    admin = {"Authorization": f"Bearer {create(config, 'boss', 'admin')}"}
    calls = [("GET", "/api/v1/worklist"), ("GET", f"/api/v1/studies/{uid(1)}"),
             ("GET", "/api/v1/queues"), ("POST", f"/api/v1/studies/{uid(1)}/retry-delivery"),
             ("POST", "/api/v1/controls/delivery/pause"),
             ("POST", "/api/v1/controls/delivery/resume")]
    for method, path in calls:
        assert requests.request(method, web.url + path, timeout=30).status_code == 401, path
        assert requests.request(method, web.url + path, headers=reader,
                                timeout=30).status_code == 403, path
        assert requests.request(method, web.url + path, headers=admin,
                                timeout=30).status_code == 200, path
    # The pages: sign in first; a reader's browser is turned away.
    page = requests.get(f"{web.url}/queues", allow_redirects=False, timeout=30)
    assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Fqueues"
    reader_cookie = {"pacsnode_session": reader["Authorization"].split()[1]}
    assert requests.get(f"{web.url}/", cookies=reader_cookie,
                        timeout=30).status_code == 403
    admin_cookie = {"pacsnode_session": admin["Authorization"].split()[1]}
    for path in ("/", "/queues", f"/studies/{uid(1)}"):
        page = requests.get(web.url + path, cookies=admin_cookie, timeout=30)
        assert page.status_code == 200 and "/admin/static/admin.js" in page.text, path
        assert "script-src 'self'" in page.headers["content-security-policy"]
    assert requests.get(f"{web.url}/studies/1.2.abc", cookies=admin_cookie,
                        timeout=30).status_code == 400
    script = requests.get(f"{web.url}/admin/static/admin.js", timeout=30)
    assert script.status_code == 200 and "X-PACS-Node-Request" in script.text
    assert requests.get(f"{web.url}/admin/static/../app.py", timeout=30).status_code == 404


def test_a_signed_in_browser_changes_something_only_from_the_nodes_page(
        secured: tuple[Web, Path]) -> None:
    web, config = secured
    token = create(config, "boss", "admin")
    browser = requests.Session()
    signed = browser.post(f"{web.url}/api/v1/session", data={"token": token, "next": "/"},
                          allow_redirects=False, timeout=30)
    assert signed.status_code == 303
    url = f"{web.url}/api/v1/studies/{uid(1)}/priority"
    body = {"priority": "HIGH", "reason": "csrf check"}
    own = {"X-PACS-Node-Request": "1"}
    # A cross-site form post carries the cookie but cannot add the header: refused.
    assert browser.post(url, json=body, timeout=30).status_code == 401
    assert browser.post(url, json=body, headers={"X-PACS-Node-Request": "0"},
                        timeout=30).status_code == 401
    # The header from a page of another origin: refused.
    assert browser.post(url, json=body, timeout=30, headers={
        **own, "Origin": "http://evil.example"}).status_code == 401
    assert browser.post(url, json=body, timeout=30, headers={
        **own, "Origin": web.url.replace("127.0.0.1", "localhost")}).status_code == 401
    # The node's own page: accepted, and recorded under the token's name.
    assert browser.post(url, json=body, headers={**own, "Origin": web.url},
                        timeout=30).status_code == 200
    assert browser.post(url, json=body, headers=own, timeout=30).status_code == 200
    study = browser.get(f"{web.url}/api/v1/studies/{uid(1)}", timeout=30).json()
    assert [e["actor"] for e in study["priority_history"]] == ["boss", "boss"]
    # Bearer tokens keep working without the header; nothing was stored by the refusals.
    assert requests.post(url, json=body, headers={"Authorization": f"Bearer {token}"},
                         timeout=30).status_code == 200


# -- pause and resume on a running embedded node ------------------------------------------


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Node]:
    settings = Settings(
        node={"ae_title": "PACSNODE", "dimse_host": "127.0.0.1", "dimse_port": free_port(),
              "http_host": "127.0.0.1", "http_port": free_port()},
        storage={"root": str(tmp_path / "store"),
                 "database_url": f"sqlite:///{tmp_path / 'index.db'}"},
        queue={"reconcile_interval_seconds": 0.3, "enqueue_timeout_seconds": 0.5},
        study={"stable_seconds": 0.5})
    node = Node(settings)
    node.start()
    try:
        yield node
    finally:
        node.stop()


def _wait(condition: Callable[[], Any], *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_a_paused_node_starts_no_job_until_resumed(embedded: Node) -> None:
    storage = embedded.storage
    assert storage is not None
    base = f"http://127.0.0.1:{embedded.settings.node.http_port}/api/v1"
    paused = requests.post(f"{base}/controls/processing/pause",
                           json={"reason": "model upgrade"}, timeout=30)
    assert paused.status_code == 200
    ds = make_instance(7, 1, 1)
    ingest(storage.store, storage.sessions, part10(ds), InstanceMeta.from_dataset(ds))

    def job() -> Any:
        with storage.sessions() as session:
            return JobRepository(session).latest_for_study(
                StudyRepository(session).get(uid(7)).id)  # type: ignore[union-attr]

    # The job settles and is offered to the runner again and again; none claims it.
    first = _wait(job, timeout=30, what="the study to settle into a job")
    seen = {first.enqueued_at}
    _wait(lambda: seen.add(job().enqueued_at) or len(seen) >= 4, timeout=30,
          what="the reconciler to offer the job to the runner three more times")
    waiting = job()
    assert (waiting.state, waiting.attempts, waiting.started_at) == ("queued", 0, None)
    queues = requests.get(f"{base}/queues", timeout=30).json()
    assert queues["controls"]["processing"]["paused"] is True
    assert queues["controls"]["processing"]["reason"] == "model upgrade"
    assert queues["lanes"][1] == {"lane": 1, "name": "live", "queued": 1, "running": 0}

    resumed = requests.post(f"{base}/controls/processing/resume", timeout=30)
    assert resumed.status_code == 200 and resumed.json()["jobs_woken"] == 1
    done = _wait(lambda: job().state == "done" and job(), timeout=120,
                 what="the resumed node to run the job")
    assert done.attempts == 1
    queues = requests.get(f"{base}/queues", timeout=30).json()
    assert queues["controls"]["processing"]["paused"] is False
    assert queues["lanes"][1]["queued"] == 0
