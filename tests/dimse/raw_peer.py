"""A scripted raw-socket DICOM peer for malformed traffic: it builds PDUs, items and
command sets byte by byte (so each can be wrong on purpose) and reads the node's answers
with deadlines, never blocking longer than told.

Only what the hostile battery needs: A-ASSOCIATE-RQ with full control of every field,
P-DATA-TF with command and data set fragments, Implicit VR Little Endian command sets,
and a reader that turns what comes back into an :class:`Answer`.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.10.4321.99"
A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x04, 0x05, 0x06, 0x07
PDU_NAMES = {A_ASSOCIATE_AC: "A-ASSOCIATE-AC", A_ASSOCIATE_RJ: "A-ASSOCIATE-RJ",
             P_DATA_TF: "P-DATA-TF", A_RELEASE_RQ: "A-RELEASE-RQ",
             A_RELEASE_RP: "A-RELEASE-RP", A_ABORT: "A-ABORT"}
#: What the reader accepts from the node in one PDU (the node sends small PDUs).
MAX_READ_PDU = 8 << 20


# -- building ------------------------------------------------------------------------------

def pdu(kind: int, body: bytes, *, length: int | None = None) -> bytes:
    """A PDU: type, reserved byte, 4-byte big-endian length (``length`` to lie), body."""
    return struct.pack(">BBI", kind, 0, len(body) if length is None else length) + body


def item(kind: int, payload: bytes, *, length: int | None = None) -> bytes:
    """An association item or sub-item: type, reserved, 2-byte length, payload."""
    return struct.pack(">BBH", kind, 0, len(payload) if length is None else length) + payload


def uid_bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def context_item(context_id: int, abstract: str | bytes | None,
                 syntaxes: Sequence[str | bytes]) -> bytes:
    """A presentation context item of an A-ASSOCIATE-RQ (``abstract`` None: no sub-item)."""
    payload = bytes([context_id & 0xFF, 0, 0, 0])
    if abstract is not None:
        payload += item(0x30, uid_bytes(abstract))
    payload += b"".join(item(0x40, uid_bytes(ts)) for ts in syntaxes)
    return item(0x20, payload)


def user_information(max_length: int | None = 16384, *, extra: bytes = b"",
                     implementation: bytes | None = IMPLEMENTATION_UID.encode()) -> bytes:
    """A user information item: maximum length, implementation class UID, ``extra``."""
    payload = b""
    if max_length is not None:
        payload += item(0x51, struct.pack(">I", max_length))
    if implementation is not None:
        payload += item(0x52, implementation)
    return item(0x50, payload + extra)


Context = tuple[int, str | bytes | None, Sequence[str | bytes]]


def associate_rq(contexts: Sequence[Context], *, called: bytes = b"PACSNODE",
                 calling: bytes = b"HOSTILE", version: int = 1,
                 application: bytes | None = APPLICATION_CONTEXT.encode(),
                 user: bytes | None = None, tail: bytes = b"") -> bytes:
    """An A-ASSOCIATE-RQ PDU; every field as given (AE titles padded or cut to 16 bytes)."""
    body = (struct.pack(">HH", version & 0xFFFF, 0) + called[:16].ljust(16)
            + calling[:16].ljust(16) + b"\x00" * 32)
    if application is not None:
        body += item(0x10, application)
    body += b"".join(context_item(*c) for c in contexts)
    body += user_information() if user is None else user
    return pdu(A_ASSOCIATE_RQ, body + tail)


def p_data(pdvs: Iterable[tuple[int, int, bytes]], *, length: int | None = None) -> bytes:
    """A P-DATA-TF PDU of ``(context ID, message control header, data)`` values."""
    body = b"".join(struct.pack(">IBB", len(data) + 2, cid & 0xFF, control) + data
                    for cid, control, data in pdvs)
    return pdu(P_DATA_TF, body, length=length)


RELEASE_RQ = pdu(A_RELEASE_RQ, b"\x00" * 4)
ABORT = pdu(A_ABORT, b"\x00\x00\x00\x00")


def _value(vr: str, value: int | str | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    if vr == "US":
        return struct.pack("<H", int(value))
    if vr == "UL":
        return struct.pack("<I", int(value))
    text = str(value).encode()
    if len(text) % 2:
        text += b"\x00" if vr == "UI" else b" "
    return text


# Command elements the battery uses: keyword -> (tag, VR).
COMMAND_TAGS: dict[str, tuple[int, str]] = {
    "AffectedSOPClassUID": (0x00000002, "UI"),
    "RequestedSOPClassUID": (0x00000003, "UI"),
    "CommandField": (0x00000100, "US"),
    "MessageID": (0x00000110, "US"),
    "MessageIDBeingRespondedTo": (0x00000120, "US"),
    "MoveDestination": (0x00000600, "AE"),
    "Priority": (0x00000700, "US"),
    "CommandDataSetType": (0x00000800, "US"),
    "Status": (0x00000900, "US"),
    "AffectedSOPInstanceUID": (0x00001000, "UI"),
    "RequestedSOPInstanceUID": (0x00001001, "UI"),
    "EventTypeID": (0x00001002, "US"),
    "ActionTypeID": (0x00001008, "US"),
    "MoveOriginatorApplicationEntityTitle": (0x00001030, "AE"),
    "MoveOriginatorMessageID": (0x00001031, "US"),
}


def command_set(elements: dict[str, int | str | bytes | None], *,
                group_length: int | None = None) -> bytes:
    """An Implicit VR Little Endian command set of ``elements`` (keyword -> value; bytes
    are sent as they are; None leaves the element out), in tag order, after a Command
    Group Length (``group_length`` to lie)."""
    encoded = []
    for keyword, value in elements.items():
        if value is None:
            continue
        tag, vr = COMMAND_TAGS[keyword]
        data = _value(vr, value)
        encoded.append((tag, struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(data)) + data))
    body = b"".join(raw for _, raw in sorted(encoded))
    size = len(body) if group_length is None else group_length
    return struct.pack("<HHI", 0, 0, 4) + struct.pack("<I", size) + body


def parse_command(raw: bytes) -> dict[int, bytes]:
    """Tag -> value bytes of an Implicit VR Little Endian command set (stops at damage)."""
    out, pos = {}, 0
    while pos + 8 <= len(raw):
        group, element, length = struct.unpack_from("<HHI", raw, pos)
        out[(group << 16) | element] = raw[pos + 8:pos + 8 + length]
        pos += 8 + length
    return out


# -- reading answers -----------------------------------------------------------------------

@dataclass
class Answer:
    """What the node did with a request: ``kind`` is one of ``response`` (a DIMSE
    response; ``statuses`` lists every status, pending ones first), ``A-ASSOCIATE-AC``,
    ``A-ASSOCIATE-RJ``, ``A-ABORT``, ``A-RELEASE-RP``, ``P-DATA-TF`` (without a whole
    response), ``closed`` (the node closed the connection) or ``none`` (nothing before the
    deadline); ``seconds`` from the request to the answer."""

    kind: str
    seconds: float
    statuses: list[int] = field(default_factory=list)
    detail: str = ""
    port: int = 0  # the peer's own port: the node's log lines name it

    @property
    def answered(self) -> bool:
        return self.kind != "none"

    def __str__(self) -> str:
        statuses = ",".join(f"0x{s:04X}" for s in self.statuses)
        return f"{self.kind}{'[' + statuses + ']' if statuses else ''} after " \
            f"{self.seconds:.2f} s{' ' + self.detail if self.detail else ''}"


class Closed(Exception):
    """The node closed (or reset) the connection."""


class Silent(Exception):
    """Nothing arrived before the deadline."""


class RawPeer:
    """One TCP connection to the node, spoken to byte by byte."""

    def __init__(self, port: int, *, host: str = "127.0.0.1", timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""
        self._command = b""
        self._dataset_expected = False

    @property
    def port(self) -> int:
        """This end's port (the node names its peers by address and port)."""
        try:
            return int(self.sock.getsockname()[1])
        except OSError:
            return 0

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> bool:
        """Send ``data``; False when the node has closed the connection already."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def half_close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _fill(self, size: int, deadline: float) -> None:
        while len(self._buffer) < size:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Silent
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(max(65536, size - len(self._buffer)))
            except TimeoutError:
                raise Silent from None
            except OSError:
                raise Closed from None
            if not chunk:
                raise Closed
            self._buffer += chunk

    def read_pdu(self, deadline: float) -> tuple[int, bytes]:
        """The next whole PDU (type, body). Raises Closed or Silent."""
        self._fill(6, deadline)
        kind, _, length = struct.unpack_from(">BBI", self._buffer)
        if length > MAX_READ_PDU:
            raise ValueError(f"the node sent a PDU declaring {length} bytes")
        self._fill(6 + length, deadline)
        body = self._buffer[6:6 + length]
        self._buffer = self._buffer[6 + length:]
        return kind, body

    def answer(self, started: float, within: float, *, until_final: bool = True) -> Answer:
        """Read until the node answers: a whole DIMSE response with a final status (or,
        with ``until_final`` False, the first PDU), a control PDU, or the connection
        closed. ``within`` seconds from ``started`` at most (then kind ``none``)."""
        deadline = started + within
        statuses: list[int] = []
        try:
            while True:
                kind, body = self.read_pdu(deadline)
                if kind != P_DATA_TF or not until_final:
                    return Answer(PDU_NAMES.get(kind, f"PDU 0x{kind:02X}"),
                                  time.monotonic() - started, statuses,
                                  _control_detail(kind, body))
                final = self._p_data(body, statuses)
                if final:
                    return Answer("response", time.monotonic() - started, statuses)
        except Closed:
            return Answer("closed", time.monotonic() - started, statuses)
        except Silent:
            return Answer("none", time.monotonic() - started, statuses)

    def _p_data(self, body: bytes, statuses: list[int]) -> bool:
        """Take in one P-DATA-TF; True once a response with a final status is whole."""
        pos, final = 0, False
        while pos + 6 <= len(body):
            length = struct.unpack_from(">I", body, pos)[0]
            control = body[pos + 5]
            data = body[pos + 6:pos + 4 + length]
            pos += 4 + length
            if control & 1:  # command fragment
                self._command += data
                if control & 2:
                    command = parse_command(self._command)
                    self._command = b""
                    status = command.get(0x00000900)
                    data_type = command.get(0x00000800, b"\x01\x01")
                    self._dataset_expected = data_type != b"\x01\x01"
                    if status is not None and len(status) == 2:
                        value = struct.unpack("<H", status)[0]
                        statuses.append(value)
                        if value not in (0xFF00, 0xFF01):
                            final = not self._dataset_expected
            elif control & 2:  # last data set fragment
                if self._dataset_expected and statuses and \
                        statuses[-1] not in (0xFF00, 0xFF01):
                    final = True
                self._dataset_expected = False
        return final

    def associate(self, request: bytes, *, within: float = 5.0) -> dict[int, tuple[int, bytes]]:
        """Send an A-ASSOCIATE-RQ that must be accepted; returns accepted presentation
        contexts as ``{id: (result, transfer syntax)}``."""
        started = time.monotonic()
        self.send(request)
        kind, body = self.read_pdu(started + within)
        if kind != A_ASSOCIATE_AC:
            raise AssertionError(f"association not accepted: {PDU_NAMES.get(kind, kind)}")
        return accepted_contexts(body)

    def release(self, within: float = 2.0) -> Answer:
        started = time.monotonic()
        if not self.send(RELEASE_RQ):
            return Answer("closed", 0.0)
        return self.answer(started, within, until_final=False)


def _control_detail(kind: int, body: bytes) -> str:
    if kind == A_ASSOCIATE_RJ and len(body) >= 4:
        return f"(result {body[1]}, source {body[2]}, reason {body[3]})"
    if kind == A_ABORT and len(body) >= 4:
        return f"(source {body[2]}, reason {body[3]})"
    return ""


def accepted_contexts(ac_body: bytes) -> dict[int, tuple[int, bytes]]:
    """``{context ID: (result, transfer syntax)}`` of an A-ASSOCIATE-AC body."""
    out: dict[int, tuple[int, bytes]] = {}
    pos = 68
    while pos + 4 <= len(ac_body):
        kind, _, length = struct.unpack_from(">BBH", ac_body, pos)
        payload = ac_body[pos + 4:pos + 4 + length]
        if kind == 0x21 and len(payload) >= 4:
            syntax = b""
            if len(payload) >= 8 and payload[4] == 0x40:
                size = struct.unpack_from(">H", payload, 6)[0]
                syntax = payload[8:8 + size]
            out[payload[0]] = (payload[2], syntax)
        pos += 4 + length
    return out


def fragments(cid: int, command: bytes, dataset: bytes | None, *, max_pdv: int = 16000,
              command_last: bool = True) -> list[bytes]:
    """The P-DATA-TF PDUs of one DIMSE message: the command then the data set, each cut in
    fragments of at most ``max_pdv`` bytes (the last one flagged last)."""
    out = []
    for start in range(0, max(len(command), 1), max_pdv):
        last = start + max_pdv >= len(command)
        control = 0x01 | (0x02 if last and command_last else 0)
        out.append(p_data([(cid, control, command[start:start + max_pdv])]))
    if dataset is not None:
        if not dataset:
            out.append(p_data([(cid, 0x02, b"")]))
        for start in range(0, len(dataset), max_pdv):
            last = start + max_pdv >= len(dataset)
            out.append(p_data([(cid, 0x02 if last else 0x00,
                                dataset[start:start + max_pdv])]))
    return out
