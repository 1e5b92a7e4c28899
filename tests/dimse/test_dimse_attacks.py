"""Bad input against the running SCP: each is refused, nothing is written outside (or,
for refused instances, inside) the store, and the node keeps serving."""

from __future__ import annotations

import logging
import secrets
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pacs_node.dimse import StoreStatus
from storage import InvalidUID

from .dimse_helpers import (
    AE_TITLE,
    SCU_AE,
    Node,
    make_instance,
    part10,
    run_dcmtk,
    tree,
    wait_for,
)

TOKEN = secrets.token_hex(4)


def echo_works(node: Node) -> bool:
    result = run_dcmtk("echoscu", "-aet", SCU_AE, "-aec", AE_TITLE, "127.0.0.1",
                       str(node.port), timeout=60)
    return result.returncode == 0


def snapshot(node: Node) -> set[str]:
    """Every path around the node (its folder's parent, recursively) but the index files."""
    return {p for p in tree(node.tmp.parent) if "index.db" not in p}


def craft_file(tmp: Path, ds: Dataset, *, command_sop: str | None = None,
               body: bytes | None = None) -> Path:
    """A Part 10 file whose file meta (the command pynetdicom sends with
    STORE_SEND_CHUNKED_DATASET) may differ from its data set, or whose data set is
    replaced by ``body``."""
    if command_sop is not None:
        ds.file_meta.MediaStorageSOPInstanceUID = command_sop
    raw = part10(ds, body)
    path = tmp / f"crafted-{secrets.token_hex(4)}.dcm"
    path.write_bytes(raw)
    return path


UID_ATTACKS: dict[str, Callable[[], Dataset]] = {
    "sop-traversal": lambda: make_instance(sop_uid=f"../../{TOKEN}"),
    "sop-absolute": lambda: make_instance(sop_uid=f"/tmp/pacsnode-{TOKEN}"),
    "study-traversal": lambda: make_instance(study_uid=f"../../../{TOKEN}"),
    "study-absolute": lambda: make_instance(study_uid=f"/tmp/pacsnode-{TOKEN}"),
    "series-traversal": lambda: make_instance(series_uid=f"../{TOKEN}"),
    "letters": lambda: make_instance(sop_uid="1.2.840.abc.1"),
    "leading-zero": lambda: make_instance(series_uid="1.2.840.01"),
    "empty-study": lambda: make_instance(study_uid=""),
}


@pytest.mark.parametrize("attack", sorted(UID_ATTACKS))
def test_bad_uids_are_refused_before_any_path_is_built(node: Node, attack: str) -> None:
    ds = UID_ATTACKS[attack]()
    before = snapshot(node)
    (status,) = node.send(ds)
    assert status == InvalidUID.dimse_status  # 0xC210, "Cannot understand" range
    assert snapshot(node) == before
    assert node.files() == []
    assert node.instances() == []
    assert not list(node.tmp.parent.rglob(f"*{TOKEN}*"))
    assert not Path(f"/tmp/pacsnode-{TOKEN}").exists()
    assert echo_works(node)


def test_missing_sop_instance_uid_is_refused(node: Node, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ds = make_instance(1, 1, 1)
    command_uid = ds.SOPInstanceUID
    del ds.SOPInstanceUID
    file = craft_file(tmp_path, ds, command_sop=command_uid)
    (status,) = node.send(file)
    assert status == InvalidUID.dimse_status
    assert node.files() == [] and node.instances() == []
    assert echo_works(node)


def test_missing_sop_class_uid_is_refused(node: Node, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ds = make_instance(1, 1, 1)
    del ds.SOPClassUID
    (status,) = node.send(craft_file(tmp_path, ds))
    assert status == InvalidUID.dimse_status
    assert node.files() == []


def test_data_set_not_matching_the_command_is_refused(node: Node, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ds = make_instance(1, 1, 1)
    file = craft_file(tmp_path, ds, command_sop=make_instance(1, 1, 2).SOPInstanceUID)
    assert node.send(file) == [StoreStatus.DATASET_MISMATCH]  # 0xA900
    assert node.files() == [] and node.instances() == []


def test_command_uid_traversal_is_refused(node: Node, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    file = craft_file(tmp_path, make_instance(1, 1, 1), command_sop=f"../../{TOKEN}")
    before = snapshot(node)
    (status,) = node.send(file)
    assert status == InvalidUID.dimse_status
    assert snapshot(node) == before
    assert node.files() == []


@pytest.mark.parametrize("body", [
    b"\xff" * 4096,
    bytes(range(256)) * 8,
    b"\x08\x00\x18\x00UI\xff\xff" + b"1.2.3" * 10,  # element longer than the data
    b"",
])
def test_undecodable_data_set_is_refused(node: Node, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, body: bytes) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    file = craft_file(tmp_path, make_instance(1, 1, 1), body=body)
    (status,) = node.send(file)
    assert status >> 12 == 0xC, hex(status)  # 0xC000 cannot understand / 0xC210 bad UID
    assert node.files() == [] and node.instances() == []
    assert echo_works(node)


def test_calling_ae_not_on_the_allow_list_is_rejected(
        make_node, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    caplog.set_level(logging.INFO, logger="pacs_node")
    node = make_node(allowed_calling_aes=["MODALITY1", SCU_AE])
    assoc = node.associate([(Verification, [ExplicitVRLittleEndian])], ae_title="INTRUDER")
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)
    assert "'INTRUDER'" in caplog.text and "calling AE title not recognised" in caplog.text
    # dcmtk sees the rejection too; allowed AEs get through.
    result = run_dcmtk("echoscu", "-aet", "INTRUDER", "-aec", AE_TITLE, "127.0.0.1",
                       str(node.port))
    assert result.returncode != 0
    assert "Rejected" in result.stderr or "rejected" in result.stderr.lower()
    assert echo_works(node)
    assert node.send(make_instance(1, 1, 1), ae_title="MODALITY1") == [StoreStatus.SUCCESS]


def test_wrong_called_ae_is_rejected(node: Node, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pacs_node")
    assoc = node.associate([(Verification, [ExplicitVRLittleEndian])], called="SOMEONEELSE")
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x07)
    assert "called AE title not recognised" in caplog.text
    result = run_dcmtk("echoscu", "-aet", SCU_AE, "-aec", "SOMEONEELSE", "127.0.0.1",
                       str(node.port))
    assert result.returncode != 0
    assert echo_works(node)


def test_association_limit_is_enforced(make_node) -> None:  # noqa: ANN001
    node = make_node(max_associations=2)
    held = [node.associate([(Verification, [ExplicitVRLittleEndian])]) for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        extra = node.associate([(Verification, [ExplicitVRLittleEndian])])
        assert extra.is_rejected
        rj = extra.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)
    finally:
        for assoc in held:
            assoc.release()
    wait_for(lambda: not node.server._server.active_associations,  # noqa: SLF001
             10, "the held associations to end")
    assert echo_works(node)


def _raw(node: Node, payload: bytes) -> bytes:
    """Send ``payload`` on a raw connection, half-close, return what the server answered
    before closing its side (within a deadline)."""
    with socket.create_connection(("127.0.0.1", node.port), timeout=30) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
        return received


@pytest.mark.parametrize("payload", [
    b"GET / HTTP/1.1\r\nHost: pacs\r\n\r\n",
    secrets.token_bytes(4096),
    b"\x01\x00" + struct.pack(">L", 0xFFFFFFFF) + b"\x00\x01",  # huge A-ASSOCIATE-RQ length
    b"\x01\x00" + struct.pack(">L", 68) + b"\x00\x01\x00\x00" + b"\x00" * 64,  # truncated
    b"\x04\x00" + struct.pack(">L", 6) + b"\x00" * 6,  # P-DATA before any association
    b"\x01",
])
def test_garbage_instead_of_an_association_request(node: Node, payload: bytes) -> None:
    _raw(node, payload)  # the server closes the connection (maybe after an A-ABORT)
    assert echo_works(node)
    assert node.send(make_instance(1, 1, 1)) == [StoreStatus.SUCCESS]


def test_garbage_burst_then_good_traffic(make_node) -> None:  # noqa: ANN001
    node = make_node(max_associations=4)
    for _ in range(20):
        _raw(node, secrets.token_bytes(512))
        _raw(node, b"")  # connect and leave, like a TCP health check
    # Dead connections give their association slot back at once, not after acse_timeout.
    wait_for(lambda: not node.server._server.active_associations,  # noqa: SLF001
             5, "the garbage connections to be dropped")
    assert echo_works(node)
    assert node.send(make_instance(1, 1, 1)) == [StoreStatus.SUCCESS]
