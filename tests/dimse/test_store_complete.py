"""C-STORE Success means the complete, valid data set is held: the modality may delete its
copy once it gets one. Each malformed body below is refused with a failure status and
nothing is stored; the node keeps serving."""

from __future__ import annotations

import secrets
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)
from pynetdicom import _config

from pacs_node.dimse import StoreStatus

from .dimse_helpers import Node, make_instance, part10


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
}


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
    files = [_file(tmp_path, implicit, ImplicitVRLittleEndian, _encode(implicit, implicit=True)),
             _file(tmp_path, good_j2k, JPEG2000Lossless,
                   _encapsulated(good_j2k, _j2k_siz(16, 16)))]
    statuses = node.send(*files, contexts=[
        (implicit.SOPClassUID, [ImplicitVRLittleEndian]),
        (implicit.SOPClassUID, [JPEG2000Lossless])])
    assert statuses == [StoreStatus.SUCCESS, StoreStatus.SUCCESS]
