"""The decode cap: how many pixels an instance declares, read from its header before
anything decodes it (the ingest check, :func:`storage.check_encoding`, made sure a
compressed codestream's own header agrees). Used by the pipeline, WADO-RS and rendering."""

from __future__ import annotations

from pydicom import Dataset

__all__ = ["declared_pixels", "too_large"]


def _number(header: Dataset, keyword: str, default: int) -> int:
    try:
        return max(default, int(header.get(keyword) or default))
    except (TypeError, ValueError):
        return default


def declared_pixels(header: Dataset) -> int:
    """Rows x Columns x Frames x Samples per Pixel as the header declares them."""
    return (_number(header, "Rows", 0) * _number(header, "Columns", 0)
            * _number(header, "NumberOfFrames", 1) * _number(header, "SamplesPerPixel", 1))


def too_large(header: Dataset, max_pixels: int) -> str:
    """Why an instance is too large to decode (over ``max_pixels``, the
    ``storage.max_pixels`` setting), or ``""`` when it may be decoded."""
    pixels = declared_pixels(header)
    if pixels <= max_pixels:
        return ""
    return (f"too large: {_number(header, 'Columns', 0)} x {_number(header, 'Rows', 0)} x "
            f"{_number(header, 'NumberOfFrames', 1)} frame(s) x "
            f"{_number(header, 'SamplesPerPixel', 1)} sample(s) = {pixels} pixels, over "
            f"storage.max_pixels {max_pixels}")
