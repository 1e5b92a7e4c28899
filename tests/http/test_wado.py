"""WADO-RS as DICOMweb clients see it: files back byte for byte as stored, decoded to
Explicit VR Little Endian when asked, metadata that round-trips through pydicom, frames
that decode to the stored pixels, a rendering that shows bone bright, and a 406 for what
the node cannot produce."""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian

from storage import InstanceMeta

from .conftest import Web, uid

J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"


def client(web: Web) -> DICOMwebClient:
    return DICOMwebClient(url=f"{web.url}/dicomweb")


def add_file(web: Web, path: str | Path) -> Dataset:
    raw = Path(path).read_bytes()
    from storage import ingest

    ingest(web.store, web.sessions, raw, InstanceMeta.read(raw))
    return pydicom.dcmread(BytesIO(raw))


@pytest.fixture
def rg3(make_web: Callable[..., Web]) -> tuple[Web, Dataset, Dataset, bytes]:
    """RG3 leg CR (MONOCHROME1) uncompressed, and its JPEG 2000 lossless twin (the same
    image, another SOP Instance UID), as real modality files."""
    served = make_web()
    plain = add_file(served, get_testdata_file("RG3_UNCR.dcm"))
    j2k_path = get_testdata_file("RG3_J2KR.dcm")
    j2k = add_file(served, j2k_path)
    return served, plain, j2k, Path(j2k_path).read_bytes()


def test_an_instance_comes_back_byte_for_byte_as_stored(
        rg3: tuple[Web, Dataset, Dataset, bytes]) -> None:
    web, _, j2k, j2k_bytes = rg3
    got = client(web).retrieve_instance(j2k.StudyInstanceUID, j2k.SeriesInstanceUID,
                                        j2k.SOPInstanceUID,
                                        media_types=(("application/dicom", "*"),))
    out = BytesIO()
    got.save_as(out, enforce_file_format=True)
    assert got.file_meta.TransferSyntaxUID == J2K_LOSSLESS
    # Byte-identical: the multipart body carries the stored file itself.
    response = requests.get(
        f"{web.url}/dicomweb/studies/{j2k.StudyInstanceUID}/series/"
        f"{j2k.SeriesInstanceUID}/instances/{j2k.SOPInstanceUID}",
        headers={"Accept": 'multipart/related; type="application/dicom"; '
                           "transfer-syntax=*"}, timeout=30)
    assert response.status_code == 200
    assert j2k_bytes in response.content


def test_a_compressed_instance_is_decoded_to_explicit_little_endian_by_default(
        rg3: tuple[Web, Dataset, Dataset, bytes]) -> None:
    web, plain, j2k, _ = rg3
    got = client(web).retrieve_instance(j2k.StudyInstanceUID, j2k.SeriesInstanceUID,
                                        j2k.SOPInstanceUID,
                                        media_types=(("application/dicom",
                                                      ExplicitVRLittleEndian),))
    assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(got.pixel_array, plain.pixel_array)  # lossless: the same pixels


def test_a_study_and_a_series_come_back_whole(web: Web) -> None:
    study = client(web).retrieve_study(uid(1), media_types=(("application/dicom", "*"),))
    assert sorted(ds.SOPInstanceUID for ds in study) == [uid(1, 1, 1), uid(1, 1, 2),
                                                          uid(1, 2, 1)]
    series = client(web).retrieve_series(uid(1), uid(1, 2))
    assert [ds.SOPInstanceUID for ds in series] == [uid(1, 2, 1)]


def test_metadata_round_trips_through_pydicom(
        rg3: tuple[Web, Dataset, Dataset, bytes]) -> None:
    web, plain, _, _ = rg3
    document = client(web).retrieve_instance_metadata(
        plain.StudyInstanceUID, plain.SeriesInstanceUID, plain.SOPInstanceUID)
    assert "BulkDataURI" in document["7FE00010"]
    read = Dataset.from_json(document, lambda uri: b"")
    for keyword in ("PatientName", "StudyInstanceUID", "SOPInstanceUID", "Rows", "Columns",
                    "PhotometricInterpretation", "BitsAllocated", "Modality"):
        assert read[keyword].value == plain[keyword].value, keyword
    series_docs = client(web).retrieve_series_metadata(plain.StudyInstanceUID,
                                                       plain.SeriesInstanceUID)
    assert plain.SOPInstanceUID in {d["00080018"]["Value"][0] for d in series_docs}


def test_frames_decode_to_the_stored_pixels(
        rg3: tuple[Web, Dataset, Dataset, bytes]) -> None:
    web, plain, j2k, _ = rg3
    (native,) = client(web).retrieve_instance_frames(
        j2k.StudyInstanceUID, j2k.SeriesInstanceUID, j2k.SOPInstanceUID, frame_numbers=[1],
        media_types=("application/octet-stream",))
    pixels = np.frombuffer(native, dtype=plain.pixel_array.dtype).reshape(
        plain.Rows, plain.Columns)
    assert np.array_equal(pixels, plain.pixel_array)
    (stored,) = client(web).retrieve_instance_frames(
        j2k.StudyInstanceUID, j2k.SeriesInstanceUID, j2k.SOPInstanceUID, frame_numbers=[1],
        media_types=(("application/octet-stream", "*"),))
    assert stored[:4] in (b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0c")  # a J2K codestream
    response = requests.get(
        f"{web.url}/dicomweb/studies/{j2k.StudyInstanceUID}/series/{j2k.SeriesInstanceUID}"
        f"/instances/{j2k.SOPInstanceUID}/frames/2", timeout=30)
    assert response.status_code == 404


def test_a_rendered_mono1_radiograph_shows_bone_bright(
        rg3: tuple[Web, Dataset, Dataset, bytes]) -> None:
    web, plain, _, _ = rg3
    assert plain.PhotometricInterpretation == "MONOCHROME1"
    png = client(web).retrieve_instance_rendered(
        plain.StudyInstanceUID, plain.SeriesInstanceUID, plain.SOPInstanceUID,
        media_types=("image/png",))
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert image.shape == (plain.Rows, plain.Columns)
    # MONOCHROME1 stores bone as low values; shown bone-bright the rendering is the
    # stored values inverted: it correlates negatively with them.
    stored = plain.pixel_array.astype(np.float64)
    assert np.corrcoef(stored.ravel(), image.astype(np.float64).ravel())[0, 1] < -0.5
    thumb = requests.get(
        f"{web.url}/dicomweb/studies/{plain.StudyInstanceUID}/series/"
        f"{plain.SeriesInstanceUID}/instances/{plain.SOPInstanceUID}/rendered",
        params={"viewport": "128,128", "quality": "80"}, headers={"Accept": "image/jpeg"},
        timeout=30)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    small = cv2.imdecode(np.frombuffer(thumb.content, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert max(small.shape) == 128


def test_what_cannot_be_produced_is_a_406_and_unknown_uids_a_404(
        make_web: Callable[..., Web], rg3: tuple[Web, Dataset, Dataset, bytes]) -> None:
    web, plain, j2k, _ = rg3
    base = (f"{web.url}/dicomweb/studies/{j2k.StudyInstanceUID}/series/"
            f"{j2k.SeriesInstanceUID}/instances/{j2k.SOPInstanceUID}")
    jpeg_ls = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.80'
    assert requests.get(base, headers={"Accept": jpeg_ls}, timeout=30).status_code == 406
    assert requests.get(base, headers={"Accept": "text/html"}, timeout=30).status_code == 406
    assert requests.get(f"{base}/rendered", headers={"Accept": "image/gif"},
                        timeout=30).status_code == 406
    missing = f"{web.url}/dicomweb/studies/{uid(77)}"
    assert requests.get(missing, timeout=30).status_code == 404
    assert requests.get(f"{web.url}/dicomweb/studies/1.2.x/metadata",
                        timeout=30).status_code == 400
    # Too large to decode (storage.max_pixels): refused before anything is decoded.
    small_cap = make_web(storage={"max_pixels": 1024})
    add_file(small_cap, get_testdata_file("RG3_J2KR.dcm"))
    capped = base.replace(web.url, small_cap.url)
    response = requests.get(capped, timeout=30)
    assert response.status_code == 406 and "too large" in response.json()["detail"]
    assert requests.get(capped, headers={"Accept": 'multipart/related; '
                                         'type="application/dicom"; transfer-syntax=*'},
                        timeout=30).status_code == 200
    assert requests.get(f"{capped}/rendered", timeout=30).status_code == 406
