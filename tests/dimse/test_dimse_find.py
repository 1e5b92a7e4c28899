"""C-FIND (Study Root and Patient Root) against the running SCP, over what it stored."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacs_node.dimse import PATIENT_ROOT_FIND, STUDY_ROOT_FIND, FindStatus, StoreStatus
from storage import InstanceMeta, InstanceSource, ingest

from .dimse_helpers import (
    AE_TITLE,
    SCU_AE,
    Node,
    make_instance,
    part10,
    run_dcmtk,
    uid,
    wait_for,
)


def find(node: Node, keys: dict[str, Any], model: str = STUDY_ROOT_FIND
         ) -> tuple[list[Dataset], int]:
    """Send one C-FIND; return the pending identifiers and the final status."""
    identifier = Dataset()
    for keyword, value in keys.items():
        if isinstance(value, RawDataElement):  # sent as is, even when not decodable
            identifier[value.tag] = value
        else:
            setattr(identifier, keyword, value)
    assoc = node.associate([(model, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])])
    assert assoc.is_established
    try:
        matches, final = [], -1
        for status, response in assoc.send_c_find(identifier, model):
            assert "Status" in status, "no response"
            if status.Status in (0xFF00, 0xFF01):
                matches.append(response)
            else:
                final = int(status.Status)
        return matches, final
    finally:
        assoc.release()


def findscu(node: Node, out: Path, *keys: str, model: str = "-S") -> list[Dataset]:
    out.mkdir(exist_ok=True)
    args = [arg for key in keys for arg in ("-k", key)]
    result = run_dcmtk("findscu", model, "-aet", SCU_AE, "-aec", AE_TITLE, "-X", "-od",
                       str(out), *args, "127.0.0.1", str(node.port))
    assert result.returncode == 0, result.stderr
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


@pytest.fixture
def loaded(node: Node) -> Node:
    """Study 1: series 1 (CR, PA, 3 images), series 2 (DX, LATERAL, 1 image);
    study 2 of another patient: series 1 (CR, 1 image)."""
    instances = [make_instance(1, 1, n) for n in (1, 2, 3)]
    instances.append(make_instance(1, 2, 1, Modality="DX", SeriesDescription="LATERAL"))
    instances.append(make_instance(2, 1, 1, PatientName="Other^Person", PatientID="PID-2",
                                   StudyDate="20250101", StudyDescription="HIP"))
    assert set(node.send(*instances)) == {StoreStatus.SUCCESS}
    return node


def test_findscu_study_level_returns_the_stored_study(node: Node, tmp_path: Path) -> None:
    source = get_testdata_file("RG3_UNCR.dcm")
    result = run_dcmtk("storescu", "-aet", SCU_AE, "-aec", AE_TITLE, "127.0.0.1",
                       str(node.port), str(source))
    assert result.returncode == 0, result.stderr
    study_uid = dcmread(source, stop_before_pixels=True).StudyInstanceUID

    responses = findscu(node, tmp_path / "rsp", "QueryRetrieveLevel=STUDY",
                        f"StudyInstanceUID={study_uid}", "NumberOfStudyRelatedInstances",
                        "ModalitiesInStudy")
    assert len(responses) == 1
    assert responses[0].StudyInstanceUID == study_uid
    assert responses[0].QueryRetrieveLevel == "STUDY"
    assert int(responses[0].NumberOfStudyRelatedInstances) == 1
    assert responses[0].ModalitiesInStudy == "CR"


def test_study_level_matching_and_return_keys(loaded: Node) -> None:
    matches, final = find(loaded, {"QueryRetrieveLevel": "STUDY", "PatientName": "secret*",
                                   "StudyInstanceUID": "", "StudyDate": "20260101-",
                                   "ModalitiesInStudy": "", "ReferringPhysicianName": "",
                                   "NumberOfStudyRelatedSeries": None})
    assert final == FindStatus.SUCCESS
    assert len(matches) == 1
    match = matches[0]
    assert match.StudyInstanceUID == uid(1)
    assert match.PatientName == "Secret^Patient"  # PN matches regardless of case
    assert sorted(match.ModalitiesInStudy) == ["CR", "DX"]
    assert int(match.NumberOfStudyRelatedSeries) == 2
    assert match.ReferringPhysicianName == ""  # requested, unknown to the node: empty
    assert "PatientID" not in match  # not requested, not returned
    assert "AccessionNumber" not in match


def test_series_level_with_wildcards(loaded: Node, tmp_path: Path) -> None:
    matches, final = find(loaded, {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": uid(1),
                                   "SeriesInstanceUID": "", "SeriesDescription": "LAT*",
                                   "Modality": ""})
    assert final == FindStatus.SUCCESS
    assert [(m.SeriesInstanceUID, m.Modality) for m in matches] == [(uid(1, 2), "DX")]
    assert matches[0].StudyInstanceUID == uid(1)  # unique key of the level above

    matches, _ = find(loaded, {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": uid(1),
                               "Modality": "?R", "NumberOfSeriesRelatedInstances": ""})
    assert [(m.SeriesInstanceUID, int(m.NumberOfSeriesRelatedInstances))
            for m in matches] == [(uid(1, 1), 3)]

    responses = findscu(loaded, tmp_path / "rsp", "QueryRetrieveLevel=SERIES",
                        f"StudyInstanceUID={uid(1)}", "SeriesInstanceUID", "Modality=*")
    assert sorted(r.SeriesInstanceUID for r in responses) == [uid(1, 1), uid(1, 2)]


def test_image_level_with_uid_lists_and_wildcards(loaded: Node, tmp_path: Path) -> None:
    matches, final = find(loaded, {"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": uid(1),
                                   "SeriesInstanceUID": uid(1, 1),
                                   "SOPInstanceUID": [uid(1, 1, 1), uid(1, 1, 3)],
                                   "SOPClassUID": "", "InstanceNumber": ""})
    assert final == FindStatus.SUCCESS
    assert [(m.SOPInstanceUID, int(m.InstanceNumber)) for m in matches] == [
        (uid(1, 1, 1), 1), (uid(1, 1, 3), 3)]
    assert {m.SOPClassUID for m in matches} == {"1.2.840.10008.5.1.4.1.1.1"}
    assert {m.SeriesInstanceUID for m in matches} == {uid(1, 1)}

    responses = findscu(loaded, tmp_path / "rsp", "QueryRetrieveLevel=IMAGE",
                        f"StudyInstanceUID={uid(1)}", f"SeriesInstanceUID={uid(1, 1)}",
                        "SOPInstanceUID=*", "InstanceNumber=2")
    assert [r.SOPInstanceUID for r in responses] == [uid(1, 1, 2)]


def test_results_produced_by_the_node_are_found(loaded: Node) -> None:
    produced = make_instance(1, 9, 1, Modality="SR", SOPClassUID="1.2.840.10008.5.1.4.1.1.88.34")
    produced.file_meta.MediaStorageSOPClassUID = produced.SOPClassUID
    data = part10(produced)
    ingest(loaded.store, loaded.sessions, data, InstanceMeta.read(data),
           source=InstanceSource.PRODUCED)
    matches, _ = find(loaded, {"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": uid(1),
                               "SeriesInstanceUID": uid(1, 9), "SOPInstanceUID": ""})
    assert [m.SOPInstanceUID for m in matches] == [uid(1, 9, 1)]


def test_no_match_is_plain_success(loaded: Node) -> None:
    matches, final = find(loaded, {"QueryRetrieveLevel": "STUDY", "PatientID": "NOBODY"})
    assert (matches, final) == ([], FindStatus.SUCCESS)


@pytest.mark.parametrize(("keys", "status"), [
    ({"PatientName": "*"}, 0xA900),  # no QueryRetrieveLevel
    ({"QueryRetrieveLevel": ""}, 0xA900),
    ({"QueryRetrieveLevel": "FRAME"}, 0xA900),
    ({"QueryRetrieveLevel": "PATIENT"}, 0xA900),  # not a Study Root level
    ({"QueryRetrieveLevel": "SERIES", "Modality": "CR"}, 0xA900),  # no StudyInstanceUID
    ({"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": ""}, 0xA900),
    ({"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": "1.2.*"}, 0xA900),
    ({"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": [uid(1), uid(2)]}, 0xA900),
    ({"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": "../../etc"}, 0xA900),
    ({"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": uid(1)}, 0xA900),  # no series UID
    ({"QueryRetrieveLevel": "STUDY", "StudyDate": "last week"}, 0xA900),
    ({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.abc"}, 0xA900),
    ({"QueryRetrieveLevel": "STUDY",  # sent raw: pydicom refuses to build it
      "StudyDate": RawDataElement(Tag(0x00080020), "DA", 10, b"2026/01/05", 0, False, True)},
     0xA900),
    ({"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": uid(1),
      "SeriesInstanceUID": uid(1, 1),
      "InstanceNumber": RawDataElement(Tag(0x00200013), "IS", 4, b"1.5 ", 0, False, True)},
     0xA900),
])
def test_bad_queries_fail(loaded: Node, keys: dict[str, Any], status: int) -> None:
    matches, final = find(loaded, keys)
    assert (matches, final) == ([], status)
    # The node keeps answering.
    assert find(loaded, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""})[1] == 0


def test_patient_root(loaded: Node) -> None:
    matches, final = find(loaded, {"QueryRetrieveLevel": "PATIENT", "PatientID": "PID-*",
                                   "PatientName": "", "NumberOfPatientRelatedStudies": "",
                                   "NumberOfPatientRelatedInstances": ""}, PATIENT_ROOT_FIND)
    assert final == FindStatus.SUCCESS
    assert sorted((m.PatientID, int(m.NumberOfPatientRelatedStudies),
                   int(m.NumberOfPatientRelatedInstances)) for m in matches) == [
        ("PID-2", 1, 1), ("PID-SECRET-77", 1, 4)]

    matches, _ = find(loaded, {"QueryRetrieveLevel": "STUDY", "PatientID": "PID-2",
                               "StudyInstanceUID": ""}, PATIENT_ROOT_FIND)
    assert [m.StudyInstanceUID for m in matches] == [uid(2)]
    assert matches[0].PatientID == "PID-2"

    # Below the study, the study must belong to the patient.
    series = {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": uid(1),
              "SeriesInstanceUID": ""}
    assert len(find(loaded, {**series, "PatientID": "PID-SECRET-77"}, PATIENT_ROOT_FIND)[0]) == 2
    assert find(loaded, {**series, "PatientID": "PID-2"}, PATIENT_ROOT_FIND) == ([], 0)
    # No patient ID above the study level: refused.
    assert find(loaded, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""},
                PATIENT_ROOT_FIND) == ([], 0xA900)


def test_non_ascii_names_round_trip(node: Node) -> None:
    ds = make_instance(5, 1, 1, SpecificCharacterSet="ISO_IR 192",
                       PatientName="Müller^Jürgen")
    assert node.send(ds) == [StoreStatus.SUCCESS]
    matches, final = find(node, {"SpecificCharacterSet": "ISO_IR 192",
                                 "QueryRetrieveLevel": "STUDY", "PatientName": "Mül*",
                                 "StudyInstanceUID": ""})
    assert final == FindStatus.SUCCESS
    assert len(matches) == 1
    assert matches[0].SpecificCharacterSet == "ISO_IR 192"
    assert str(matches[0].PatientName) == "Müller^Jürgen"


def test_cancel_stops_the_responses(make_node, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    import pacs_node.dimse._server as server_module

    real = server_module.handle_find
    cancelled = threading.Event()

    def held_after_first(event: Any, context: Any) -> Iterator[Any]:
        # Pass the first match through, then hold until the peer's C-CANCEL has arrived.
        for n, item in enumerate(real(event, context)):
            yield item
            if n == 0:
                assert cancelled.wait(10)
                # Peek (event.is_cancelled would consume the cancel request).
                wait_for(lambda: 7 in event.assoc.dimse.cancel_req, 10, "the C-CANCEL")

    monkeypatch.setattr(server_module, "handle_find", held_after_first)
    node = make_node()
    assert set(node.send(*[make_instance(n, 1, 1) for n in range(1, 7)])) == {0}

    assoc = node.associate([(STUDY_ROOT_FIND, [ExplicitVRLittleEndian])])
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    statuses = []
    for status, _identifier in assoc.send_c_find(query, STUDY_ROOT_FIND, msg_id=7):
        statuses.append(int(status.Status))
        if len(statuses) == 1:
            assoc.send_c_cancel(7, query_model=STUDY_ROOT_FIND)
            cancelled.set()
    assoc.release()
    assert statuses == [0xFF00, FindStatus.CANCEL]
