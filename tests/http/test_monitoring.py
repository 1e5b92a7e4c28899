"""``/healthz``, ``/readyz`` and ``/metrics`` over HTTP (issue 14 item 4), and STOW-RS below
the free-space watermark (item 5)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import requests

from tests.dimse.dimse_helpers import make_instance, part10

from .conftest import Web, create
from .test_stow import multipart, post


def _value(text: str, series: str) -> float:
    lines = [line for line in text.splitlines() if line.startswith(series + " ")]
    assert lines, f"{series} not in /metrics"
    return float(lines[0].rsplit(" ", 1)[1])


def test_probes_are_public_and_metrics_need_an_admin_token(secured: tuple[Web, Path]) -> None:
    web, config = secured
    assert requests.get(f"{web.url}/healthz", timeout=30).json() == {"status": "alive"}
    ready = requests.get(f"{web.url}/readyz", timeout=120)
    assert ready.status_code == 200, ready.text
    assert set(ready.json()["checks"]) == {"index", "broker", "storage", "models"}
    assert requests.get(f"{web.url}/metrics", timeout=30).status_code == 401
    reader = create(config, "grafana-reader", "reader")
    assert requests.get(f"{web.url}/metrics", timeout=30,
                        headers={"Authorization": f"Bearer {reader}"}).status_code == 403
    admin = create(config, "prometheus", "admin")
    scraped = requests.get(f"{web.url}/metrics", timeout=30,
                           headers={"Authorization": f"Bearer {admin}"})
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    assert _value(scraped.text, "pacsnode_store_instances") == 1
    assert _value(scraped.text, "pacsnode_index_up") == 1


def test_stow_below_the_watermark_is_503_and_writes_nothing(
        make_web: Callable[..., Web]) -> None:
    web = make_web(storage={"min_free_bytes": 2 ** 62})  # more than any disk has
    response = post(web, multipart([part10(make_instance(5, 1, 1))]))
    assert response.status_code == 503
    assert response.headers["Retry-After"].isdigit()
    assert "storage.min_free_bytes" in response.json()["detail"]
    assert not [p for p in web.store.root.rglob("*") if p.is_file()]
    ready = requests.get(f"{web.url}/readyz", timeout=120)
    assert ready.status_code == 503
    storage = ready.json()["checks"]["storage"]
    assert not storage["ok"] and "below storage.min_free_bytes" in storage["detail"]
    assert ready.json()["checks"]["index"]["ok"]


def test_stow_requests_are_timed_by_service(make_web: Callable[..., Web]) -> None:
    web = make_web()

    def stow_count() -> float:
        text = requests.get(f"{web.url}/metrics", timeout=30).text
        lines = [line for line in text.splitlines()
                 if line.startswith("pacsnode_http_request_duration_seconds_count{")
                 and 'service="stow"' in line]
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines)

    before = stow_count()  # the instruments are per process: other tests count too
    assert post(web, multipart([part10(make_instance(6, 1, 1))])).status_code == 200
    assert post(web, multipart([part10(make_instance(6, 1, 2))])).status_code == 200
    assert stow_count() == before + 2
