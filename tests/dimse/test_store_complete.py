"""C-STORE Success means the complete, valid data set is held: the modality may delete its
copy once it gets one. Each malformed body below is refused with a failure status and
nothing is stored; the node keeps serving."""

from __future__ import annotations

import os
import secrets
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)
from pynetdicom import _config

from pacs_node.dimse import StoreStatus
from storage import OutOfResources
from storage.encoding import MAX_INFLATED_BYTES

from .dicom_bytes import deflate_bomb
from .dimse_helpers import Node, RssSampler, make_instance, part10


def _encode(ds: Dataset, *, implicit: bool = False) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def _element(tag: int, vr: bytes, value: bytes, *, length: int | None = None) -> bytes:
    group, element = tag >> 16, tag & 0xFFFF
    size = len(value) if length is None else length
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2sHI", group, element, vr, 0, size) + value
    return struct.pack("<HH2sH", group, element, vr, size) + value


def _without_pixels(ds: Dataset) -> bytes:
    copy = Dataset(ds)
    del copy.PixelData
    return _encode(copy)


def _encapsulated(ds: Dataset, fragment: bytes, *, close: bool = True) -> bytes:
    items = struct.pack("<HHI", 0xFFFE, 0xE000, 0)  # empty Basic Offset Table
    items += struct.pack("<HHI", 0xFFFE, 0xE000, len(fragment)) + fragment
    if close:
        items += struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return _without_pixels(ds) + _element(0x7FE00010, b"OB", items, length=0xFFFFFFFF)


def _j2k_siz(width: int, height: int) -> bytes:
    """The start of a JPEG 2000 codestream: SOC and a SIZ for one 8-bit component."""
    siz = struct.pack(">HHIIIIIIIIH", 41, 0, width, height, 0, 0, width, height, 0, 0, 1)
    return b"\xff\x4f\xff\x51" + siz + b"\x07\x01\x01" + b"\x00" * 64


BODIES: dict[str, tuple[str, Callable[[Dataset], bytes]]] = {
    # name: (transfer syntax of the context, body)
    "cut-inside-pixel-data": (ExplicitVRLittleEndian, lambda ds: _encode(ds)[:-100]),
    "cut-after-header": (ExplicitVRLittleEndian, lambda ds: _without_pixels(ds)[:-3]),
    "pixel-data-claims-200MB": (ExplicitVRLittleEndian, lambda ds: _without_pixels(ds)
                                + _element(0x7FE00010, b"OW", b"\x00" * 4096,
                                           length=200 * 1024 * 1024)),
    "pixels-missing": (ExplicitVRLittleEndian, lambda ds: _without_pixels(ds)
                       + _element(0x7FE00010, b"OB", b"\x00" * 100)),
    "implicit-bytes-on-explicit-context": (ExplicitVRLittleEndian,
                                           lambda ds: _encode(ds, implicit=True)),
    "native-pixels-on-jpeg2000-context": (JPEG2000Lossless, lambda ds: _encode(ds)),
    "native-pixels-on-rle-context": (RLELossless, lambda ds: _encode(ds)),
    "unclosed-encapsulation": (JPEG2000Lossless, lambda ds: _encapsulated(
        ds, _j2k_siz(16, 16), close=False)),
    "codestream-bomb-32000x32000": (JPEG2000Lossless, lambda ds: _encapsulated(
        ds, _j2k_siz(32000, 32000))),
    "rows-swallows-the-data-set": (ExplicitVRLittleEndian, lambda ds: _encode(ds).replace(
        _element(0x00280010, b"US", struct.pack("<H", 16)),
        struct.pack("<HH2sH", 0x0028, 0x0010, b"US", 0xFFFF), 1)),
    "unclosed-sequence": (ExplicitVRLittleEndian, lambda ds: _without_pixels(ds)[:40]
                          + _element(0x00081115, b"SQ", struct.pack("<HHI", 0xFFFE, 0xE000,
                                                                    0xFFFFFFFF),
                                     length=0xFFFFFFFF)),
    # Found by the hostile battery. A data set cut between two elements reads as a whole
    # one: an image without its Pixel Data, or without any image attribute.
    "cut-just-before-the-pixel-data": (ExplicitVRLittleEndian, _without_pixels),
    "cut-just-before-the-image-attributes": (ExplicitVRLittleEndian, lambda ds: _encode(
        _only_below(ds, 0x00280000))),
    # Deflated data sets were never walked: pydicom inflated them and read what it could.
    "deflated-cut-inside-pixel-data": (DeflatedExplicitVRLittleEndian,
                                       lambda ds: _deflate(_encode(ds)[:-100])),
    "deflated-implicit-bytes": (DeflatedExplicitVRLittleEndian,
                                lambda ds: _deflate(_encode(ds, implicit=True))),
    "deflated-pixel-data-short": (DeflatedExplicitVRLittleEndian, lambda ds: _deflate(
        _without_pixels(ds) + _element(0x7FE00010, b"OB", b"\x00" * 100))),
    "deflate-stream-cut-short": (DeflatedExplicitVRLittleEndian,
                                 lambda ds: _deflate(_encode(ds))[:-5]),
    "bytes-after-the-deflate-stream": (DeflatedExplicitVRLittleEndian,
                                       lambda ds: _deflate(_encode(ds)) + b"\x00" * 8),
}


def _only_below(ds: Dataset, tag: int) -> Dataset:
    copy = Dataset()
    for element in ds:
        if element.tag < tag:
            copy.add(element)
    return copy


def _deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def _file(tmp_path: Path, ds: Dataset, syntax: str, body: bytes) -> Path:
    ds.file_meta.TransferSyntaxUID = syntax
    path = tmp_path / f"bad-{secrets.token_hex(4)}.dcm"
    path.write_bytes(part10(ds, body))
    return path


@pytest.mark.parametrize("name", sorted(BODIES))
def test_incomplete_or_malformed_data_is_never_acknowledged(
        node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    syntax, build = BODIES[name]
    ds = make_instance(1, 1, 1)
    (status,) = node.send(_file(tmp_path, ds, syntax, build(ds)), contexts=[
        (ds.SOPClassUID, [syntax])])
    assert status >> 12 in (0xA, 0xC), f"{name}: status 0x{status:04X}"
    assert node.files() == [] and node.instances() == []
    assert node.send(make_instance(1, 1, 2)) == [StoreStatus.SUCCESS]  # still serving


def test_valid_compressed_and_implicit_data_is_still_stored(
        node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    implicit = make_instance(1, 1, 1)
    good_j2k = make_instance(1, 1, 2)
    deflated = make_instance(1, 1, 3)
    files = [_file(tmp_path, implicit, ImplicitVRLittleEndian, _encode(implicit, implicit=True)),
             _file(tmp_path, good_j2k, JPEG2000Lossless,
                   _encapsulated(good_j2k, _j2k_siz(16, 16))),
             # A deflate stream padded to an even length (PS3.5 A.5) is whole.
             _file(tmp_path, deflated, DeflatedExplicitVRLittleEndian,
                   (lambda z: z + b"\x00" * (len(z) % 2))(_deflate(_encode(deflated))))]
    statuses = node.send(*files, contexts=[
        (implicit.SOPClassUID, [ImplicitVRLittleEndian]),
        (implicit.SOPClassUID, [JPEG2000Lossless]),
        (implicit.SOPClassUID, [DeflatedExplicitVRLittleEndian])])
    assert statuses == [StoreStatus.SUCCESS] * 3


def test_a_deflate_bomb_is_refused_before_it_is_inflated(
        node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """2.6 MB of deflate that inflate to 2.5 GiB: pydicom inflated all of it to read the
    header (found by the hostile battery). Now at most MAX_INFLATED_BYTES: 0xA700."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ds = make_instance(1, 1, 1)
    bomb = _file(tmp_path, ds, DeflatedExplicitVRLittleEndian,
                 deflate_bomb(_without_pixels(ds), (5 << 30) // 2))
    rss = RssSampler(os.getpid())
    rss.start()
    try:
        (status,) = node.send(bomb, contexts=[(ds.SOPClassUID,
                                               [DeflatedExplicitVRLittleEndian])])
    finally:
        rss.stop.set()
        rss.join()
    assert status == OutOfResources.dimse_status  # 0xA700
    assert rss.peak - rss.baseline < MAX_INFLATED_BYTES + (256 << 20)
    assert node.files() == [] and node.instances() == []
