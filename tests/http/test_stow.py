"""STOW-RS as a DICOMweb client sees it: studies and real modality files stored and
retrievable, each bad request or part answered with its status, nothing written outside
the store, and the node still serving."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset
from pydicom.data import get_testdata_file

from tests.dimse.dimse_helpers import make_instance, part10, tree

from .conftest import Web, uid

MULTIPART = 'multipart/related; type="application/dicom"; boundary={}'


def client(web: Web) -> DICOMwebClient:
    return DICOMwebClient(url=f"{web.url}/dicomweb")


def multipart(parts: list[bytes], boundary: str = "pacsnodeboundary",
              part_type: str = "application/dicom") -> bytes:
    body = b"".join(f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + part
                    + b"\r\n" for part in parts)
    return body + f"--{boundary}--\r\n".encode()


def post(web: Web, body: bytes | Iterator[bytes], *, path: str = "/dicomweb/studies",
         content_type: str = MULTIPART.format("pacsnodeboundary")) -> requests.Response:
    return requests.post(f"{web.url}{path}", data=body,
                         headers={"Content-Type": content_type,
                                  "Accept": "application/dicom+json"}, timeout=60)


def failures(response: requests.Response) -> list[tuple[str, int]]:
    """(SOP Instance UID or "", Failure Reason) of the Failed SOP Sequence, sorted."""
    ds = Dataset.from_json(response.json())
    return sorted((str(item.get("ReferencedSOPInstanceUID") or ""), int(item.FailureReason))
                  for item in ds.get("FailedSOPSequence", []))


def stored(response: requests.Response) -> list[str]:
    ds = Dataset.from_json(response.json())
    return sorted(str(item.ReferencedSOPInstanceUID)
                  for item in ds.get("ReferencedSOPSequence", []))


def outside_store(web: Web) -> set[str]:
    """Every path of the node's folder but the store's instance files and the index."""
    return {p for p in tree(web.folder) if not p.startswith("store/") and "index.db" not in p}


def test_a_study_is_stored_and_found(make_web: Callable[..., Web]) -> None:
    web = make_web()
    study = [make_instance(5, 1, n, StudyDate="20250401") for n in (1, 2, 3)]
    result = client(web).store_instances(study)  # a pydicom Dataset
    assert sorted(i.ReferencedSOPInstanceUID for i in result.ReferencedSOPSequence) == \
        [uid(5, 1, 1), uid(5, 1, 2), uid(5, 1, 3)]
    assert "FailedSOPSequence" not in result
    assert f"/dicomweb/studies/{uid(5)}/series/" in result.ReferencedSOPSequence[0].RetrieveURL
    found = client(web).search_for_instances(uid(5))
    assert len(found) == 3
    assert web.nudged == [uid(5)]  # the tracker hears of the study, once per request
    assert list((web.store.root / ".incoming").iterdir()) == []


def test_real_modality_files_come_back_byte_identical(make_web: Callable[..., Web]) -> None:
    web = make_web()
    files = [Path(get_testdata_file(name)) for name in ("RG3_UNCR.dcm", "RG3_J2KR.dcm")]
    response = post(web, multipart([f.read_bytes() for f in files]))
    assert response.status_code == 200, response.text
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        back = requests.get(
            f"{web.url}/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}",
            headers={"Accept": 'multipart/related; type="application/dicom"; '
                               "transfer-syntax=*"}, timeout=60)
        assert path.read_bytes() in back.content


def test_a_single_part_application_dicom_body_is_stored(make_web: Callable[..., Web]) -> None:
    web = make_web()
    response = post(web, part10(make_instance(6, 1, 1)), content_type="application/dicom")
    assert response.status_code == 200 and stored(response) == [uid(6, 1, 1)]


def test_bad_parts_fail_one_by_one_with_their_reason(make_web: Callable[..., Web]) -> None:
    web = make_web()
    good = part10(make_instance(7, 1, 1))
    cut = part10(make_instance(7, 1, 2))[:-100]  # pixel data cut short
    hostile = make_instance(7, 1, 3)
    hostile.SOPInstanceUID = "../../../etc/passwd"
    hostile.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    response = post(web, multipart([good, cut, part10(hostile), b"not dicom at all"]))
    assert response.status_code == 202, response.text  # some stored, some failed
    assert stored(response) == [uid(7, 1, 1)]
    # The cut one, the hostile UID (not echoed back), a part that is not DICOM at all.
    assert failures(response) == sorted([(uid(7, 1, 2), 0xC000), ("", 0xC210),
                                         ("", 0xC000)])


def test_stow_runs_the_c_store_checks(make_web: Callable[..., Web]) -> None:
    """The same checks as a C-STORE (pacs_node.receive.check_instance): an image without
    its Pixel Data (a data set cut between two elements reads as a shorter whole) and a
    class that is not a storage class are refused."""
    web = make_web()
    no_pixels = make_instance(14, 1, 1)
    del no_pixels.PixelData
    not_storage = make_instance(14, 1, 2, SOPClassUID="1.2.840.10008.1.1")
    not_storage.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.1"
    response = post(web, multipart([part10(no_pixels), part10(not_storage)]))
    assert response.status_code == 409
    assert failures(response) == [(uid(14, 1, 1), 0xC000), (uid(14, 1, 2), 0xA900)]


def test_an_instance_of_another_study_than_the_url_is_refused(
        make_web: Callable[..., Web]) -> None:
    web = make_web()
    response = post(web, multipart([part10(make_instance(8, 1, 1))]),
                    path=f"/dicomweb/studies/{uid(9)}")
    assert response.status_code == 409
    assert failures(response) == [(uid(8, 1, 1), 0xA900)]
    assert client(web).search_for_studies() == []


def test_a_conflicting_duplicate_is_a_warning(make_web: Callable[..., Web]) -> None:
    web = make_web()
    assert post(web, multipart([part10(make_instance(10, 1, 1))])).status_code == 200
    changed = make_instance(10, 1, 1, SeriesDescription="OTHER")
    response = post(web, multipart([part10(changed)]))
    assert response.status_code == 202
    (item,) = Dataset.from_json(response.json()).ReferencedSOPSequence
    assert item.WarningReason == 0xB000


@pytest.mark.parametrize(("content_type", "body", "status"), [
    ('multipart/related; type="application/dicom"', b"--x\r\n\r\n--x--", 400),  # no boundary
    (MULTIPART.format("b"), b"--b\r\nContent-Type: application/dicom\r\n\r\nDICM", 400),
    (MULTIPART.format("b"), b"garbage without any boundary", 400),
    (MULTIPART.format("b"), b"--b--\r\n", 400),  # no part
    ('multipart/related; type="application/dicom+json"; boundary=b', b"--b--", 415),
    ("text/plain", b"hello", 415),
    ("application/json", b"{}", 415),
])
def test_a_bad_request_gets_its_status_and_leaves_nothing(
        make_web: Callable[..., Web], content_type: str, body: bytes, status: int) -> None:
    web = make_web()
    before = outside_store(web)
    response = post(web, body, content_type=content_type)
    assert response.status_code == status, response.text
    assert outside_store(web) == before
    assert list((web.store.root / ".incoming").glob("*")) == []
    assert post(web, multipart([part10(make_instance(11, 1, 1))])).status_code == 200


def test_an_over_size_body_is_a_413_declared_or_streamed(make_web: Callable[..., Web]) -> None:
    web = make_web(http={"max_request_bytes": 64 * 1024})
    big = multipart([part10(make_instance(12, 1, n)) for n in range(1, 200)])
    assert len(big) > 64 * 1024
    assert post(web, big).status_code == 413  # Content-Length says it

    def chunks() -> Iterator[bytes]:  # chunked: no length until it has come
        view = BytesIO(big)
        while block := view.read(8192):
            yield block

    assert post(web, chunks()).status_code == 413
    assert client(web).search_for_studies() == []
    assert list((web.store.root / ".incoming").glob("*")) == []
    small = multipart([part10(make_instance(12, 1, 1))])
    assert post(web, small).status_code == 200


def test_many_requests_with_random_boundaries(make_web: Callable[..., Web]) -> None:
    web = make_web()
    for n in range(1, 6):
        boundary = secrets.token_hex(12)
        body = multipart([part10(make_instance(13, 1, n))], boundary=boundary)
        assert post(web, body, content_type=MULTIPART.format(boundary)).status_code == 200
    assert len(client(web).search_for_instances(uid(13))) == 5
