"""The hostile battery's inputs: several hundred malformed or hostile inputs, each a named
:class:`Case`, generated from a few valid messages by hand-written attacks and by mutation
loops (a data set cut at every element, each length field corrupted in turn, an
association request with each item length lying in turn).

Levels: ``pdu`` (bytes that are no PDU, unknown types, cut headers and bodies, PDUs out of
order, oversized declared lengths), ``association`` (malformed A-ASSOCIATE-RQs), ``command``
(malformed DIMSE command sets, services the node does not offer), ``dataset`` (C-STORE
data sets cut, lying, mislabelled, hostile UIDs), ``c-find`` (identifiers with control
characters or cut short) and ``bomb`` (a 1 GiB PDU flood, codestream and deflate bombs).

Every case that carries a data set has its own SOP Instance UID (:attr:`Case.uid`), so the
battery can check that nothing of it was stored or indexed.
"""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

from pydicom import Dataset
from pydicom import config as pydicom_config
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from . import raw_peer as rp
from .dicom_bytes import (
    COMMITMENT,
    CT_IMAGE,
    FIND_TAGS,
    STUDY_FIND,
    STUDY_GET,
    STUDY_MOVE,
    VERIFICATION,
    Element,
    dataset,
    deflate,
    deflate_bomb,
    echo_command,
    element,
    elements,
    encapsulated,
    encode,
    find_command,
    find_element,
    find_identifier,
    j2k_codestream,
    jpeg_codestream,
    rle_fragment,
    store_command,
    valid_request,
    without_pixels,
)
from .dimse_helpers import CR_IMAGE, ROOT, make_instance

#: Names every hostile path in the battery uses, so that a file it made can be found.
TOKEN = "hostile7c1e"
GiB = 1 << 30

# Answers to a raw request (see raw_peer.Answer.kind).
REFUSED = frozenset({"A-ASSOCIATE-RJ", "A-ABORT", "closed"})
ANY_ANSWER = REFUSED | {"A-ASSOCIATE-AC", "P-DATA-TF", "A-RELEASE-RP", "response"}


@dataclass(frozen=True)
class Case:
    """One hostile input and what the node may answer to it.

    ``kind``: ``raw`` (``payload`` on a new connection), ``after-association`` (an
    association is established first, then ``payload``) or ``dimse`` (a DIMSE message,
    ``command`` and ``dataset``, on presentation context ``context_id`` of an association
    proposing ``contexts``). ``half_close``: the peer says it has finished sending after
    the payload (an input cut short is complete only then). ``flood``: bytes streamed after
    the payload until the node closes. ``expect``: the answers allowed (raw and
    after-association cases); a DIMSE case must end in a failure status, an A-ABORT or a
    closed connection, unless ``allow_success``."""

    name: str
    level: str
    kind: str
    payload: bytes = b""
    half_close: bool = False
    flood: int = 0
    contexts: tuple[rp.Context, ...] = ()
    context_id: int = 1
    command: bytes = b""
    dataset: bytes | None = None
    expect: frozenset[str] = REFUSED
    allow_success: bool = False
    uid: str = ""
    notes: str = ""
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)



# -- the generator ---------------------------------------------------------------------------

class _Cases:
    """Collects cases, numbering the SOP Instance UIDs and refusing a name twice."""

    def __init__(self) -> None:
        self.cases: list[Case] = []
        self._names: set[str] = set()

    def uid(self) -> str:
        return f"{ROOT}.9.{10000 + len(self.cases)}"

    def add(self, case: Case) -> None:
        if case.name in self._names:
            raise ValueError(f"two cases named {case.name!r}")
        self._names.add(case.name)
        self.cases.append(case)


STORE_CONTEXTS = {ts: ((1, CR_IMAGE, (ts,)),) for ts in (
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1,
    "1.2.840.10008.1.2.4.57", JPEGLSLossless, "1.2.840.10008.1.2.4.81", JPEG2000Lossless,
    JPEG2000, RLELossless)}
COMMAND_CONTEXTS: tuple[rp.Context, ...] = (
    (1, VERIFICATION, (ImplicitVRLittleEndian,)),
    (3, CR_IMAGE, (ExplicitVRLittleEndian,)),
    (5, STUDY_FIND, (ExplicitVRLittleEndian,)),
    (7, STUDY_MOVE, (ExplicitVRLittleEndian,)),  # offered or not: rejected in the AC
    (9, COMMITMENT, (ExplicitVRLittleEndian,)),  # not offered
    (11, STUDY_GET, (ExplicitVRLittleEndian,)),
)
FIND_CONTEXTS: tuple[rp.Context, ...] = ((1, STUDY_FIND, (ExplicitVRLittleEndian,)),)


def _pdu_cases(c: _Cases) -> None:
    rng = random.Random(1201)
    good = valid_request()
    garbage = {
        "http-get": b"GET / HTTP/1.1\r\nHost: pacs\r\n\r\n",
        "tls-client-hello": bytes.fromhex("16030100a1010000") + bytes(rng.randrange(256)
                                                                       for _ in range(161)),
        "ssh-banner": b"SSH-2.0-OpenSSH_9.6\r\n",
        "zeros-1k": b"\x00" * 1024,
        "ones-1k": b"\xff" * 1024,
        "ascii-text": b"hello DICOM node, are you there?\n" * 8,
    }
    for size in (7, 64, 512, 4096, 65536):
        garbage[f"random-{size}-bytes"] = bytes(rng.randrange(256) for _ in range(size))
    for name, payload in garbage.items():
        c.add(Case(f"pdu/garbage-{name}", "pdu", "raw", payload, half_close=True))
    # Garbage again, but the peer keeps its side open: the node must act on its own.
    for name in ("http-get", "zeros-1k", "random-512-bytes"):
        c.add(Case(f"pdu/garbage-{name}-kept-open", "pdu", "raw", garbage[name]))
    for kind in (0x00, 0x08, 0x09, 0x0A, 0x10, 0x20, 0x50, 0x7F, 0x80, 0xFE, 0xFF):
        c.add(Case(f"pdu/unknown-type-0x{kind:02X}", "pdu", "raw",
                   rp.pdu(kind, b"\x00\x01\x00\x00" + b"\x00" * 60)))
    for kind, name in ((0x01, "associate-rq"), (0x02, "associate-ac"), (0x03, "associate-rj"),
                       (0x04, "p-data"), (0x05, "release-rq"), (0x06, "release-rp"),
                       (0x07, "abort")):
        c.add(Case(f"pdu/zero-length-{name}", "pdu", "raw", rp.pdu(kind, b"")))
    for cut in range(1, 6):
        c.add(Case(f"pdu/header-cut-at-{cut}", "pdu", "raw", good[:cut], half_close=True))
    for cut in (6, 8, 10, 20, 38, 74, 80, len(good) // 2, len(good) - 1):
        c.add(Case(f"pdu/associate-rq-body-cut-at-{cut}", "pdu", "raw", good[:cut],
                   half_close=True))
    echo = rp.p_data([(1, 0x03, echo_command())])
    ac_body = b"\x00\x01\x00\x00" + b"PACSNODE".ljust(16) + b"HOSTILE".ljust(16) + \
        b"\x00" * 32 + rp.item(0x10, rp.APPLICATION_CONTEXT.encode())
    before = {
        "p-data": echo,
        "release-rq": rp.RELEASE_RQ,
        "release-rp": rp.pdu(rp.A_RELEASE_RP, b"\x00" * 4),
        "associate-ac": rp.pdu(rp.A_ASSOCIATE_AC, ac_body),
        "associate-rj": rp.pdu(rp.A_ASSOCIATE_RJ, b"\x00\x01\x01\x01"),
        "abort": rp.ABORT,
        "p-data-then-associate-rq": echo + good,
    }
    for name, payload in before.items():
        c.add(Case(f"pdu/{name}-before-association", "pdu", "raw", payload))
    for name, kind, length in (("associate-rq-4-GiB", 0x01, 0xFFFFFFFF),
                               ("associate-rq-1-GiB", 0x01, GiB),
                               ("associate-rq-2-MiB", 0x01, 2 << 20),
                               ("associate-rq-1-MiB-and-1", 0x01, (1 << 20) + 1),
                               ("p-data-4-GiB-before-association", 0x04, 0xFFFFFFFF),
                               ("release-rq-1-GiB", 0x05, GiB),
                               ("abort-64-MiB", 0x07, 64 << 20),
                               ("unknown-type-4-GiB", 0xF0, 0xFFFFFFFF)):
        c.add(Case(f"pdu/declares-{name}", "pdu", "raw",
                   rp.pdu(kind, good[6:200], length=length)))
    after = {
        "second-associate-rq": good,
        "associate-ac": rp.pdu(rp.A_ASSOCIATE_AC, ac_body),
        "associate-rj": rp.pdu(rp.A_ASSOCIATE_RJ, b"\x00\x01\x01\x01"),
        "release-rp-unasked": rp.pdu(rp.A_RELEASE_RP, b"\x00" * 4),
        "unknown-type-0x08": rp.pdu(0x08, b"\x00" * 16),
        "p-data-empty": rp.pdu(rp.P_DATA_TF, b""),
        "p-data-pdv-length-0": rp.pdu(rp.P_DATA_TF, b"\x00\x00\x00\x00"),
        "p-data-pdv-length-1": rp.pdu(rp.P_DATA_TF, b"\x00\x00\x00\x01\x01"),
        "p-data-pdv-longer-than-pdu": rp.pdu(rp.P_DATA_TF,
                                             b"\x00\x00\x10\x00\x01\x03" + b"\x00" * 16),
        "p-data-over-advertised-length": rp.pdu(rp.P_DATA_TF, b"\x00" * 64,
                                                length=(4 << 20) + 1),
        "random-4096-bytes": bytes(rng.randrange(256) for _ in range(4096)),
        "abort-then-echo": rp.ABORT + echo,
        "release-rq-body-cut": rp.pdu(rp.A_RELEASE_RQ, b""),
        "echo-then-3-bytes-of-a-header": echo + b"\x04\x00\x00",
        "echo-then-a-p-data-header-only": echo + b"\x04\x00\x00\x00\x01\x00",
    }
    for name, payload in after.items():
        c.add(Case(f"pdu/{name}-after-association", "pdu", "after-association", payload,
                   contexts=((1, VERIFICATION, (ImplicitVRLittleEndian,)),),
                   expect=_AFTER_ASSOCIATION_ANSWERS.get(name, REFUSED)))


_AFTER_ASSOCIATION_ANSWERS = {
    "release-rq-body-cut": REFUSED | {"A-RELEASE-RP"},
    # A C-ECHO, then the start of the next PDU: the C-ECHO is answered at once.
    "echo-then-3-bytes-of-a-header": frozenset({"P-DATA-TF"}),
    "echo-then-a-p-data-header-only": frozenset({"P-DATA-TF"}),
}


def _association_cases(c: _Cases) -> None:
    implicit = ImplicitVRLittleEndian
    verification = [(1, VERIFICATION, [implicit])]
    malformed: dict[str, bytes] = {
        "context-id-0": rp.associate_rq([(0, VERIFICATION, [implicit])]),
        "context-id-2": rp.associate_rq([(2, VERIFICATION, [implicit])]),
        "context-id-254": rp.associate_rq([(254, VERIFICATION, [implicit])]),
        "context-ids-odd-then-even": rp.associate_rq([(1, VERIFICATION, [implicit]),
                                                      (4, CR_IMAGE, [implicit])]),
        "duplicate-context-id": rp.associate_rq([(1, VERIFICATION, [implicit]),
                                                 (1, CR_IMAGE, [implicit])]),
        "duplicate-context-id-3-times": rp.associate_rq([(3, VERIFICATION, [implicit])] * 3),
        "no-presentation-context": rp.associate_rq([]),
        "129-contexts": rp.associate_rq([(2 * i + 1, VERIFICATION, [implicit])
                                         for i in range(128)]
                                        + [(1, VERIFICATION, [implicit])]),
        "255-contexts-odd-and-even": rp.associate_rq([(i, VERIFICATION, [implicit])
                                                      for i in range(1, 256)]),
        "context-without-abstract-syntax": rp.associate_rq([(1, None, [implicit])]),
        "context-without-transfer-syntax": rp.associate_rq([(1, VERIFICATION, [])]),
        "context-with-empty-abstract-syntax": rp.associate_rq([(1, b"", [implicit])]),
        "context-with-empty-transfer-syntax": rp.associate_rq([(1, VERIFICATION, [b""])]),
        "context-without-anything": rp.associate_rq([(1, None, [])]),
        "second-context-without-transfer-syntax": rp.associate_rq(
            [(1, VERIFICATION, [implicit]), (3, CR_IMAGE, [])]),
        "called-ae-wrong": rp.associate_rq(verification, called=b"SOMEONEELSE"),
        "called-ae-lower-case": rp.associate_rq(verification, called=b"pacsnode"),
        "called-ae-spaces": rp.associate_rq(verification, called=b" " * 16),
        "called-ae-nuls": rp.associate_rq(verification, called=b"\x00" * 16),
        "called-ae-control-characters": rp.associate_rq(verification, called=b"PACS\x01\x02NODE"),
        "called-ae-non-ascii": rp.associate_rq(verification, called=b"PACS\xff\xfeNODE"),
        "called-ae-backslash": rp.associate_rq(verification, called=b"PACS\\NODE"),
        "called-ae-traversal": rp.associate_rq(verification, called=b"../../../etc/pa"),
        "called-ae-16-characters": rp.associate_rq(verification, called=b"PACSNODEPACSNODE"),
        "application-context-missing": rp.associate_rq(verification, application=None),
        "application-context-empty": rp.associate_rq(verification, application=b""),
        "application-context-200-bytes": rp.associate_rq(verification,
                                                         application=b"1.2." * 50),
        "application-context-unknown": rp.associate_rq(verification, application=b"1.2.3.4"),
        "protocol-version-0": rp.associate_rq(verification, version=0),
        "protocol-version-2": rp.associate_rq(verification, version=2),
        # An item's length has 16 bits: 2 MiB of user identity items after the user
        # information, in a PDU over the 1 MiB the node reads before an association.
        "user-identity-items-2-MiB": rp.associate_rq(verification, tail=rp.item(
            0x58, b"\x01\x00" + struct.pack(">H", 65000) + b"x" * 65000 + b"\x00\x00") * 33),
        "user-information-item-lies-65535": rp.associate_rq(verification, user=rp.item(
            0x50, rp.item(0x51, struct.pack(">I", 16384)), length=0xFFFF)),
        "max-length-sub-item-2-bytes": rp.associate_rq(verification, user=rp.item(
            0x50, rp.item(0x51, b"\x40\x00"))),
        "implementation-uid-65-bytes": rp.associate_rq(verification, user=rp.user_information(
            implementation=b"1" * 65)),
        "unknown-item-type-0x99": rp.associate_rq(verification, tail=rp.item(0x99, b"x" * 8)),
        "trailing-garbage-in-pdu": rp.associate_rq(verification, tail=b"\xde\xad\xbe\xef" * 8),
    }
    # A whole request, then the start of the next PDU: the request is answered at once.
    good = valid_request()
    for name, tail in (("3-bytes-of-a-header", b"\x04\x00\x00"),
                       ("a-p-data-header-and-part-of-its-body",
                        rp.pdu(rp.P_DATA_TF, b"\x00" * 40, length=200))):
        c.add(Case(f"association/request-then-{name}", "association", "raw", good + tail,
                   expect=frozenset({"A-ASSOCIATE-AC"})))
    ctx = rp.item(0x20, b"\x01\x00\x00\x00" + rp.item(0x30, VERIFICATION.encode())
                  + rp.item(0x77, b"junk") + rp.item(0x40, implicit.encode()))
    malformed["context-with-unknown-sub-item"] = rp.associate_rq([], tail=ctx)
    for name, request in malformed.items():
        c.add(Case(f"association/{name}", "association", "raw", request))

    # Accepted or refused, either is right; what counts is an answer, and then a clean log.
    tolerated: dict[str, bytes] = {
        "calling-ae-spaces": rp.associate_rq(verification, calling=b" " * 16),
        "calling-ae-nuls": rp.associate_rq(verification, calling=b"\x00" * 16),
        "calling-ae-control-characters": rp.associate_rq(verification, calling=b"EVIL\x07\x1b[2J"),
        "calling-ae-non-ascii": rp.associate_rq(verification, calling=b"\xc3\xa9\xff\x80"),
        "calling-ae-newline-log-injection": rp.associate_rq(
            verification, calling=b"X\nERROR fake"),
        "calling-ae-percent-format": rp.associate_rq(verification, calling=b"%s%s%n%x"),
        "calling-ae-16-characters": rp.associate_rq(verification, calling=b"ABCDEFGHIJKLMNOP"),
        "called-ae-leading-spaces": rp.associate_rq(verification, called=b"  PACSNODE"),
        "protocol-version-0xFFFF": rp.associate_rq(verification, version=0xFFFF),
        "unknown-abstract-syntax-only": rp.associate_rq([(1, "1.2.3.4.5.6", [implicit])]),
        "unknown-transfer-syntax-only": rp.associate_rq([(1, VERIFICATION, ["1.2.3.4"])]),
        "abstract-syntax-traversal": rp.associate_rq([(1, b"../../etc/passwd", [implicit])]),
        "abstract-syntax-200-bytes": rp.associate_rq([(1, b"1.2." * 50, [implicit])]),
        "transfer-syntax-nul-padded": rp.associate_rq([(1, VERIFICATION,
                                                        [b"1.2.840.10008.1.2\x00"])]),
        "200-transfer-syntaxes": rp.associate_rq([(1, VERIFICATION,
                                                   [f"1.2.3.{i}" for i in range(199)]
                                                   + [implicit])]),
        # PS3.8 wants a user information item with a maximum length; without one the
        # defaults hold, and pynetdicom (like dcmtk) accepts.
        "user-information-missing": rp.associate_rq(verification, user=b""),
        "user-information-empty": rp.associate_rq(verification, user=rp.item(0x50, b"")),
        "max-length-0-unlimited": rp.associate_rq(verification,
                                                  user=rp.user_information(max_length=0)),
        "max-length-1": rp.associate_rq(verification, user=rp.user_information(max_length=1)),
        "no-max-length": rp.associate_rq(verification,
                                         user=rp.user_information(max_length=None)),
        "no-implementation-uid": rp.associate_rq(verification,
                                                 user=rp.user_information(implementation=None)),
        "implementation-version-40-bytes": rp.associate_rq(verification, user=rp.user_information(
            extra=rp.item(0x55, b"V" * 40))),
        "user-identity-60-KiB": rp.associate_rq(verification, user=rp.user_information(
            extra=rp.item(0x58, b"\x01\x00" + struct.pack(">H", 60000) + b"t" * 60000
                          + b"\x00\x00"))),
        "user-identity-length-lies": rp.associate_rq(verification, user=rp.user_information(
            extra=rp.item(0x58, b"\x02\x00" + struct.pack(">H", 0xFFFF) + b"u" * 8))),
        "unknown-user-sub-item-0x5F": rp.associate_rq(verification, user=rp.user_information(
            extra=rp.item(0x5F, b"?" * 100))),
        "async-ops-window-0-0": rp.associate_rq(verification, user=rp.user_information(
            extra=rp.item(0x53, b"\x00\x00\x00\x00"))),
        "role-selection-unknown-uid-60-KiB": rp.associate_rq(verification, user=rp.user_information(
            extra=rp.item(0x54, struct.pack(">H", 60000) + b"1" * 60000 + b"\x01\x01"))),
        "1000-role-selection-items": rp.associate_rq(verification, user=rp.user_information(
            extra=rp.item(0x54, struct.pack(">H", 17) + VERIFICATION.encode() + b"\x01\x01")
            * 1000)),
        "extended-negotiation-huge": rp.associate_rq(verification, user=rp.user_information(
            extra=rp.item(0x56, struct.pack(">H", 17) + VERIFICATION.encode()
                          + b"\x01" * 60000))),
        "reserved-bytes-set": rp.associate_rq(verification)[:8] + b"\xff\xff"
        + rp.associate_rq(verification)[10:],
    }
    for name, request in tolerated.items():
        c.add(Case(f"association/{name}", "association", "raw", request, expect=ANY_ANSWER))

    # Each length field of a valid request lying in turn, and the request cut at each item.
    fields = _length_fields(good)
    for label, at, size in fields:
        value = int.from_bytes(good[at:at + size], "big")
        full = (1 << (8 * size)) - 1
        for mutation, new in (("minus-1", value - 1), ("plus-1", value + 1), ("zero", 0),
                              ("max", full)):
            if new < 0 or new > full:
                continue
            data = good[:at] + new.to_bytes(size, "big") + good[at + size:]
            # A PDU length longer than what was sent is an input cut short: complete only
            # once the peer says so.
            grows_pdu = label == "pdu" and new > value
            c.add(Case(f"association/length-{label}-{mutation}", "association", "raw", data,
                       half_close=grows_pdu, expect=ANY_ANSWER
                       if (label, mutation) in _TOLERATED_LENGTHS else REFUSED))
    for label, at, _ in fields:
        if label == "pdu":
            continue
        start = at - 2  # item type byte
        cut = good[6:start]
        c.add(Case(f"association/cut-before-{label}-item", "association", "raw",
                   rp.pdu(rp.A_ASSOCIATE_RQ, cut),
                   expect=ANY_ANSWER if label in _OPTIONAL_ITEMS else REFUSED))


# Lengths that lie in a way that still reads as a request the node may accept: an empty
# user information item (the sub-items after it are items of no known type, skipped), an
# implementation version name longer or shorter (it is the last sub-item).
_TOLERATED_LENGTHS = frozenset({("user-information", "zero"),
                                ("implementation-version", "minus-1"),
                                ("implementation-version", "zero")})
# Items whose absence still makes a request the node may accept (see "tolerated" above).
_OPTIONAL_ITEMS = frozenset({"user-information", "max-length", "implementation-uid",
                             "implementation-version"})


def _length_fields(request: bytes) -> list[tuple[str, int, int]]:
    """``(name, offset, size)`` of every length field of an A-ASSOCIATE-RQ: the PDU's, then
    each item's and sub-item's."""
    names = {0x10: "application-context", 0x20: "context", 0x30: "abstract-syntax",
             0x40: "transfer-syntax", 0x50: "user-information", 0x51: "max-length",
             0x52: "implementation-uid", 0x55: "implementation-version"}
    out = [("pdu", 2, 4)]

    def walk(start: int, end: int) -> None:
        pos = start
        while pos + 4 <= end:
            kind = request[pos]
            length = struct.unpack_from(">H", request, pos + 2)[0]
            out.append((names.get(kind, f"item-0x{kind:02X}"), pos + 2, 2))
            if kind == 0x20:
                walk(pos + 8, pos + 4 + length)
            elif kind == 0x50:
                walk(pos + 4, pos + 4 + length)
            pos += 4 + length

    walk(74, len(request))
    return out


def _command_cases(c: _Cases) -> None:
    ds_uid = c.uid()  # one instance for the C-STOREs below, never to be stored
    ds = make_instance(9, 1, 1, sop_uid=ds_uid, study_uid=f"{ROOT}.9")
    data = encode(ds)

    def dimse(name: str, command: bytes, dataset: bytes | None = None, *, context_id: int = 3,
              allow_success: bool = False, uid: str = "") -> None:
        c.add(Case(f"command/{name}", "command", "dimse", contexts=COMMAND_CONTEXTS,
                   context_id=context_id, command=command, dataset=dataset,
                   allow_success=allow_success, uid=uid))

    dimse("c-echo-without-message-id", echo_command(message_id=None), context_id=1)
    dimse("c-echo-without-sop-class", echo_command(sop_class=None), context_id=1)
    dimse("c-echo-empty-sop-class", echo_command(sop_class=""), context_id=1)
    dimse("c-echo-naming-a-storage-class", echo_command(sop_class=CR_IMAGE), context_id=1)
    dimse("c-echo-naming-garbage-class", echo_command(sop_class="not.a.uid"), context_id=1)
    dimse("c-store-without-message-id", store_command(CR_IMAGE, ds_uid, message_id=None), data,
          uid=ds_uid)
    dimse("c-store-without-sop-class", store_command(None, ds_uid), data, uid=ds_uid)
    dimse("c-store-empty-sop-class", store_command("", ds_uid), data, uid=ds_uid)
    dimse("c-store-without-sop-instance", store_command(CR_IMAGE, None), data, uid=ds_uid)
    dimse("c-store-empty-sop-instance", store_command(CR_IMAGE, ""), data, uid=ds_uid)
    dimse("c-store-sop-instance-nuls", store_command(CR_IMAGE, b"\x00" * 8), data, uid=ds_uid)
    dimse("c-store-sop-instance-traversal", store_command(CR_IMAGE, f"../../{TOKEN}"), data,
          uid=ds_uid)
    dimse("c-store-sop-instance-70-characters", store_command(CR_IMAGE, "1." * 35), data,
          uid=ds_uid)
    dimse("c-store-naming-verification", store_command(VERIFICATION, ds_uid), data,
          context_id=1, uid=ds_uid)
    dimse("c-store-naming-find", store_command(STUDY_FIND, ds_uid), data, context_id=5,
          uid=ds_uid)
    dimse("c-store-naming-unknown-class", store_command("1.2.3.4", ds_uid), data, uid=ds_uid)
    dimse("c-store-sop-class-not-a-uid", store_command("abc.def", ds_uid), data, uid=ds_uid)
    dimse("c-store-without-data-set", store_command(CR_IMAGE, ds_uid, data_set_type=0x0101),
          uid=ds_uid)
    dimse("c-store-without-data-set-type", store_command(CR_IMAGE, ds_uid, data_set_type=None),
          data, uid=ds_uid)
    dimse("c-store-on-context-99", store_command(CR_IMAGE, ds_uid), data, context_id=99,
          uid=ds_uid)
    dimse("c-store-on-context-0", store_command(CR_IMAGE, ds_uid), data, context_id=0,
          uid=ds_uid)
    dimse("c-store-on-move-context", store_command(CR_IMAGE, ds_uid), data,
          context_id=7, uid=ds_uid)
    for field_ in (0x0000, 0x0002, 0x0003, 0x00FF, 0x0031, 0x0FFE, 0x7FFF, 0xFFFF):
        dimse(f"unknown-command-field-0x{field_:04X}",
              store_command(CR_IMAGE, ds_uid, field=field_, data_set_type=0x0101))
    for field_, name in ((0x8001, "c-store-rsp"), (0x8030, "c-echo-rsp"),
                         (0x8020, "c-find-rsp"), (0x0FFF, "c-cancel-unknown-message")):
        # A response (or a C-CANCEL) where a request belongs: no response is owed to it, so a
        # C-ECHO follows in the same PDU and must be answered.
        extra = rp.command_set({"AffectedSOPClassUID": VERIFICATION, "CommandField": field_,
                                "MessageIDBeingRespondedTo": 77, "CommandDataSetType": 0x0101,
                                "Status": 0})
        c.add(Case(f"command/{name}-sent-as-request", "command", "dimse",
                   contexts=COMMAND_CONTEXTS, context_id=1, command=extra,
                   extra={"then_echo": "1"}, allow_success=True))
    dimse("c-get-on-find-context", find_command(STUDY_GET, field=0x0010), find_identifier(),
          context_id=5)
    dimse("c-move-on-find-context", find_command(STUDY_MOVE, field=0x0021,
                                                 MoveDestination="ELSEWHERE"),
          find_identifier(), context_id=5)
    dimse("c-move-naming-find-on-find-context", find_command(
        field=0x0021, MoveDestination="ELSEWHERE"), find_identifier(), context_id=5)
    dimse("c-find-naming-move-on-move-context", find_command(STUDY_MOVE), find_identifier(),
          context_id=7)
    # Whether the node offers C-MOVE and C-GET or not, these are answered (a refused
    # context, a failure, or a retrieve of nothing); the identifier matches no study.
    nothing = find_identifier(f"{ROOT}.404")
    dimse("c-move-to-an-unknown-destination", find_command(
        STUDY_MOVE, field=0x0021, MoveDestination="ELSEWHERE"), nothing, context_id=7,
        allow_success=True)
    dimse("c-get-of-nothing", find_command(STUDY_GET, field=0x0010), nothing,
          context_id=11, allow_success=True)
    for field_, name in ((0x0100, "n-event-report"), (0x0110, "n-get"), (0x0120, "n-set"),
                         (0x0130, "n-action"), (0x0140, "n-create"), (0x0150, "n-delete")):
        command = rp.command_set({"AffectedSOPClassUID": CR_IMAGE,
                                  "RequestedSOPClassUID": CR_IMAGE, "CommandField": field_,
                                  "MessageID": 5, "CommandDataSetType": 0x0101,
                                  "AffectedSOPInstanceUID": ds_uid,
                                  "RequestedSOPInstanceUID": ds_uid, "EventTypeID": 1,
                                  "ActionTypeID": 1})
        dimse(f"{name}-on-storage-context", command)
    dimse("n-action-on-rejected-commitment-context", rp.command_set({
        "RequestedSOPClassUID": COMMITMENT, "CommandField": 0x0130, "MessageID": 5,
        "CommandDataSetType": 0x0101, "RequestedSOPInstanceUID": "1.2.840.10008.1.20.1.1",
        "ActionTypeID": 1}), context_id=9)
    dimse("c-find-without-identifier", find_command(data_set_type=0x0101), context_id=5)
    dimse("c-find-naming-storage-class", find_command(CR_IMAGE), find_identifier(),
          context_id=5)
    dimse("c-find-naming-unknown-class", find_command("1.2.3.4"), find_identifier(),
          context_id=5)
    rng = random.Random(1202)
    garbage = bytes(rng.randrange(256) for _ in range(200))
    dimse("command-set-random-bytes", garbage, context_id=1)
    dimse("command-set-cut-in-half", echo_command()[:30], context_id=1)
    dimse("command-set-one-byte", b"\x00", context_id=1)
    dimse("command-set-empty", b"", context_id=1)
    # A valid instance of its own: stored if the node serves a C-STORE without Priority.
    ok_uid = c.uid()
    ok_data = encode(make_instance(9, 3, 1, sop_uid=ok_uid, study_uid=f"{ROOT}.9.3"))
    for name, command, cid in (
            ("c-store-without-priority", store_command(CR_IMAGE, ok_uid, Priority=None), 3),
            ("c-find-without-priority", find_command(Priority=None), 5),
            ("c-find-without-message-id", find_command(MessageID=None), 5),
            ("n-get-without-message-id", rp.command_set({
                "RequestedSOPClassUID": CR_IMAGE, "CommandField": 0x0110,
                "CommandDataSetType": 0x0101, "RequestedSOPInstanceUID": ds_uid}), 3),
            ("n-action-without-requested-instance", rp.command_set({
                "RequestedSOPClassUID": CR_IMAGE, "CommandField": 0x0130, "MessageID": 3,
                "CommandDataSetType": 0x0101, "ActionTypeID": 1}), 3),
            ("n-create-without-affected-class", rp.command_set({
                "CommandField": 0x0140, "MessageID": 3, "CommandDataSetType": 0x0101}), 3),
            ("n-event-report-without-event-type", rp.command_set({
                "AffectedSOPClassUID": CR_IMAGE, "CommandField": 0x0100, "MessageID": 3,
                "CommandDataSetType": 0x0101, "AffectedSOPInstanceUID": ds_uid}), 3),
            ("n-delete-without-requested-class", rp.command_set({
                "CommandField": 0x0150, "MessageID": 3, "CommandDataSetType": 0x0101,
                "RequestedSOPInstanceUID": ds_uid}), 3)):
        dataset = {"c-store": ok_data, "c-find-": find_identifier()}.get(name[:7])
        # Priority is advice: a request without it may be served (pynetdicom takes LOW).
        dimse(name, command, dataset, context_id=cid, allow_success="priority" in name,
              uid=ok_uid if name.startswith("c-store") else "")
    dimse("command-group-length-lies", rp.command_set({
        "AffectedSOPClassUID": VERIFICATION, "CommandField": 0x30, "MessageID": 1,
        "CommandDataSetType": 0x0101}, group_length=0xFFFFFFF0), context_id=1,
        allow_success=True)
    dimse("command-element-longer-than-set", echo_command()[:-10]
          + b"\x00\x00\x00\x08\xff\xff\x00\x00\x01\x01", context_id=1)
    dimse("command-field-4-bytes", rp.command_set({
        "AffectedSOPClassUID": VERIFICATION, "CommandField": b"\x30\x00\x00\x00",
        "MessageID": 1, "CommandDataSetType": 0x0101}), context_id=1)
    c.add(Case("command/data-set-fragment-without-command", "command", "dimse",
               contexts=COMMAND_CONTEXTS, context_id=3, command=b"", dataset=data,
               extra={"no_command": "1"}, uid=ds_uid))
    c.add(Case("command/command-never-marked-last-then-data-set", "command", "dimse",
               contexts=COMMAND_CONTEXTS, context_id=3,
               command=store_command(CR_IMAGE, ds_uid), dataset=data,
               extra={"command_not_last": "1"}, uid=ds_uid))


def _dataset_cases(c: _Cases) -> None:
    explicit = ExplicitVRLittleEndian

    def store(name: str, syntax: str, build: Callable[[Dataset], bytes], *,
              command_class: str = CR_IMAGE, command_uid: str | None = None,
              level: str = "dataset", allow_success: bool = False, **instance: object) -> None:
        uid = c.uid()
        ds = make_instance(9, 1, 1, sop_uid=uid, study_uid=f"{ROOT}.9",
                           series_uid=f"{ROOT}.9.1", **instance)
        c.add(Case(f"{level}/{name}", level, "dimse", contexts=STORE_CONTEXTS[syntax],
                   command=store_command(command_class, command_uid or uid),
                   dataset=build(ds), uid=uid, allow_success=allow_success))

    # Cut at every element: at its start (the data set ends before it) and inside its header.
    base = encode(make_instance(9, 1, 1, sop_uid=c.uid(), study_uid=f"{ROOT}.9"))
    for el in elements(base):
        name = f"{el.tag >> 16:04X}{el.tag & 0xFFFF:04X}"
        if el.start > 0:
            store(f"cut-before-{name}", explicit,
                  lambda ds, el=el: encode(ds)[:el.start])
        store(f"cut-inside-header-of-{name}", explicit,
              lambda ds, el=el: encode(ds)[:el.start + 3])
        if el.end - el.start > 12:
            store(f"cut-inside-value-of-{name}", explicit,
                  lambda ds, el=el: encode(ds)[:el.end - 1])
    for share in (4, 2):
        store(f"cut-at-1/{share}-of-pixel-data", explicit,
              lambda ds, share=share: (lambda data: data[:len(data) - 256 // share])(encode(ds)))
    # Each length field lying in turn.
    for el in elements(base):
        name = f"{el.tag >> 16:04X}{el.tag & 0xFFFF:04X}"
        for mutation in ("plus-2", "minus-2", "all-ones"):
            store(f"length-of-{name}-{mutation}", explicit,
                  lambda ds, el=el, m=mutation: _lie(encode(ds), el, m))
    # The wrong encoding for the context.
    store("implicit-bytes-on-explicit-context", explicit, lambda ds: encode(ds, implicit=True))
    store("explicit-bytes-on-implicit-context", ImplicitVRLittleEndian, encode)
    store("big-endian-bytes-on-little-endian-context", explicit,
          lambda ds: encode(ds, little=False))
    store("little-endian-bytes-on-big-endian-context", ExplicitVRBigEndian, encode)
    store("deflated-bytes-on-explicit-context", explicit, lambda ds: deflate(encode(ds)))
    store("explicit-bytes-on-deflated-context", DeflatedExplicitVRLittleEndian, encode)
    for syntax, name in ((JPEGBaseline8Bit, "jpeg-baseline"), (JPEGExtended12Bit, "jpeg-extended"),
                         ("1.2.840.10008.1.2.4.57", "jpeg-lossless"),
                         (JPEGLosslessSV1, "jpeg-lossless-sv1"), (JPEGLSLossless, "jpeg-ls"),
                         ("1.2.840.10008.1.2.4.81", "jpeg-ls-near-lossless"),
                         (JPEG2000Lossless, "jpeg2000-lossless"), (JPEG2000, "jpeg2000"),
                         (RLELossless, "rle")):
        store(f"native-pixels-on-{name}-context", syntax, encode)
    # Broken encapsulation.
    j2k, small = JPEG2000Lossless, j2k_codestream(16, 16)
    encap: dict[str, tuple[str, Callable[[Dataset], bytes]]] = {
        "encapsulation-unclosed": (j2k, lambda ds: encapsulated(without_pixels(ds), small,
                                                                close=False)),
        "encapsulation-without-fragments": (j2k, lambda ds: encapsulated(without_pixels(ds))),
        "encapsulation-without-offset-table": (j2k, lambda ds: encapsulated(
            without_pixels(ds), small, bot=False)),
        "encapsulation-item-longer-than-data": (j2k, lambda ds: encapsulated(
            without_pixels(ds), small)[:-40]),
        "encapsulation-wrong-item-tag": (j2k, lambda ds: encapsulated(
            without_pixels(ds), small, item_tag=0xE00D)),
        "encapsulation-on-native-context": (explicit, lambda ds: encapsulated(
            without_pixels(ds), small)),
        "encapsulation-defined-length": (j2k, lambda ds: without_pixels(ds) + element(
            0x7FE00010, b"OB", struct.pack("<HHI", 0xFFFE, 0xE000, 0) + small)),
        "jpeg2000-fragment-without-siz": (j2k, lambda ds: encapsulated(
            without_pixels(ds), b"\x00" * 256)),
        "jpeg2000-siz-3-components-for-1-sample": (j2k, lambda ds: encapsulated(
            without_pixels(ds), j2k_codestream(16, 16, components=3))),
        "jpeg2000-siz-17x16-for-16x16": (j2k, lambda ds: encapsulated(
            without_pixels(ds), j2k_codestream(17, 16))),
        "jpeg-fragment-without-soi": (JPEGBaseline8Bit, lambda ds: encapsulated(
            without_pixels(ds), b"\x00" * 256)),
        "jpeg-sof-65000x65000-for-16x16": (JPEGBaseline8Bit, lambda ds: encapsulated(
            without_pixels(ds), jpeg_codestream(65000, 65000))),
        "jpeg-ls-sof55-40000x40000-for-16x16": (JPEGLSLossless, lambda ds: encapsulated(
            without_pixels(ds), jpeg_codestream(40000, 40000, marker=0xF7))),
        "rle-0-segments": (RLELossless, lambda ds: encapsulated(without_pixels(ds),
                                                               rle_fragment(0))),
        "rle-16-segments": (RLELossless, lambda ds: encapsulated(without_pixels(ds),
                                                                rle_fragment(16))),
        "rle-fragment-shorter-than-header": (RLELossless, lambda ds: encapsulated(
            without_pixels(ds), b"\x01\x00\x00\x00" + b"\x00" * 6)),
    }
    for name, (syntax, build) in encap.items():
        store(name, syntax, build)
    # A sequence delimiter with a length (PS3.5 says 0): every pixel is there, and pydicom
    # and the decoders read it; real writers have done it. Success or refusal both right.
    store("encapsulation-delimiter-with-length", j2k, lambda ds: encapsulated(
        without_pixels(ds), small, delimiter_length=8), allow_success=True)
    # Pixel Data shorter than the image header says.
    store("pixel-data-length-256-with-100-bytes", explicit, lambda ds: without_pixels(ds)
          + element(0x7FE00010, b"OB", b"\x00" * 100, length=256))
    store("pixel-data-100-of-256-bytes", explicit, lambda ds: without_pixels(ds)
          + element(0x7FE00010, b"OB", b"\x00" * 100))
    store("pixel-data-empty", explicit, lambda ds: without_pixels(ds)
          + element(0x7FE00010, b"OB", b""))
    store("pixel-data-claims-200-MB", explicit, lambda ds: without_pixels(ds)
          + element(0x7FE00010, b"OW", b"\x00" * 4096, length=200 << 20))
    store("bits-allocated-16-for-8-bit-data", explicit, lambda ds: encode(ds),
          BitsAllocated=16, BitsStored=16, HighBit=15)
    store("4-frames-for-1", explicit, encode, NumberOfFrames=4)
    store("3-samples-for-1", explicit, encode, SamplesPerPixel=3,
          PhotometricInterpretation="RGB", PlanarConfiguration=0)
    store("rows-32000-columns-32000-native", explicit, encode, Rows=32000, Columns=32000)
    store("rows-0", explicit, encode, Rows=0)
    # SOP Class and Instance that do not match the command or the context.
    store("ct-data-set-on-cr-context", explicit, encode, SOPClassUID=CT_IMAGE)
    store("ct-command-and-data-set-on-cr-context", explicit, encode, SOPClassUID=CT_IMAGE,
          command_class=CT_IMAGE)
    store("data-set-instance-differs-from-command", explicit, encode,
          command_uid=f"{ROOT}.9.99999")
    store("data-set-without-sop-class", explicit, lambda ds: encode(_drop(ds, "SOPClassUID")))
    store("data-set-without-sop-instance", explicit,
          lambda ds: encode(_drop(ds, "SOPInstanceUID")))
    store("data-set-sop-class-verification", explicit, encode, SOPClassUID=VERIFICATION)
    store("data-set-sop-class-with-trailing-garbage", explicit, encode,
          SOPClassUID=CR_IMAGE + ".0")
    # Hostile UIDs (where a UID becomes a path).
    hostile = {
        "sop-instance-traversal": {"SOPInstanceUID": f"../../{TOKEN}"},
        "sop-instance-absolute": {"SOPInstanceUID": f"/tmp/{TOKEN}"},
        "sop-instance-backslashes": {"SOPInstanceUID": f"..\\..\\{TOKEN}"},
        "sop-instance-nul-inside": {"SOPInstanceUID": f"1.2.3\x00{TOKEN}"},
        "sop-instance-65-characters": {"SOPInstanceUID": "1." * 32 + "1"},
        "sop-instance-letters": {"SOPInstanceUID": f"1.2.{TOKEN}"},
        "sop-instance-dot": {"SOPInstanceUID": "."},
        "sop-instance-dot-dot": {"SOPInstanceUID": ".."},
        "study-traversal": {"StudyInstanceUID": f"../../../{TOKEN}"},
        "study-absolute": {"StudyInstanceUID": f"/tmp/{TOKEN}"},
        "study-empty": {"StudyInstanceUID": ""},
        "study-leading-zero": {"StudyInstanceUID": "1.2.840.01"},
        "series-traversal": {"SeriesInstanceUID": f"../{TOKEN}"},
        "series-with-space": {"SeriesInstanceUID": "1.2.3 4"},
        "series-trailing-dot": {"SeriesInstanceUID": "1.2.3."},
    }
    for name, values in hostile.items():
        # A hostile SOP Instance UID is in the command too (else it is a plain mismatch).
        store(f"uid-{name}", explicit, encode, command_uid=values.get("SOPInstanceUID"),
              **values)
    # Deflated Explicit VR Little Endian: cut streams and cut data sets.
    deflated = DeflatedExplicitVRLittleEndian
    store("deflated-valid-stream-cut-at-1/2", deflated,
          lambda ds: (lambda z: z[:len(z) // 2])(deflate(encode(ds))))
    store("deflated-valid-stream-cut-last-byte", deflated, lambda ds: deflate(encode(ds))[:-1])
    store("deflated-data-set-cut-inside-pixel-data", deflated,
          lambda ds: deflate(encode(ds)[:-100]))
    store("deflated-data-set-cut-inside-a-header", deflated,
          lambda ds: deflate(encode(ds)[:elements(encode(ds))[5].start + 3]))
    store("deflated-implicit-bytes", deflated, lambda ds: deflate(encode(ds, implicit=True)))
    store("deflated-native-pixels-short", deflated, lambda ds: deflate(
        without_pixels(ds) + element(0x7FE00010, b"OB", b"\x00" * 100)))
    store("deflated-garbage", deflated, lambda ds: bytes(range(256)) * 4)
    store("deflated-with-zlib-header", deflated, lambda ds: zlib.compress(encode(ds)))


def _drop(ds: Dataset, keyword: str) -> Dataset:
    delattr(ds, keyword)
    return ds


def _lie(data: bytes, el: Element, mutation: str) -> bytes:
    value = int.from_bytes(data[el.length_at:el.length_at + el.length_size], "little")
    full = (1 << (8 * el.length_size)) - 1
    new = {"plus-2": value + 2, "minus-2": max(value - 2, 0), "all-ones": full}[mutation]
    if new == value:
        new = value + 4
    return data[:el.length_at] + new.to_bytes(el.length_size, "little") + \
        data[el.length_at + el.length_size:]


def _find_cases(c: _Cases) -> None:
    def query(**keys: bytes | str) -> bytes:
        return b"".join(find_element(k, v) for k, v in sorted(
            keys.items(), key=lambda kv: FIND_TAGS[kv[0]][0]))

    study = {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""}
    control = {
        "name-nul-after-star": {"PatientName": b"*\x00Nobody"},
        "name-nul-inside": {"PatientName": b"Secret\x00*"},
        "name-leading-nul": {"PatientName": b"\x00*"},
        "name-only-nuls-then-star": {"PatientName": b"\x00\x00*"},
        "name-soh": {"PatientName": b"Sec\x01*"},
        "name-newline": {"PatientName": b"Secret\n*"},
        "name-carriage-return": {"PatientName": b"*\r"},
        "name-tab": {"PatientName": b"*\tPatient"},
        "name-unit-separator": {"PatientName": b"\x1f*"},
        "name-del": {"PatientName": b"Secret*\x7f"},
        "name-bell-question-mark": {"PatientName": b"?\x07*"},
        "patient-id-nul": {"PatientID": b"PID\x00*"},
        "patient-id-star-nul-star": {"PatientID": b"*\x00*"},
        "accession-nul": {"AccessionNumber": b"A\x00*"},
        "description-nul": {"StudyDescription": b"*\x00HIP"},
        "modalities-nul": {"ModalitiesInStudy": b"C\x00\\*"},
        "uid-list-nul": {"StudyInstanceUID": f"{ROOT}.1\x00\\{ROOT}.2".encode()},
        "uid-nul-first": {"StudyInstanceUID": b"\x00" + ROOT.encode()},
        "date-nul": {"StudyDate": b"2026\x000105"},
        "date-range-nul": {"StudyDate": b"20200101\x00-20301231"},
        "birth-date-nul-first": {"PatientBirthDate": b"\x00-19991231"},
        "time-nul": {"StudyTime": b"08\x00-"},
        "referring-physician-nul": {"ReferringPhysicianName": b"*\x00x"},
    }
    for name, keys in control.items():
        c.add(Case(f"c-find/control-{name}", "c-find", "dimse", contexts=FIND_CONTEXTS,
                   command=find_command(), dataset=query(**{**study, **keys})))
    full = query(QueryRetrieveLevel="STUDY", StudyInstanceUID="", PatientName="*",
                 StudyDate="19000101-", PatientID="*")
    ends = {el.end for el in elements(full)}
    for cut in range(1, len(full)):
        if cut in ends or cut % 2:
            continue  # on a boundary: a smaller, well-formed query
        c.add(Case(f"c-find/identifier-cut-at-{cut}", "c-find", "dimse", contexts=FIND_CONTEXTS,
                   command=find_command(), dataset=full[:cut]))
    malformed = {
        "value-length-beyond-the-end": full + b"\x10\x00\x20\x00LO\x40\x00PID*",
        "odd-trailing-byte": full + b"\x00",
        "after-a-stray-item-delimiter": full[:20] + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
        + full[20:],
        "unclosed-sequence": full + b"\x08\x00\x32\x11SQ\x00\x00\xff\xff\xff\xff"
        b"\xfe\xff\x00\xe0\xff\xff\xff\xff\x08\x00\x50\x11UI\x00\x00",
        "implicit-vr-bytes": encode(dataset(QueryRetrieveLevel="STUDY", StudyInstanceUID="",
                                             PatientName="*"), implicit=True),
        "random-bytes": bytes(random.Random(1203).randrange(256) for _ in range(120)),
        "bad-vr": full.replace(b"PN", b"\x00\x01", 1),
    }
    for name, data in malformed.items():
        c.add(Case(f"c-find/identifier-{name}", "c-find", "dimse", contexts=FIND_CONTEXTS,
                   command=find_command(), dataset=data))


def _bomb_cases(c: _Cases) -> None:
    good = valid_request()
    c.add(Case("bomb/associate-rq-declaring-1-GiB-then-flood", "bomb", "raw",
               rp.pdu(rp.A_ASSOCIATE_RQ, good[6:], length=GiB), flood=GiB))
    c.add(Case("bomb/p-data-declaring-1-GiB-then-flood", "bomb", "after-association",
               rp.pdu(rp.P_DATA_TF, b"\x00\x00\x10\x00\x01\x03", length=GiB), flood=GiB,
               contexts=((1, VERIFICATION, (ImplicitVRLittleEndian,)),)))

    def bomb(name: str, syntax: str, build: Callable[[Dataset], bytes], *,
             allow_success: bool = False, **instance: object) -> None:
        uid = c.uid()
        ds = make_instance(9, 2, 1, sop_uid=uid, study_uid=f"{ROOT}.9.2" if allow_success
                           else f"{ROOT}.9", series_uid=f"{ROOT}.9.2.1", **instance)
        c.add(Case(f"bomb/{name}", "bomb", "dimse", contexts=STORE_CONTEXTS[syntax],
                   command=store_command(CR_IMAGE, uid), dataset=build(ds), uid=uid,
                   allow_success=allow_success))

    bomb("jpeg2000-siz-32000x32000-in-64x64-header", JPEG2000Lossless,
         lambda ds: encapsulated(without_pixels(ds), j2k_codestream(32000, 32000)),
         Rows=64, Columns=64)
    # The header agrees with the codestream: a well-formed data set the node may store, but
    # never decode (storage.max_pixels); the pipeline calls it "not analysed: too large".
    bomb("jpeg2000-32000x32000-header-and-siz", JPEG2000Lossless,
         lambda ds: encapsulated(without_pixels(ds), j2k_codestream(32000, 32000)),
         Rows=32000, Columns=32000, allow_success=True)
    bomb("jpeg-sof-65000x65000-in-64x64-header", JPEGBaseline8Bit,
         lambda ds: encapsulated(without_pixels(ds), jpeg_codestream(65000, 65000)),
         Rows=64, Columns=64)
    bomb("deflate-2.5-GiB-of-zeros", DeflatedExplicitVRLittleEndian,
         lambda ds: deflate_bomb(without_pixels(ds), (5 * GiB) // 2))


@cache
def all_cases() -> tuple[Case, ...]:
    """Every case of the battery, in a fixed order (generated once per process)."""
    c = _Cases()
    settings = pydicom_config.settings
    saved = settings.reading_validation_mode, settings.writing_validation_mode
    # The hostile UIDs are wrong on purpose: pydicom need not warn about each.
    settings.reading_validation_mode = settings.writing_validation_mode = pydicom_config.IGNORE
    try:
        for generate in (_pdu_cases, _association_cases, _command_cases, _dataset_cases,
                         _find_cases, _bomb_cases):
            generate(c)
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = saved
    return tuple(c.cases)


def by_level(cases: tuple[Case, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    for case in cases:
        out[case.level] = out.get(case.level, 0) + 1
    return out

