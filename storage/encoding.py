"""Whether received bytes are a complete, well-formed data set in their transfer syntax.

pydicom is lenient by design: it reads a value shorter than its declared length, a data set
cut in the middle, Implicit VR bytes on an Explicit VR context, and it decodes Pixel Data
only when asked. A node that answers C-STORE Success for such bytes claims data it does
not have (the modality may delete its copy). :func:`check_encoding` walks the encoded
bytes element by element, as PS3.5 §7 defines them, before anything is acknowledged:

- every element's declared length fits in what is left (of the data set, of its item);
- in Explicit VR every VR is one of PS3.5's, and undefined lengths only where allowed
  (SQ, UN, encapsulated Pixel Data); sequences and items are closed by their delimiters;
- native Pixel Data holds at least Rows x Columns x Samples x Frames x Bits Allocated bits
  (YBR 4:2:2 counted as two samples);
- encapsulated Pixel Data is a Basic Offset Table item then fragments, closed by a
  sequence delimiter, and the first fragment's own header (JPEG SOF, JPEG-LS SOF55,
  JPEG 2000 SIZ, RLE segment header) agrees with Rows, Columns and Samples per Pixel, so a
  64 x 64 header around a codestream that claims 32000 x 32000 is refused before any
  decoder sees it.

It reads bytes only (no pixel decoding): cheap next to writing the file.

Deflated Explicit VR Little Endian is inflated first, at most :data:`MAX_INFLATED_BYTES`
(pydicom inflates a whole deflated data set in one ``zlib.decompress``, also to read only
its header: 2.6 MB of deflate inflated to 2.5 GiB in the node, for seconds), and what it
inflates to is walked like any Explicit VR Little Endian data set: a stream cut short,
bytes after it, or a data set inside it that is cut or mislabelled are refused like the
others.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.datadict import dictionary_VR
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)

from .errors import InvalidInstance, OutOfResources

__all__ = ["MAX_INFLATED_BYTES", "EncodingSummary", "check_encoding"]

#: Most bytes a deflated data set may inflate to (more is refused 0xA700, out of
#: resources): every pydicom read of it inflates all of it in memory.
#: 64 MiB: the largest radiograph (43 x 43 cm at 0.1 mm, 16 bits) is 37 MB; inflating the
#: limit costs ~0.25 s of CPU here, so a bomb is refused well within the 2 s answer.
MAX_INFLATED_BYTES = 64 << 20
_INFLATE_INPUT = 1 << 16

_VRS = frozenset({
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT",
    b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST",
    b"SV", b"TM", b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV",
})
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR",
                       b"UT", b"SV", b"UV"})
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
_GEOMETRY = {0x00280010: "Rows", 0x00280011: "Columns", 0x00280002: "SamplesPerPixel",
             0x00280100: "BitsAllocated", 0x00280008: "NumberOfFrames"}
#: JPEG (baseline, extended, lossless) and JPEG-LS: SOI, then a SOF/SOF55 with the geometry.
_JPEG_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",
                            "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
                            "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"})
#: JPEG 2000 and High-Throughput JPEG 2000: SOC then SIZ.
_J2K_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
                           "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
                           "1.2.840.10008.1.2.4.203"})
_MAX_DEPTH = 32  # nested sequences; deeper is a bomb, not a radiograph


@dataclass
class EncodingSummary:
    """What the walk saw of the top level: image geometry and where Pixel Data is."""

    geometry: dict[str, int] = field(default_factory=dict)
    pixel_offset: int | None = None
    pixel_length: int | None = None  # None: encapsulated (undefined length)
    fragments: list[tuple[int, int]] = field(default_factory=list)  # (offset, length)
    photometric: str = ""


class _Walker:
    def __init__(self, data: memoryview, implicit: bool, little: bool) -> None:
        self.data = data
        self.implicit = implicit
        self.endian = "<" if little else ">"
        self.summary = EncodingSummary()

    def fail(self, why: str, offset: int) -> InvalidInstance:
        return InvalidInstance(f"malformed data set at byte {offset}: {why}")

    def u16(self, offset: int) -> int:
        return int(struct.unpack_from(self.endian + "H", self.data, offset)[0])

    def u32(self, offset: int) -> int:
        return int(struct.unpack_from(self.endian + "I", self.data, offset)[0])

    def tag(self, offset: int) -> int:
        return (self.u16(offset) << 16) | self.u16(offset + 2)

    def walk(self, start: int, end: int | None, depth: int, top: bool) -> int:
        """Walk elements from ``start`` to ``end`` (or to an item delimiter when ``end`` is
        None); return the offset after the last byte consumed."""
        if depth > _MAX_DEPTH:
            raise self.fail("sequences nested too deep", start)
        limit = len(self.data) if end is None else end
        pos = start
        while pos < limit:
            if limit - pos < 8:
                raise self.fail("element header cut short", pos)
            tag = self.tag(pos)
            if tag == _ITEM_END:
                if end is not None or top:
                    # At the top level pydicom stops reading there: what follows would be
                    # stored unseen.
                    raise self.fail("item delimiter outside an item", pos)
                return pos + 8
            if tag in (_ITEM, _SEQ_END):
                raise self.fail(f"unexpected delimiter ({tag:08X})", pos)
            vr, length, header = self.element_header(pos, tag)
            value = pos + header
            if length == _UNDEFINED:
                if vr == b"SQ":
                    pos = self.sequence(value, None, depth)
                elif vr == b"UN" and tag != _PIXEL_DATA:
                    # PS3.5 §6.2.2: a UN of undefined length is a sequence in Implicit VR
                    # Little Endian, whatever the transfer syntax.
                    saved = self.implicit, self.endian
                    self.implicit, self.endian = True, "<"
                    try:
                        pos = self.sequence(value, None, depth)
                    finally:
                        self.implicit, self.endian = saved
                elif tag == _PIXEL_DATA and top:
                    self.summary.pixel_offset = value
                    pos = self.encapsulated(value)
                else:
                    raise self.fail(f"undefined length on ({tag:08X}) {vr.decode()}", pos)
                continue
            if value + length > limit:
                raise self.fail(f"({tag:08X}) declares {length} bytes, {limit - value} left",
                                pos)
            if vr == b"SQ":
                self.sequence(value, value + length, depth)
            elif top and tag in _GEOMETRY and length >= 2:
                reader = self.u16 if vr in (b"US", b"SS") or self.implicit else None
                if tag == 0x00280008:  # Number of Frames is IS (text)
                    text = bytes(self.data[value:value + length]).strip(b" \x00")
                    self.summary.geometry["NumberOfFrames"] = int(text) if text.isdigit() \
                        else 1
                elif reader is not None:
                    self.summary.geometry[_GEOMETRY[tag]] = reader(value)
            elif top and tag == 0x00280004:  # Photometric Interpretation
                self.summary.photometric = bytes(self.data[value:value + length]).strip(
                    b" \x00").decode("ascii", "replace")
            elif top and tag == _PIXEL_DATA:
                self.summary.pixel_offset, self.summary.pixel_length = value, length
            pos = value + length
        if end is None and not top:
            raise self.fail("item not closed by its delimiter", pos)
        return pos

    def element_header(self, pos: int, tag: int) -> tuple[bytes, int, int]:
        if self.implicit:
            length = self.u32(pos + 4)
            try:
                name = dictionary_VR(tag)
            except KeyError:
                name = "UN"
            vr = b"SQ" if name == "SQ" else (b"OB" if tag == _PIXEL_DATA else b"UN"
                                             if name == "UN" else name[:2].encode())
            return vr, length, 8
        vr = bytes(self.data[pos + 4:pos + 6])
        if vr not in _VRS:
            raise self.fail(f"({tag:08X}) has no valid VR (Implicit VR bytes on an Explicit "
                            "VR context?)", pos)
        if vr in _LONG_VRS:
            if len(self.data) - pos < 12:
                raise self.fail("element header cut short", pos)
            return vr, self.u32(pos + 8), 12
        return vr, self.u16(pos + 6), 8

    def sequence(self, start: int, end: int | None, depth: int) -> int:
        limit = len(self.data) if end is None else end
        pos = start
        while pos < limit:
            if limit - pos < 8:
                raise self.fail("item header cut short", pos)
            tag, length = self.tag(pos), self.u32(pos + 4)
            if tag == _SEQ_END:
                if end is not None:
                    raise self.fail("sequence delimiter in a sequence of defined length", pos)
                return pos + 8
            if tag != _ITEM:
                raise self.fail(f"({tag:08X}) where a sequence item belongs", pos)
            if length == _UNDEFINED:
                pos = self.walk(pos + 8, None, depth + 1, top=False)
            else:
                if pos + 8 + length > limit:
                    raise self.fail(f"item declares {length} bytes, {limit - pos - 8} left", pos)
                self.walk(pos + 8, pos + 8 + length, depth + 1, top=False)
                pos += 8 + length
        if end is None:
            raise self.fail("sequence not closed by its delimiter", pos)
        return pos

    def encapsulated(self, start: int) -> int:
        pos, first = start, True
        while True:
            if len(self.data) - pos < 8:
                raise self.fail("encapsulated Pixel Data not closed", pos)
            tag, length = self.tag(pos), self.u32(pos + 4)
            if tag == _SEQ_END:
                if first:
                    raise self.fail("encapsulated Pixel Data without a Basic Offset Table", pos)
                if not self.summary.fragments:
                    raise self.fail("encapsulated Pixel Data without fragments", pos)
                return pos + 8
            if tag != _ITEM or length == _UNDEFINED:
                raise self.fail("malformed Pixel Data fragment", pos)
            if pos + 8 + length > len(self.data):
                raise self.fail(f"fragment declares {length} bytes, "
                                f"{len(self.data) - pos - 8} left", pos)
            if not first:
                self.summary.fragments.append((pos + 8, length))
            first = False
            pos += 8 + length


def _start_of_data_set(data: memoryview) -> int:
    """Skip the preamble and File Meta group (Explicit VR Little Endian, PS3.10 §7.1)."""
    if len(data) >= 132 and bytes(data[128:132]) == b"DICM":
        walker = _Walker(data, implicit=False, little=True)
        pos = 132
        while len(data) - pos >= 8 and walker.u16(pos) == 0x0002:
            vr, length, header = walker.element_header(pos, walker.tag(pos))
            if length == _UNDEFINED or pos + header + length > len(data):
                raise InvalidInstance("malformed File Meta Information")
            pos += header + length
        return pos
    return 0


def check_encoding(source: bytes | Path, transfer_syntax_uid: str) -> EncodingSummary:
    """Walk ``source`` (a Part 10 file or a bare data set) in ``transfer_syntax_uid``.

    Raises:
        InvalidInstance: the bytes are not a complete, well-formed data set (the message
            says where and why; it quotes no value).
        OutOfResources: a deflated data set inflates to more than
            :data:`MAX_INFLATED_BYTES`.
    """
    if isinstance(source, Path):
        # Mapped, not read: a large file costs page cache, not process memory.
        with source.open("rb") as file:
            if source.stat().st_size == 0:
                raise InvalidInstance("empty data set")
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                view = memoryview(mapped)
                try:
                    return _check(view, transfer_syntax_uid)
                finally:
                    view.release()
    return _check(memoryview(source), transfer_syntax_uid)


def _inflate(deflated: memoryview) -> bytes:
    """The raw deflate stream ``deflated`` inflated (PS3.5 A.5: no zlib header), whole.

    Fed 64 KiB at a time, so a bomb is refused after :data:`MAX_INFLATED_BYTES` and one
    piece (deflate inflates 1032:1 at most), not after all of it."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    parts: list[bytes] = []
    total = consumed = 0
    try:
        for start in range(0, len(deflated), _INFLATE_INPUT):
            consumed = min(len(deflated), start + _INFLATE_INPUT)
            part = inflater.decompress(deflated[start:consumed])
            total += len(part)
            if total > MAX_INFLATED_BYTES:
                raise OutOfResources(f"deflated data set inflates to more than "
                                     f"{MAX_INFLATED_BYTES} bytes")
            parts.append(part)
            if inflater.eof:
                break
    except zlib.error:
        raise InvalidInstance("deflated data set: not a deflate stream") from None
    if not inflater.eof:
        raise InvalidInstance("deflated data set: the deflate stream is cut short")
    trailing = len(inflater.unused_data) + len(deflated) - consumed
    if trailing > 1:  # one byte of padding to an even length is allowed
        raise InvalidInstance(f"deflated data set: {trailing} bytes after the deflate "
                              "stream")
    return b"".join(parts)


def _check(data: memoryview, transfer_syntax_uid: str) -> EncodingSummary:
    start = _start_of_data_set(data)
    if transfer_syntax_uid == DeflatedExplicitVRLittleEndian:
        with data[start:] as deflated:  # released even when _inflate raises
            data, start = memoryview(_inflate(deflated)), 0
    walker = _Walker(data, implicit=transfer_syntax_uid == ImplicitVRLittleEndian,
                     little=transfer_syntax_uid != ExplicitVRBigEndian)
    try:
        walker.walk(start, None, 0, top=True)
        _check_pixels(walker.summary, data, transfer_syntax_uid)
    except struct.error:
        raise InvalidInstance("malformed data set: cut short") from None
    finally:
        walker.data = memoryview(b"")  # no view of a mapping outlives it
    return walker.summary


def _check_pixels(summary: EncodingSummary, data: memoryview, syntax: str) -> None:
    g = summary.geometry
    if summary.pixel_offset is None:
        return
    rows, cols = g.get("Rows", 0), g.get("Columns", 0)
    samples, bits = g.get("SamplesPerPixel", 1) or 1, g.get("BitsAllocated", 0)
    frames = max(1, g.get("NumberOfFrames", 1))
    encapsulated_syntax = UID(syntax).is_encapsulated if syntax else False
    if summary.pixel_length is not None and encapsulated_syntax:
        raise InvalidInstance("native Pixel Data on a compressed transfer syntax")
    if summary.pixel_length is None and not encapsulated_syntax:
        raise InvalidInstance("encapsulated Pixel Data on an uncompressed transfer syntax")
    if summary.pixel_length is not None:  # native
        if not (rows and cols and bits):
            raise InvalidInstance("Pixel Data without Rows, Columns or Bits Allocated")
        if samples == 3 and summary.photometric in ("YBR_FULL_422", "YBR_PARTIAL_422"):
            samples = 2  # two chroma samples shared by each pair of pixels (PS3.3 C.7.6.3)
        expected = (rows * cols * samples * frames * bits + 7) // 8
        # Shorter is data the node does not have; longer (trailing padding some writers
        # leave) holds every pixel and is kept as received.
        if summary.pixel_length < expected:
            raise InvalidInstance(f"native Pixel Data holds {summary.pixel_length} bytes, "
                                  f"the image header needs {expected}")
        return
    if not summary.fragments:
        return
    offset, length = summary.fragments[0]
    header = bytes(data[offset:offset + min(length, 65536)])
    found = _codestream_geometry(header, syntax)
    if found is None:
        return
    width, height, components = found
    if (width, height) != (cols, rows) or (components and components != samples):
        raise InvalidInstance(
            f"the codestream says {width} x {height} x {components}, the image header "
            f"{cols} x {rows} x {samples}")


def _codestream_geometry(header: bytes, syntax: str) -> tuple[int, int, int] | None:
    """(width, height, components) from the first fragment's own header, where the
    syntax has one the node can read; None otherwise (or for JPEG's height 0: DNL)."""
    if syntax in _J2K_SYNTAXES:
        at = header.find(b"\xff\x4f\xff\x51")  # SOC then SIZ (possibly inside a JP2 box)
        if at < 0 or len(header) < at + 4 + 38:
            raise InvalidInstance("JPEG 2000 fragment without a SIZ marker")
        siz = at + 4
        xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", header, siz + 4)
        components = struct.unpack_from(">H", header, siz + 36)[0]
        return xsiz - xo, ysiz - yo, components
    if syntax == "1.2.840.10008.1.2.5":  # RLE: 64-byte header, segment count first
        if len(header) < 64:
            raise InvalidInstance("RLE fragment shorter than its header")
        segments = struct.unpack_from("<I", header, 0)[0]
        if not 1 <= segments <= 15:
            raise InvalidInstance(f"RLE header declares {segments} segments")
        return None
    if syntax in _JPEG_SYNTAXES:  # JPEG family and JPEG-LS (not MPEG/HEVC video)
        if not header.startswith(b"\xff\xd8"):
            raise InvalidInstance("JPEG fragment without SOI")
        pos = 2
        while pos + 4 <= len(header):
            if header[pos] != 0xFF:
                return None  # not a marker where one belongs: leave it to the decoder
            marker = header[pos + 1]
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD,
                          0xCE, 0xCF, 0xF7):
                if pos + 10 > len(header):
                    return None
                height, width = struct.unpack_from(">HH", header, pos + 5)
                return (width, height, header[pos + 9]) if height else None
            size = struct.unpack_from(">H", header, pos + 2)[0]
            pos += 2 + size
        return None
    return None
