"""The webhook (issue 14, item 2) against a real HTTP receiver on loopback: it hears of
HIGH studies only, without patient data unless asked, signed when a secret is set, and
what it missed while down it gets later (backoff, bounded attempts)."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select, update

from models.synth import generate_dataset, read_manifest
from pacs_node.config import WebhookSettings
from pacs_node.webhook import WebhookService
from storage import ExportState, Notification, run_write
from tests.workers.conftest import ingest_file, settle_job
from tests.workers.test_pipeline import tiny_checkpoint
from workers.pipeline import ModelCache, PipelineOptions, StudyPipeline
from workers.routing import Route

SECRET = "a-shared-secret-of-the-receiver"


class Receiver:
    """An HTTP server on a fixed loopback port that records what is POSTed to it; it can
    be stopped and started again on the same port (a receiver that is down a while)."""

    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/fracture"

    def start(self) -> None:
        calls = self.calls

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length", "0"))
                calls.append(({k.lower(): v for k, v in self.headers.items()},
                              self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    try:
        yield made
    finally:
        made.stop()


def _studies(root: Path) -> list[list[Path]]:
    generate_dataset(root, studies=2, seed=9, size=128)
    by_study: dict[str, list[Path]] = {}
    for entry in read_manifest(root):
        by_study.setdefault(entry["study_instance_uid"], []).append(root / entry["path"])
    return list(by_study.values())


def _process(store, sessions, files: list[Path], checkpoint: Path,  # noqa: ANN001
             points: tuple[float, float]) -> None:
    for path in files:
        ingest_file(store, sessions, path)
    job_id = settle_job(sessions)
    options = PipelineOptions(routes=(Route(model=str(checkpoint)),), notify_high=True,
                              doubt_threshold=points[0], high_threshold=points[1])
    assert StudyPipeline(store, sessions, options, ModelCache(device="cpu")).run(job_id) == "done"


def _make_due(sessions) -> None:  # noqa: ANN001
    run_write(sessions, lambda s: s.execute(update(Notification).values(
        next_attempt_at=datetime.now(UTC) - timedelta(seconds=1))))


def _rows(sessions) -> list[Notification]:  # noqa: ANN001
    with sessions() as session:
        rows = list(session.scalars(select(Notification)))
        session.expunge_all()
        return rows


def test_a_receiver_hears_of_high_studies_only_without_patient_data_and_gets_what_it_missed(
        node_storage, tmp_path: Path, receiver: Receiver) -> None:
    store, sessions = node_storage
    checkpoint = tiny_checkpoint(tmp_path / "tiny.pt", threshold=1e9)
    high, low = _studies(tmp_path / "synth")
    _process(store, sessions, high, checkpoint, (0.0, 0.0))  # every probability: HIGH
    _process(store, sessions, low, checkpoint, (1.0, 1.0))  # LOW
    (row,) = _rows(sessions)  # one call owed: the HIGH study's
    settings = WebhookSettings(url=receiver.url, secret=SECRET, backoff_initial_seconds=30,
                               max_attempts=3)
    service = WebhookService(sessions, settings, viewer_base="http://127.0.0.1:8080")

    # The receiver is down: the call waits for its backoff, saying why.
    assert service.deliver_once() == 0
    (row,) = _rows(sessions)
    assert (row.state, row.attempts) == (ExportState.PENDING, 1)
    assert "Connection refused" in (row.last_error or "")
    assert row.next_attempt_at > datetime.now(UTC) + timedelta(seconds=20)
    assert service.deliver_once() == 0 and _rows(sessions)[0].attempts == 1  # not due yet

    receiver.start()
    _make_due(sessions)
    assert service.deliver_once() == 1
    assert service.deliver_once() == 0  # sent once only
    ((headers, raw),) = receiver.calls
    body = json.loads(raw)
    first = pydicom.dcmread(high[0])
    assert body["study_instance_uid"] == first.StudyInstanceUID
    assert body["accession_number"] == first.AccessionNumber
    assert body["priority"] == "HIGH" and body["event"] == "study.priority.high"
    assert body["priority_reason"].startswith("fracture probability ")
    assert 0.0 <= body["fracture_probability"] <= 1.0
    assert body["synthetic_data_weights"] is True
    assert body["viewer_url"] == ("http://127.0.0.1:8080/viewer/viewer?StudyInstanceUIDs="
                                  + first.StudyInstanceUID)
    for value in (str(first.PatientName), str(first.PatientID), str(first.PatientBirthDate)):
        assert value and value.encode() not in raw, "patient data in the webhook body"
    expected = hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
    assert headers["x-pacs-node-signature"] == f"sha256={expected}"
    assert headers["content-type"] == "application/json"
    (row,) = _rows(sessions)
    assert (row.state, row.attempts, row.last_error) == (ExportState.SENT, 2, None)


def test_patient_data_only_when_asked_and_attempts_are_bounded(
        node_storage, tmp_path: Path, receiver: Receiver) -> None:
    store, sessions = node_storage
    checkpoint = tiny_checkpoint(tmp_path / "tiny.pt", threshold=1e9)
    high, _ = _studies(tmp_path / "synth")
    _process(store, sessions, high, checkpoint, (0.0, 0.0))
    down = WebhookService(sessions, WebhookSettings(url=receiver.url, max_attempts=2),
                          viewer_base="http://127.0.0.1:8080")
    for _ in range(2):
        _make_due(sessions)
        down.deliver_once()
    (row,) = _rows(sessions)
    assert (row.state, row.attempts) == (ExportState.FAILED, 2)  # given up, saying why
    assert row.last_error

    run_write(sessions, lambda s: s.execute(update(Notification).values(
        state=ExportState.PENDING, attempts=0)))
    _make_due(sessions)
    receiver.start()
    with_phi = WebhookService(sessions, WebhookSettings(url=receiver.url, include_phi=True),
                              viewer_base="http://127.0.0.1:8080")
    assert with_phi.deliver_once() == 1
    first = pydicom.dcmread(high[0])
    ((_, raw),) = receiver.calls
    assert json.loads(raw)["patient"] == {"name": str(first.PatientName),
                                          "id": str(first.PatientID),
                                          "birth_date": str(first.PatientBirthDate)}


def test_a_webhook_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="http"):
        WebhookSettings(url="file:///etc/passwd")
    with pytest.raises(ValueError):
        WebhookSettings(url="https://hooks.example/x", secret="short")
