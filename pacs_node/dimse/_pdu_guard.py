"""Bounds on what a peer can make the node read: PDU length and stalled PDUs.

pynetdicom (``DULServiceProvider._read_pdu_data``) reads a PDU's 6-byte header and then
``recv(length)`` for whatever length the header declares, accumulating it in memory, on a
socket without a timeout: one unauthenticated peer declaring a 1 GiB A-ASSOCIATE-RQ took a
node from 1.3 to 4.4 GB, and a peer that sends a header and stops holds its thread and its
association slot for as long as it keeps the connection open. The advertised maximum PDU
length (``node.max_pdu_bytes``) was never enforced on receive. And that read blocks the
DUL thread, which is also the thread that sends: a complete request followed by the first
bytes of another PDU was answered only once the second PDU was whole.

:func:`install_pdu_guard` replaces that method once per process (pynetdicom has no hook
for it) with a reader that collects the PDU in slices of :data:`_SLICE` seconds:

- a P-DATA-TF longer than the maximum length this side advertised, or any other PDU longer
  than :data:`MAX_CONTROL_PDU`, closes the connection as soon as its header is in, unread
  (over TLS too: nothing is peeked);
- a PDU not whole within :data:`STALL_SECONDS` of its first byte closes the connection
  (pynetdicom's Evt17 path);
- while a PDU is incomplete and the DUL has something to send (an answer, an abort) or its
  ARTIM timer ran out, the reader returns and keeps what it has, so that answer goes out
  at once; ``_is_transport_event`` is wrapped to come back to the PDU in progress;
- an unknown PDU type is pynetdicom's "invalid PDU" path (Evt19: an A-ABORT), and what the
  peer sends after it is read and dropped, not parsed 6 bytes at a time;
- a connection that has sent nothing yet (state Sta2: awaiting the A-ASSOCIATE-RQ) waits
  for its first byte in ``poll`` for up to :data:`_IDLE_WAIT` seconds instead of
  pynetdicom's 1 ms polling: 40 such connections kept the reactors of a node busy with 1.2
  cores of a 2-core machine, and its answers to everyone else slowed down; now 40 cost
  about 5% of a core, and the first byte is read the moment it arrives.

It also wraps ``DULServiceProvider._decode_pdu``: an association PDU must convert to its
primitive while it is decoded (pynetdicom converts it later, inside its state machine,
where a ValueError, from an A-ASSOCIATE-RQ with presentation context ID 0 or an even ID,
killed the DUL thread without an answer), and a P-DATA-TF must hold at least one
presentation data value (pynetdicom took an empty one as nothing and waited). Failing in
decoding is pynetdicom's "invalid PDU" path instead: an A-ABORT, at once.
"""

from __future__ import annotations

import functools
import logging
import select
import socket
import struct
import threading
import time
from typing import Any

from pynetdicom import dul

from ._logfilter import PEER_EVENT, printable

__all__ = ["MAX_CONTROL_PDU", "STALL_SECONDS", "install_pdu_guard"]

log = logging.getLogger(__name__)

#: Largest A-ASSOCIATE/RELEASE/ABORT PDU accepted: 128 presentation contexts and a user
#: identity token fit many times over.
MAX_CONTROL_PDU = 1 << 20
#: A PDU not whole this many seconds after its first byte closes the connection.
STALL_SECONDS = 10.0
_SLICE = 0.05  # seconds one wait for more bytes lasts before the DUL is looked at again
_CHUNK = 1 << 20  # most bytes taken from the socket at once
_IDLE_WAIT = 0.05  # seconds a connection that has sent nothing is waited on at once
_P_DATA_TF = 0x04
_PDU_TYPES = frozenset(range(0x01, 0x08))
_ASSOCIATION_PDUS = frozenset({0x01, 0x02, 0x03})  # A-ASSOCIATE-RQ, -AC, -RJ
_DEFAULT_MAX_PDU = 16 * 1024 * 1024  # a peer that advertised "unlimited" (0)
# State kept on the DULServiceProvider between calls.
_BUFFER = "_pacs_node_pdu"  # the PDU read so far
_DEADLINE = "_pacs_node_pdu_deadline"  # when it must be whole
_CLOSED = "_pacs_node_guard_closed"  # closed by the guard: nothing more is read
_DISCARD = "_pacs_node_discard"  # after bytes that are no PDU: read and drop
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


def _must_yield(provider: Any) -> bool:
    """Whether the DUL thread has something else to do: send, act on an event, time out
    its ARTIM timer, or stop."""
    try:
        return bool(provider.to_provider_queue.queue or provider.event_queue.queue
                    or provider.artim_timer.expired or provider._kill_thread)
    except AttributeError:  # pynetdicom internals changed: never wait on them
        return True


def _reset(provider: Any) -> None:
    setattr(provider, _BUFFER, None)
    setattr(provider, _DEADLINE, None)


def _close(provider: Any, raw: socket.socket) -> None:
    """Close the connection once: nothing more of it is read (pynetdicom's Evt17)."""
    try:
        raw.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    _reset(provider)
    setattr(provider, _CLOSED, True)
    provider.event_queue.put("Evt17")


def _read(provider: Any, raw: socket.socket, buffer: bytearray) -> bytes | None:
    """Collect the PDU in ``buffer``; the whole PDU, or None when there is none yet (or
    the connection ended: then Evt17 or Evt19 is queued)."""
    deadline = getattr(provider, _DEADLINE, None)
    if deadline is None:
        deadline = time.monotonic() + STALL_SECONDS
        setattr(provider, _DEADLINE, deadline)
    while True:
        need = 6
        if len(buffer) >= 6:
            pdu_type, _, length = struct.unpack_from(">BBL", buffer)
            if pdu_type not in _PDU_TYPES:
                log.warning("%s: sent bytes that are not a DICOM PDU (type 0x%02X); "
                            "association aborted", _peer(provider), pdu_type)
                _reset(provider)
                setattr(provider, _DISCARD, True)
                provider.event_queue.put("Evt19")  # invalid PDU: A-ABORT
                return None
            limit = _limit(provider, pdu_type)
            if length > limit:
                log.warning("closing the connection of %s: PDU type 0x%02X declares %d "
                            "bytes, over the %d this node accepts", _peer(provider),
                            pdu_type, length, limit)
                _close(provider, raw)
                return None
            need = 6 + length
        if len(buffer) >= need:
            return bytes(buffer)
        raw.settimeout(_SLICE)
        try:
            chunk = raw.recv(min(need - len(buffer), _CHUNK))
        except TimeoutError:
            if time.monotonic() > deadline:
                log.warning("closing the connection of %s: a PDU stalled for %.0f s (%d of "
                            "%s bytes received)", _peer(provider), STALL_SECONDS,
                            len(buffer), need if len(buffer) >= 6 else "6+")
                _close(provider, raw)
                return None
            if _must_yield(provider):
                return None  # keep what was read; come back after the DUL's turn
            continue
        except OSError as exc:
            log.info("%s: connection closed before a whole PDU arrived (%s)",
                     _peer(provider), type(exc).__name__, extra=PEER_EVENT)
            _reset(provider)
            provider.event_queue.put("Evt17")
            return None
        if not chunk:
            if len(buffer) >= 6:
                log.warning("%s: connection closed in the middle of a PDU (%d of %d bytes "
                            "received)", _peer(provider), len(buffer), need)
            _reset(provider)
            provider.event_queue.put("Evt17")
            return None
        buffer += chunk


def _discard(provider: Any, raw: socket.socket) -> None:
    """After bytes that are no PDU: drop what arrives until the peer or ARTIM closes."""
    raw.settimeout(_SLICE)
    try:
        if raw.recv(_CHUNK):
            return
    except TimeoutError:
        return
    except OSError:
        pass
    provider.event_queue.put("Evt17")
    setattr(provider, _CLOSED, True)


def _guarded(original: Any) -> Any:
    @functools.wraps(original)
    def read_pdu_data(self: Any) -> None:
        if getattr(self, _CLOSED, False):
            return None  # closed by the guard: nothing more is read from this peer
        raw = getattr(getattr(self, "socket", None), "socket", None)
        if not isinstance(raw, socket.socket):
            return original(self)  # no connection (any more): pynetdicom's own handling
        previous = raw.gettimeout()
        try:
            if getattr(self, _DISCARD, False):
                _discard(self, raw)
                return None
            buffer = getattr(self, _BUFFER, None)
            if buffer is None:
                buffer = bytearray()
                setattr(self, _BUFFER, buffer)
            data = _read(self, raw, buffer)
        finally:
            try:
                raw.settimeout(previous)
            except OSError:
                pass
        if data is None:
            return None
        _reset(self)
        try:  # as pynetdicom's own reader goes on (READ_PDU_EXC_F)
            pdu, event = self._decode_pdu(bytearray(data))
        except Exception as exc:
            log.warning("%s: sent a PDU that cannot be decoded (%s: %s)", _peer(self),
                        type(exc).__name__, printable(str(exc), 200))
            self.event_queue.put("Evt19")  # invalid PDU: A-ABORT
            return None
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)
        return None

    return read_pdu_data


def _resumed(original: Any) -> Any:
    @functools.wraps(original)
    def is_transport_event(self: Any) -> bool:
        # A PDU in progress is read on even when no new byte is waiting: its stall deadline
        # is kept, and its answer-first yield does not leave it behind.
        if getattr(self, _BUFFER, None) and not getattr(self, _CLOSED, False) and \
                self.state_machine.current_state != "Sta13":
            self._read_pdu_data()
            return True
        if original(self):
            return True
        if _awaits_first_pdu(self):
            raw: Any = getattr(self.socket, "socket", None)  # None once closed: TypeError
            try:  # poll, not select: a descriptor above 1023 is fine
                waiting = select.poll()
                waiting.register(raw, select.POLLIN)
                waiting.poll(_IDLE_WAIT * 1000)
            except (OSError, TypeError, ValueError):  # closed meanwhile: the reactor sees it
                return False
            return bool(original(self))
        return False

    return is_transport_event


def _awaits_first_pdu(provider: Any) -> bool:
    """Whether the DUL may wait on its socket alone: an acceptor's connection before its
    A-ASSOCIATE-RQ (Sta2), where nothing else is to be sent or acted on."""
    try:
        return provider.state_machine.current_state == "Sta2" and \
            provider.assoc.is_acceptor and not _must_yield(provider) and \
            not getattr(provider, _BUFFER, None) and not getattr(provider, _CLOSED, False) \
            and isinstance(getattr(provider.socket, "socket", None), socket.socket)
    except AttributeError:  # pynetdicom internals changed: poll as pynetdicom does
        return False


def _checked(original: Any) -> Any:
    @functools.wraps(original)
    def decode_pdu(self: Any, bytestream: bytearray) -> Any:
        pdu, event = original(self, bytestream)
        if bytestream[:1] and bytestream[0] in _ASSOCIATION_PDUS:
            pdu.to_primitive()  # raises here, in the decoder's try, not in the FSM
        elif bytestream[:1] == b"\x04" and not pdu.presentation_data_value_items:
            raise ValueError("P-DATA-TF without a presentation data value")
        return pdu, event

    return decode_pdu


def _peer(provider: Any) -> str:
    try:
        remote = provider.assoc.requestor if provider.assoc.is_acceptor else \
            provider.assoc.acceptor
        return f"{remote.address}:{remote.port}"
    except Exception:  # noqa: BLE001
        return "?"


def install_pdu_guard() -> None:
    """Replace pynetdicom's PDU reader and wrap its decoder once per process (idempotent,
    thread-safe)."""
    global _installed
    with _lock:
        if _installed:
            return
        provider = dul.DULServiceProvider
        provider._read_pdu_data = _guarded(provider._read_pdu_data)  # type: ignore[method-assign]
        provider._is_transport_event = _resumed(  # type: ignore[method-assign]
            provider._is_transport_event)
        provider._decode_pdu = _checked(provider._decode_pdu)  # type: ignore[method-assign]
        _installed = True
