"""Assembling a running node from its settings (the ``serve`` and ``worker`` entry points).

Everything is built here, never at import: the index engine (migrated to the latest
schema), the file store (left-over temp files removed), the model cache, the pipeline, the
dispatcher (a local job thread on ``memory://``, Celery otherwise), the study tracker, the
DIMSE listener, the HTTP server and the delivery service.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable

from storage import keep_values_out_of_logs
from workers.dispatch import CeleryDispatcher, Dispatcher, LocalDispatcher
from workers.pipeline import ModelCache, PipelineOptions, StudyPipeline

from .batches import BatchRunner
from .config import ConfigError, Settings
from .delivery import DeliveryService
from .dimse import DimseServer, MoveDestination
from .http import HttpServer, create_app
from .index import NodeStartError, Storage, open_storage
from .tls import destination_contexts, server_context
from .tracker import StudyTracker
from .webhook import WebhookService

__all__ = ["Node", "NodeStartError", "Storage", "open_storage", "pipeline_factory"]

log = logging.getLogger(__name__)


def pipeline_factory(settings: Settings, storage: Storage) -> Callable[[], StudyPipeline]:
    """A zero-argument callable building the study pipeline (models load lazily)."""

    def build() -> StudyPipeline:
        options = PipelineOptions(
            routes=tuple(settings.pipeline.routes),
            aggregation=settings.pipeline.aggregation,
            threshold=settings.pipeline.threshold,
            max_findings=settings.pipeline.max_findings,
            allow_uncalibrated=settings.pipeline.allow_uncalibrated,
            max_pixels=settings.storage.max_pixels,
            destinations=tuple(d.name for d in settings.destinations),
            withdraw_destinations=tuple(d.name for d in settings.destinations
                                        if d.withdraw == "iocm"),
            lease_seconds=settings.queue.lease_seconds,
            high_threshold=settings.triage.high_threshold,
            doubt_threshold=settings.triage.doubt_threshold,
            notify_high=bool(settings.webhook.url),
        )
        return StudyPipeline(storage.store, storage.sessions, options, ModelCache())

    return build


def _check_port_free(host: str, port: int, what: str) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise NodeStartError(f"{what} {host}:{port} is already in use: is another "
                                     "node running? Change the port in the config.") from None
            raise NodeStartError(f"cannot listen on {what} {host}:{port}: {exc.strerror}") \
                from None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class Node:
    """A running node: DIMSE listeners (plain and/or TLS), study tracker, job runner
    (embedded) and delivery."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.storage: Storage | None = None
        self.dispatcher: Dispatcher | None = None
        self._local: LocalDispatcher | None = None
        self.tracker: StudyTracker | None = None
        self.dimse: DimseServer | None = None  # the plain listener (dimse_port)
        self.dimse_tls: DimseServer | None = None  # the TLS listener (node.tls.port)
        self.delivery: DeliveryService | None = None
        self.webhook: WebhookService | None = None
        self.http: HttpServer | None = None
        self.batches: BatchRunner | None = None

    @property
    def embedded(self) -> bool:
        return self.settings.queue.broker_url.startswith("memory://")

    def start(self) -> None:
        s = self.settings
        keep_values_out_of_logs()
        tls = s.node.tls
        try:  # certificates and keys are read before anything starts
            listener_tls = server_context(tls) if tls.enabled else None
            sending_tls = destination_contexts(s.destinations)
            remote_tls = destination_contexts(s.remotes, section="remotes")
        except ConfigError as exc:
            raise NodeStartError(str(exc)) from None
        if tls.plain_listener:
            _check_port_free(s.node.dimse_host, s.node.dimse_port, "node.dimse_port")
        if listener_tls is not None:
            _check_port_free(s.node.dimse_host, tls.port, "node.tls.port")
        if s.http.enabled:
            _check_port_free(s.node.http_host, s.node.http_port, "node.http_port")
        self.storage = storage = open_storage(s)
        if self.embedded:
            self._local = LocalDispatcher(pipeline_factory(s, storage))
            self._local.start()
            self.dispatcher = self._local
        else:
            from workers.celery_app import create_celery_app

            app = create_celery_app(s.queue.broker_url,
                                    pipeline_factory=pipeline_factory(s, storage),
                                    max_attempts=s.queue.max_attempts,
                                    lease_seconds=s.queue.lease_seconds)
            self.dispatcher = CeleryDispatcher(app)
        self.tracker = StudyTracker(
            storage.sessions, self.dispatcher, stable_seconds=s.study.stable_seconds,
            max_attempts=s.queue.max_attempts, max_interruptions=s.queue.max_interruptions,
            enqueue_timeout=s.queue.enqueue_timeout_seconds,
            reconcile_interval=s.queue.reconcile_interval_seconds)
        if self.embedded:
            # This process is the only worker: whatever a crashed run left running is ours.
            self.tracker.release_orphans()
        self.tracker.start()
        self.batches = BatchRunner(s, storage.sessions, storage.store, self.dispatcher)
        self.batches.start()
        self.delivery = DeliveryService(storage.sessions, storage.store, s.destinations,
                                        s.delivery, calling_ae=s.node.ae_title,
                                        tls_contexts=sending_tls)
        self.delivery.start()
        if s.webhook.url:
            self.webhook = WebhookService(
                storage.sessions, s.webhook, viewer_base=s.webhook.viewer_base_url
                or f"http://{_url_host(s.node.http_host)}:{s.node.http_port}")
            self.webhook.start()
        # C-MOVE sends to the AE titles of destinations and remotes (remotes win a tie).
        move_destinations = {  # a DICOMweb-only remote has no DIMSE address
            peer.ae_title: MoveDestination(peer.host, peer.port, tls_by_name.get(peer.name))
            for peers, tls_by_name in ((s.destinations, sending_tls), (s.remotes, remote_tls))
            for peer in peers if peer.ae_title and peer.host and peer.port}
        ports = []
        if tls.plain_listener:
            self.dimse = DimseServer(s.node, storage.store, storage.sessions,
                                     on_stored=self.tracker.nudge,
                                     move_destinations=move_destinations,
                                     max_pixels=s.storage.max_pixels,
                                     min_free_bytes=s.storage.min_free_bytes)
            self.dimse.start()
            ports.append(str(s.node.dimse_port))
        if listener_tls is not None:
            self.dimse_tls = DimseServer(s.node, storage.store, storage.sessions,
                                         on_stored=self.tracker.nudge,
                                         ssl_context=listener_tls,
                                         move_destinations=move_destinations,
                                         max_pixels=s.storage.max_pixels,
                                         min_free_bytes=s.storage.min_free_bytes)
            self.dimse_tls.start()
            ports.append(f"{tls.port} (TLS)")
        log.info("pacs-node %s listening for DICOM on %s port %s (%s queue)",
                 s.node.ae_title, s.node.dimse_host, " and ".join(ports),
                 "embedded" if self.embedded else "celery")
        if s.http.enabled:
            app = create_app(s, storage.sessions, storage.store, on_stored=self.tracker.nudge)
            self.http = HttpServer(app,
                                   s.node.http_host, s.node.http_port)
            try:
                self.http.start()
            except RuntimeError as exc:
                raise NodeStartError(f"node.http_port {s.node.http_port}: {exc}") from None
            log.info("DICOMweb at http://%s:%d/dicomweb, API docs at /api/docs",
                     s.node.http_host, s.node.http_port)

    def stop(self) -> None:
        if self.http is not None:
            self.http.stop()
        for listener in (self.dimse, self.dimse_tls):
            if listener is not None:
                listener.stop()
        if self.batches is not None:
            self.batches.stop()
        if self.tracker is not None:
            self.tracker.stop()
        if self._local is not None:
            self._local.stop()
        if self.delivery is not None:
            self.delivery.stop()
        if self.webhook is not None:
            self.webhook.stop()
        if self.storage is not None:
            self.storage.engine.dispose()
