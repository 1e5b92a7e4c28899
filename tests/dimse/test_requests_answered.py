"""Every DIMSE request gets an answer: a malformed request is aborted at once (today it was
dropped silently, or a C-STORE naming Verification was answered Success with nothing
stored), and the node keeps serving."""

from __future__ import annotations

import logging
import time
from io import BytesIO

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pacs_node.dimse import STUDY_ROOT_FIND, StoreStatus

from . import raw_peer as rp
from .dimse_helpers import CR_IMAGE, Node, make_instance


def _encoded(ds) -> BytesIO:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return BytesIO(fp.getvalue())


def _store_rq(*, sop_class: str | None, sop_instance: str | None,
              message_id: int | None = 7) -> C_STORE:
    ds = make_instance(1, 1, 1)
    req = C_STORE()
    if message_id is not None:
        req.MessageID = message_id
    if sop_class is not None:
        req.AffectedSOPClassUID = sop_class
    if sop_instance is not None:
        req.AffectedSOPInstanceUID = sop_instance
    req.Priority = 0x0002
    req.DataSet = _encoded(ds)
    return req


def _echo_rq() -> C_ECHO:
    req = C_ECHO()
    req.AffectedSOPClassUID = Verification
    return req  # no Message ID


CASES = {
    "store-without-instance-uid": (CR_IMAGE, lambda: _store_rq(
        sop_class=CR_IMAGE, sop_instance=None)),
    "store-without-message-id": (CR_IMAGE, lambda: _store_rq(
        sop_class=CR_IMAGE, sop_instance=make_instance().SOPInstanceUID, message_id=None)),
    "store-routed-to-verification": (Verification, lambda: _store_rq(
        sop_class=Verification, sop_instance=make_instance().SOPInstanceUID)),
    "echo-without-message-id": (Verification, _echo_rq),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_malformed_request_is_aborted_at_once(node: Node, case: str,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    abstract, build = CASES[case]
    assoc = node.associate([(abstract, [ExplicitVRLittleEndian])])
    assert assoc.is_established
    context = assoc.accepted_contexts[0]
    started = time.monotonic()
    assoc.dimse.send_msg(build(), context.context_id)
    deadline = started + 2.0
    while assoc.is_alive() and not assoc.is_aborted and time.monotonic() < deadline:
        _, response = assoc.dimse.get_msg(block=False)
        assert response is None or int(getattr(response, "Status", 0xC000)) != 0x0000, \
            f"{case}: answered Success"
        time.sleep(0.01)
    waited = time.monotonic() - started
    assert assoc.is_aborted or not assoc.is_alive(), f"{case}: no answer within 2 s"
    print(f"\n{case}: aborted after {waited * 1000:.0f} ms")
    assert node.instances() == [] and node.files() == []
    assert node.send(make_instance(1, 1, 2)) == [StoreStatus.SUCCESS]
    # The guard used to abort twice: pynetdicom's state machine raised on the second
    # A-ABORT and the DUL thread ended with a traceback (found by the hostile battery).
    assert not [r.getMessage() for r in caplog.records if r.exc_info], case


def _command(**elements: int | str | None) -> bytes:
    return rp.command_set({"CommandDataSetType": 0x0101, **elements})


# Found by the hostile battery: dropped without an answer (DIMSE-N requests pynetdicom
# finds invalid), or answered with an A-ABORT after a traceback in pynetdicom (a command set
# it cannot decode, a query/retrieve request naming the wrong SOP Class).
RAW_CASES: dict[str, tuple[int, bytes, bytes | None]] = {
    # name: (context ID, command set, data set)
    "n-action-without-message-id": (3, _command(
        RequestedSOPClassUID=CR_IMAGE, CommandField=0x0130, ActionTypeID=1,
        RequestedSOPInstanceUID="1.2.3.4"), None),
    "n-get-without-requested-instance": (3, _command(
        RequestedSOPClassUID=CR_IMAGE, CommandField=0x0110, MessageID=3), None),
    "n-create-without-affected-class": (3, _command(CommandField=0x0140, MessageID=3), None),
    "unknown-command-field": (1, _command(
        AffectedSOPClassUID=Verification, CommandField=0x0FFE, MessageID=3), None),
    "no-command-field": (1, _command(AffectedSOPClassUID=Verification, MessageID=3), None),
    "no-data-set-type": (1, rp.command_set({
        "AffectedSOPClassUID": Verification, "CommandField": 0x0030, "MessageID": 3}), None),
    # The last element (Command Data Set Type) declares 65535 bytes and holds 2.
    "command-set-cut-short": (1, _command(
        AffectedSOPClassUID=Verification, CommandField=0x0030, MessageID=3)[:-10]
        + b"\x00\x00\x00\x08\xff\xff\x00\x00\x01\x01", None),
    "c-move-on-a-find-context": (5, _command(
        AffectedSOPClassUID="1.2.840.10008.5.1.4.1.2.2.2", CommandField=0x0021,
        MessageID=3, Priority=0, CommandDataSetType=0, MoveDestination="ELSEWHERE"),
        b"\x08\x00\x52\x00CS\x06\x00STUDY "),
    "c-find-naming-a-storage-class": (5, _command(
        AffectedSOPClassUID=CR_IMAGE, CommandField=0x0020, MessageID=3, Priority=0,
        CommandDataSetType=0), b"\x08\x00\x52\x00CS\x06\x00STUDY "),
}


@pytest.mark.parametrize("case", sorted(RAW_CASES))
def test_a_request_pynetdicom_would_drop_or_raise_on_is_aborted_quietly(
        node: Node, case: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    context_id, command, data = RAW_CASES[case]
    with rp.RawPeer(node.port) as peer:
        peer.associate(rp.associate_rq([
            (1, Verification, [ExplicitVRLittleEndian]), (3, CR_IMAGE, [ExplicitVRLittleEndian]),
            (5, STUDY_ROOT_FIND, [ExplicitVRLittleEndian])]))
        started = time.monotonic()
        peer.send(b"".join(rp.fragments(context_id, command, data)))
        answer = peer.answer(started, 2.0)
    assert answer.kind in ("A-ABORT", "closed"), f"{case}: {answer}"
    assert not [r.getMessage() for r in caplog.records if r.exc_info], case
    assert node.send(make_instance(1, 1, 2)) == [StoreStatus.SUCCESS]
