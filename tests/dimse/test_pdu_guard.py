"""What a peer can make the node read is bounded: a PDU over the advertised length is
aborted before it is read, a stalled or silent connection is closed, and a good client
keeps getting through."""

from __future__ import annotations

import logging
import socket
import struct
import time

import numpy as np
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.pdu_primitives import MaximumLengthNotification

from pacs_node.dimse import StoreStatus
from pacs_node.dimse._pdu_guard import STALL_SECONDS
from pacs_node.dimse._server import ACSE_TIMEOUT_S

from . import raw_peer as rp
from .dimse_helpers import CR_IMAGE, Node, make_instance


def _closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the node closed (or aborted) the connection, None if it did not."""
    started = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - started < seconds:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - started
        if data == b"" or data[:1] == b"\x07":  # closed, or an A-ABORT PDU
            return time.monotonic() - started
    return None


def test_an_association_request_declaring_1_gib_is_aborted_unread(
        node: Node, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    with socket.create_connection(("127.0.0.1", node.port)) as sock:
        sock.sendall(b"\x01\x00" + struct.pack(">L", 1 << 30) + b"\x00" * 4096)
        closed = _closed_within(sock, 3.0)
    assert closed is not None and closed < 2.0, closed
    # Closed once, not read again and again: one line about it.
    assert len([r for r in caplog.records if "declares" in r.getMessage()]) == 1
    assert node.send(make_instance()) == [StoreStatus.SUCCESS]


def test_a_p_data_pdu_over_the_advertised_length_is_aborted(make_node) -> None:  # noqa: ANN001
    node: Node = make_node(max_pdu_bytes=16384)
    big = make_instance(Rows=512, Columns=512,
                        PixelData=np.zeros(512 * 512, np.uint8).tobytes())
    assoc = node.associate([(CR_IMAGE, [ExplicitVRLittleEndian])])
    assert assoc.is_established
    for item in assoc.acceptor.user_information:  # this peer ignores what the node advertised
        if isinstance(item, MaximumLengthNotification):
            item.maximum_length_received = 0  # one P-DATA PDU for the whole data set
    try:
        status = assoc.send_c_store(big)
    finally:
        if assoc.is_alive():
            assoc.release()
    assert "Status" not in status  # no Success: the association was aborted
    assert node.instances() == []
    assert node.send(make_instance()) == [StoreStatus.SUCCESS]


def test_a_stalled_header_and_a_silent_connection_are_closed(node: Node) -> None:
    with socket.create_connection(("127.0.0.1", node.port)) as silent, \
            socket.create_connection(("127.0.0.1", node.port)) as stalled:
        stalled.sendall(b"\x01\x00\x00")  # half a PDU header, then nothing
        assert node.send(make_instance()) == [StoreStatus.SUCCESS]  # others get through
        limit = max(ACSE_TIMEOUT_S, STALL_SECONDS) + 5
        assert _closed_within(silent, limit) is not None, "a silent connection stayed open"
        assert _closed_within(stalled, limit) is not None, "a stalled header stayed open"


# -- found by the hostile battery (test_hostile_battery) --------------------------------------

ECHO = rp.p_data([(1, 0x03, rp.command_set({
    "AffectedSOPClassUID": "1.2.840.10008.1.1", "CommandField": 0x0030, "MessageID": 1,
    "CommandDataSetType": 0x0101}))])
VERIFICATION_RQ = rp.associate_rq([(1, "1.2.840.10008.1.1", ["1.2.840.10008.1.2"])])


def test_an_empty_p_data_pdu_is_aborted(node: Node) -> None:
    """pynetdicom took a P-DATA-TF without a presentation data value as nothing and
    waited; PS3.8 9.3.5 wants one at least."""
    with rp.RawPeer(node.port) as peer:
        peer.associate(VERIFICATION_RQ)
        peer.send(rp.pdu(rp.P_DATA_TF, b""))
        answer = peer.answer(time.monotonic(), 2.0, until_final=False)
    assert answer.kind in ("A-ABORT", "closed"), answer
    assert node.send(make_instance()) == [StoreStatus.SUCCESS]


@pytest.mark.parametrize("tail", [b"\x04\x00\x00", rp.pdu(rp.P_DATA_TF, b"\x00" * 40,
                                                          length=200)],
                         ids=["part-of-a-header", "a-header-and-part-of-a-body"])
def test_a_request_is_answered_while_the_next_pdu_is_on_its_way(node: Node,
                                                               tail: bytes) -> None:
    """pynetdicom's DUL thread reads and sends: it blocked reading the next PDU (until the
    stall limit) while the answer to the whole one before it waited."""
    with rp.RawPeer(node.port) as peer:
        started = time.monotonic()
        peer.send(VERIFICATION_RQ + tail)
        answer = peer.answer(started, 2.0, until_final=False)
        assert answer.kind == "A-ASSOCIATE-AC", answer
    with rp.RawPeer(node.port) as peer:
        peer.associate(VERIFICATION_RQ)
        started = time.monotonic()
        peer.send(ECHO + tail)
        answer = peer.answer(started, 2.0)
        assert (answer.kind, answer.statuses) == ("response", [0x0000]), answer
        if len(tail) > 6:  # (once is enough: the same reader for header and body)
            # The PDU in progress is still bounded: its stall closes the connection.
            closed = peer.answer(time.monotonic(), STALL_SECONDS + 5, until_final=False)
            assert closed.kind in ("closed", "A-ABORT"), closed
