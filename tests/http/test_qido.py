"""QIDO-RS as a DICOMweb client sees it (dicomweb-client, a client no one here wrote):
each matching key returns exactly the expected set, paging covers every match once, and
bad queries get a 400 while the node keeps answering."""

from __future__ import annotations

import time

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset

from .conftest import SR_STORAGE, Web, uid


def client(web: Web) -> DICOMwebClient:
    return DICOMwebClient(url=f"{web.url}/dicomweb")


def studies(web: Web, **filters: str) -> list[str]:
    found = client(web).search_for_studies(search_filters=filters)
    return sorted(Dataset.from_json(s).StudyInstanceUID for s in found)


def series(web: Web, study: str | None = None, **filters: str) -> list[str]:
    found = client(web).search_for_series(study_instance_uid=study, search_filters=filters)
    return sorted(Dataset.from_json(s).SeriesInstanceUID for s in found)


def instances(web: Web, study: str | None = None, series_uid: str | None = None,
              **filters: str) -> list[str]:
    found = client(web).search_for_instances(study_instance_uid=study,
                                             series_instance_uid=series_uid,
                                             search_filters=filters)
    return sorted(Dataset.from_json(s).SOPInstanceUID for s in found)


@pytest.mark.parametrize(("filters", "expected"), [
    ({}, [1, 2, 3, 4]),
    ({"PatientID": "P3"}, [3, 4]),
    ({"00100020": "P1"}, [1]),  # the tag instead of the keyword
    ({"PatientName": "Smith^John"}, [1]),
    ({"PatientName": "smith*"}, [1]),  # PN wildcards ignore case
    ({"PatientName": "*OE"}, [3, 4]),
    ({"AccessionNumber": "A2"}, [2]),
    ({"StudyDate": "20250201-20250331"}, [2, 3]),
    ({"StudyDate": "20250301-"}, [3, 4]),
    ({"StudyTime": "-0900"}, [1]),
    ({"StudyInstanceUID": f"{uid(2)},{uid(4)}"}, [2, 4]),
    ({"ModalitiesInStudy": "DX"}, [2]),
    ({"ModalitiesInStudy": "SR"}, [3]),
    ({"Modality": "DX"}, [2]),  # study level: ModalitiesInStudy (OHIF sends Modality)
    ({"PatientID": "P3", "StudyDate": "20251231"}, [4]),
    ({"PatientID": "nobody"}, []),
])
def test_study_matching(web: Web, filters: dict[str, str], expected: list[int]) -> None:
    assert studies(web, **filters) == sorted(uid(n) for n in expected)


def test_fuzzy_matching_finds_a_name_by_any_word(web: Web) -> None:
    found = client(web).search_for_studies(search_filters={"PatientName": "smi"},
                                           fuzzymatching=True)
    assert sorted(Dataset.from_json(s).StudyInstanceUID for s in found) == [uid(1), uid(2)]
    assert studies(web, PatientName="smi") == []  # without fuzzy matching: the whole name


def test_series_and_instance_matching(web: Web) -> None:
    assert series(web, uid(1)) == [uid(1, 1), uid(1, 2)]
    assert series(web, Modality="CR") == [uid(1, 1), uid(1, 2), uid(3, 1), uid(4, 1)]
    assert series(web, BodyPartExamined="WRIST") == [uid(1, 1), uid(3, 1)]
    assert series(web, SeriesInstanceUID=uid(3, 9)) == [uid(3, 9)]
    assert series(web, PatientID="P3", Modality="CR") == [uid(3, 1), uid(4, 1)]  # relational
    assert instances(web, uid(1)) == [uid(1, 1, 1), uid(1, 1, 2), uid(1, 2, 1)]
    assert instances(web, uid(1), uid(1, 1)) == [uid(1, 1, 1), uid(1, 1, 2)]
    assert instances(web, SOPClassUID=SR_STORAGE) == [uid(3, 9, 1)]
    assert instances(web, SOPInstanceUID=uid(2, 1, 1)) == [uid(2, 1, 1)]
    assert instances(web, AccessionNumber="A1", BodyPartExamined="HAND") == [uid(1, 2, 1)]


def test_returned_attributes_and_includefield(web: Web) -> None:
    (plain,) = client(web).search_for_studies(search_filters={"AccessionNumber": "A1"})
    study = Dataset.from_json(plain)
    assert study.PatientName == "Smith^John" and study.StudyDate == "20250110"
    assert study.ModalitiesInStudy == "CR"
    assert study.NumberOfStudyRelatedSeries == 2 and study.NumberOfStudyRelatedInstances == 3
    assert study.RetrieveURL.endswith(f"/dicomweb/studies/{uid(1)}")
    assert "Modality" not in study
    (asked,) = client(web).search_for_studies(search_filters={"AccessionNumber": "A1"},
                                              fields=["Modality"])
    assert Dataset.from_json(asked).Modality == "CR"
    (everything,) = client(web).search_for_instances(
        search_filters={"SOPInstanceUID": uid(2, 1, 1)}, fields=["all"])
    instance = Dataset.from_json(everything)
    assert (instance.Rows, instance.Columns, instance.InstanceNumber) == (16, 16, 1)
    assert instance.SeriesInstanceUID == uid(2, 1)


def test_limit_and_offset_page_through_every_match_once(web: Web) -> None:
    pages = [client(web).search_for_instances(limit=3, offset=offset)
             for offset in (0, 3, 6, 9)]
    seen = [Dataset.from_json(i).SOPInstanceUID for page in pages for i in page]
    assert [len(page) for page in pages] == [3, 3, 1, 0]
    assert sorted(seen) == sorted(set(seen)) == instances(web)


def test_an_unsupported_key_is_ignored_with_a_warning(web: Web) -> None:
    response = requests.get(f"{web.url}/dicomweb/studies",
                            params={"PatientID": "P1", "ReferringPhysicianName": "Doe",
                                    "NoSuchKey": "x"}, timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/dicom+json")
    assert [s["0020000D"]["Value"][0] for s in response.json()] == [uid(1)]
    warning = response.headers["Warning"]
    assert warning.startswith("299 ") and "ReferringPhysicianName" in warning
    assert "NoSuchKey" in warning


@pytest.mark.parametrize(("path", "params"), [
    ("/dicomweb/studies", {"StudyDate": "yesterday"}),
    ("/dicomweb/studies", {"PatientName": "*\x00Nobody"}),  # a NUL cut SQLite's LIKE
    ("/dicomweb/studies", {"StudyInstanceUID": "1.2.abc"}),
    ("/dicomweb/studies", {"limit": "1001"}),
    ("/dicomweb/studies", {"offset": "-1"}),
    ("/dicomweb/studies", {"limit": "ten"}),
    ("/dicomweb/studies", {"PatientID": "x" * 5000}),
    ("/dicomweb/studies/..../series", {}),
    ("/dicomweb/studies/1.2%003/series", {}),
    ("/dicomweb/studies/1.2.3/series/1.2.x/instances", {}),
])
def test_a_bad_query_is_a_400_and_the_node_keeps_answering(
        web: Web, path: str, params: dict[str, str]) -> None:
    response = requests.get(f"{web.url}{path}", params=params, timeout=10)
    assert response.status_code == 400, response.text
    assert "detail" in response.json()
    assert studies(web, PatientID="P1") == [uid(1)]


def _logged(caplog: pytest.LogCaptureFixture, expected: str) -> list[str]:
    """The node's log lines (the client's own, in this process, log its URLs), once one
    holds ``expected``: the request line is written after the answer has gone out."""
    deadline = time.monotonic() + 10
    while True:
        lines = [r.getMessage() for r in caplog.records
                 if r.name.startswith(("pacs_node", "uvicorn", "fastapi", "starlette"))]
        if any(expected in line for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.01)


def test_no_patient_data_in_the_request_log(web: Web,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    assert studies(web, PatientName="Smith^John", PatientID="P1") == [uid(1)]
    logged = "\n".join(_logged(caplog, "GET /dicomweb/studies 200"))
    assert "GET /dicomweb/studies 200" in logged
    assert "Smith" not in logged and "P1" not in logged


def test_a_forged_path_stays_on_one_log_line(web: Web, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    forged = "/dicomweb/studies%0A2026-01-01 INFO pacs_node granted admin"
    assert requests.get(web.url + forged, timeout=10).status_code == 404
    lines = _logged(caplog, "studies\\x0a2026-01-01")
    assert any("studies\\x0a2026-01-01" in line and " 404 " in line for line in lines), lines
    assert not any("\n" in line for line in lines)
