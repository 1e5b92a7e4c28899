"""C-GET and C-MOVE as viewers and PACS use them: dcmtk getscu and movescu (with storescp
as the destination) retrieve at every level, Study Root and Patient Root; a compressed
instance goes as stored when the peer takes it and decoded when not; the counts add up;
an unknown destination is 0xA801 and a bad identifier a failure, never silence."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from pacs_node.dimse import StoreStatus
from pacs_node.dimse._retrieve import MoveDestination

from .dimse_helpers import (
    AE_TITLE,
    SCU_AE,
    Node,
    free_port,
    make_instance,
    run_dcmtk,
    uid,
    wait_for,
)

DEST_AE = "VIEWER"


@pytest.fixture
def destination(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """dcmtk storescp as the move destination: (port, folder it writes to)."""
    folder = tmp_path / "received"
    folder.mkdir()
    port = free_port()
    process = subprocess.Popen(
        ["storescp", "-aet", DEST_AE, "--output-directory", str(folder), "+xa", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "TCP_NODELAY": "1"})
    try:
        wait_for(lambda: run_dcmtk("echoscu", "-aec", DEST_AE, "127.0.0.1", str(port),
                                   timeout=10).returncode == 0, 20, "storescp to answer")
        yield port, folder
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)


@pytest.fixture
def archive(make_node: Callable[..., Node], destination: tuple[int, Path]) -> Node:
    """A node holding study 1 (two CR series, 3 instances), study 2 (one instance, another
    patient) and RG3 JPEG 2000 (a real compressed CR), with storescp as move destination."""
    port, _ = destination
    node = make_node(move_destinations={DEST_AE: MoveDestination("127.0.0.1", port)})
    assert node.send(make_instance(1, 1, 1), make_instance(1, 1, 2), make_instance(1, 2, 1),
                     make_instance(2, 1, 1, PatientID="OTHER")) == [StoreStatus.SUCCESS] * 4
    j2k = Path(get_testdata_file("RG3_J2KR.dcm"))
    ds = pydicom.dcmread(j2k)
    assert node.send(j2k, contexts=[(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])]) == \
        [StoreStatus.SUCCESS]
    return node


def received(folder: Path) -> dict[str, pydicom.Dataset]:
    return {ds.SOPInstanceUID: ds for ds in
            (pydicom.dcmread(p) for p in folder.rglob("*") if p.is_file())}


def getscu(node: Node, folder: Path, *keys: str) -> subprocess.CompletedProcess[str]:
    args = ["getscu", "-v", "-S", "-aet", SCU_AE, "-aec", AE_TITLE, "--output-directory",
            str(folder)]
    for key in keys:
        args += ["-k", key]
    return run_dcmtk(*args, "127.0.0.1", str(node.port))


def movescu(node: Node, *keys: str, model: str = "-S", dest: str = DEST_AE
            ) -> subprocess.CompletedProcess[str]:
    args = ["movescu", "-v", model, "-aet", SCU_AE, "-aec", AE_TITLE, "-aem", dest]
    for key in keys:
        args += ["-k", key]
    return run_dcmtk(*args, "127.0.0.1", str(node.port), timeout=120)


@pytest.mark.parametrize(("keys", "expected"), [
    (["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={uid(1)}"],
     [uid(1, 1, 1), uid(1, 1, 2), uid(1, 2, 1)]),
    (["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={uid(1)}\\{uid(2)}"],
     [uid(1, 1, 1), uid(1, 1, 2), uid(1, 2, 1), uid(2, 1, 1)]),
    (["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={uid(1)}",
      f"SeriesInstanceUID={uid(1, 2)}"], [uid(1, 2, 1)]),
    (["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={uid(1)}",
      f"SeriesInstanceUID={uid(1, 1)}", f"SOPInstanceUID={uid(1, 1, 2)}"], [uid(1, 1, 2)]),
])
def test_movescu_retrieves_at_every_level(archive: Node, destination: tuple[int, Path],
                                          keys: list[str], expected: list[str]) -> None:
    out = movescu(archive, *keys)
    assert out.returncode == 0, out.stderr
    assert sorted(received(destination[1])) == expected
    log = out.stderr + out.stdout
    assert "Received Final Move Response (Success)" in log
    assert log.count(" (Pending)") == len(expected)  # one pending response per instance


def test_patient_root_move_by_patient(archive: Node, destination: tuple[int, Path]) -> None:
    out = movescu(archive, "QueryRetrieveLevel=PATIENT", "PatientID=OTHER", model="-P")
    assert out.returncode == 0, out.stderr
    assert sorted(received(destination[1])) == [uid(2, 1, 1)]


def test_a_compressed_instance_goes_as_stored_or_decoded(
        archive: Node, destination: tuple[int, Path], tmp_path: Path) -> None:
    original = pydicom.dcmread(get_testdata_file("RG3_J2KR.dcm"))
    keys = ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={original.StudyInstanceUID}",
            f"SeriesInstanceUID={original.SeriesInstanceUID}",
            f"SOPInstanceUID={original.SOPInstanceUID}"]
    # storescp +xa accepts every transfer syntax: the codestream goes as stored.
    assert movescu(archive, *keys).returncode == 0
    (moved,) = received(destination[1]).values()
    assert moved.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    # getscu proposes uncompressed syntaxes only: the node decodes it for this peer.
    folder = tmp_path / "got"
    folder.mkdir()
    out = getscu(archive, folder, *keys)
    assert out.returncode == 0, out.stderr
    (got,) = received(folder).values()
    assert not got.file_meta.TransferSyntaxUID.is_compressed
    assert np.array_equal(got.pixel_array, original.pixel_array)


@pytest.mark.parametrize("level_keys", [
    ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={uid(1)}"],
    ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={uid(1)}",
     f"SeriesInstanceUID={uid(1, 1)}"],
])
def test_getscu_retrieves_over_its_own_association(archive: Node, tmp_path: Path,
                                                   level_keys: list[str]) -> None:
    folder = tmp_path / "got"
    folder.mkdir()
    out = getscu(archive, folder, *level_keys)
    assert out.returncode == 0, out.stderr
    expected = [uid(1, 1, 1), uid(1, 1, 2)] + ([uid(1, 2, 1)] if "STUDY" in level_keys[0]
                                               else [])
    assert sorted(received(folder)) == sorted(expected)


def _final_move_status(node: Node, identifier: pydicom.Dataset, destination: str,
                       model: str = StudyRootQueryRetrieveInformationModelMove
                       ) -> pydicom.Dataset:
    ae = AE(ae_title=SCU_AE)
    ae.add_requested_context(model)
    ae.acse_timeout = ae.dimse_timeout = 30
    assoc = ae.associate("127.0.0.1", node.port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        responses = list(assoc.send_c_move(identifier, destination, model))
    finally:
        assoc.release()
    assert responses, "no response to the C-MOVE"
    return responses[-1][0]


def test_an_unknown_destination_is_0xa801(archive: Node) -> None:
    identifier = pydicom.Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = uid(1)
    status = _final_move_status(archive, identifier, "NOBODY")
    assert status.Status == 0xA801


@pytest.mark.parametrize("keys", [
    {"QueryRetrieveLevel": "STUDY"},  # no StudyInstanceUID
    {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.*"},  # a wildcard
    {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "../../etc"},
    {"QueryRetrieveLevel": "GALAXY", "StudyInstanceUID": uid(1)},
    {"StudyInstanceUID": uid(1)},  # no level
])
def test_a_bad_identifier_fails_with_a_status(archive: Node, destination: tuple[int, Path],
                                              keys: dict[str, str]) -> None:
    identifier = pydicom.Dataset()
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    status = _final_move_status(archive, identifier, DEST_AE)
    assert status.Status == 0xA900, hex(status.Status)
    assert received(destination[1]) == {}
    assert archive.send(make_instance(3, 1, 1)) == [StoreStatus.SUCCESS]  # still serving


def test_c_get_counts_and_no_match(archive: Node) -> None:
    ae = AE(ae_title=SCU_AE)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    assoc = ae.associate("127.0.0.1", archive.port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        identifier = pydicom.Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = uid(99)
        (final, _), = list(assoc.send_c_get(identifier,
                                            StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 0


def test_patient_root_move_model_is_offered(archive: Node) -> None:
    identifier = pydicom.Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientID = "OTHER"
    identifier.StudyInstanceUID = uid(2)
    status = _final_move_status(archive, identifier, DEST_AE,
                                PatientRootQueryRetrieveInformationModelMove)
    assert status.Status == 0x0000 and status.NumberOfCompletedSuboperations == 1
