"""Hostile C-FIND identifiers against the running SCP: control characters in matching
values and identifiers cut short are refused, and no query answers with every study."""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Any

import pytest
from pydicom import Dataset
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import association as pynetdicom_association
from pynetdicom.dsutils import encode

from pacs_node.dimse import PATIENT_ROOT_FIND, STUDY_ROOT_FIND, FindStatus, StoreStatus
from storage import InvalidQuery, QueryRepository

from .dimse_helpers import Node, make_instance, uid

ALL_STUDIES = 3


def raw(keyword: str, value: bytes) -> RawDataElement:
    """An element sent exactly as ``value`` (padded to even length with a space)."""
    tag = tag_for_keyword(keyword)
    assert tag is not None
    if len(value) % 2:
        value += b" "
    return RawDataElement(Tag(tag), dictionary_VR(tag), len(value), value, 0, False, True)


def identifier(keys: dict[str, Any]) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        if isinstance(value, bytes):
            ds[tag_for_keyword(keyword)] = raw(keyword, value)
        else:
            setattr(ds, keyword, value)
    return ds


def find(node: Node, keys: dict[str, Any] | Dataset, model: str = STUDY_ROOT_FIND,
         syntax: str = ExplicitVRLittleEndian) -> tuple[list[Dataset], int]:
    """One C-FIND on its own association: the pending identifiers and the final status."""
    query = keys if isinstance(keys, Dataset) else identifier(keys)
    assoc = node.associate([(model, [syntax])])
    assert assoc.is_established
    try:
        matches, final = [], -1
        for status, response in assoc.send_c_find(query, model):
            assert "Status" in status, "no response"
            if status.Status in (0xFF00, 0xFF01):
                matches.append(response)
            else:
                final = int(status.Status)
        return matches, final
    finally:
        assoc.release()


def every_study(node: Node) -> list[str]:
    matches, final = find(node, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""})
    assert final == FindStatus.SUCCESS
    return sorted(m.StudyInstanceUID for m in matches)


@pytest.fixture
def loaded(node: Node) -> Node:
    """Three studies of three patients."""
    instances = [make_instance(1, 1, 1),
                 make_instance(2, 1, 1, PatientName="Other^Person", PatientID="PID-2",
                               StudyDate="20250101", AccessionNumber="ACC2"),
                 make_instance(3, 1, 1, PatientName="Third^Person", PatientID="PID-3",
                               StudyDescription="HIP")]
    assert set(node.send(*instances)) == {StoreStatus.SUCCESS}
    assert len(every_study(node)) == ALL_STUDIES
    return node


STUDY = {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""}
SERIES = {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": uid(1), "SeriesInstanceUID": ""}

CONTROL_CHARACTERS: dict[str, dict[str, Any]] = {
    # A NUL inside a wildcard: SQLite's LIKE stopped at it, "*" matched every study.
    "name-nul-after-star": {**STUDY, "PatientName": b"*\x00Nobody"},
    "name-nul-inside": {**STUDY, "PatientName": b"Secret\x00*"},
    "name-leading-nul": {**STUDY, "PatientName": b"\x00*"},
    "name-soh": {**STUDY, "PatientName": b"Sec\x01*"},
    "name-newline": {**STUDY, "PatientName": b"Secret\n*"},
    "name-tab": {**STUDY, "PatientName": b"*\tPatient"},
    "name-unit-separator": {**STUDY, "PatientName": b"\x1f*"},
    "name-del": {**STUDY, "PatientName": b"Secret*\x7f"},
    "patient-id-nul": {**STUDY, "PatientID": b"PID\x00*"},
    "accession-nul": {**STUDY, "AccessionNumber": b"A\x00*"},
    "description-nul": {**STUDY, "StudyDescription": b"*\x00HIP"},
    "modalities-nul": {**STUDY, "ModalitiesInStudy": b"C\x00\\*"},
    "uid-list-nul": {**STUDY, "StudyInstanceUID": f"{uid(1)}\x00\\{uid(2)}".encode()},
    "uid-nul-first": {**STUDY, "StudyInstanceUID": b"\x00" + uid(1).encode()},
    "date-nul": {**STUDY, "StudyDate": b"2026\x000105"},
    "date-range-nul": {**STUDY, "StudyDate": b"20200101\x00-20301231"},
    "birth-date-nul-first": {**STUDY, "PatientBirthDate": b"\x00-19991231"},
    "time-nul": {**STUDY, "StudyTime": b"08\x00-"},
    "series-description-nul": {**SERIES, "SeriesDescription": b"*\x00PA"},
    "series-modality-bell": {**SERIES, "Modality": b"C\x07"},
    "unique-key-above-nul": {"QueryRetrieveLevel": "SERIES",
                             "StudyInstanceUID": uid(1).encode() + b"\x00\x00X"},
    "return-key-nul": {**STUDY, "ReferringPhysicianName": b"*\x00x"},
}


@pytest.mark.parametrize("case", sorted(CONTROL_CHARACTERS))
def test_control_characters_in_values_are_refused(loaded: Node, case: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="pacs_node")
    matches, final = find(loaded, CONTROL_CHARACTERS[case])
    assert (matches, final) == ([], FindStatus.IDENTIFIER_MISMATCH)  # 0xA900
    refusals = [r for r in caplog.records if "C-FIND" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelno == logging.WARNING
    assert refusals[0].exc_info is None
    # The node keeps answering a good query, and still finds only what matches.
    assert every_study(loaded) == [uid(1), uid(2), uid(3)]
    good, final = find(loaded, {**STUDY, "PatientName": "secret*"})
    assert final == FindStatus.SUCCESS and [m.StudyInstanceUID for m in good] == [uid(1)]


def test_patient_root_control_characters_are_refused(loaded: Node) -> None:
    keys = {"QueryRetrieveLevel": "PATIENT", "PatientID": b"*\x00", "PatientName": b"*\x00x"}
    assert find(loaded, keys, PATIENT_ROOT_FIND) == ([], FindStatus.IDENTIFIER_MISMATCH)


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_control_characters_are_refused_in_every_transfer_syntax(loaded: Node,
                                                                 syntax: str) -> None:
    assert find(loaded, {**STUDY, "PatientName": "*\x00Nobody"}, syntax=syntax) == (
        [], FindStatus.IDENTIFIER_MISMATCH)


def test_padding_and_escape_are_not_control_characters(loaded: Node) -> None:
    # Trailing NUL padding (old modalities pad every VR with NUL) is padding.
    matches, final = find(loaded, {**STUDY, "PatientName": b"Secret*\x00"})
    assert final == FindStatus.SUCCESS and [m.StudyInstanceUID for m in matches] == [uid(1)]
    matches, final = find(loaded, {**STUDY, "StudyDate": b"20260101-\x00"})
    assert final == FindStatus.SUCCESS and len(matches) == 2
    # ESC starts ISO 2022 code extensions: a Japanese name is a query like any other.
    name = b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B"
    matches, final = find(loaded, {"SpecificCharacterSet": ["", "ISO 2022 IR 87"], **STUDY,
                                   "PatientName": name})
    assert (matches, final) == ([], FindStatus.SUCCESS)
    matches, final = find(loaded, {**STUDY, "PatientName": b"Sec\x1b*"})
    assert (matches, final) == ([], FindStatus.SUCCESS)


def test_the_repository_refuses_control_characters_too(loaded: Node) -> None:
    """The matching itself refuses them (QIDO will share it), naming no value."""
    with loaded.sessions() as session:
        repo = QueryRepository(session)
        for filters in ({"PatientName": "*\x00Nobody"}, {"PatientID": "\x01"},
                        {"StudyDescription": "\x7f*"}, {"ModalitiesInStudy": ["CR", "D\x00"]}):
            with pytest.raises(InvalidQuery) as info:
                repo.find_studies(filters)
            assert "Nobody" not in str(info.value)
        assert len(repo.find_studies({"PatientName": "*\x00"})) == ALL_STUDIES  # padding
        assert len(repo.find_studies({"PatientName": "*\x1b"})) == 0


# -- identifiers cut short or malformed ----------------------------------------------------

def _encoded(keys: dict[str, Any], syntax: str = ExplicitVRLittleEndian) -> bytes:
    implicit, little = syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian
    data = encode(identifier(keys), implicit, little)
    assert data is not None
    return data


def _element_ends(data: bytes, implicit: bool) -> list[int]:
    """Where each top-level element of an encoded identifier (no sequences) ends."""
    ends, pos = [], 0
    while pos < len(data):
        if implicit:
            length, header = struct.unpack_from("<I", data, pos + 4)[0], 8
        else:
            length, header = struct.unpack_from("<H", data, pos + 6)[0], 8
        pos += header + length
        ends.append(pos)
    return ends


QUERY = {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "", "PatientName": "Secret*",
         "StudyDate": "20260101-", "PatientID": "PID-SECRET-77"}
_FULL = _encoded(QUERY)
_ENDS = _element_ends(_FULL, implicit=False)
_SEQUENCE = (b"\x08\x00\x32\x11SQ\x00\x00\xff\xff\xff\xff"  # Referenced Study Sequence
             b"\xfe\xff\x00\xe0\xff\xff\xff\xff"  # an item of undefined length
             b"\x08\x00\x50\x11UI\x00\x00")  # ... never closed

CUTS: dict[str, Callable[[bytes], bytes]] = {
    # Cut inside a value: pydicom reads the short value as if it were whole.
    "inside-last-value": lambda d: d[:-3],
    "inside-a-middle-value": lambda d: d[:_ENDS[1] - 2],
    # Cut inside an element header: pydicom stops there, the query ran without the rest.
    "inside-a-header": lambda d: d[:_ENDS[1] + 5],
    "after-one-byte-of-a-header": lambda d: d[:_ENDS[2] + 1],
    "value-length-beyond-the-end": lambda d: d + b"\x10\x00\x20\x00LO\x40\x00PID*",
    "odd-trailing-byte": lambda d: d + b"\x00",
    # Everything after a stray item delimiter: pydicom stops reading there.
    "after-a-stray-item-delimiter": lambda d: (d[:_ENDS[1]] + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
                                               + d[_ENDS[1]:]),
    "unclosed-sequence": lambda d: d + _SEQUENCE,
    "implicit-bytes-on-explicit-context": lambda d: _encoded(QUERY, ImplicitVRLittleEndian),
}


@pytest.fixture
def send_raw_identifier(monkeypatch: pytest.MonkeyPatch) -> Callable[[bytes], None]:
    """Make the next C-FIND send ``data`` as its identifier, whatever data set is given."""
    real = pynetdicom_association.encode

    def install(data: bytes) -> None:
        sent = [data]

        def fake(ds: Dataset, implicit: bool, little: bool, deflated: bool = False
                 ) -> bytes | None:
            return sent.pop() if sent else real(ds, implicit, little, deflated)

        monkeypatch.setattr(pynetdicom_association, "encode", fake)

    return install


def test_the_cuts_are_what_pydicom_silently_accepts() -> None:
    from io import BytesIO

    from pydicom.filereader import read_dataset

    for name, cut in CUTS.items():
        if name in ("implicit-bytes-on-explicit-context", "unclosed-sequence"):
            continue
        read_dataset(BytesIO(cut(_FULL)), False, True)  # no exception: hence our own check


@pytest.mark.parametrize("case", sorted(CUTS))
def test_truncated_or_malformed_identifier_is_refused(
        loaded: Node, case: str, send_raw_identifier: Callable[[bytes], None],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pacs_node")
    send_raw_identifier(CUTS[case](_FULL))
    matches, final = find(loaded, Dataset())
    assert (matches, final) == ([], FindStatus.UNABLE_TO_PROCESS)  # 0xC000
    lines = [r for r in caplog.records if "C-FIND" in r.getMessage()]
    assert [r.levelno for r in lines] == [logging.WARNING], [r.getMessage() for r in lines]
    assert lines[0].exc_info is None and "incomplete or malformed" in lines[0].getMessage()
    assert "Secret" not in caplog.text and "PID-SECRET" not in caplog.text
    # The node keeps answering, and the whole identifier is a query like any other.
    send_raw_identifier(_FULL)
    matches, final = find(loaded, Dataset())
    assert final == FindStatus.SUCCESS and [m.StudyInstanceUID for m in matches] == [uid(1)]


def test_every_cut_of_an_identifier_is_refused_or_a_whole_query(
        loaded: Node, send_raw_identifier: Callable[[bytes], None]) -> None:
    """Cut the identifier at every byte: a cut on an element boundary is a smaller,
    well-formed query (nothing on the wire says otherwise); every other cut is refused.
    No cut returns every study."""
    for cut in range(1, len(_FULL)):
        send_raw_identifier(_FULL[:cut])
        matches, final = find(loaded, Dataset())
        if cut in _ENDS:
            assert final in (FindStatus.SUCCESS, FindStatus.IDENTIFIER_MISMATCH), (cut, final)
        else:
            assert (matches, final) == ([], FindStatus.UNABLE_TO_PROCESS), (cut, final)
        assert len(matches) < ALL_STUDIES, cut  # StudyDate comes first and leaves one out
    assert every_study(loaded) == [uid(1), uid(2), uid(3)]
