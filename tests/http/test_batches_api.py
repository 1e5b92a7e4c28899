"""Re-processing batches over HTTP (issue 15) as a client meets them: creating one from the
studies the node holds or from a remote's accession list, refusing one that cannot be made
(422, with why), pausing, resuming, cancelling and retrying (409 where the state does not
allow it), the export, the ``/batches`` page; who may call it (admin only) and the CSRF rule
for a signed-in browser. No runner drives the batches here: the API only records rows."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from storage import BatchRepository, ItemState, run_write
from tests.dimse.dimse_helpers import make_instance
from tests.screenshots import screenshot_taker

from .conftest import Web, create, uid

CHROMIUM = Path("/usr/bin/chromium")
REMOTE = {"name": "ARCHIVE", "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": 11112}


def _create(web: Web, body: dict[str, Any], **headers: str) -> requests.Response:
    return requests.post(f"{web.url}/api/v1/batches", json=body, headers=headers, timeout=30)


def _post(web: Web, batch_id: int | str, action: str, **headers: str) -> requests.Response:
    return requests.post(f"{web.url}/api/v1/batches/{batch_id}/{action}", headers=headers,
                         timeout=30)


@pytest.fixture
def archive_web(make_web: Callable[..., Web]) -> Web:
    """The node holding four studies (A1..A4; A2 a DX chest, the others CR), with one
    remote archive configured."""
    web = make_web(remotes=[REMOTE])
    for study, date, modality, part in ((1, "20250110", "CR", "WRIST"),
                                        (2, "20250214", "DX", "CHEST"),
                                        (3, "20250301", "CR", "WRIST"),
                                        (4, "20251231", "CR", "ANKLE")):
        web.add(make_instance(study, 1, 1, AccessionNumber=f"A{study}", StudyDate=date,
                              Modality=modality, BodyPartExamined=part))
    return web


def test_a_local_batch_holds_the_studies_the_node_has_and_shows_its_progress(
        archive_web: Web) -> None:
    web = archive_web
    created = _create(web, {"local": True, "name": "wrists again", "model": "demo",
                            "window": "20:00-06:00", "skip_done": True})
    assert created.status_code == 201, created.text
    made = created.json()
    batch = made["batch"]
    assert (batch["source"], batch["remote"], batch["name"], batch["state"]) == (
        "local", None, "wrists again", "running")
    assert batch["models"] and batch["window"] == "20:00-06:00" and batch["skip_done"]
    assert batch["created_by"] == "local"  # http.auth off
    assert (made["total"], made["finished"], made["counts"]["pending"]) == (4, 0, 4)
    assert "items" not in made

    # Narrowed by modality, date range and body part.
    dx = _create(web, {"local": True, "modalities": ["dx"]}).json()
    assert dx["total"] == 1 and dx["batch"]["criteria"] == {"modalities": ["DX"]}
    spring = _create(web, {"local": True, "date_from": "2025-02-01", "date_to": "20250331",
                           "body_part": "wrist"}).json()
    assert spring["total"] == 1
    none = _create(web, {"local": True, "accessions": ["NOT-HELD"]}).json()
    assert none["total"] == 0 and none["batch"]["state"] == "done"

    listed = requests.get(f"{web.url}/api/v1/batches", timeout=30)
    assert listed.status_code == 200
    assert [b["batch"]["id"] for b in listed.json()["batches"]] == [
        none["batch"]["id"], spring["batch"]["id"], dx["batch"]["id"], batch["id"]]
    assert listed.json()["batches"][-1]["counts"] == made["counts"]
    assert len(requests.get(f"{web.url}/api/v1/batches?limit=2",
                            timeout=30).json()["batches"]) == 2
    for bad in ("0", "501", "many"):
        assert requests.get(f"{web.url}/api/v1/batches?limit={bad}",
                            timeout=30).status_code == 422

    shown = requests.get(f"{web.url}/api/v1/batches/{batch['id']}", timeout=30).json()
    assert sorted(i["study_instance_uid"] for i in shown["items"]) == [uid(n)
                                                                      for n in (1, 2, 3, 4)]
    assert {i["state"] for i in shown["items"]} == {"pending"}


def test_a_remote_batch_takes_an_accession_list_or_asks_by_date(archive_web: Web) -> None:
    web = archive_web
    listed = _create(web, {"remote": "ARCHIVE", "accessions": ["A1", " A9 ", "A1", "", "x,y"],
                           "max_retrieves": 4}).json()
    assert (listed["batch"]["source"], listed["batch"]["remote"]) == ("remote", "ARCHIVE")
    assert listed["batch"]["max_retrieves"] == 4 and listed["total"] == 3
    items = requests.get(f"{web.url}/api/v1/batches/{listed['batch']['id']}",
                         timeout=30).json()["items"]
    assert [(i["accession_number"], i["study_instance_uid"]) for i in items] == [
        ("A1", None), ("A9", None), ("x,y", None)]
    by_date = _create(web, {"remote": "ARCHIVE", "date_from": "20250101",
                            "modalities": ["CR"]}).json()
    assert by_date["batch"]["state"] == "querying" and by_date["total"] == 0


REFUSED = [
    ({"local": True, "window": "25:00-06:00"}, "is not HH:MM-HH:MM"),
    ({"remote": "NOPE", "accessions": ["A1"]}, "no remote named 'NOPE' (remotes: ARCHIVE)"),
    ({"local": True, "deliver": "ftp://somewhere"}, "expected none, destinations or folder"),
    ({"local": True, "deliver": "folder:relative/path"}, "must be an absolute path"),
    ({"local": True, "deliver": "destinations"}, "the config has no destinations"),
    ({"local": True, "date_from": "2025-13"}, "is not a date"),
    ({"local": True, "accessions": ["A1"], "date_from": "20250101"}, "not both"),
    ({"remote": "ARCHIVE"}, "needs --accessions FILE or a date range"),
    ({"remote": "ARCHIVE", "accessions": ["A\\1"]}, "accessions: line 1"),
    ({"remote": "ARCHIVE", "accessions": ["A1", "X" * 17]}, "accessions: line 2"),
    ({"remote": "ARCHIVE", "accessions": ["", " "]}, "no accession number"),
    ({"local": True, "remote": "ARCHIVE", "accessions": ["A1"]}, "not both"),
    ({}, "name a remote, or set local: true"),
    # Over HTTP a token does not reach the node's disk: no arbitrary checkpoint or folder.
    ({"local": True, "model": "/no/such/model.pt"}, "over HTTP a batch names a route"),
    ({"local": True, "deliver": "folder:/tmp/anywhere"}, "batch.folder_roots"),
]


def test_a_batch_that_cannot_be_made_is_refused_with_why(archive_web: Web) -> None:
    for body, message in REFUSED:
        answer = _create(archive_web, body)
        assert answer.status_code == 422, (body, answer.text)
        assert message in answer.json()["detail"], body
    # Bodies outside the model: FastAPI's validation errors.
    for body in ({"local": True, "surprise": 1}, {"local": True, "max_retrieves": 33},
                 {"local": True, "modalities": ["C%"]}, {"local": True, "window": "x" * 17},
                 {"remote": "ARCHIVE", "accessions": ["A" * 65]},
                 {"remote": "ARCHIVE", "accessions": "A1"}):
        answer = _create(archive_web, body)
        assert answer.status_code == 422 and isinstance(answer.json()["detail"], list), body
    assert requests.get(f"{archive_web.url}/api/v1/batches", timeout=30).json() == {
        "batches": []}


def test_pause_resume_cancel_and_retry_follow_the_batch_state(archive_web: Web) -> None:
    web = archive_web
    batch_id = _create(web, {"local": True}).json()["batch"]["id"]

    paused = _post(web, batch_id, "pause")
    assert paused.status_code == 200 and paused.json()["batch"]["state"] == "paused"
    assert paused.json()["batch"]["reason"] == "paused by local"
    again = _post(web, batch_id, "pause")
    assert again.status_code == 409 and "only a querying or running" in again.json()["detail"]
    resumed = _post(web, batch_id, "resume")
    assert resumed.status_code == 200 and resumed.json()["batch"]["state"] == "running"
    assert _post(web, batch_id, "resume").status_code == 409

    # One study failed: retry-failed starts it again.
    def fail_one(session: Any) -> None:
        repo = BatchRepository(session)
        first = repo.items(batch_id, limit=1)[0]
        assert repo.move(first.id, ItemState.FAILED, from_states=[ItemState.PENDING],
                         reason="the archive sent nothing")

    run_write(web.sessions, fail_one)
    failed = requests.get(f"{web.url}/api/v1/batches/{batch_id}", timeout=30).json()
    assert (failed["counts"]["failed"], failed["finished"]) == (1, 1)
    assert failed["items"][0]["reason"] == "the archive sent nothing"
    retried = _post(web, batch_id, "retry-failed")
    assert retried.status_code == 200 and retried.json()["retried"] == 1
    assert retried.json()["counts"]["failed"] == 0

    cancelled = _post(web, batch_id, "cancel")
    assert cancelled.status_code == 200 and cancelled.json()["skipped"] == 4
    assert cancelled.json()["batch"]["state"] == "cancelled"
    assert cancelled.json()["counts"]["skipped"] == 4 and cancelled.json()["finished"] == 4
    for action in ("pause", "resume", "cancel", "retry-failed"):
        refused = _post(web, batch_id, action)
        assert refused.status_code == 409, action
        assert f"batch {batch_id}" in refused.json()["detail"]


def test_an_unknown_batch_is_404(archive_web: Web) -> None:
    web = archive_web
    assert requests.get(f"{web.url}/api/v1/batches/999", timeout=30).status_code == 404
    assert requests.get(f"{web.url}/api/v1/batches/999/export",
                        timeout=30).status_code == 404
    for action in ("pause", "resume", "cancel", "retry-failed"):
        answer = _post(web, 999, action)
        assert answer.status_code == 404 and answer.json()["detail"] == "no batch 999", action
    for bad in ("0", "x", str(2**63)):
        assert requests.get(f"{web.url}/api/v1/batches/{bad}", timeout=30).status_code == 422
    assert requests.post(f"{web.url}/api/v1/batches/1/restart", timeout=30).status_code == 404


def test_the_export_has_one_line_per_study(archive_web: Web) -> None:
    web = archive_web
    batch_id = _create(web, {"local": True}).json()["batch"]["id"]
    url = f"{web.url}/api/v1/batches/{batch_id}/export"
    exported = requests.get(url, timeout=30)
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("text/csv")
    assert exported.headers["content-disposition"] == (
        f'attachment; filename="batch-{batch_id}.csv"')
    assert exported.text.startswith("study_instance_uid,accession_number,item_state,")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert sorted((r["accession_number"], r["item_state"], r["result"]) for r in rows) == [
        (f"A{n}", "pending", "pending") for n in (1, 2, 3, 4)]
    assert {r["study_instance_uid"] for r in rows} == {uid(n) for n in (1, 2, 3, 4)}

    lines = requests.get(f"{url}?format=jsonl", timeout=30)
    assert lines.status_code == 200
    assert lines.headers["content-type"] == "application/x-ndjson"
    assert lines.headers["content-disposition"].endswith(f'filename="batch-{batch_id}.jsonl"')
    records = [json.loads(line) for line in lines.text.splitlines()]
    assert len(records) == 4 and records[0]["views"] == []
    assert requests.get(f"{url}?format=xml", timeout=30).status_code == 422


# -- who may call it ------------------------------------------------------------------------


def test_only_an_admin_reaches_the_batches(secured: tuple[Web, Path]) -> None:
    web, config = secured
    reader = {"Authorization": f"Bearer {create(config, 'viewer', 'reader')}"}
    writer = {"Authorization": f"Bearer {create(config, 'modality', 'writer')}"}
    admin = {"Authorization": f"Bearer {create(config, 'boss', 'admin')}"}
    made = _create(web, {"local": True}, **admin)
    assert made.status_code == 201 and made.json()["batch"]["created_by"] == "boss"
    batch_id = made.json()["batch"]["id"]
    calls = [("GET", "/api/v1/batches"), ("POST", "/api/v1/batches"),
             ("GET", f"/api/v1/batches/{batch_id}"),
             ("GET", f"/api/v1/batches/{batch_id}/export"),
             ("POST", f"/api/v1/batches/{batch_id}/pause"),
             ("POST", f"/api/v1/batches/{batch_id}/resume"),
             ("POST", f"/api/v1/batches/{batch_id}/retry-failed"),
             ("POST", f"/api/v1/batches/{batch_id}/cancel")]
    for method, path in calls:
        body = {"local": True} if path == "/api/v1/batches" else None
        assert requests.request(method, web.url + path, json=body,
                                timeout=30).status_code == 401, path
        for other in (reader, writer):
            assert requests.request(method, web.url + path, json=body, headers=other,
                                    timeout=30).status_code == 403, path
        answer = requests.request(method, web.url + path, json=body, headers=admin,
                                  timeout=30)
        assert answer.status_code in (200, 201), (path, answer.text)
    assert requests.get(f"{web.url}/api/v1/batches/{batch_id}", headers=admin,
                        timeout=30).json()["batch"]["reason"] == "cancelled by boss"


def test_a_signed_in_browser_acts_on_a_batch_only_from_the_nodes_page(
        secured: tuple[Web, Path]) -> None:
    web, config = secured
    token = create(config, "boss", "admin")
    browser = requests.Session()
    assert browser.post(f"{web.url}/api/v1/session", data={"token": token, "next": "/batches"},
                        allow_redirects=False, timeout=30).status_code == 303
    own = {"X-PACS-Node-Request": "1"}
    # A cross-site form post carries the cookie but not the header: refused, nothing made.
    assert browser.post(f"{web.url}/api/v1/batches", json={"local": True},
                        timeout=30).status_code == 401
    assert browser.post(f"{web.url}/api/v1/batches", json={"local": True}, timeout=30,
                        headers={**own, "Origin": "http://evil.example"}).status_code == 401
    assert browser.get(f"{web.url}/api/v1/batches", timeout=30).json() == {"batches": []}
    made = browser.post(f"{web.url}/api/v1/batches", json={"local": True}, headers=own,
                        timeout=30)
    assert made.status_code == 201
    batch_id = made.json()["batch"]["id"]
    assert browser.post(f"{web.url}/api/v1/batches/{batch_id}/pause",
                        timeout=30).status_code == 401
    assert browser.get(f"{web.url}/api/v1/batches/{batch_id}",
                       timeout=30).json()["batch"]["state"] == "running"
    paused = browser.post(f"{web.url}/api/v1/batches/{batch_id}/pause", timeout=30,
                          headers={**own, "Origin": web.url})
    assert paused.status_code == 200 and paused.json()["batch"]["reason"] == "paused by boss"
    # The export link of the page is a plain GET: the cookie is enough.
    assert browser.get(f"{web.url}/api/v1/batches/{batch_id}/export",
                       timeout=30).status_code == 200


def test_the_batches_page_is_served_to_an_admin_only(secured: tuple[Web, Path]) -> None:
    web, config = secured
    page = requests.get(f"{web.url}/batches", allow_redirects=False, timeout=30)
    assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Fbatches"
    reader = {"pacsnode_session": create(config, "viewer", "reader")}
    assert requests.get(f"{web.url}/batches", cookies=reader, timeout=30).status_code == 403
    admin = {"pacsnode_session": create(config, "boss", "admin")}
    page = requests.get(f"{web.url}/batches", cookies=admin, timeout=30)
    assert page.status_code == 200
    assert '<script src="/admin/static/admin.js" defer></script>' in page.text
    assert 'data-page="batches"' in page.text and '<a href="/batches">Batches</a>' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    script = requests.get(f"{web.url}/admin/static/admin.js", timeout=30).text
    assert "batchesPage" in script and "innerHTML" not in script


def test_an_admin_pauses_and_cancels_a_batch_in_the_browser(
        secured: tuple[Web, Path], tmp_path: Path) -> None:
    """The page as an admin sees it (Debian's chromium through playwright): the batch, its
    progress, pausing, resuming and cancelling it from its buttons."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: `make peers` installs Debian's chromium")
    from playwright.sync_api import expect, sync_playwright

    web, config = secured
    token = create(config, "night-admin", "admin")
    made = _create(web, {"local": True, "name": "overnight"},
                   Authorization=f"Bearer {token}").json()
    batch_id = made["batch"]["id"]
    shot = screenshot_taker(tmp_path, "batches", full_page=True)
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 700})
            page.set_default_timeout(15_000)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("response", lambda r: errors.append(f"{r.status} {r.url}")
                    if r.status >= 400 and "/favicon.ico" not in r.url else None)
            page.on("dialog", lambda dialog: dialog.accept())  # "Cancel batch N?"
            page.goto(f"{web.url}/batches")
            page.get_by_label("Access token").fill(token)
            page.get_by_role("button", name="Sign in").click()

            row = page.locator(f'tr[data-batch="{batch_id}"]')
            expect(row).to_contain_text("overnight")
            expect(row).to_contain_text("0 / 1")
            expect(row).to_contain_text("pending 1")
            expect(row.locator(".state")).to_have_text("running")
            export = row.get_by_role("link", name="Export CSV")
            expect(export).to_have_attribute(
                "href", f"/api/v1/batches/{batch_id}/export?format=csv")
            shot(page, "0-running")

            row.get_by_role("button", name="Pause").click()
            expect(row.locator(".state")).to_have_text("paused")
            expect(row).to_contain_text("paused by night-admin")
            expect(page.locator("#message")).to_have_text(f"Pause batch {batch_id}: done")
            shot(page, "1-paused")
            row.get_by_role("button", name="Resume").click()
            expect(row.locator(".state")).to_have_text("running")
            row.get_by_role("button", name="Cancel").click()
            expect(row.locator(".state")).to_have_text("cancelled")
            expect(row).to_contain_text("1 / 1")
            expect(row.get_by_role("button")).to_have_count(0)
            shot(page, "2-cancelled")
        finally:
            browser.close()
    assert errors == []
