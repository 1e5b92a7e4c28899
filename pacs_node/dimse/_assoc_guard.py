"""Association-level guards: a bounded pool of connections still negotiating, a limit that
counts associations and not open sockets, malformed association requests refused at once,
and no pynetdicom thread left waiting after one of its threads failed.

What each guard covers in pynetdicom 3.0.4:

- **Pending connections.** ``ThreadedAssociationServer`` starts an acceptor thread and a
  DUL thread for every TCP connection it accepts, without limit: 200 connections that never
  send an A-ASSOCIATE-RQ were 400 threads until the ACSE timeout. :class:`NodeAE` serves
  with :class:`_GuardedServer`, whose ``verify_request`` closes a new connection at once
  while ``max_pending`` connections are open without an established association.
- **The association limit.** ``acse._negotiate_as_acceptor`` compares
  ``maximum_associations`` with every live acceptor thread, so idle connections locked
  modalities out. :func:`check_association_request` (on ``EVT_REQUESTED``, which pynetdicom
  runs before it negotiates) counts established associations only and rejects the request
  over the limit with "local limit exceeded"; pynetdicom's own check stays, with room for
  the pending pool, as a backstop.
- **Malformed requests.** A request without presentation contexts, with a duplicate
  presentation context ID, or with a context lacking its abstract syntax or transfer
  syntaxes made ``negotiate_as_acceptor`` raise in the acceptor thread (``IndexError`` for
  a context without transfer syntaxes): the thread died, the connection stayed open with no
  answer. :func:`check_association_request` rejects these (permanent, no reason given).
  Presentation context IDs that are even or 0 fail when pynetdicom turns the PDU into a
  primitive inside its state machine, which killed the DUL thread: the PDU guard
  (``_pdu_guard``) now makes that conversion part of decoding, so the request is an
  invalid PDU answered with an A-ABORT.
- **Listen backlog.** socketserver listens with a backlog of 5: a burst of connections
  (idle ones, a scan) overflowed it and further connects waited for the client's SYN
  retransmission (1 s, then 3 s) before they were even accepted. :class:`_GuardedServer`
  listens with :data:`LISTEN_BACKLOG`.
- **Application context.** pynetdicom accepts a request without the DICOM application
  context name (1.2.840.10008.3.1.1.1), or with another or an empty one;
  :func:`check_association_request` rejects it with "application context name not
  supported" (PS3.8 9.3.4).
- **Threads that fail.** :func:`install_thread_guards` wraps the acceptor's and the DUL's
  reactors: an exception that still escapes ends the association with an A-ABORT, closes
  the socket and wakes the other thread, instead of leaving a thread waiting for a peer
  that was never answered. Such an exception is a bug (ours or pynetdicom's) and is logged
  with its traceback.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
from typing import Any

from pynetdicom import AE, dul, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.transport import ThreadedAssociationServer

__all__ = ["NodeAE", "check_association_request", "install_thread_guards",
           "request_problem"]

log = logging.getLogger(__name__)

_MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: odd IDs 1-255
DICOM_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
#: Connections the kernel holds for the listener before it accepts them.
LISTEN_BACKLOG = 128
_lock = threading.Lock()
_installed = False


class NodeAE(AE):
    """The node's application entity: pynetdicom's ``AE`` serving with
    :class:`_GuardedServer` and an association limit that counts established associations.

    Args:
        ae_title: the node's AE title.
        max_associations: established associations at once (more are rejected with
            "local limit exceeded").
        max_pending: connections at once that have not (yet) established an association;
            a connection over it is closed without being read.
    """

    def __init__(self, ae_title: str, *, max_associations: int, max_pending: int) -> None:
        if max_associations < 1 or max_pending < 1:
            raise ValueError("max_associations and max_pending must be at least 1, got "
                             f"{max_associations} and {max_pending}")
        super().__init__(ae_title=ae_title)
        self.established_limit = max_associations
        self.pending_limit = max_pending
        # pynetdicom's own check counts every acceptor thread, pending ones too: leave it
        # room for the pending pool so it only catches what ours cannot.
        self.maximum_associations = max_associations + max_pending + 1

    def make_server(self, address: Any, ae_title: str | None = None,
                    contexts: Any = None, ssl_context: Any = None,
                    evt_handlers: Any = None, server_class: Any = None,
                    **kwargs: Any) -> Any:
        if server_class is None or server_class is ThreadedAssociationServer:
            server_class = _GuardedServer
        return super().make_server(address, ae_title=ae_title, contexts=contexts,
                                   ssl_context=ssl_context, evt_handlers=evt_handlers,
                                   server_class=server_class, **kwargs)


def _acceptors(server: Any) -> list[Association]:
    return [t for t in threading.enumerate()
            if isinstance(t, Association) and getattr(t, "_server", None) is server
            and t.is_alive()]


class _GuardedServer(ThreadedAssociationServer):
    """Closes a new connection at once while the pending pool is full (see module doc),
    and listens with a backlog of :data:`LISTEN_BACKLOG` (socketserver's is 5: a burst of
    connections overflowed it, and a modality's connect waited for SYN retransmissions,
    1 s and more, while its acceptor threads were being started)."""

    request_queue_size = LISTEN_BACKLOG

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Connections let in whose Association thread is not started yet: the thread that
        # starts it runs after verify_request has let the next ones in, so counting threads
        # alone let a burst past the limit.
        self._starting = 0
        self._starting_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        limit = getattr(self.ae, "pending_limit", None)
        if limit is None:
            return True
        pending = sum(1 for assoc in _acceptors(self) if not assoc.is_established)
        with self._starting_lock:
            pending += self._starting
            if pending < limit:
                self._starting += 1
                return True
        host = client_address[0] if isinstance(client_address, tuple) else client_address
        log.warning("refused a connection from %s: %d connections are already waiting to "
                    "establish an association (node limit)", host, pending)
        return False

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            super().finish_request(request, client_address)  # starts the Association
        finally:
            with self._starting_lock:
                self._starting -= 1


def request_problem(request: A_ASSOCIATE) -> str | None:
    """Why an A-ASSOCIATE-RQ cannot be negotiated, or None if it can."""
    contexts = list(request.presentation_context_definition_list or [])
    if not contexts:
        return "no presentation context"
    if len(contexts) > _MAX_CONTEXTS:
        return f"{len(contexts)} presentation contexts (at most {_MAX_CONTEXTS})"
    seen: set[int] = set()
    for context in contexts:
        context_id = context.context_id
        if not isinstance(context_id, int) or context_id % 2 == 0 or \
                not 1 <= context_id <= 255:
            return f"presentation context ID {context_id!r} is not an odd number 1-255"
        if context_id in seen:
            return f"presentation context ID {context_id} is used twice"
        seen.add(context_id)
        if not context.abstract_syntax:
            return f"presentation context {context_id} has no abstract syntax"
        if not context.transfer_syntax:
            return f"presentation context {context_id} has no transfer syntax"
    return None


def _peer(assoc: Association) -> str:
    try:
        return f"{assoc.requestor.address}:{assoc.requestor.port}"
    except Exception:  # noqa: BLE001 - no address known
        return "unknown peer"


def check_association_request(event: Event) -> None:
    """``EVT_REQUESTED`` handler: reject a malformed request, or one over the limit of
    established associations, before pynetdicom negotiates it."""
    assoc = event.assoc
    request = assoc.requestor.primitive
    problem = request_problem(request) if isinstance(request, A_ASSOCIATE) else \
        "no association request"
    if problem is not None:
        log.warning("association request from %s refused: %s", _peer(assoc), problem)
        _reject(assoc, 0x01, 0x01, 0x01)  # rejected permanent, no reason given
        return
    application = str(getattr(request, "application_context_name", None) or "")
    if application != DICOM_APPLICATION_CONTEXT:
        log.warning("association request from %s refused: application context %r is not "
                    "DICOM's", _peer(assoc), application[:64])
        _reject(assoc, 0x01, 0x01, 0x02)  # permanent, application context not supported
        return
    limit = getattr(assoc.ae, "established_limit", None)
    if limit is None:
        return
    established = sum(1 for other in _acceptors(assoc._server)
                      if other is not assoc and other.is_established)
    if established >= limit:
        log.warning("association request from %s refused: %d associations are open "
                    "(node limit)", _peer(assoc), established)
        _reject(assoc, 0x02, 0x03, 0x02)  # transient, local limit exceeded


def _reject(assoc: Association, result: int, source: int, diagnostic: int) -> None:
    """Send an A-ASSOCIATE-RJ and wait until it is out, as pynetdicom's own rejections do
    (``kill`` returns when the peer closed or after the ACSE timeout); the connection then
    counts as pending until it is closed."""
    assoc.acse.send_reject(result, source, diagnostic)
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()


def _close(sock: Any) -> None:
    raw = getattr(sock, "socket", None)
    if isinstance(raw, socket.socket):
        try:
            raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _guard_association(original: Any) -> Any:
    @functools.wraps(original)
    def run_reactor(self: Association) -> None:
        try:
            original(self)
        except Exception:
            log.exception("association with %s ended by an unexpected error; aborting it",
                          _peer(self))
            self.is_aborted = True
            self.is_established = False
            self.dul.kill_dul()
            _send_abort(self.dul)
            _close(self.dul.socket)

    return run_reactor


def _guard_dul(original: Any) -> Any:
    @functools.wraps(original)
    def run_reactor(self: dul.DULServiceProvider) -> None:
        try:
            original(self)
        except Exception:
            log.exception("the DUL thread of the association with %s ended by an "
                          "unexpected error; aborting it", _peer(self.assoc))
            _send_abort(self)
            _close(self.socket)
            self.assoc.is_aborted = True
            self.assoc.is_established = False
            self.assoc._kill = True
            self._kill_thread = True
            # An acceptor still waiting for the A-ASSOCIATE-RQ takes None as its timeout.
            self.to_user_queue.put(None)  # type: ignore[arg-type]

    return run_reactor


def _send_abort(provider: dul.DULServiceProvider) -> None:
    pdu = A_ABORT_RQ()
    pdu.source = 0x02  # service provider
    pdu.reason_diagnostic = 0x00
    try:
        provider.socket.send(pdu.encode())  # type: ignore[union-attr]
    except Exception:  # noqa: BLE001 - the connection is gone already
        pass


def install_thread_guards() -> None:
    """Wrap pynetdicom's association and DUL reactors once per process (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        Association.run_reactor = _guard_association(  # type: ignore[method-assign]
            Association.run_reactor)
        dul.DULServiceProvider.run_reactor = _guard_dul(  # type: ignore[method-assign]
            dul.DULServiceProvider.run_reactor)
        _installed = True
