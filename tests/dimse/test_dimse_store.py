"""C-ECHO and C-STORE against the running SCP, with dcmtk and pynetdicom as senders."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import _config

from pacs_node.dimse import StoreStatus
from storage import FileStore, StudyRepository

from .dimse_helpers import (
    AE_TITLE,
    BIRTH_DATE,
    PATIENT_ID,
    PATIENT_NAME,
    SCU_AE,
    Node,
    dataset_bytes,
    make_instance,
    part10,
    run_dcmtk,
)


def sample(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} is missing"
    return Path(path)


def storescu(node: Node, *files: Path, extra: tuple[str, ...] = ()) -> None:
    result = run_dcmtk("storescu", "-aet", SCU_AE, "-aec", AE_TITLE, *extra,
                       "127.0.0.1", str(node.port), *map(str, files))
    assert result.returncode == 0, result.stdout + result.stderr


def stored_path(node: Node, source: Path) -> Path:
    ds = dcmread(source, stop_before_pixels=True)
    return node.store.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                    ds.SOPInstanceUID)


def test_echoscu_succeeds(node: Node) -> None:
    result = run_dcmtk("echoscu", "-aet", SCU_AE, "-aec", AE_TITLE, "127.0.0.1",
                       str(node.port))
    assert result.returncode == 0, result.stderr


def test_storescu_uncompressed_is_stored_as_sent_indexed_and_nudged(node: Node) -> None:
    source = sample("RG3_UNCR.dcm")
    sent = dcmread(source)
    storescu(node, source)

    path = stored_path(node, source)
    stored = dcmread(path)
    assert stored.SOPInstanceUID == sent.SOPInstanceUID
    assert stored.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert stored.PixelData == sent.PixelData
    assert node.files() == [path]

    rows = node.instances(SOPInstanceUID=sent.SOPInstanceUID)
    assert len(rows) == 1
    assert rows[0].StudyInstanceUID == sent.StudyInstanceUID
    assert rows[0].transfer_syntax_uid == ExplicitVRLittleEndian
    assert node.nudged == [sent.StudyInstanceUID]


@pytest.mark.parametrize(("name", "option"), [
    ("RG3_J2KR.dcm", "-xv"),  # JPEG 2000 lossless
    ("JPEG-LL.dcm", "-xs"),  # JPEG lossless SV1
    ("MR_small_RLE.dcm", "-xr"),  # RLE lossless
    ("JPEG-lossy.dcm", "-xx"),  # JPEG extended, 12 bit
    ("SC_rgb_jpeg_dcmtk.dcm", "-xy"),  # JPEG baseline
    ("MR_small_jpeg_ls_lossless.dcm", "-xt"),  # JPEG-LS lossless
    ("RG3_J2KI.dcm", "-xw"),  # JPEG 2000 (lossy)
])
def test_storescu_compressed_is_stored_compressed(node: Node, name: str, option: str) -> None:
    source = sample(name)
    sent = dcmread(source)
    storescu(node, source, extra=(option,))

    path = stored_path(node, source)
    stored = dcmread(path)
    assert stored.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
    assert stored.PixelData == sent.PixelData  # the encapsulated fragments, as received
    row = node.instances(SOPInstanceUID=sent.SOPInstanceUID)[0]
    assert row.transfer_syntax_uid == sent.file_meta.TransferSyntaxUID


@pytest.mark.parametrize(("option", "syntax"), [
    ("-xd", "1.2.840.10008.1.2.1.99"),  # deflated
    ("-xb", "1.2.840.10008.1.2.2"),  # big endian
    ("-xi", "1.2.840.10008.1.2"),  # implicit little endian
])
def test_storescu_uncompressed_variants(node: Node, option: str, syntax: str) -> None:
    source = sample("CT_small.dcm")  # explicit little endian: storescu converts it
    storescu(node, source, extra=(option,))
    stored = dcmread(stored_path(node, source))
    sent = dcmread(source)
    assert stored.file_meta.TransferSyntaxUID == syntax
    assert stored.SOPInstanceUID == sent.SOPInstanceUID
    assert (stored.pixel_array == sent.pixel_array).all()
    assert node.instances(SOPInstanceUID=sent.SOPInstanceUID)[0].transfer_syntax_uid == syntax


@pytest.mark.parametrize("name", ["RG3_UNCR.dcm", "RG3_J2KR.dcm", "MR_small_RLE.dcm"])
def test_received_bytes_are_stored_unchanged(node: Node, monkeypatch: pytest.MonkeyPatch,
                                             name: str) -> None:
    # pynetdicom sends the file's data set bytes as they are (dcmtk re-encodes sequences
    # and drops trailing padding), so the stored data set must be byte-identical.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    source = sample(name)
    meta = dcmread(source, stop_before_pixels=True)
    contexts = [(meta.SOPClassUID, [meta.file_meta.TransferSyntaxUID])]
    assert node.send(source, contexts=contexts) == [StoreStatus.SUCCESS]
    assert dataset_bytes(stored_path(node, source)) == dataset_bytes(source)


def test_a_sop_class_outside_the_short_storage_list_is_accepted(node: Node) -> None:
    # Legacy Converted Enhanced CT is in AllStoragePresentationContexts only.
    ds = make_instance(9, 1, 1)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.2"
    statuses = node.send(ds, contexts=[(ds.SOPClassUID, [ExplicitVRLittleEndian])])
    assert statuses == [StoreStatus.SUCCESS]


def test_duplicate_identical_is_success_twice_one_file(node: Node) -> None:
    ds = make_instance(1, 1, 1)
    assert node.send(ds) == [StoreStatus.SUCCESS]
    assert node.send(ds) == [StoreStatus.SUCCESS]
    assert len(node.files()) == 1
    assert len(node.instances(SOPInstanceUID=ds.SOPInstanceUID)) == 1
    assert node.nudged == [ds.StudyInstanceUID]  # the resend brought nothing new


def test_duplicate_with_other_content_warns_and_keeps_the_first(node: Node) -> None:
    first = make_instance(1, 1, 1)
    second = make_instance(1, 1, 1, SeriesDescription="LATERAL")
    assert node.send(first) == [StoreStatus.SUCCESS]
    before = node.files()[0].read_bytes()

    assert node.send(second) == [0xB000]
    assert node.files()[0].read_bytes() == before
    assert dcmread(node.files()[0]).SeriesDescription == "PA"
    assert node.nudged == [first.StudyInstanceUID]


def test_overwrite_setting_replaces_conflicting_duplicates(make_node) -> None:  # noqa: ANN001
    node = make_node(overwrite_conflicting_duplicates=True)
    first = make_instance(1, 1, 1)
    second = make_instance(1, 1, 1, SeriesDescription="LATERAL")
    assert node.send(first, second) == [StoreStatus.SUCCESS, StoreStatus.SUCCESS]
    assert dcmread(node.files()[0]).SeriesDescription == "LATERAL"
    assert node.nudged == [first.StudyInstanceUID] * 2


def test_chunked_receive_streams_from_the_temp_file(node: Node,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", True)
    source = sample("RG3_UNCR.dcm")
    storescu(node, source)
    stored, sent = dcmread(stored_path(node, source)), dcmread(source)
    assert stored.PixelData == sent.PixelData
    assert len(node.instances(SOPInstanceUID=sent.SOPInstanceUID)) == 1


def test_disk_full_is_refused_out_of_resources(node: Node,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from storage import OutOfResources

    def full(*_args: object, **_kwargs: object) -> None:
        raise OutOfResources("cannot write instance: No space left on device")

    monkeypatch.setattr(FileStore, "stage", full)
    assert node.send(make_instance(1, 1, 1)) == [0xA700]
    assert node.files() == []
    assert node.instances() == []
    assert node.nudged == []


def test_unexpected_error_is_a_failure_logged_without_details(
        node: Node, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import pacs_node.dimse._store as store_module

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError(f"boom {PATIENT_NAME}")

    monkeypatch.setattr(store_module, "ingest", broken)
    caplog.set_level(logging.DEBUG)
    assert node.send(make_instance(1, 1, 1)) == [StoreStatus.INTERNAL_ERROR]
    assert "RuntimeError" in caplog.text
    assert PATIENT_NAME not in caplog.text
    # The node keeps serving.
    monkeypatch.undo()
    assert node.send(make_instance(1, 1, 2)) == [StoreStatus.SUCCESS]


def test_a_failing_tracker_callback_does_not_fail_the_store(make_node) -> None:  # noqa: ANN001
    def failing(_study: str) -> None:
        raise ValueError("tracker down")

    node = make_node(on_stored=failing)
    assert node.send(make_instance(1, 1, 1)) == [StoreStatus.SUCCESS]
    assert len(node.instances()) == 1


def test_no_patient_data_in_logs(node: Node, caplog: pytest.LogCaptureFixture,
                                 tmp_path: Path) -> None:
    caplog.set_level(logging.DEBUG)
    ds = make_instance(1, 1, 1)
    file = tmp_path / "one.dcm"
    file.write_bytes(part10(ds))
    storescu(node, file)
    assert node.send(make_instance(1, 1, 1, SeriesDescription="OTHER")) == [0xB000]
    result = run_dcmtk("findscu", "-S", "-aet", SCU_AE, "-aec", AE_TITLE,
                       "-k", "QueryRetrieveLevel=STUDY", "-k", f"PatientName={PATIENT_NAME}",
                       "-k", "PatientID", "-k", "PatientBirthDate", "-k", "StudyInstanceUID",
                       "127.0.0.1", str(node.port))
    assert result.returncode == 0, result.stderr
    assert ds.SOPInstanceUID in caplog.text  # UIDs are logged
    for secret in (PATIENT_NAME, "Secret", PATIENT_ID, BIRTH_DATE):
        assert secret not in caplog.text


def test_non_conformant_patient_values_are_not_logged(
        node: Node, caplog: pytest.LogCaptureFixture) -> None:
    # Non-conformant values are stored as received; pydicom's value validation would log
    # them ("Invalid value for VR DA: '1901-02-03'") when they are read or set.
    ds = make_instance(1, 1, 1)
    for tag, vr, value in ((0x00100030, "DA", b"1901-02-03"),
                           (0x00100040, "CS", b"hidden"),
                           (0x00100010, "PN", b"Hidden^" + b"N" * 81)):
        ds[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)
    caplog.set_level(logging.DEBUG)
    assert node.send(ds) == [StoreStatus.SUCCESS]
    assoc = node.associate([("1.2.840.10008.5.1.4.1.2.2.1", [ExplicitVRLittleEndian])])
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientBirthDate = ""
    query.PatientSex = ""
    query.PatientName = ""
    responses = list(assoc.send_c_find(query, "1.2.840.10008.5.1.4.1.2.2.1"))
    assoc.release()
    assert [int(status.Status) for status, _ in responses] == [0xFF00, 0x0000]
    for secret in ("1901", "hidden", "Hidden"):
        assert secret not in caplog.text


def test_a_c_store_sent_with_priority_high_makes_its_study_urgent(node: Node) -> None:
    """C-STORE Priority HIGH (PS3.7 9.1.1.1.10) is the sender's urgency: its study is
    triaged HIGH at once, a floor no result lowers (storage.triage); MEDIUM and LOW are not."""
    routine, urgent = make_instance(1, 1, 1), make_instance(2, 1, 1)
    assoc = node.associate()
    assert assoc.is_established
    try:
        assert assoc.send_c_store(routine, priority=0x0002).Status == StoreStatus.SUCCESS
        assert assoc.send_c_store(urgent, priority=0x0001).Status == StoreStatus.SUCCESS
    finally:
        assoc.release()
    with node.sessions() as session:
        studies = StudyRepository(session)
        low, high = studies.get(routine.StudyInstanceUID), studies.get(urgent.StudyInstanceUID)
        assert low is not None and high is not None
        assert (low.triage_priority, low.requested_priority) == (None, None)
        assert (high.triage_priority, high.requested_priority) == \
            ("HIGH", "C-STORE Priority HIGH")
        (event,) = studies.priority_history(high.id)
        assert (event.source, event.actor) == ("sender", SCU_AE)
