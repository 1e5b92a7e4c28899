"""The OHIF viewer served at /viewer, and what it asks of the node's DICOMweb.

The served files are the ones ``make install`` fetched into .cache/ohif/dist; the browser
test (test_viewer_browser.py) opens them in chromium. Here: the app config the node writes,
the single-page-app fallback, caching, a missing install, and the colour thumbnails OHIF
asks for (``rendered`` of our RGB overlays)."""

from __future__ import annotations

import json
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
import pytest
import requests
from pydicom import Dataset
from pydicom.data import get_testdata_file

from pacs_node.http.viewer import default_viewer_dir
from storage import InstanceMeta, ingest
from tests.dimse.dimse_helpers import make_instance

from .conftest import SR_STORAGE, Web, uid


def require_viewer() -> Path:
    """The installed viewer; the test fails (never skips) without it."""
    folder = default_viewer_dir()
    if not (folder / "index.html").is_file():
        pytest.fail(f"the OHIF viewer is not installed in {folder}: run `make install`")
    return folder


def _config(js: str) -> dict[str, Any]:
    """The settings object inside the served app-config.js."""
    start = js.index("var config = ") + len("var config = ")
    end = js.index(";\n  var source")
    return json.loads(js[start:end])


def test_the_viewer_is_served_with_a_config_pointing_at_the_nodes_dicomweb(
        make_web: Callable[..., Web]) -> None:
    folder = require_viewer()
    web = make_web()
    page = requests.get(f"{web.url}/viewer", timeout=30)
    assert page.status_code == 200 and page.url == f"{web.url}/viewer/"
    assert page.headers["content-type"].startswith("text/html")
    assert page.text == (folder / "index.html").read_text()
    assert 'window.PUBLIC_URL="/viewer/"' in page.text
    assert 'src="/viewer/app-config.js"' in page.text

    js = requests.get(f"{web.url}/viewer/app-config.js", timeout=30)
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert js.headers["cache-control"] == "no-cache"
    # The roots are the page's own origin + /dicomweb, whatever name the user reached us by.
    assert 'var root = window.location.origin + "/dicomweb";' in js.text
    for key in ("qidoRoot", "wadoRoot", "wadoUriRoot"):
        assert f"source.{key} = root;" in js.text
    config = _config(js.text)
    assert config["routerBasename"] == "/viewer"
    assert config["showStudyList"] is True
    (source,) = config["dataSources"]
    assert config["defaultDataSourceName"] == source["sourceName"]
    assert source["namespace"] == "@ohif/extension-default.dataSourcesModule.dicomweb"
    settings = source["configuration"]
    assert settings["imageRendering"] == "wadors"
    assert settings["thumbnailRendering"] == "rendered"  # our WADO-RS rendered endpoint
    assert settings["qidoSupportsIncludeField"] is True
    assert "cloudfront" not in js.text  # nothing of OHIF's demo server

    # The bundles index.html names are served from the folder, for good.
    bundle = next(folder.glob("app.bundle.*.js"))
    got = requests.get(f"{web.url}/viewer/{bundle.name}", timeout=60)
    assert got.status_code == 200 and len(got.content) == bundle.stat().st_size
    assert "immutable" in got.headers["cache-control"]
    assert got.headers["content-type"].startswith(("text/javascript", "application/javascript"))


def test_app_routes_answer_the_page_and_missing_files_a_404(
        make_web: Callable[..., Web]) -> None:
    folder = require_viewer()
    web = make_web()
    index = (folder / "index.html").read_text()
    for route in ("/viewer/", "/viewer/viewer?StudyInstanceUIDs=1.2.3",
                  "/viewer/viewer/pacs-node", "/viewer/segmentation?StudyInstanceUIDs=1.2.3",
                  "/viewer/viewer/1.2.840.113619.2.55"):
        answer = requests.get(web.url + route, timeout=30)
        assert answer.status_code == 200 and answer.text == index, route
        assert answer.headers["cache-control"] == "no-cache"
    for missing in ("/viewer/no-such.bundle.js", "/viewer/assets/none.png",
                    "/viewer/missing.wasm"):
        assert requests.get(web.url + missing, timeout=30).status_code == 404, missing
    # Nothing outside the folder, however the path is spelled.
    for sneaky in ("/viewer/%2e%2e/%2e%2e/pyproject.toml", "/viewer/..%2f..%2fMakefile",
                   "/viewer/%2fetc%2fpasswd"):
        answer = requests.get(web.url + sneaky, timeout=30)
        assert answer.status_code in (200, 404), sneaky
        assert "[project]" not in answer.text and "root:" not in answer.text
        assert "OHIF_VERSION" not in answer.text


def test_without_the_viewer_the_node_serves_dicomweb_and_says_how_to_get_it(
        make_web: Callable[..., Web], tmp_path: Path) -> None:
    web = make_web(http={"viewer_dir": str(tmp_path / "no-viewer")})
    for path in ("/viewer", "/viewer/", "/viewer/app-config.js", "/viewer/viewer"):
        answer = requests.get(web.url + path, timeout=30)
        assert answer.status_code == 404, path
        assert "make install" in answer.text and "http.viewer_dir" in answer.text
    assert requests.get(f"{web.url}/dicomweb/studies", timeout=30).status_code in (200, 204)


def _add(web: Web, name: str) -> Dataset:
    raw = Path(get_testdata_file(name)).read_bytes()
    ingest(web.store, web.sessions, raw, InstanceMeta.read(raw))
    return pydicom.dcmread(BytesIO(raw))


def _rendered_rgb(web: Web, ds: Dataset) -> np.ndarray:
    answer = requests.get(
        f"{web.url}/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/"
        f"instances/{ds.SOPInstanceUID}/rendered", headers={"Accept": "image/png"}, timeout=30)
    assert answer.status_code == 200, answer.text
    bgr = cv2.imdecode(np.frombuffer(answer.content, np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(int)


def test_colour_thumbnails_show_the_stored_colours(make_web: Callable[..., Web]) -> None:
    """OHIF's thumbnails of our overlays (RGB, lossless JPEG 2000 with YBR_RCT) were a 500,
    and a JPEG YBR_FULL image came out in wrong colours: pydicom already gives RGB."""
    web = make_web()
    j2k = _add(web, "US1_J2KR.dcm")
    assert j2k.PhotometricInterpretation == "YBR_RCT"
    np.testing.assert_array_equal(_rendered_rgb(web, j2k),
                                  pydicom.dcmread(get_testdata_file("US1_UNCR.dcm")).pixel_array)
    jpeg = _add(web, "SC_rgb_jpeg_dcmtk.dcm")
    assert jpeg.PhotometricInterpretation == "YBR_FULL"
    reference = pydicom.dcmread(get_testdata_file("SC_rgb.dcm")).pixel_array.astype(int)
    assert np.abs(_rendered_rgb(web, jpeg) - reference).mean() < 3  # JPEG loss only


def test_a_series_renders_as_its_first_image(web: Web) -> None:
    """OHIF's study list asks /series/{se}/rendered for a series thumbnail."""
    base = f"{web.url}/dicomweb/studies/{uid(1)}/series/{uid(1, 1)}"
    jpeg = {"Accept": "image/jpeg"}
    size = {"viewport": "256,256"}
    thumb = requests.get(f"{base}/rendered", params=size, headers=jpeg, timeout=30)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    first, second = (requests.get(f"{base}/instances/{uid(1, 1, n)}/rendered", params=size,
                                  headers=jpeg, timeout=30).content for n in (1, 2))
    assert thumb.content == first != second
    report = make_instance(5, 9, 1, Modality="SR", SOPClassUID=SR_STORAGE)
    for keyword in ("PixelData", "Rows", "Columns", "SamplesPerPixel", "BitsAllocated",
                    "BitsStored", "HighBit", "PixelRepresentation",
                    "PhotometricInterpretation"):
        delattr(report, keyword)
    web.add(report)
    no_image = f"{web.url}/dicomweb/studies/{uid(5)}/series/{uid(5, 9)}/rendered"
    assert requests.get(no_image, headers=jpeg, timeout=30).status_code == 404
    unknown = f"{web.url}/dicomweb/studies/{uid(1)}/series/{uid(1, 8)}/rendered"
    assert requests.get(unknown, headers=jpeg, timeout=30).status_code == 404


def test_with_auth_on_the_viewer_files_stay_public_and_dicomweb_asks_for_a_token(
        make_web: Callable[..., Web]) -> None:
    require_viewer()
    web = make_web(http={"auth": True})
    bundle = next(require_viewer().glob("app.bundle.*.js")).name
    for path in ("/viewer/app-config.js", f"/viewer/{bundle}"):
        assert requests.get(web.url + path, timeout=30).status_code == 200, path
    for path in ("/viewer/", "/viewer/viewer?StudyInstanceUIDs=1.2"):  # the page: sign in
        answer = requests.get(web.url + path, timeout=30, allow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login?")
    answer = requests.get(f"{web.url}/dicomweb/studies", timeout=30)
    assert answer.status_code == 401 and "Bearer" in answer.headers["www-authenticate"]
