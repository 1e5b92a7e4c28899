"""An admin works the worklist in a real browser (issue 14, item 3, acceptance).

The node runs as ``pacs-node serve`` with ``http.auth`` on, the demo model and Orthanc as
its destination (IOCM withdrawal on). Three synthetic studies arrive by C-STORE: a normal
one first, then one with a fracture, then a normal one its RIS ordered STAT (Requested
Procedure Priority in the Request Attributes Sequence). Python's playwright drives Debian's
chromium: the admin signs in at /login with an admin token and sees the worklist in triage
order (the fracture and the STAT study HIGH, the oldest first; the normal study LOW last),
opens a study (timeline, overlay thumbnails through WADO-RS rendered, the SR as a table),
sets a priority with a reason (recorded, with the token's name) and re-runs a study (its
new SR at Orthanc names the old one, which a rejection note withdraws). Screenshots go to
the test's tmp folder and to ``test-artifacts/admin/``.
"""

from __future__ import annotations

import io
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests

from models.synth import generate_dataset, read_manifest
from tests.screenshots import screenshot_taker

from .conftest import (
    PACS_NODE,
    NodeProcess,
    Orthanc,
    make_node,
    order_stat,
    result_uids,
    storescu,
    wait_for,
)

CHROMIUM = Path("/usr/bin/chromium")
KOS_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"
TIMEOUT_MS = 30_000
ADMIN = "night-admin"


def _studies(root: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """(fracture, normal, STAT) studies of the synthetic set whose demo-model results are
    known (seed 21: a three-view fracture at p~1.0, two normal studies at p~0.1-0.2)."""
    generate_dataset(root, studies=6, seed=21, size=512)
    by_study: dict[str, list[tuple[Path, int]]] = {}
    for entry in read_manifest(root):
        by_study.setdefault(entry["study_instance_uid"], []).append(
            (root / entry["path"], int(entry["label"])))
    studies = list(by_study.values())
    fracture, stat, normal = studies[1], studies[4], studies[5]
    assert all(label for _, label in fracture)
    assert not any(label for _, label in stat + normal)
    order_stat(path for path, _ in stat)
    return ([p for p, _ in fracture], [p for p, _ in normal], [p for p, _ in stat])


def _uid(paths: list[Path]) -> str:
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)


@pytest.fixture
def shots(tmp_path: Path) -> Callable[[Any, str], None]:
    """``shot(page, step)``: a screenshot in tmp_path and test-artifacts/admin/."""
    return screenshot_taker(tmp_path, "admin", full_page=True)


class Api:
    """The node's admin API with a bearer token (what the test checks besides the page)."""

    def __init__(self, node: NodeProcess, token: str) -> None:
        self.base = f"http://127.0.0.1:{node.settings['node']['http_port']}"
        self.headers = {"Authorization": f"Bearer {token}"}

    def get(self, path: str) -> Any:
        answer = requests.get(self.base + "/api/v1" + path, headers=self.headers, timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def settled(self, study_uid: str, job_after: int = 0) -> dict[str, Any] | None:
        """The study once its current job (newer than ``job_after``) is done and every
        result was sent, else None."""
        study = self.get(f"/studies/{study_uid}")
        job, deliveries = study["job"], study["deliveries"]
        if (job is None or job["id"] <= job_after or job["state"] != "done"
                or deliveries.get("pacs", {}).get("state") != "sent"):
            return None
        return study


def _thumbnails_shown(page: Any, count: int) -> None:
    """The page shows ``count`` overlay thumbnails, each decoded from the node's WADO-RS
    rendered JPEG."""
    from playwright.sync_api import expect

    thumbs = page.locator("#overlays img")
    expect(thumbs).to_have_count(count)
    for i in range(count):
        assert thumbs.nth(i).get_attribute("src").endswith("/rendered")
        page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                               arg=thumbs.nth(i).element_handle())


def _token(node: NodeProcess) -> str:
    out = subprocess.run([PACS_NODE, "token", "create", "--role", "admin", "--name", ADMIN,
                          "--config", str(node.config)], capture_output=True, text=True,
                         timeout=120, cwd=node.workdir)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_an_admin_triages_reruns_and_reprioritises_in_the_browser(
        orthanc: Orthanc, tmp_path: Path, shots: Callable[[Any, str], None]) -> None:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: `make peers` installs Debian's chromium")
    from playwright.sync_api import expect, sync_playwright

    fracture, normal, stat = _studies(tmp_path / "synth")
    fracture_uid, normal_uid, stat_uid = _uid(fracture), _uid(normal), _uid(stat)
    node = make_node(tmp_path / "node", extra={"http": {"auth": True}}, destinations=[
        {"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1",
         "port": orthanc.dicom_port, "withdraw": "iocm"}])
    node.start()
    try:
        api = Api(node, _token(node))
        for files in (normal, fracture, stat):  # arrival order: the normal one waits longest
            assert storescu(node.port, files).returncode == 0
            wait_for(lambda f=files: api.get(f"/studies/{_uid(f)}"), timeout=60,
                     what="the study to be indexed")
        for study_uid in (normal_uid, fracture_uid, stat_uid):
            wait_for(lambda s=study_uid: api.settled(s), timeout=300,
                     what="each study analysed and its result sent to Orthanc")
        (old_sr,), _ = result_uids(orthanc, fracture_uid)

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
            page_errors: list[str] = []
            try:
                context = browser.new_context(viewport={"width": 1400, "height": 900})
                context.set_default_timeout(TIMEOUT_MS)
                page = context.new_page()
                page.on("pageerror", lambda error: page_errors.append(str(error)))
                try:
                    # Signed in at /login with an admin token (http.auth is on).
                    page.goto(api.base + "/")
                    expect(page).to_have_url(re.compile(r"/login\?next=%2F$"))
                    page.get_by_label("Access token").fill(api.headers["Authorization"][7:])
                    page.get_by_role("button", name="Sign in").click()

                    # The worklist: HIGH first (the fracture, then the STAT study that
                    # came later), the normal study LOW last although it waited longest.
                    rows = page.locator("#worklist tbody tr")
                    expect(rows).to_have_count(3)
                    assert [rows.nth(i).get_attribute("data-study") for i in range(3)] == [
                        fracture_uid, stat_uid, normal_uid]
                    expect(rows.nth(0).locator(".badge")).to_have_text("HIGH")
                    expect(rows.nth(1).locator(".badge")).to_have_text("HIGH")
                    expect(rows.nth(2).locator(".badge")).to_have_text("LOW")
                    expect(rows.nth(0)).to_contain_text("(positive)")
                    expect(rows.nth(2)).to_contain_text("(negative)")
                    expect(rows.nth(0)).to_contain_text("pacs: sent")
                    shots(page, "1-worklist")

                    # The fracture's page: timeline, overlay thumbnails, the SR as a table.
                    rows.nth(0).get_by_role("link").click()
                    expect(page).to_have_url(re.compile(f"/studies/{re.escape(fracture_uid)}$"))
                    timeline = page.locator("#timeline")
                    for step in ("received", "settled", "queued", "running", "result",
                                 "delivered"):
                        expect(timeline.locator(f"li.t-{step}").first).to_be_visible()
                    expect(timeline).to_contain_text("to pacs: sent")
                    _thumbnails_shown(page, len(fracture))
                    expect(page.locator(".facts")).to_contain_text("100.0 % (positive)")
                    expect(page.locator("#report")).to_contain_text("Views analysed")
                    expect(page.get_by_role("link", name="Open in OHIF")).to_have_attribute(
                        "href", f"/viewer/viewer?StudyInstanceUIDs={fracture_uid}")
                    shots(page, "2-study")

                    # Re-run: a new job whose SR supersedes the old one at Orthanc.
                    first_job = api.get(f"/studies/{fracture_uid}")["job"]["id"]
                    page.get_by_role("button", name="Re-run").click()
                    expect(page.locator("#message")).to_contain_text("Re-run:")
                    wait_for(lambda: api.settled(fracture_uid, job_after=first_job),
                             timeout=300, what="the re-run to finish and be sent")
                    wait_for(lambda: len(result_uids(orthanc, fracture_uid)[0]) == 2,
                             timeout=60, what="the new SR at Orthanc")
                    srs, _ = result_uids(orthanc, fracture_uid)
                    (new_sr,) = set(srs) - {old_sr}
                    held = {str(i["tags"]["SOPInstanceUID"]): i
                            for i in orthanc.instances_of(fracture_uid)}
                    sr = pydicom.dcmread(io.BytesIO(orthanc.file(held[new_sr]["id"])))
                    assert [ref.ReferencedSOPInstanceUID
                            for st in sr.PredecessorDocumentsSequence
                            for se in st.ReferencedSeriesSequence
                            for ref in se.ReferencedSOPSequence] == [old_sr]
                    wait_for(lambda: any(i["tags"].get("SOPClassUID") == KOS_CLASS
                                         for i in orthanc.instances_of(fracture_uid)),
                             timeout=60, what="the rejection note withdrawing the old SR")
                    page.reload()
                    expect(page.locator("#timeline")).to_contain_text("(superseded)")
                    _thumbnails_shown(page, len(fracture))
                    shots(page, "3-study-rerun")

                    # Set priority, with a reason: recorded with the admin's token name.
                    page.goto(f"{api.base}/studies/{normal_uid}")
                    page.get_by_label("Priority").select_option("MEDIUM")
                    page.get_by_label("Reason").fill("clinician called: read it first")
                    page.get_by_role("button", name="Set priority").click()
                    history = page.locator("#priority-history tbody tr").last
                    expect(history).to_contain_text("clinician called: read it first")
                    expect(history).to_contain_text(ADMIN)
                    expect(history).to_contain_text("user")
                    expect(page.locator("h1 .badge")).to_have_text("MEDIUM")
                    shots(page, "4-priority-set")
                    (event,) = [e for e in api.get(f"/studies/{normal_uid}")[
                        "priority_history"] if e["source"] == "user"]
                    assert (event["priority"], event["actor"], event["reason"]) == (
                        "MEDIUM", ADMIN, "clinician called: read it first")

                    # The worklist now has the normal study above the LOW ones.
                    page.goto(api.base + "/?priority=MEDIUM")
                    expect(page.locator("#worklist tbody tr")).to_have_count(1)
                    page.goto(api.base + "/queues")
                    expect(page.locator("#controls")).to_contain_text("processing: running")
                    expect(page.locator("#destinations")).to_contain_text("pacs")
                    shots(page, "5-queues")
                except BaseException:
                    shots(page, "failure")
                    raise
            finally:
                browser.close()
        assert not page_errors, page_errors
    finally:
        node.stop()
