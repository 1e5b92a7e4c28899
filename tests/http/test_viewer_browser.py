"""A radiologist opens a processed study in OHIF, served by the node (issue 13, item 7).

A synthetic two-view study goes through the real pipeline with the demo weights into the
store of a running node HTTP app (the SR and the overlays it writes); then Python's
playwright drives Debian's chromium (``/usr/bin/chromium``, no browser download): signing
in with a reader token (the node runs with ``http.auth`` on), the study list at /viewer,
the study opened in the Basic Viewer, the SR opened on its view. The test asserts on what
a reader sees: the SR's candidate regions drawn on the image with their evidence score,
and listed as measurements once tracked. Screenshots of each step go to the test's tmp
folder and to ``test-artifacts/viewer/`` at the repository root (git-ignored).

Nothing here is skipped: without chromium (``make peers``) or the viewer (``make install``)
the test fails and says which command installs it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from models.synth import generate_dataset, read_manifest
from storage import TokenRepository, TokenRole, run_write
from tests.screenshots import screenshot_taker
from tests.workers.conftest import ingest_file, settle_job
from workers.pipeline import ModelCache, PipelineOptions, StudyPipeline
from workers.routing import Route

from .conftest import Web
from .test_viewer import require_viewer

CHROMIUM = Path("/usr/bin/chromium")
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
TIMEOUT_MS = 60_000  # the first page load parses a 17 MB bundle in a software-rendered browser


@dataclass(frozen=True)
class Region:
    """One TID 1410 group of the SR, as OHIF should show it."""

    tracking_uid: str
    score: float  # percent, as written
    width: float  # of the box, in image pixels (0 for a point)
    height: float


@dataclass(frozen=True)
class Processed:
    web: Web
    study_uid: str  # with a fracture: its SR has candidate regions
    patient_id: str
    regions: list[Region]
    negative_uid: str  # without: its SR has none
    negative_impression: str
    token: str  # a reader token: the node runs with http.auth on, as in a hospital


def _regions(sr: pydicom.Dataset) -> list[Region]:
    found = [item for item in sr.ContentSequence
             if item.ConceptNameCodeSequence[0].CodeValue == "126010"]
    regions = []
    for group in found[0].ContentSequence if found else []:
        items = {item.ConceptNameCodeSequence[0].CodeValue: item for item in group.ContentSequence}
        data = [float(v) for v in items["111030"].GraphicData]  # Image Region
        xs, ys = data[0::2], data[1::2]
        score = float(items["FRX-EVIDENCE"].MeasuredValueSequence[0].NumericValue)
        regions.append(Region(items["112040"].UID, score, max(xs) - min(xs), max(ys) - min(ys)))
    return regions


def _process(web: Web, files: list[Path]) -> pydicom.Dataset:
    """Store a study as if received, run the pipeline (demo weights), return its SR."""
    metas = [ingest_file(web.store, web.sessions, path) for path in files]
    pipeline = StudyPipeline(web.store, web.sessions,
                             PipelineOptions(routes=(Route(model="demo"),)),
                             ModelCache(device="cpu"))
    assert pipeline.run(settle_job(web.sessions)) == "done"
    (sr_path,) = [path for path in (web.store.root / metas[0].study_instance_uid).rglob("*.dcm")
                  if pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID == SR_CLASS]
    return pydicom.dcmread(sr_path)


@pytest.fixture
def processed(make_web: Callable[..., Web], tmp_path: Path) -> Processed:
    """A node holding two synthetic two-view studies processed by the pipeline: one with a
    fracture (an SR with candidate regions, and overlays), one without."""
    require_viewer()
    web = make_web(http={"auth": True})
    token = run_write(web.sessions, lambda session: TokenRepository(session).create(
        "ohif", TokenRole.READER))
    root = tmp_path / "synth"
    generate_dataset(root, studies=4, seed=21, size=512)
    studies: dict[str, list[tuple[Path, int]]] = {}
    for entry in read_manifest(root):
        studies.setdefault(entry["study_instance_uid"], []).append(
            (root / entry["path"], int(entry["label"])))
    two_views = [paths for paths in studies.values() if len(paths) == 2]
    fracture = next(paths for paths in two_views if any(label for _, label in paths))
    normal = next(paths for paths in two_views if not any(label for _, label in paths))
    sr = _process(web, [path for path, _ in fracture])
    regions = _regions(sr)
    assert regions, "the demo model found no candidate region on the synthetic fracture"
    negative = _process(web, [path for path, _ in normal])
    assert not _regions(negative), "the demo model marked a region on a normal study"
    (impression,) = [item.TextValue for item in negative.ContentSequence
                     if item.ConceptNameCodeSequence[0].CodeValue == "121073"]
    return Processed(web, str(sr.StudyInstanceUID), str(sr.PatientID), regions,
                     str(negative.StudyInstanceUID), impression, token)


@pytest.fixture
def shots(tmp_path: Path) -> Callable[[object, str], None]:
    """``shot(page, step)``: a screenshot in tmp_path and test-artifacts/viewer/."""
    return screenshot_taker(tmp_path, "viewer")


def test_a_reader_sees_the_srs_findings_drawn_and_listed_in_ohif(
        processed: Processed, shots: Callable[[object, str], None]) -> None:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: `make peers` installs Debian's chromium")
    from playwright.sync_api import Page, expect, sync_playwright

    web, regions = processed.web, processed.regions
    page_errors: list[str] = []
    failed_requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        context = browser.new_context(viewport={"width": 1600, "height": 1000})
        context.set_default_timeout(TIMEOUT_MS)

        def new_page() -> Page:
            page = context.new_page()
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            page.on("response", lambda r: failed_requests.append(f"{r.status} {r.url}")
                    if r.status >= 400 and "/dicomweb/" in r.url else None)
            return page

        try:
            page = new_page()
            try:
                # Signed in with a reader token first (http.auth is on).
                page.goto(f"{web.url}/viewer")
                expect(page).to_have_url(re.compile(r"/login\?next="))
                page.get_by_label("Access token").fill(processed.token)
                shots(page, "0-sign-in")
                page.get_by_role("button", name="Sign in").click()

                # The study list, read over QIDO-RS from the node.
                row = page.get_by_text(processed.patient_id, exact=True)
                expect(row).to_be_visible()
                page.get_by_role("button", name="Confirm and hide").click()  # OHIF's notice
                shots(page, "1-study-list")

                # Opened as a user does: select the study, launch the Basic Viewer.
                row.click()
                page.get_by_role("button", name="Basic Viewer").click()
                expect(page).to_have_url(re.compile(
                    rf"/viewer/viewer\?StudyInstanceUIDs={re.escape(processed.study_uid)}"))
                page.get_by_text("Skip all").click()  # the first-visit tour
                report = page.get_by_text(re.compile("^AI fracture report"))
                expect(report).to_be_visible()
                expect(page.get_by_text(re.compile("^AI fracture heatmap"))).to_be_visible()
                shots(page, "2-study")

                # The SR opened on its view: each region drawn, labelled with its score.
                report.dblclick()
                first = regions[0]
                annotation = page.locator(f'svg g[data-annotation-uid="{first.tracking_uid}"]')
                expect(annotation).to_contain_text(
                    f"Fracture evidence score: {first.score:.2f} %")
                if first.width:
                    outline = page.locator("[data-cy=viewport-pane] svg polyline"
                                           "[stroke-dasharray]").first
                    expect(outline).to_be_visible()
                    box = outline.bounding_box()
                    assert box is not None and box["width"] > 5 and box["height"] > 5
                    # Drawn with the SR's proportions (the zoom is OHIF's to choose).
                    assert box["width"] / box["height"] == pytest.approx(
                        first.width / first.height, rel=0.1)
                shots(page, "3-sr-on-image")

                # Tracked, the regions become OHIF measurements listed in its panel.
                page.get_by_role("button", name="Yes").click()
                page.locator("[data-cy=trackedMeasurements-btn]").click()
                expect(page.get_by_text(f"Measurements ({len(regions)})")).to_be_visible()
                expect(page.get_by_text("Fracture of bone").first).to_be_visible()
                shots(page, "4-measurements-tracked")
                expect(page.get_by_text("Something went wrong")).to_have_count(0)

                # A study without candidate regions: its report opens as text (OHIF's
                # measurement viewport cannot show a report without measurements).
                page = new_page()  # the same browser session: no tour, no notice
                page.goto(f"{web.url}/viewer/viewer?StudyInstanceUIDs={processed.negative_uid}")
                page.get_by_text(re.compile("^AI fracture report")).dblclick()
                expect(page.get_by_text(f"Impression: {processed.negative_impression}")
                       ).to_be_visible()
                expect(page.get_by_text(re.compile("^Comment: Views analysed: 2 of 2"))
                       ).to_be_visible()
                shots(page, "5-normal-study-report")
                expect(page.get_by_text("Something went wrong")).to_have_count(0)
            except BaseException:
                shots(page, "failure")
                raise
        finally:
            browser.close()
    assert not page_errors, page_errors
    assert not failed_requests, failed_requests
