"""Expected network events are one log line each, without traceback, and a burst from one
peer is a few lines: raw-socket peers that reset, hang up mid-PDU, send garbage, are
refused or vanish mid-association, against the running SCP."""

from __future__ import annotations

import logging
import re
import secrets
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest

from pacs_node.dimse._logfilter import MAX_LINE, NetworkLogFilter, install_network_log_filter

from . import raw_peer as rp
from .dimse_helpers import AE_TITLE, SCU_AE, Node, run_dcmtk, wait_for

BURST = 50
PER_KIND = 10  # NetworkLogFilter's default cap per peer and kind of line


def _item(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(payload)) + payload


def associate_rq(called: str = AE_TITLE, calling: str = SCU_AE) -> bytes:
    """An A-ASSOCIATE-RQ PDU proposing Verification in Implicit VR Little Endian."""
    context = _item(0x20, b"\x01\x00\x00\x00" + _item(0x30, b"1.2.840.10008.1.1")
                    + _item(0x40, b"1.2.840.10008.1.2"))
    body = (b"\x00\x01\x00\x00" + called.encode().ljust(16) + calling.encode().ljust(16)
            + b"\x00" * 32 + _item(0x10, b"1.2.840.10008.3.1.1.1") + context
            + _item(0x50, _item(0x51, struct.pack(">I", 16384))))
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def _connect(node: Node) -> socket.socket:
    return socket.create_connection(("127.0.0.1", node.port), timeout=10)


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a crashed or impatient peer does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _drain(sock: socket.socket) -> bytes:
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except OSError:
        pass
    return received


def reset_at_once(node: Node) -> None:
    _reset(_connect(node))


def reset_after_half_a_request(node: Node) -> None:
    sock = _connect(node)
    sock.sendall(associate_rq()[:40])
    _reset(sock)


def close_after_half_a_request(node: Node) -> None:
    with _connect(node) as sock:
        sock.sendall(associate_rq()[:40])
        sock.shutdown(socket.SHUT_WR)
        _drain(sock)


def not_a_pdu(size: int = 510) -> bytes:
    """Bytes pynetdicom reads 6 at a time as "Unknown PDU type" (before: one ERROR line per
    6 bytes): no valid PDU type, and lengths too small for the PDU length guard."""
    chunks = (bytes([0x08 + secrets.randbelow(0xF8), 0, 0, secrets.randbelow(16)])
              + secrets.token_bytes(2) for _ in range(size // 6))
    return b"".join(chunks)


def garbage(node: Node) -> None:
    with _connect(node) as sock:
        sock.sendall(not_a_pdu())
        sock.shutdown(socket.SHUT_WR)
        _drain(sock)


def garbage_then_reset(node: Node) -> None:
    sock = _connect(node)
    sock.sendall(secrets.token_bytes(512))
    _reset(sock)


def refused(node: Node) -> None:
    with _connect(node) as sock:
        sock.sendall(associate_rq(called="SOMEONEELSE"))
        assert sock.recv(6)[:1] == b"\x03"  # A-ASSOCIATE-RJ


def vanish_mid_association(node: Node) -> None:
    sock = _connect(node)
    sock.sendall(associate_rq())
    assert sock.recv(6)[:1] == b"\x02"  # A-ASSOCIATE-AC: established, then gone
    _reset(sock)


PEERS: dict[str, Callable[[Node], None]] = {
    "reset": reset_at_once,
    "reset-after-half-a-request": reset_after_half_a_request,
    "close-after-half-a-request": close_after_half_a_request,
    "garbage": garbage,
    "garbage-then-reset": garbage_then_reset,
    "refused": refused,
    "vanish-mid-association": vanish_mid_association,
}


def _settled(node: Node) -> None:
    """Wait until the node has taken every connection made so far and ended them: a
    C-ECHO behind them in the listen queue is answered only once they are accepted (the
    queue is first in, first out; a connect returns before the node accepts it)."""
    assert echo_works(node)
    wait_for(lambda: not node.server._server.active_associations,  # noqa: SLF001
             20, "the hostile connections to end")


def echo_works(node: Node) -> bool:
    result = run_dcmtk("echoscu", "-aet", SCU_AE, "-aec", AE_TITLE, "127.0.0.1",
                       str(node.port), timeout=60)
    return result.returncode == 0


def _no_tracebacks(records: list[logging.LogRecord]) -> None:
    for record in records:
        assert record.exc_info is None and record.exc_text is None, record.getMessage()
        assert "Traceback" not in record.getMessage()


@pytest.mark.parametrize("kind", sorted(PEERS))
def test_a_burst_from_one_peer_is_a_few_lines_without_traceback(
        node: Node, kind: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    for _ in range(BURST):
        PEERS[kind](node)
    _settled(node)
    records = list(caplog.records)
    _no_tracebacks(records)
    assert all(r.levelno <= logging.WARNING for r in records), \
        [(r.levelname, r.getMessage()) for r in records if r.levelno > logging.WARNING]
    # Each kind of line at most PER_KIND times: a few kinds per event, not BURST x lines.
    kinds = Counter(re.sub(r"\d+", "#", str(r.msg)) for r in records)
    assert max(kinds.values(), default=0) <= PER_KIND, kinds
    assert len(records) <= 6 * PER_KIND, kinds
    if kind != "reset":  # a reset before any byte may pass unlogged: nothing was said
        assert records, "the events are still logged"
        assert any("127.0.0.1" in r.getMessage() for r in records), "lines name the peer"
    assert echo_works(node)


def test_one_connection_flooding_the_log_is_capped(node: Node,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Random bytes read as a PDU header declaring gigabytes: the PDU guard aborts; one
    such connection logged tens of thousands of lines (the guard peeks the same header
    again until the ARTIM timer closes the connection)."""
    caplog.set_level(logging.INFO)
    with _connect(node) as sock:
        sock.sendall(b"\xfa\x00" + struct.pack(">I", 0x48454C4C) + secrets.token_bytes(506))
        sock.shutdown(socket.SHUT_WR)
        _drain(sock)
    _settled(node)
    records = list(caplog.records)
    _no_tracebacks(records)
    kinds = Counter(re.sub(r"\d+", "#", str(r.msg)) for r in records)
    assert records and max(kinds.values()) <= PER_KIND, kinds
    assert echo_works(node)


def test_a_mixed_burst_then_one_summary_per_kind(node: Node,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    for _ in range(2 * PER_KIND):  # 140 connections, every kind past its cap
        for peer in PEERS.values():
            peer(node)
    _settled(node)
    burst = list(caplog.records)
    _no_tracebacks(burst)
    kinds = Counter(re.sub(r"\d+", "#", str(r.msg)) for r in burst)
    assert max(kinds.values()) <= PER_KIND, kinds
    caplog.clear()
    install_network_log_filter().flush()  # what a server start (or a minute later) reports
    summaries = [r.getMessage() for r in caplog.records]
    assert summaries and all("similar lines suppressed" in s for s in summaries), summaries
    assert all(s.startswith("127.0.0.1: ") for s in summaries)
    assert echo_works(node)


# -- the filter itself, with pynetdicom's own log calls ---------------------------------------

class _PeerThread(threading.Thread):
    """Runs a function as if in the DUL thread of an association with ``host``."""

    def __init__(self, host: str, target: Callable[[], None]) -> None:
        super().__init__(target=target)
        self.assoc = SimpleNamespace(is_acceptor=True,
                                     requestor=SimpleNamespace(address=host, port=40404))


def _as_peer(host: str, target: Callable[[], None]) -> None:
    thread = _PeerThread(host, target)
    thread.start()
    thread.join(10)


@pytest.fixture
def clock() -> SimpleNamespace:
    return SimpleNamespace(now=1000.0)


@pytest.fixture
def dul(clock: SimpleNamespace) -> Iterator[logging.Logger]:
    """pynetdicom's DUL logger with a fresh filter on a fake clock."""
    logger = logging.getLogger("pynetdicom.dul")
    saved = list(logger.filters)
    for old in saved:
        logger.removeFilter(old)
    logger.addFilter(NetworkLogFilter(per_peer=3, window_s=60, clock=lambda: clock.now))
    try:
        yield logger
    finally:
        for f in list(logger.filters):
            logger.removeFilter(f)
        for old in saved:
            logger.addFilter(old)


def test_a_reset_is_one_info_line(dul: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    def pynetdicom_on_reset() -> None:  # dul.py, READ_PDU_EXC_A
        try:
            raise ConnectionResetError(104, "Connection reset by peer")
        except OSError as exc:
            dul.error("Connection closed before the entire PDU was received")
            dul.exception(exc)

    _as_peer("10.1.2.3", pynetdicom_on_reset)
    (record,) = caplog.records
    assert record.levelno == logging.INFO and record.exc_info is None
    assert record.getMessage() == ("10.1.2.3:40404: connection closed before a whole PDU "
                                   "arrived (ConnectionResetError: [Errno 104] Connection "
                                   "reset by peer)")


def test_malformed_input_is_one_warning_and_a_bug_keeps_its_traceback(
        dul: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    def undecodable_pdu() -> None:  # dul.py, READ_PDU_EXC_F
        try:
            raise ValueError("bad item length")
        except Exception as exc:
            dul.error("Unable to decode the received PDU data")
            dul.exception(exc)

    def a_bug() -> None:  # dul.py run_reactor
        try:
            raise KeyError("state")
        except Exception as exc:
            dul.error("Exception in DUL.run(), aborting association")
            dul.exception(exc)

    _as_peer("10.1.2.3", undecodable_pdu)
    _as_peer("10.1.2.4", a_bug)
    malformed, bug = caplog.records
    assert malformed.levelno == logging.WARNING and malformed.exc_info is None
    assert "sent a PDU that cannot be decoded (ValueError: bad item length)" in \
        malformed.getMessage()
    assert bug.levelno == logging.ERROR and bug.exc_info is not None  # ours to fix
    assert "Exception in DUL.run()" in bug.getMessage() and "10.1.2.4" in bug.getMessage()


def test_garbage_is_one_line_per_connection(dul: logging.Logger,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    def garbage_connection() -> None:  # dul.py READ_PDU_EXC_C, once per 6 bytes read
        for pdu_type in range(0x40, 0x60):
            dul.error(f"Unknown PDU type received '0x{pdu_type:02X}'")

    _as_peer("10.1.2.3", garbage_connection)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage() == ("10.1.2.3:40404: sent bytes that are not a DICOM PDU "
                                   "(type 0x40); association aborted")


def test_lines_per_peer_are_capped_then_summarised(dul: logging.Logger, clock: SimpleNamespace,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    def short_pdu() -> None:  # dul.py READ_PDU_EXC_E
        dul.error("The received PDU is shorter than expected (42 of 206 bytes received)")

    for _ in range(20):
        _as_peer("10.1.2.3", short_pdu)
    _as_peer("10.9.9.9", short_pdu)  # another peer has its own allowance
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3 + 1
    assert sum("10.1.2.3" in m for m in messages) == 3
    assert "connection closed in the middle of a PDU (42 of 206 bytes received)" in messages[0]

    caplog.clear()
    clock.now += 61
    _as_peer("10.1.2.3", short_pdu)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == ("10.1.2.3: 17 similar lines suppressed in 60 s, the first: "
                           "10.1.2.3:40404: connection closed in the middle of a PDU (42 of "
                           "206 bytes received)")
    assert caplog.records[0].levelno == logging.WARNING
    assert "10.1.2.3:40404: connection closed in the middle" in messages[1]
    assert len(messages) == 2


def test_records_outside_an_association_pass_untouched(
        dul: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for _ in range(10):
        dul.warning("Attempted to send data over closed connection")
    assert len(caplog.records) == 10  # no peer known: no cap


def test_filter_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="per_peer"):
        NetworkLogFilter(per_peer=0)
    with pytest.raises(ValueError, match="window_s"):
        NetworkLogFilter(window_s=0)


def test_debug_lines_are_not_capped(dul: logging.Logger,
                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    def chatty() -> None:
        for n in range(10):
            dul.debug("PDU dump line %d", n)

    _as_peer("10.1.2.3", chatty)
    assert len(caplog.records) == 10  # asked for at DEBUG: all of it


# -- what pynetdicom quotes of a peer's values (found by the hostile battery) ---------------

@pytest.mark.parametrize("calling", [b"\xc3\xa9\xff\x80", b"X\nERROR fake", b"EVIL\x07\x1b[2J"],
                         ids=["not-ascii", "newline", "escape-sequence"])
def test_an_ae_title_never_writes_a_line_or_a_traceback(
        node: Node, calling: bytes, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with _connect(node) as sock:
        sock.sendall(rp.associate_rq([(1, "1.2.840.10008.1.1", ["1.2.840.10008.1.2"])],
                                     calling=calling))
        _drain_until_answer(sock)
    _settled(node)
    records = list(caplog.records)
    _no_tracebacks(records)
    for record in records:
        message = record.getMessage()
        assert "\n" not in message and "\x1b" not in message and "\x07" not in message, \
            message
        assert record.levelno <= logging.WARNING, message
    assert echo_works(node)


def test_a_huge_value_is_cut_in_the_log(node: Node, caplog: pytest.LogCaptureFixture) -> None:
    """A 60,000-character UID in a role selection item was one 60 KB line."""
    caplog.set_level(logging.INFO)
    role = rp.item(0x54, struct.pack(">H", 60000) + b"1" * 60000 + b"\x01\x01")
    with _connect(node) as sock:
        sock.sendall(rp.associate_rq([(1, "1.2.840.10008.1.1", ["1.2.840.10008.1.2"])],
                                     user=rp.user_information(extra=role)))
        _drain_until_answer(sock)
    _settled(node)
    lengths = [len(r.getMessage()) for r in caplog.records]
    assert lengths and max(lengths) < MAX_LINE + 100, max(lengths)


def _drain_until_answer(sock: socket.socket) -> None:
    """Read the node's first PDU (an A-ASSOCIATE-AC or -RJ, or an A-ABORT), then leave."""
    sock.settimeout(5)
    assert sock.recv(6), "the node did not answer"
