"""Whether two encodings of one SOP Instance hold the same content.

An archive that forwards its JPEG 2000 (or RLE, JPEG-LS) copy of an image the modality sent
uncompressed sends different bytes for the same instance. Such a copy is a duplicate, not a
conflict: the same attributes and, after decoding, the same pixels. The comparison is made
only when the bytes differ, and outside any transaction (decoding takes time).
"""

from __future__ import annotations

import logging
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.dataelem import DataElement
from pydicom.sequence import Sequence

__all__ = ["same_content"]

log = logging.getLogger(__name__)

# Pixel Data (compared decoded) and the attributes an encoder may legitimately set or
# rewrite when it changes the transfer syntax (PS3.5 §8.2, PS3.3 C.7.6.1.1.5).
_ENCODING_TAGS = frozenset({
    0x7FE00010, 0x7FE00008, 0x7FE00009,  # Pixel Data, Float / Double Float Pixel Data
    0x00282110, 0x00282112, 0x00282114,  # Lossy Image Compression (+ ratio, method)
})


#: Images larger than this (Rows x Columns x Frames x Samples) are not decoded to be
#: compared: a peer must not make the node decode a huge image twice by re-sending it.
MAX_COMPARED_PIXELS = 64 * 1024 * 1024


def _pixels(ds: Dataset) -> int:
    count = 1
    for keyword in ("Rows", "Columns", "NumberOfFrames", "SamplesPerPixel"):
        try:
            count *= max(1, int(ds.get(keyword) or 1))
        except (TypeError, ValueError):
            pass
    return count


def _load(source: Path | bytes) -> Dataset:
    stream: Any = BytesIO(source) if isinstance(source, bytes | bytearray) else source
    return dcmread(stream, force=False)


def _equal_values(a: DataElement, b: DataElement) -> bool:
    if a.VR == "SQ" or b.VR == "SQ":
        if not (isinstance(a.value, Sequence) and isinstance(b.value, Sequence)):
            return False
        return len(a.value) == len(b.value) and all(
            _equal_datasets(x, y) for x, y in zip(a.value, b.value, strict=True))
    if a.VR != b.VR and "UN" in (a.VR, b.VR):
        # A private element read without its dictionary (Implicit VR) against the same one
        # read with its VR: compare what can be compared, the raw bytes when both have them.
        raw_a, raw_b = a.value, b.value
        return isinstance(raw_a, bytes) and isinstance(raw_b, bytes) and raw_a == raw_b or \
            str(raw_a) == str(raw_b)
    return bool(a.value == b.value)


def _equal_datasets(a: Dataset, b: Dataset) -> bool:
    tags_a = {t for t in a.keys() if int(t) not in _ENCODING_TAGS}
    tags_b = {t for t in b.keys() if int(t) not in _ENCODING_TAGS}
    if tags_a != tags_b:
        return False
    return all(_equal_values(a[t], b[t]) for t in sorted(tags_a))


def same_content(first: Path | bytes, second: Path | bytes) -> bool:
    """True when both encodings hold the same attributes (file meta and encoding details
    aside) and, when there are pixels, the same decoded pixel values; False when they
    differ or either cannot be decoded (then the caller treats them as different)."""
    try:
        a, b = _load(first), _load(second)
        if not _equal_datasets(a, b):
            return False
        has_a, has_b = "PixelData" in a, "PixelData" in b
        if has_a != has_b:
            return False
        if not has_a:
            return True
        if str(a.get("PhotometricInterpretation", "")) != str(
                b.get("PhotometricInterpretation", "")):
            # A colour image stored as YCbCr in one syntax and RGB in the other has other
            # values for the same picture; not worth the risk: not the same.
            return False
        if _pixels(a) > MAX_COMPARED_PIXELS:
            return False  # not decoded for a comparison: kept as a conflict
        return bool(np.array_equal(a.pixel_array, b.pixel_array))
    except Exception as exc:  # noqa: BLE001 - anything undecodable is "not the same"
        log.debug("content comparison failed: %s", type(exc).__name__)
        return False
