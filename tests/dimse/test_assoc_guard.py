"""Association-level guards: a malformed association request is answered at once and frees
its slot, idle connections do not lock modalities out, and connections that never
associate cannot grow the node's threads without bound."""

from __future__ import annotations

import resource
import socket
import threading
import time
from collections.abc import Callable

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AddressInformation

from pacs_node.dimse import StoreStatus

from . import raw_peer as rp
from .dimse_helpers import AE_TITLE, SCU_AE, Node, make_instance, wait_for

IMPLICIT = "1.2.840.10008.1.2"
A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ABORT = 0x02, 0x03, 0x07


def association_request(port: int, contexts: list[tuple[int, str, list[str]]]) -> bytes:
    """An A-ASSOCIATE-RQ PDU; context IDs pynetdicom would refuse to build are patched into
    the encoded bytes."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = SCU_AE
    primitive.called_ae_title = AE_TITLE
    primitive.calling_presentation_address = AddressInformation("127.0.0.1", 1)
    primitive.called_presentation_address = AddressInformation("127.0.0.1", port)
    built = []
    for index, (_, abstract, syntaxes) in enumerate(contexts):
        context = build_context(abstract, syntaxes)
        context.context_id = 2 * index + 1
        built.append(context)
    primitive.presentation_context_definition_list = built
    limit = MaximumLengthNotification()
    limit.maximum_length_received = 16384
    primitive.user_information = [limit]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    raw = bytearray(pdu.encode())
    at = 74  # header (6) + fixed fields (68): the variable items start here
    for context_id, _, _ in contexts:
        at = raw.index(b"\x20\x00", at)
        raw[at + 4] = context_id
        at += 4
    return bytes(raw)


def answer(sock: socket.socket, seconds: float) -> int | None:
    """The type of the first PDU the node sends, 0 if it closed without one, None if it
    said nothing within ``seconds``."""
    sock.settimeout(seconds)
    try:
        data = sock.recv(1)
    except TimeoutError:
        return None
    except ConnectionResetError:
        return 0
    return data[0] if data else 0


def acceptor_threads(node: Node) -> int:
    server = node.server._server
    return sum(1 for t in threading.enumerate()
               if isinstance(t, Association) and getattr(t, "_server", None) is server)


def echo(node: Node, timeout: float = 5.0) -> bool:
    ae = AE(ae_title=SCU_AE)
    ae.add_requested_context(Verification)
    ae.acse_timeout = timeout
    assoc = ae.associate("127.0.0.1", node.port, ae_title=AE_TITLE)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0
    finally:
        assoc.release()


MALFORMED: dict[str, tuple[list[tuple[int, str, list[str]]], set[int]]] = {
    # what pynetdicom did: DUL thread killed, no answer, slot held until the ACSE timeout
    "context ID 0": ([(0, Verification, [IMPLICIT])], {A_ABORT}),
    "even context ID": ([(2, Verification, [IMPLICIT])], {A_ABORT}),
    # acceptor thread killed (IndexError), connection left open without an answer
    "context without transfer syntax": ([(1, Verification, [])], {A_ASSOCIATE_RJ}),
    # malformed by PS3.8 and refused, not negotiated
    "duplicate context ID": ([(1, Verification, [IMPLICIT]), (1, Verification, [IMPLICIT])],
                             {A_ASSOCIATE_RJ}),
    "no presentation context": ([], {A_ASSOCIATE_RJ}),
    "context without abstract syntax": ([(1, "", [IMPLICIT])], {A_ASSOCIATE_RJ}),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_association_request_is_answered_at_once(node: Node, case: str) -> None:
    contexts, expected = MALFORMED[case]
    with socket.create_connection(("127.0.0.1", node.port)) as sock:
        sock.sendall(association_request(node.port, contexts))
        started = time.monotonic()
        got = answer(sock, 2.0)
        assert got in expected, f"{case}: answered {got!r} after " \
            f"{time.monotonic() - started:.1f} s"
    # Its slot and threads are freed at once, not after the ACSE timeout.
    wait_for(lambda: acceptor_threads(node) == 0, 2.0, "the refused association's thread")
    assert node.send(make_instance()) == [StoreStatus.SUCCESS]


def test_forty_idle_connections_do_not_lock_a_modality_out(
        make_node: Callable[..., Node]) -> None:
    node = make_node(max_associations=4)
    idle = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(20)]
    half_open = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(20)]
    try:
        for sock in half_open:
            sock.sendall(b"\x01\x00\x00\x00")  # two thirds of a PDU header, then nothing
        wait_for(lambda: acceptor_threads(node) >= 40, 5.0, "40 connections at the node")
        started = time.monotonic()
        assert node.send(make_instance()) == [StoreStatus.SUCCESS]
        assert echo(node)
        assert time.monotonic() - started < 5.0
    finally:
        for sock in idle + half_open:
            sock.close()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def test_forty_idle_connections_leave_the_node_its_cpu(
        make_node: Callable[..., Node]) -> None:
    """Connections that have sent nothing wait on their socket, not in a 1 ms poll: 40 of
    them kept pynetdicom's reactors busy with more than one core of two, and every other
    peer's answers slowed down. The test process is the node here; it only sleeps."""
    node = make_node()
    idle = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(40)]
    try:
        wait_for(lambda: acceptor_threads(node) >= 40, 5.0, "40 connections at the node")
        cpu, started = _cpu_seconds(), time.monotonic()
        time.sleep(2.0)  # the measurement window itself, not a wait for a condition
        share = (_cpu_seconds() - cpu) / (time.monotonic() - started)
        assert acceptor_threads(node) >= 40, "the connections closed during the measurement"
        assert share < 0.4, f"40 idle connections cost {share:.0%} of a core"
        # ... and the first byte of a request is still read at once.
        assert echo(node)
    finally:
        for sock in idle:
            sock.close()


def test_connections_that_never_associate_are_bounded(
        make_node: Callable[..., Node]) -> None:
    node = make_node(max_pending_connections=8)
    held = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(40)]
    try:
        # Over the pool, the node closes a connection at once, unread.
        closed = sum(1 for sock in held if answer(sock, 0.5) == 0)
        assert closed >= 40 - 8 - 1, closed
        assert acceptor_threads(node) <= 8
        # The pool empties by the ACSE timeout and a modality gets in again.
        wait_for(lambda: acceptor_threads(node) == 0, 10.0, "the idle connections to close")
        assert node.send(make_instance()) == [StoreStatus.SUCCESS]
    finally:
        for sock in held:
            sock.close()


def test_the_association_limit_counts_associations_not_sockets(
        make_node: Callable[..., Node]) -> None:
    node = make_node(max_associations=2)
    idle = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(10)]
    first = node.associate()
    second = node.associate()
    try:
        assert first.is_established and second.is_established  # idle sockets do not count
        third = node.associate()
        assert third.is_rejected  # "local limit exceeded"
        first.release()
        wait_for(lambda: not first.is_alive(), 5.0, "the released association to end")
        fourth = node.associate()
        assert fourth.is_established
        fourth.release()
    finally:
        second.release()
        for sock in idle:
            sock.close()


@pytest.mark.parametrize("application", [None, b"", b"1.2.3.4"],
                         ids=["missing", "empty", "another"])
def test_a_request_without_the_dicom_application_context_is_rejected(
        node: Node, application: bytes | None) -> None:
    """pynetdicom accepted it (found by the hostile battery): PS3.8 9.3.4 says reject,
    "application context name not supported"."""
    with rp.RawPeer(node.port) as peer:
        peer.send(rp.associate_rq([(1, Verification, [IMPLICIT])], application=application))
        kind, body = peer.read_pdu(time.monotonic() + 2.0)
    assert (kind, body[1:4]) == (A_ASSOCIATE_RJ, b"\x01\x01\x02")
    assert echo(node)
