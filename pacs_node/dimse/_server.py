"""The DICOM listener: one pynetdicom AE, its association policy, its handlers."""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from pydicom import config as pydicom_config
from pynetdicom import AllStoragePresentationContexts, _config, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.orm import Session, sessionmaker

from storage import FileStore
from workers.metrics import instruments

from ..config import NodeSettings
from ._assoc_guard import NodeAE, check_association_request, install_thread_guards
from ._find import PATIENT_ROOT_FIND, STUDY_ROOT_FIND, FindContext, handle_find
from ._guard import guard_request, install_message_guard
from ._logfilter import PEER_EVENT, install_network_log_filter
from ._pdu_guard import install_pdu_guard
from ._retrieve import (
    GET_MODELS,
    MOVE_MODELS,
    MoveDestination,
    RetrieveContext,
    handle_get,
    handle_move,
)
from ._store import StoreContext, handle_store

#: Seconds a new connection has to complete its association request.
ACSE_TIMEOUT_S = 5.0
__all__ = ["STORE_TRANSFER_SYNTAXES", "UNCOMPRESSED_TRANSFER_SYNTAXES", "DimseServer"]

log = logging.getLogger(__name__)

UNCOMPRESSED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old modalities)
)
STORE_TRANSFER_SYNTAXES: tuple[str, ...] = (
    *UNCOMPRESSED_TRANSFER_SYNTAXES,
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
)
DEFAULT_STOP_TIMEOUT_S = 10.0


def _peer(event: Event) -> str:
    try:
        requestor = event.assoc.requestor
        return f"AE {requestor.ae_title!r} at {requestor.address}:{requestor.port}"
    except Exception:
        return "unknown peer"


def _on_accepted(event: Event) -> None:
    instruments().association("accepted")
    log.info("association accepted from %s", _peer(event), extra=PEER_EVENT)


def _on_rejected(event: Event) -> None:
    # pynetdicom does not pass the reason on: work it out as acse.py decides it.
    reason, called = "association limit reached or user identity refused", "?"
    try:
        assoc = event.assoc
        request = assoc.requestor.primitive
        calling = request.calling_ae_title  # type: ignore[union-attr]
        called = repr(request.called_ae_title)  # type: ignore[union-attr]
        if assoc.ae.require_called_aet and \
                request.called_ae_title != assoc.acceptor.ae_title.strip():  # type: ignore[union-attr]
            reason = "called AE title not recognised"
        elif assoc.ae.require_calling_aet and \
                calling not in [t.strip() for t in assoc.ae.require_calling_aet]:
            reason = "calling AE title not recognised"
    except Exception:
        pass
    instruments().association("rejected")
    log.warning("association rejected from %s (called AE %s): %s", _peer(event), called,
                reason, extra=PEER_EVENT)


def _on_released(event: Event) -> None:
    instruments().association("released")
    log.info("association released by %s", _peer(event), extra=PEER_EVENT)


def _on_aborted(event: Event) -> None:
    instruments().association("aborted")
    log.info("association aborted with %s", _peer(event), extra=PEER_EVENT)


def _on_connection_closed(event: Event) -> None:
    """Free the slot of a peer that left before sending an A-ASSOCIATE-RQ (garbage, port
    scans, TCP health checks): pynetdicom would keep its acceptor thread waiting
    ``acse_timeout`` for a request that cannot come, holding one of ``max_associations``.
    A ``None`` on the DUL's queue is what that wait returns on timeout."""
    assoc = event.assoc
    try:
        if assoc.is_acceptor and assoc.requestor.primitive is None:
            assoc.dul.to_user_queue.put(None)  # type: ignore[arg-type]
    except Exception as exc:  # pynetdicom internals changed: fall back to the timeout
        log.debug("could not wake the acceptor of a closed connection: %s",
                  type(exc).__name__)


def _quiet_patient_data() -> None:
    """Process-wide switches that keep patient data out of the logs: pynetdicom logs C-FIND
    identifiers, and pydicom's value validation logs an invalid value when it reads one
    ("Invalid value for VR DA: '1901-02-03'"). We validate the UIDs ourselves."""
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    # pynetdicom's standard DIMSE log handlers run first on every message and raise on a
    # command set without a Message ID, which stops the other EVT_DIMSE_RECV handlers,
    # ours (_guard.guard_request) among them; the node logs each request itself.
    _config.LOG_HANDLER_LEVEL = "none"


class DimseServer:
    """The node's DICOM listener: C-ECHO, C-STORE (all storage SOP classes, stored as
    received), C-FIND, C-GET and C-MOVE (Study Root and Patient Root) over the index.

    Association policy from ``settings``: the called AE title must be ``ae_title``; the
    calling AE title must be in ``allowed_calling_aes`` (empty: any); at most
    ``max_associations`` established at once, and at most ``max_pending_connections``
    connections still negotiating (see ``_assoc_guard``); ``max_pdu_bytes`` is the PDU
    size offered to peers and the most one P-DATA PDU may carry.

    Starting it turns pynetdicom's identifier logging and pydicom's reading validation off
    for the process (both would log patient data). When
    ``pynetdicom._config.STORE_RECV_CHUNKED_DATASET`` is on, received data sets are
    streamed by pynetdicom to a temp file and copied from there.

    Args:
        settings: the node settings.
        store: where instance files go.
        sessions: the index's session factory.
        on_stored: called with the Study Instance UID after an instance with new content
            is durably stored and indexed (from the association's thread; exceptions are
            logged and ignored).
        ssl_context: makes this the TLS listener: it listens on ``settings.tls.port``
            instead of ``dimse_port`` and every connection is wrapped in it (see
            :func:`pacs_node.tls.server_context`).
        move_destinations: where a C-MOVE may send, by AE title (the node's
            ``destinations`` and ``remotes``); another destination is 0xA801.
        max_pixels: ``storage.max_pixels``: a retrieved image is decoded for a peer that
            does not take its compressed syntax only within it.
        min_free_bytes: ``storage.min_free_bytes``: below it a C-STORE is 0xA700 before
            anything is written (:func:`pacs_node.receive.ensure_free_space`).
    """

    def __init__(self, settings: NodeSettings, store: FileStore,
                 sessions: sessionmaker[Session], *,
                 on_stored: Callable[[str], None] | None = None,
                 ssl_context: ssl.SSLContext | None = None,
                 move_destinations: Mapping[str, MoveDestination] | None = None,
                 max_pixels: int = 64 * 1024 * 1024, min_free_bytes: int = 0) -> None:
        if not isinstance(settings, NodeSettings):
            raise TypeError(f"settings must be NodeSettings, got {type(settings).__name__}")
        if not isinstance(store, FileStore):
            raise TypeError(f"store must be a FileStore, got {type(store).__name__}")
        if not callable(sessions):
            raise TypeError(f"sessions must be a sessionmaker, got {type(sessions).__name__}")
        if on_stored is not None and not callable(on_stored):
            raise TypeError(f"on_stored must be callable, got {type(on_stored).__name__}")
        if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
            raise TypeError(f"ssl_context must be an ssl.SSLContext, got "
                            f"{type(ssl_context).__name__}")
        self.settings = settings
        self._ssl_context = ssl_context
        self._store_context = StoreContext(
            store=store, sessions=sessions,
            overwrite_conflicts=settings.overwrite_conflicting_duplicates, on_stored=on_stored,
            min_free_bytes=min_free_bytes)
        self._find_context = FindContext(sessions=sessions)
        self._retrieve_context = RetrieveContext(
            sessions=sessions, store=store, max_pixels=max_pixels,
            move_destinations=dict(move_destinations or {}))
        self._server: ThreadedAssociationServer | None = None
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------

    def _build_ae(self) -> NodeAE:
        settings = self.settings
        ae = NodeAE(settings.ae_title, max_associations=settings.max_associations,
                    max_pending=settings.max_pending_connections)
        ae.maximum_pdu_size = settings.max_pdu_bytes
        # A connection must send its A-ASSOCIATE-RQ within this time (pynetdicom waits 30 s,
        # holding one of max_associations for a peer that says nothing).
        ae.acse_timeout = ACSE_TIMEOUT_S
        ae.require_called_aet = True
        ae.require_calling_aet = list(settings.allowed_calling_aes)
        ae.add_supported_context(Verification, list(UNCOMPRESSED_TRANSFER_SYNTAXES))
        # The 128-context limit binds requestors only: an acceptor may support them all.
        # Both roles: a C-GET requestor proposes the storage classes with SCP/SCU role
        # selection so that the node may C-STORE back to it on the same association.
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(str(context.abstract_syntax),
                                     list(STORE_TRANSFER_SYNTAXES), scu_role=True,
                                     scp_role=True)
        for model in (STUDY_ROOT_FIND, PATIENT_ROOT_FIND, *MOVE_MODELS, *GET_MODELS):
            ae.add_supported_context(model, list(UNCOMPRESSED_TRANSFER_SYNTAXES))
        return ae

    def start(self) -> None:
        """Start listening on ``(dimse_host, dimse_port)``; returns at once.

        Raises:
            RuntimeError: the server is already running.
            OSError: the address cannot be bound (port in use, bad host).
        """
        with self._lock:
            if self._server is not None:
                raise RuntimeError("the DIMSE server is already running")
            _quiet_patient_data()
            install_pdu_guard()  # PDU length and stalls bounded on receive
            install_thread_guards()  # a failing pynetdicom thread aborts, never hangs
            install_message_guard()  # an undecodable command set aborts, one log line
            install_network_log_filter()  # resets, aborts, garbage: one line, capped per peer
            handlers: list[Any] = [
                (evt.EVT_C_STORE, handle_store, [self._store_context]),
                (evt.EVT_C_FIND, handle_find, [self._find_context]),
                (evt.EVT_C_GET, handle_get, [self._retrieve_context]),
                (evt.EVT_C_MOVE, handle_move, [self._retrieve_context]),
                (evt.EVT_DIMSE_RECV, guard_request),
                (evt.EVT_REQUESTED, check_association_request),
                (evt.EVT_ACCEPTED, _on_accepted),
                (evt.EVT_REJECTED, _on_rejected),
                (evt.EVT_RELEASED, _on_released),
                (evt.EVT_ABORTED, _on_aborted),
                (evt.EVT_CONN_CLOSE, _on_connection_closed),
            ]
            port = self.settings.tls.port if self._ssl_context else self.settings.dimse_port
            address = (self.settings.dimse_host, port)
            server = self._build_ae().start_server(address, block=False,
                                                   evt_handlers=handlers,
                                                   ssl_context=self._ssl_context)
            self._server = server
        log.info("DIMSE server %r listening on %s:%d%s", self.settings.ae_title, *self.address,
                 " (TLS)" if self._ssl_context else "")

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Stop listening, abort open associations and wait up to ``timeout`` seconds for
        their threads (a handler in progress finishes its store first). Idempotent."""
        with self._lock:
            server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()  # no new associations from here on
        associations = server.active_associations
        for assoc in associations:
            assoc.abort()
        for assoc in associations:
            assoc.join(timeout)
        log.info("DIMSE server %r stopped", self.settings.ae_title)

    @property
    def is_running(self) -> bool:
        """Whether the server is listening."""
        return self._server is not None

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``.

        Raises:
            RuntimeError: the server is not running.
        """
        server = self._server
        if server is None:
            raise RuntimeError("the DIMSE server is not running")
        host, port = server.server_address[:2]
        return str(host), int(port)

    @property
    def port(self) -> int:
        """The bound port (see :attr:`address`)."""
        return self.address[1]

    def __enter__(self) -> DimseServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
