"""Expected network events in one log line each, and no flood of lines from one peer.

pynetdicom 3.0.4 logs what any network peer can cause at ERROR, some of it with a
traceback: a connection reset is "Connection closed before the entire PDU was received"
then ``LOGGER.exception`` of the ``ConnectionResetError`` (``dul.py`` READ_PDU_EXC_A/D), an
undecodable PDU or DIMSE message the same way (READ_PDU_EXC_F, ``dimse.py``), and garbage
is one "Unknown PDU type received" per 6 bytes read (~30 lines for 512 random bytes). One
hostile run wrote 33,500 lines, 932 of them tracebacks. Here a traceback means a bug.

:class:`NetworkLogFilter`, put on pynetdicom's loggers and on ours (``pacs_node.dimse.*``,
``pacs_node.tls``) by :func:`install_network_log_filter`, rewrites those records as one
INFO (the peer went away) or WARNING (the peer sent something malformed) line naming the
peer, without traceback; tracebacks of other exceptions are kept. Each kind of line from
one peer address is capped at ``per_peer`` lines per ``window_s`` seconds; the rest are
counted and reported as one "suppressed" line when the window has passed (on the next
record, or :meth:`flush`).
Our own lines logged in a peer's association thread join the cap when they are warnings
(refusals, aborts, guards) or pass ``extra=PEER_EVENT`` (association accepted, released).

pynetdicom also quotes what the peer sent, whole and raw: ``utils.decode_bytes`` logs the
``UnicodeDecodeError`` of an AE title that is not ASCII with its traceback, and its value
checks log "Invalid 'Calling AE Title' value ..." at ERROR with the value as sent, so a
calling AE title ``X\nERROR ...`` wrote a line of its own making, and a 60 KB UID in a
role selection item a 60 KB line. The filter makes the first a WARNING without traceback,
logs pynetdicom's ERROR lines about a peer's values as WARNING, and writes control
characters escaped and at most :data:`MAX_LINE` characters of every line it sees (ours
quote UIDs and AE titles a peer sent, too).
"""

from __future__ import annotations

import errno
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["MAX_LINE", "PEER_EVENT", "NetworkLogFilter", "install_network_log_filter",
           "is_network_error", "printable"]

log = logging.getLogger(__name__)

#: ``extra=`` for our own INFO lines about a peer's connection: capped per peer like
#: pynetdicom's and like our warnings (only on loggers the filter is installed on).
PEER_EVENT: Final[Mapping[str, object]] = {"peer_event": True}

_NETWORK_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED,
                             errno.ETIMEDOUT, errno.ENOTCONN, errno.ESHUTDOWN,
                             errno.EHOSTUNREACH, errno.ENETUNREACH})
# pynetdicom 3.0.4 logs these at ERROR, then LOGGER.exception(cause) on the next line.
# Value: our wording, and whether the cause is the peer's doing whatever it is (a PDU or
# DIMSE message pynetdicom cannot decode is malformed input, not a bug of ours).
_HEADERS: Mapping[str, tuple[str, bool]] = {
    "Connection closed before the entire PDU was received":  # dul.py READ_PDU_EXC_A, _D
        ("connection closed before a whole PDU arrived", False),
    "Unable to decode the received PDU data": ("sent a PDU that cannot be decoded", True),
    "Received an invalid DIMSE message":  # dimse.py; also after _guard empties a command
        ("sent a DIMSE message that cannot be decoded", True),
    "Exception in DUL.run(), aborting association":
        ("association aborted after an error in its DUL thread", False),
}
_UNKNOWN_PDU = re.compile(r"Unknown PDU type received '(0x[0-9A-Fa-f]{2})'")  # READ_PDU_EXC_C
_SHORT_PDU = re.compile(r"The received PDU is shorter than expected \((.*)\)")  # READ_PDU_EXC_E
_NUMBERS = re.compile(r"0x[0-9A-Fa-f]+|\d+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Most characters of one of pynetdicom's lines that are written (what a peer sent can be
#: megabytes).
MAX_LINE = 500


def printable(text: str, limit: int = MAX_LINE) -> str:
    """``text`` with control characters escaped (``\\x0a``) and cut after ``limit``
    characters: what a peer sent, made fit for one log line."""
    cut = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text[:limit])
    return cut + (f"... ({len(text)} characters)" if len(text) > limit else "")


def is_network_error(exc: BaseException | None) -> bool:
    """Whether ``exc`` is the network failing or the peer leaving (reset, broken pipe,
    timeout, TLS failure), as opposed to a bug."""
    if isinstance(exc, ConnectionError | TimeoutError | ssl.SSLError):
        return True
    return isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS


def _peer() -> tuple[str, str]:
    """``(host, "host:port")`` of the remote end of the association whose thread (its
    reactor or its DUL) is running, or ``("", "unknown peer")``."""
    thread: Any = threading.current_thread()
    assoc = getattr(thread, "assoc", thread)  # a DUL thread knows its association
    try:
        remote = assoc.requestor if assoc.is_acceptor else assoc.acceptor
        host = str(remote.address)
        return host, f"{host}:{remote.port}"
    except Exception:  # not an association thread, or no address yet
        return "", "unknown peer"


@dataclass
class _Window:
    start: float
    lines: int = 0
    suppressed: int = 0
    level: int = logging.INFO
    example: str = ""  # the first line suppressed


class NetworkLogFilter(logging.Filter):
    """Rewrites pynetdicom's network-event records and caps lines per peer (see the
    module docstring).

    Args:
        per_peer: lines of one kind let through per peer address and window.
        window_s: the window, in seconds.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, *, per_peer: int = 10, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        if per_peer < 1:
            raise ValueError(f"per_peer must be at least 1, got {per_peer}")
        if window_s <= 0:
            raise ValueError(f"window_s must be positive, got {window_s}")
        self.per_peer = per_peer
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str], _Window] = {}
        self._next_sweep = 0.0
        self._thread = threading.local()  # header awaiting its exception; PDU garbage seen

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            if record.name.startswith("pynetdicom") and not self._rewrite(record):
                return False
            if record.levelno >= logging.INFO:  # DEBUG dumps PDUs, lines and all
                self._sanitise(record)
            if (record.name.startswith("pynetdicom") or record.levelno >= logging.WARNING
                    or getattr(record, "peer_event", False)):
                return self._within_cap(record)
        except Exception:  # a log filter must never break the code that logs
            return True
        return True

    # -- rewriting pynetdicom's records ----------------------------------------------------

    def _set(self, record: logging.LogRecord, level: int, msg: str, *args: object) -> None:
        record.levelno, record.levelname = level, logging.getLevelName(level)
        record.msg, record.args = msg, args
        record.exc_info, record.exc_text = None, None

    def _rewrite(self, record: logging.LogRecord) -> bool:
        """Rewrite ``record`` in place; False drops it."""
        state = self._thread
        header = getattr(state, "header", None)
        state.header = None
        message = record.getMessage()
        if record.exc_info is None and message in _HEADERS:
            state.header = message  # said with the exception on the next line
            return False
        _, where = _peer()
        if record.exc_info is not None and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            if isinstance(exc, UnicodeError) and record.name == "pynetdicom.utils":
                # utils.decode_bytes: an AE title or UID the peer sent is not ASCII.
                self._set(record, logging.WARNING, "%s: sent a value that is not ASCII (%s)",
                          where, type(exc).__name__)
                return True
            wording, peer_input = _HEADERS.get(header or "", (header or "network error",
                                                              False))
            if is_network_error(exc):
                self._set(record, logging.INFO, "%s: %s (%s: %s)", where, wording,
                          type(exc).__name__, exc)
            elif peer_input:
                self._set(record, logging.WARNING, "%s: %s (%s: %s)", where, wording,
                          type(exc).__name__, exc)
            elif header is not None:  # a bug: keep its traceback, say what it interrupted
                record.msg, record.args = "%s: %s: %s", (where, header, message)
            return True
        if header is not None:  # pynetdicom changed: the header is not lost
            record.msg, record.args = "%s; %s", (header, message)
            return True
        if (match := _UNKNOWN_PDU.fullmatch(message)) is not None:
            if getattr(state, "garbage_seen", False):
                return False  # one line per connection (this DUL thread is the connection)
            state.garbage_seen = True
            self._set(record, logging.WARNING,
                      "%s: sent bytes that are not a DICOM PDU (type %s); association aborted",
                      where, match.group(1))
        elif (match := _SHORT_PDU.fullmatch(message)) is not None:
            self._set(record, logging.WARNING, "%s: connection closed in the middle of a PDU "
                      "(%s)", where, match.group(1))
        return True

    def _sanitise(self, record: logging.LogRecord) -> None:
        """Escape control characters and cut what a line quotes of a peer's values;
        pynetdicom's ERROR lines about those values (``pynetdicom.utils``) become
        WARNINGs."""
        if record.name == "pynetdicom.utils" and record.levelno == logging.ERROR and \
                record.exc_info is None:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        message = record.getMessage()
        if len(message) <= MAX_LINE and not _CONTROL.search(message):
            return
        record.msg, record.args = printable(message), None

    # -- the cap per peer ------------------------------------------------------------------

    def _within_cap(self, record: logging.LogRecord) -> bool:
        host, _ = _peer()
        if not host or record.levelno < logging.INFO:  # DEBUG is asked for: all of it
            return True
        kind = _NUMBERS.sub("#", str(record.msg))
        now = self._clock()
        with self._lock:
            due = self._expire(now) if now >= self._next_sweep else []
            window = self._windows.get((host, kind))
            if window is None or now - window.start >= self.window_s:
                if window is not None and window.suppressed:
                    due.append(((host, kind), window))
                window = self._windows[host, kind] = _Window(now)
            allowed = window.lines < self.per_peer
            if allowed:
                window.lines += 1
            else:
                window.suppressed += 1
                window.level = max(window.level, record.levelno)
                if not window.example:
                    window.example = record.getMessage()
        self._report(due)
        return allowed

    def _expire(self, now: float) -> list[tuple[tuple[str, str], _Window]]:
        """Drop windows that have passed (once a second at most: a scan from many
        addresses makes many windows); return those with suppressed lines."""
        self._next_sweep = now + 1.0
        done = [(key, w) for key, w in self._windows.items() if now - w.start >= self.window_s]
        for key, _ in done:
            del self._windows[key]
        return [(key, w) for key, w in done if w.suppressed]

    def _report(self, due: list[tuple[tuple[str, str], _Window]]) -> None:
        for (host, _), window in due:
            log.log(window.level, "%s: %d similar lines suppressed in %.0f s, the first: %s",
                    host, window.suppressed, self.window_s, window.example)

    def flush(self) -> None:
        """Report every suppressed count now and start all windows afresh."""
        with self._lock:
            due = [(key, w) for key, w in self._windows.items() if w.suppressed]
            self._windows.clear()
        self._report(due)


def _loggers() -> list[logging.Logger]:
    """pynetdicom's loggers and ours of the DIMSE package (a filter on a logger sees only
    the records logged to that logger, not those of its children)."""
    names = {"pynetdicom", "pynetdicom.dul", "pynetdicom.acse", "pynetdicom.association",
             "pynetdicom.dimse", "pynetdicom.events", "pynetdicom.fsm", "pynetdicom.transport",
             "pynetdicom.service_class", "pynetdicom.service_class_n"}
    names.update(name for name in list(logging.root.manager.loggerDict)
                 if name.startswith(("pynetdicom.", "pacs_node.dimse.", "pacs_node.tls")))
    names.discard(__name__)
    return [logging.getLogger(name) for name in sorted(names)]


def install_network_log_filter() -> NetworkLogFilter:
    """Put the process's one :class:`NetworkLogFilter` on pynetdicom's loggers and on the
    ``pacs_node.dimse.*`` and ``pacs_node.tls`` loggers (where it is not yet), report what
    it suppressed so far and start its counts afresh. Called when a DIMSE server starts;
    returns the filter."""
    targets = _loggers()
    found = next((f for logger in targets for f in logger.filters
                  if isinstance(f, NetworkLogFilter)), None)
    shared = found if found is not None else NetworkLogFilter()
    for logger in targets:
        if shared not in logger.filters:
            logger.addFilter(shared)
    shared.flush()
    return shared
