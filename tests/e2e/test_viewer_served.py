"""`pacs-node serve` serves the OHIF viewer at /viewer next to its DICOMweb (issue 13,
item 7); the browser test (tests/http/test_viewer_browser.py) opens it."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from tests.http.test_viewer import require_viewer

from .conftest import make_node


def _get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return answer.status, answer.headers.get("content-type", ""), answer.read().decode()


def test_serve_answers_the_viewer_and_its_config(tmp_path: Path) -> None:
    index = (require_viewer() / "index.html").read_text()  # make install fetched it
    node = make_node(tmp_path / "node")
    node.start()
    base = f"http://127.0.0.1:{node.settings['node']['http_port']}"
    status, kind, body = _get(f"{base}/viewer/")
    assert (status, body) == (200, index) and kind.startswith("text/html")
    status, kind, body = _get(f"{base}/viewer/app-config.js")
    assert status == 200 and kind.startswith("text/javascript")
    assert '"routerBasename": "/viewer"' in body and '"/dicomweb"' in body
    status, _, body = _get(f"{base}/viewer/viewer?StudyInstanceUIDs=1.2.3")
    assert (status, body) == (200, index)
    status, kind, _ = _get(f"{base}/dicomweb/studies")
    assert status in (200, 204)
