"""Bounds on what a peer can make the node read: PDU length and stalled PDUs.

pynetdicom (``DULServiceProvider._read_pdu_data``) reads a PDU's 6-byte header and then
``recv(length)`` for whatever length the header declares, accumulating it in memory, on a
socket without a timeout: one unauthenticated peer declaring a 1 GiB A-ASSOCIATE-RQ took a
node from 1.3 to 4.4 GB, and a peer that sends a header and stops holds its thread and its
association slot for as long as it keeps the connection open. The advertised maximum PDU
length (``node.max_pdu_bytes``) was never enforced on receive.

:func:`install_pdu_guard` wraps that method once per process (pynetdicom has no hook for
it; this is the only place the node reaches into pynetdicom's internals). Before the body
is read it peeks at the header: a P-DATA-TF longer than the maximum length this side
advertised, or any other PDU longer than :data:`MAX_CONTROL_PDU`, is answered with an
A-ABORT (pynetdicom's own "invalid PDU" path, Evt19) without reading it; and the body is
read under a timeout of :data:`STALL_SECONDS`, after which the connection is closed
(pynetdicom's Evt17 path). TLS sockets cannot be peeked; they get the timeout only.

It also wraps ``DULServiceProvider._decode_pdu`` so that an association PDU must convert to
its primitive while it is decoded: pynetdicom converts it later, inside its state machine,
where a ValueError (an A-ASSOCIATE-RQ with presentation context ID 0 or an even ID) killed
the DUL thread without an answer and held the connection until the ACSE timeout. Failing
in decoding is pynetdicom's "invalid PDU" path instead: an A-ABORT, at once.
"""

from __future__ import annotations

import functools
import logging
import socket
import ssl
import struct
import threading
from typing import Any

from pynetdicom import dul

__all__ = ["MAX_CONTROL_PDU", "STALL_SECONDS", "install_pdu_guard"]

log = logging.getLogger(__name__)

#: Largest A-ASSOCIATE/RELEASE/ABORT PDU accepted: 128 presentation contexts and a user
#: identity token fit many times over.
MAX_CONTROL_PDU = 1 << 20
#: A PDU whose body does not arrive within this many seconds closes the connection.
STALL_SECONDS = 10.0
_P_DATA_TF = 0x04
_ASSOCIATION_PDUS = frozenset({0x01, 0x02, 0x03})  # A-ASSOCIATE-RQ, -AC, -RJ
_DEFAULT_MAX_PDU = 16 * 1024 * 1024  # a peer that advertised "unlimited" (0)
_CLOSED = "_pacs_node_guard_closed"
_lock = threading.Lock()
_installed = False


def _limit(provider: Any, pdu_type: int) -> int:
    if pdu_type != _P_DATA_TF:
        return MAX_CONTROL_PDU
    try:
        local = provider.assoc.acceptor if provider.assoc.is_acceptor \
            else provider.assoc.requestor
        advertised = int(local.maximum_length)
    except Exception:  # noqa: BLE001 - unknown: the generous default
        advertised = 0
    return advertised or _DEFAULT_MAX_PDU


def _guarded(original: Any) -> Any:
    @functools.wraps(original)
    def read_pdu_data(self: Any) -> None:
        if getattr(self, _CLOSED, False):
            return None  # closed by the guard: nothing more is read from this peer
        raw = getattr(getattr(self, "socket", None), "socket", None)
        previous = raw.gettimeout() if isinstance(raw, socket.socket) else None
        if isinstance(raw, socket.socket) and not isinstance(raw, ssl.SSLSocket):
            try:
                raw.settimeout(STALL_SECONDS)
                # Wait (bounded) until the whole header is there, without consuming it.
                header = raw.recv(6, socket.MSG_PEEK | socket.MSG_WAITALL)
            except TimeoutError:
                log.warning("closing the connection of %s: a PDU header stalled for %.0f s",
                            _peer(self), STALL_SECONDS)
                _close(raw)
                setattr(self, _CLOSED, True)
                self.event_queue.put("Evt17")  # transport closed
                return None
            except OSError:
                header = b""  # closed or reset: pynetdicom's own read reports it
            finally:
                raw.settimeout(previous)
            if len(header) == 6:
                pdu_type, _, length = struct.unpack(">BBL", header)
                limit = _limit(self, pdu_type)
                if length > limit:
                    log.warning("closing the connection of %s: PDU type 0x%02X declares "
                                "%d bytes, over the %d this node accepts",
                                _peer(self), pdu_type, length, limit)
                    _close(raw)  # nothing of it is read; the header must not be seen again
                    setattr(self, _CLOSED, True)
                    self.event_queue.put("Evt17")  # transport closed
                    return None
        if isinstance(raw, socket.socket):
            raw.settimeout(STALL_SECONDS)
        try:
            return original(self)
        finally:
            if isinstance(raw, socket.socket):
                try:
                    raw.settimeout(previous)
                except OSError:
                    pass

    return read_pdu_data


def _checked(original: Any) -> Any:
    @functools.wraps(original)
    def decode_pdu(self: Any, bytestream: bytearray) -> Any:
        pdu, event = original(self, bytestream)
        if bytestream[:1] and bytestream[0] in _ASSOCIATION_PDUS:
            pdu.to_primitive()  # raises here, in the decoder's try, not in the FSM
        return pdu, event

    return decode_pdu


def _close(raw: socket.socket) -> None:
    try:
        raw.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _peer(provider: Any) -> str:
    try:
        address = provider.assoc.requestor.address if provider.assoc.is_acceptor else \
            provider.assoc.acceptor.address
        return str(address)
    except Exception:  # noqa: BLE001
        return "?"


def install_pdu_guard() -> None:
    """Wrap pynetdicom's PDU reader and decoder once per process (idempotent, thread-safe)."""
    global _installed
    with _lock:
        if _installed:
            return
        dul.DULServiceProvider._read_pdu_data = _guarded(  # type: ignore[method-assign]
            dul.DULServiceProvider._read_pdu_data)
        dul.DULServiceProvider._decode_pdu = _checked(  # type: ignore[method-assign]
            dul.DULServiceProvider._decode_pdu)
        _installed = True
