"""Byte builders for the hostile battery and the tests beside it: data sets encoded as
given (even when wrong), elements with lying lengths, encapsulated Pixel Data, codestream
headers (JPEG 2000 SIZ, JPEG SOF, RLE), deflate streams and a deflate bomb, and DIMSE
command sets with any element left out (see :mod:`raw_peer` for PDUs and items)."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ImplicitVRLittleEndian

from . import raw_peer as rp

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
COMMITMENT = "1.2.840.10008.1.20.1"

def encode(ds: Dataset, *, implicit: bool = False, little: bool = True) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = little, implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def element(tag: int, vr: bytes, value: bytes, *, length: int | None = None) -> bytes:
    """An Explicit VR Little Endian element (``length`` to lie)."""
    size = len(value) if length is None else length
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr, 0, size) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, size) + value


@dataclass(frozen=True)
class Element:
    """Where one top-level element of an Explicit VR LE data set lies."""

    tag: int
    vr: bytes
    start: int
    length_at: int  # offset of the length field
    length_size: int  # 2 or 4
    end: int


def elements(data: bytes) -> list[Element]:
    """The top-level elements of a flat Explicit VR Little Endian data set."""
    out, pos = [], 0
    while pos < len(data):
        group, elem = struct.unpack_from("<HH", data, pos)
        vr = data[pos + 4:pos + 6]
        if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"OF", b"OD", b"OL", b"UC", b"UR"):
            length_at, size, header = pos + 8, 4, 12
        else:
            length_at, size, header = pos + 6, 2, 8
        length = int.from_bytes(data[length_at:length_at + size], "little")
        out.append(Element((group << 16) | elem, vr, pos, length_at, size,
                           pos + header + length))
        pos += header + length
    return out


def without_pixels(ds: Dataset, **changes: object) -> bytes:
    copy = Dataset(ds)
    del copy.PixelData
    for keyword, value in changes.items():
        setattr(copy, keyword, value)
    return encode(copy)


def encapsulated(header: bytes, *fragments_: bytes, bot: bool = True, close: bool = True,
                 delimiter_length: int = 0, item_tag: int = 0xE000) -> bytes:
    """``header`` then encapsulated Pixel Data of ``fragments_``."""
    items = struct.pack("<HHI", 0xFFFE, 0xE000, 0) if bot else b""
    items += b"".join(struct.pack("<HHI", 0xFFFE, item_tag, len(f)) + f for f in fragments_)
    if close:
        items += struct.pack("<HHI", 0xFFFE, 0xE0DD, delimiter_length)
    return header + element(0x7FE00010, b"OB", items, length=0xFFFFFFFF)


def j2k_codestream(width: int, height: int, components: int = 1, size: int = 4096) -> bytes:
    """A JPEG 2000 codestream of ``size`` bytes: SOC, a SIZ saying ``width`` x
    ``height``, then filler and EOC (what the node reads is the SIZ)."""
    siz = struct.pack(">HHIIIIIIIIH", 38 + 3 * components, 0, width, height, 0, 0, width,
                      height, 0, 0, components) + b"\x07\x01\x01" * components
    head = b"\xff\x4f\xff\x51" + siz
    return head + b"\x00" * (size - len(head) - 2) + b"\xff\xd9"


def jpeg_codestream(width: int, height: int, marker: int = 0xC0, size: int = 1024) -> bytes:
    """SOI then a start-of-frame marker saying ``width`` x ``height``, then filler."""
    sof = struct.pack(">BBHBHHB", 0xFF, marker, 11, 8, height, width, 1) + b"\x01\x11\x00"
    head = b"\xff\xd8" + sof
    return head + b"\x00" * (size - len(head) - 2) + b"\xff\xd9"


def rle_fragment(segments: int, size: int = 256) -> bytes:
    header = struct.pack("<I", segments) + struct.pack("<15I", *([64] + [0] * 14))
    return header + b"\x00" * (size - len(header))


def deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def deflate_bomb(header: bytes, inflated: int) -> bytes:
    """A raw deflate stream of ``header`` then an OB element of ``inflated`` zero bytes:
    a few MB that inflate to ``inflated`` bytes. Built from one 64 MiB block repeated
    (after a full flush the compressor's output for the same input is the same)."""
    chunk = 64 << 20
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = [compressor.compress(header + element(0x00091010, b"OB", b"", length=inflated)),
           compressor.flush(zlib.Z_FULL_FLUSH)]
    block = compressor.compress(b"\x00" * chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    out.extend([block] * (inflated // chunk))
    out.append(compressor.compress(b"\x00" * (inflated % chunk)) + compressor.flush())
    return b"".join(out)


def store_command(sop_class: str | None, sop_instance: str | None, *,
                  message_id: int | None = 1, field: int = 0x0001,
                  data_set_type: int | None = 0x0000, **more: int | str | bytes | None
                  ) -> bytes:
    return rp.command_set({"AffectedSOPClassUID": sop_class, "CommandField": field,
                           "MessageID": message_id, "Priority": 0,
                           "CommandDataSetType": data_set_type,
                           "AffectedSOPInstanceUID": sop_instance, **more})


def echo_command(*, sop_class: str | None = VERIFICATION, message_id: int | None = 1,
                 field: int = 0x0030) -> bytes:
    return rp.command_set({"AffectedSOPClassUID": sop_class, "CommandField": field,
                           "MessageID": message_id, "CommandDataSetType": 0x0101})


def find_command(sop_class: str | None = STUDY_FIND, *, data_set_type: int = 0x0000,
                 field: int = 0x0020, **more: int | str | bytes | None) -> bytes:
    return rp.command_set({"AffectedSOPClassUID": sop_class, "CommandField": field,
                           "MessageID": 1, "Priority": 0, "CommandDataSetType": data_set_type,
                           **more})


def valid_request() -> bytes:
    """A well-formed A-ASSOCIATE-RQ proposing Verification (what the mutations start
    from)."""
    return rp.associate_rq([(1, VERIFICATION, [ImplicitVRLittleEndian])],
                           user=rp.user_information(
                               extra=rp.item(0x55, b"HOSTILE_1.0")))


def find_identifier(study: str = "") -> bytes:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study
    return encode(ds)


FIND_TAGS = {
    "AccessionNumber": (0x00080050, b"SH"), "ModalitiesInStudy": (0x00080061, b"CS"),
    "QueryRetrieveLevel": (0x00080052, b"CS"), "StudyDate": (0x00080020, b"DA"),
    "StudyTime": (0x00080030, b"TM"), "ReferringPhysicianName": (0x00080090, b"PN"),
    "StudyDescription": (0x00081030, b"LO"), "PatientName": (0x00100010, b"PN"),
    "PatientID": (0x00100020, b"LO"), "PatientBirthDate": (0x00100030, b"DA"),
    "StudyInstanceUID": (0x0020000D, b"UI"),
}


def find_element(keyword: str, value: bytes | str) -> bytes:
    tag, vr = FIND_TAGS[keyword]
    data = value.encode() if isinstance(value, str) else value
    if len(data) % 2:
        data += b"\x00" if vr == b"UI" else b" "
    return element(tag, vr, data)


def dataset(**values: object) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds
