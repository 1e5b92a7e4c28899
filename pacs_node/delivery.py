"""Delivery of results to the configured destinations by C-STORE (SCU).

Export rows in the index are the queue: a background thread takes due exports, sends each
destination's batch over one association, and records success or the next attempt time.
Backoff is exponential and capped, attempts are bounded, and at most ``max_concurrent``
associations are open at once, so a destination that is down causes no retry storm. State
lives in the index, so a restart while a destination is down loses nothing.

Each object is offered in its stored transfer syntax and, in separate presentation
contexts, in Explicit and Implicit VR Little Endian: a destination that does not accept
the stored (compressed) syntax gets the object decompressed.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import pydicom
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from sqlalchemy.orm import Session, sessionmaker

from storage import ExportRepository, FileStore, Instance, TriagePriority, run_write
from storage.repositories import Control, ControlRepository, DeliveredJob, StatsRepository
from workers.metrics import instruments

from .config import DeliverySettings, Destination
from .tls import destination_contexts

__all__ = ["DeliveryService", "backoff_seconds", "priority_label"]

log = logging.getLogger(__name__)

# Success, and the storage warnings (coercion, elements discarded, data set mismatch) after
# which the destination holds the object.
_ACCEPTED = frozenset({0x0000, 0xB000, 0xB006, 0xB007})
# C-STORE Priority (PS3.7 9.1.1.1.10): the results of a study triaged HIGH go as HIGH, and
# before the others of the round.
_MEDIUM, _HIGH = 0x0000, 0x0001
# Offered besides the stored syntax; every storage SCP accepts Implicit VR Little Endian.
_FALLBACK_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


#: Triage priorities a metric label may carry (storage.triage); anything else is "other".
_PRIORITIES = frozenset({"HIGH", "MEDIUM", "LOW", "NOT_ANALYSED", "FAILED"})


def priority_label(priority: str | None) -> str:
    """A study's triage priority as a bounded label value: ``none`` before one is set."""
    if priority is None:
        return "none"
    return priority if priority in _PRIORITIES else "other"


class _Backoff(Protocol):
    backoff_initial_seconds: float
    backoff_max_seconds: float


def backoff_seconds(attempts: int, settings: _Backoff) -> float:
    """Delay after the ``attempts``-th failed attempt: initial * 2^(attempts-1), capped
    (delivery.* and webhook.* settings)."""
    return min(settings.backoff_max_seconds,
               settings.backoff_initial_seconds * 2 ** max(0, attempts - 1))


@dataclass(frozen=True)
class _Item:
    export_id: int
    attempts: int
    relpath: str
    sop_class_uid: str
    transfer_syntax_uid: str
    priority: int = _MEDIUM  # C-STORE Priority: HIGH for a study triaged HIGH


class DeliveryService:
    """Sends pending exports; one thread polls, a bounded pool sends.

    A destination with ``tls.enabled`` is sent to over TLS with ``tls_contexts[name]``
    (built from the destinations when not given: see
    :func:`pacs_node.tls.destination_contexts`, which raises ``ConfigError``).
    """

    def __init__(self, sessions: sessionmaker[Session], store: FileStore,
                 destinations: Sequence[Destination], settings: DeliverySettings, *,
                 calling_ae: str, poll_seconds: float = 1.0,
                 tls_contexts: Mapping[str, ssl.SSLContext] | None = None) -> None:
        self.sessions = sessions
        self.store = store
        self.destinations = {d.name: d for d in destinations}
        self.tls_contexts = dict(tls_contexts if tls_contexts is not None
                                 else destination_contexts(destinations))
        missing = [d.name for d in destinations
                   if d.tls.enabled and d.name not in self.tls_contexts]
        if missing:
            raise ValueError(f"tls_contexts has no context for destinations {missing}")
        self.settings = settings
        self.calling_ae = calling_ae
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=settings.max_concurrent,
                                        thread_name_prefix="pacs-node-send")
        self._thread = threading.Thread(target=self._loop, name="pacs-node-delivery",
                                        daemon=True)

    def start(self) -> None:
        if self.destinations:
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _due(self) -> dict[str, list[_Item]]:
        def work(session: Session) -> dict[str, list[_Item]]:
            batches: dict[str, list[_Item]] = defaultdict(list)
            if ControlRepository(session).paused(Control.DELIVERY):
                return {}  # an admin paused delivery: exports wait, pending
            exports = ExportRepository(session)
            now = datetime.now(UTC)
            for export in exports.due(now, limit=200):
                instance = session.get(Instance, export.instance_id)
                if export.destination not in self.destinations or instance is None:
                    exports.mark_failed(export.id, next_attempt_at=None,
                                        error="destination not configured or object gone")
                    continue
                urgent = instance.series.study.triage_priority == TriagePriority.HIGH
                batches[export.destination].append(_Item(
                    export.id, export.attempts, instance.relpath, instance.sop_class_uid,
                    instance.transfer_syntax_uid, _HIGH if urgent else _MEDIUM))
            for items in batches.values():  # HIGH first (stable: otherwise as queued)
                items.sort(key=lambda item: item.priority != _HIGH)
            return dict(batches)

        return run_write(self.sessions, work)

    def deliver_once(self) -> int:
        """Send every due export (each destination in its own association); return count."""
        batches = self._due()
        futures = [self._pool.submit(self._send, name, items) for name, items in batches.items()]
        return sum(f.result() for f in futures)

    def _send(self, name: str, items: list[_Item]) -> int:
        dest = self.destinations[name]
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        ae.connection_timeout = 30  # also bounds the TLS handshake
        # One syntax per presentation context, so the destination accepts or rejects each.
        contexts = dict.fromkeys(
            (sop_class, syntax)
            for sop_class, stored in sorted({(i.sop_class_uid, i.transfer_syntax_uid)
                                             for i in items})
            for syntax in (stored, *_FALLBACK_SYNTAXES))
        for sop_class, syntax in contexts:
            ae.add_requested_context(sop_class, [syntax])
        outcomes: dict[int, str | None] = {}
        context = self.tls_contexts.get(name) if dest.tls.enabled else None
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title,
                             tls_args=(context, dest.host) if context else None)
        if not assoc.is_established:
            error = "association rejected or destination unreachable"
            outcomes = {i.export_id: error for i in items}
        else:
            try:
                for item in items:
                    if self._stop.is_set():
                        break
                    outcomes[item.export_id] = self._store_one(assoc, item)
            finally:
                assoc.release()
        self._record(name, items, outcomes)
        return sum(1 for v in outcomes.values() if v is None)

    def _store_one(self, assoc: Association, item: _Item) -> str | None:
        """C-STORE one object; None when the destination holds it, else the error."""
        try:
            ds = pydicom.dcmread(self.store.path_of(item.relpath))
            stored = UID(ds.file_meta.TransferSyntaxUID)
            accepted = {UID(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts
                        if cx.abstract_syntax == ds.SOPClassUID}
            if stored not in accepted and stored.is_compressed:
                if not accepted & set(_FALLBACK_SYNTAXES):
                    return (f"destination accepted no presentation context for "
                            f"{ds.SOPClassUID} in {stored} or uncompressed")
                # The same instance, only re-encoded: keep its SOP Instance UID (pydicom
                # makes a new one by default). pynetdicom picks the uncompressed context.
                ds.decompress(generate_instance_uid=False)
            status = assoc.send_c_store(ds, priority=item.priority)
        except Exception as exc:  # noqa: BLE001 - it fails this attempt, not the whole round
            log.warning("cannot send %s: %s", item.relpath, exc)
            return f"{type(exc).__name__}: {exc}"
        code = getattr(status, "Status", None)
        if code is not None and code in _ACCEPTED:
            return None
        return "no C-STORE response" if code is None else f"C-STORE status 0x{code:04X}"

    def _record(self, name: str, items: list[_Item], outcomes: dict[int, str | None]) -> None:
        now = datetime.now(UTC)

        def work(session: Session) -> list[DeliveredJob]:
            exports = ExportRepository(session)
            for item in items:
                if item.export_id not in outcomes:
                    continue
                error = outcomes[item.export_id]
                if error is None:
                    exports.mark_sent(item.export_id, now)
                    continue
                attempts = item.attempts + 1
                retry_at = (None if attempts >= self.settings.max_attempts else
                            now + timedelta(seconds=backoff_seconds(attempts, self.settings)))
                exports.mark_failed(item.export_id, error=error, next_attempt_at=retry_at)
            sent = [i for i, error in outcomes.items() if error is None]
            return StatsRepository(session).delivered_jobs(sent, name)

        delivered = run_write(self.sessions, work)
        failed = sum(1 for v in outcomes.values() if v is not None)
        metrics = instruments()  # after the commit: a retried transaction counts once
        metrics.delivery(name, "sent", len(outcomes) - failed)
        metrics.delivery(name, "failed", failed)
        for job in delivered:
            metrics.delivered(priority_label(job.priority), name,
                              (now - job.first_received_at).total_seconds())
        log.info("delivery to %s: %d sent, %d failed", name, len(outcomes) - failed, failed)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.deliver_once()
            except Exception:  # noqa: BLE001 - keep delivering; the next poll retries
                log.exception("delivery round failed")
            self._stop.wait(self.poll_seconds)
