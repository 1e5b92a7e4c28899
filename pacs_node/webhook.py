"""The webhook: one HTTP POST per study a result triages HIGH (issue 14, item 2).

The pipeline queues a notification row in the same transaction as the result that made
the study HIGH (a retried job owes one call); a background thread here POSTs each due one
as JSON and records the outcome, retrying with capped exponential backoff like deliveries
while the receiver is down, so a restart loses nothing. The body names the study (Study
Instance UID, accession), its priority and why, the probability where the study was
analysed, the models and whether their weights were trained on synthetic data, and a
link to the study in the node's viewer; patient name, ID and birth date only with
``webhook.include_phi`` (read from the index at send time, never stored in the row).
With ``webhook.secret`` each body is signed: ``X-PACS-Node-Signature: sha256=<hex HMAC>``.
Redirects are not followed (a redirect is a failed attempt, naming where it pointed).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from sqlalchemy.orm import Session, sessionmaker

from storage import NotificationRepository, Study, run_write

from .config import WebhookSettings
from .delivery import backoff_seconds

__all__ = ["WebhookService"]

log = logging.getLogger(__name__)

_USER_AGENT = "pacs-node webhook"


@dataclass(frozen=True)
class _Call:
    notification_id: int
    attempts: int
    body: bytes


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None  # the 3xx is then raised as an HTTPError: a failed attempt


class WebhookService:
    """Sends due notifications; one thread polls.

    Args:
        viewer_base: scheme://host:port the viewer link in each body starts with.
    """

    def __init__(self, sessions: sessionmaker[Session], settings: WebhookSettings, *,
                 viewer_base: str, poll_seconds: float = 1.0) -> None:
        if not settings.url:
            raise ValueError("webhook.url is not set")
        self.sessions = sessions
        self.settings = settings
        self.url = settings.url
        self.viewer_base = viewer_base.rstrip("/")
        self.poll_seconds = poll_seconds
        self._opener = urllib.request.build_opener(_NoRedirect())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pacs-node-webhook",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def deliver_once(self) -> int:
        """POST every due notification; return how many the receiver took."""
        calls = run_write(self.sessions, self._due)
        outcomes = {call.notification_id: self._post(call.body) for call in calls}
        if calls:
            self._record(calls, outcomes)
        return sum(1 for error in outcomes.values() if error is None)

    def _due(self, session: Session) -> list[_Call]:
        calls = []
        for row in NotificationRepository(session).due(datetime.now(UTC)):
            body: dict[str, Any] = dict(row.payload)
            uid = str(body.get("study_instance_uid", ""))
            body["viewer_url"] = (f"{self.viewer_base}/viewer/viewer?StudyInstanceUIDs="
                                  f"{quote(uid, safe='')}")
            if self.settings.include_phi:
                study = session.get(Study, row.study_id)
                if study is not None:
                    body["patient"] = {"name": study.patient.patient_name,
                                       "id": study.patient.patient_id,
                                       "birth_date": study.patient.birth_date}
            calls.append(_Call(row.id, row.attempts,
                               json.dumps(body, sort_keys=True).encode()))
        return calls

    def _post(self, body: bytes) -> str | None:
        """POST one body; None when the receiver answered 2xx, else the error in words
        (never the body: it may hold patient data)."""
        headers = {"Content-Type": "application/json", "User-Agent": _USER_AGENT}
        if self.settings.secret:
            digest = hmac.new(self.settings.secret.encode(), body, hashlib.sha256).hexdigest()
            headers["X-PACS-Node-Signature"] = f"sha256={digest}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.settings.timeout_seconds) as answer:
                answer.read(4096)
                return None
        except urllib.error.HTTPError as exc:
            where = exc.headers.get("Location", "") if 300 <= exc.code < 400 else ""
            return f"HTTP {exc.code}" + (f" (redirect to {where[:200]!r} not followed)"
                                         if where else "")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            return f"{type(exc).__name__}: {str(reason)[:200]}"

    def _record(self, calls: list[_Call], outcomes: dict[int, str | None]) -> None:
        now = datetime.now(UTC)

        def work(session: Session) -> None:
            repo = NotificationRepository(session)
            for call in calls:
                error = outcomes[call.notification_id]
                if error is None:
                    repo.mark_sent(call.notification_id, now)
                    continue
                attempts = call.attempts + 1
                retry = (None if attempts >= self.settings.max_attempts else
                         now + timedelta(seconds=backoff_seconds(attempts, self.settings)))
                repo.mark_failed(call.notification_id, error=error, next_attempt_at=retry)

        run_write(self.sessions, work)
        failed = [e for e in outcomes.values() if e is not None]
        if failed:
            log.warning("webhook: %d sent, %d failed (%s)", len(outcomes) - len(failed),
                        len(failed), failed[0])
        else:
            log.info("webhook: %d sent", len(outcomes))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.deliver_once()
            except Exception:  # noqa: BLE001 - keep going; the next poll retries
                log.exception("webhook round failed")
            self._stop.wait(self.poll_seconds)
