"""Every DIMSE request gets an answer: a malformed request is aborted at once (today it was
dropped silently, or a C-STORE naming Verification was answered Success with nothing
stored), and the node keeps serving."""

from __future__ import annotations

import time
from io import BytesIO

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pacs_node.dimse import StoreStatus

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
def test_a_malformed_request_is_aborted_at_once(node: Node, case: str) -> None:
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
