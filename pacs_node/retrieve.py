"""Retrieving what the node holds (WADO-RS, PS3.18 10.4): instances as stored or in
Explicit VR Little Endian, metadata as DICOM JSON, frames, bulk data and rendered images.
Every decode is bounded by ``storage.max_pixels`` first (:func:`storage.too_large`). The
HTTP translation (media types, multipart) is in :mod:`pacs_node.http.wado`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import UID, ExplicitVRLittleEndian
from sqlalchemy.orm import Session, sessionmaker

from storage import FileStore, InstanceMatch, NotFound, QueryRepository, too_large

__all__ = ["BULK_THRESHOLD", "CannotProduce", "Frame", "Rendering", "RetrieveService"]

#: Binary values longer than this are sent as a BulkDataURI in metadata, not inline.
BULK_THRESHOLD = 16 * 1024
_NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}


class CannotProduce(Exception):
    """The instance cannot be given in the form asked for (too large to decode, no codec,
    not an image); the message says why."""


@dataclass(frozen=True)
class Frame:
    """One frame's bytes and the transfer syntax they are in (native frames: the stored
    one if native, else Explicit VR Little Endian)."""

    data: bytes
    transfer_syntax_uid: str


@dataclass(frozen=True)
class Rendering:
    """How to render: ``media_type`` image/jpeg or image/png; ``window`` (center, width)
    or None for the instance's own VOI (its first window, else its VOI LUT, else the full
    range); ``viewport`` (width, height) to fit into, or None; JPEG ``quality`` 1-100."""

    media_type: str = "image/jpeg"
    window: tuple[float, float] | None = None
    viewport: tuple[int, int] | None = None
    quality: int = 90


def _read(path: Path, **kwargs: Any) -> Dataset:
    try:
        return pydicom.dcmread(path, **kwargs)
    except FileNotFoundError:
        raise NotFound("the instance file is missing from the store") from None


class RetrieveService:
    """What WADO-RS reads from the index and the store.

    Args:
        sessions: the index's session factory.
        store: the file store.
        max_pixels: ``storage.max_pixels``: nothing larger is decoded.
    """

    def __init__(self, sessions: sessionmaker[Session], store: FileStore, *,
                 max_pixels: int) -> None:
        self._sessions = sessions
        self._store = store
        self._max_pixels = max_pixels

    # -- finding -----------------------------------------------------------------------

    def instances(self, study: str, series: str | None = None,
                  instance: str | None = None) -> list[InstanceMatch]:
        """The current instances of a study, series or instance (UIDs already validated).

        Raises:
            NotFound: nothing matches.
        """
        filters = {"StudyInstanceUID": study}
        if series is not None:
            filters["SeriesInstanceUID"] = series
        if instance is not None:
            filters["SOPInstanceUID"] = instance
        with self._sessions() as session:
            found = QueryRepository(session).find_instances(filters)
        if not found:
            what = "instance" if instance else "series" if series else "study"
            raise NotFound(f"no such {what} on this node")
        return found

    def path(self, match: InstanceMatch) -> Path:
        """The stored file of ``match``."""
        return self._store.path_of(match.relpath)

    def too_large(self, match: InstanceMatch) -> str:
        """Why ``match`` is too large to decode (``storage.max_pixels``), or ``""``."""
        return too_large(_read(self.path(match), stop_before_pixels=True), self._max_pixels)

    # -- instances ---------------------------------------------------------------------

    def _decodable(self, ds: Dataset) -> None:
        reason = too_large(ds, self._max_pixels)
        if reason:
            raise CannotProduce(f"the image is {reason}")

    def explicit_little(self, match: InstanceMatch) -> bytes:
        """The instance as a Part 10 file in Explicit VR Little Endian (decompressed).

        Raises:
            CannotProduce: too large to decode, or its pixel data cannot be decoded.
        """
        ds = _read(self.path(match), stop_before_pixels=False)
        syntax = ds.file_meta.TransferSyntaxUID
        if syntax == ExplicitVRLittleEndian:
            return self.path(match).read_bytes()
        if "PixelData" in ds and UID(syntax).is_compressed:
            self._decodable(ds)
            try:
                ds.decompress()
            except Exception as exc:  # noqa: BLE001 - missing codec, broken stream
                raise CannotProduce(f"its pixel data cannot be decoded "
                                    f"({type(exc).__name__})") from None
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        out = BytesIO()
        ds.save_as(out, enforce_file_format=True, implicit_vr=False, little_endian=True)
        return out.getvalue()

    # -- metadata ----------------------------------------------------------------------

    def metadata(self, match: InstanceMatch, bulk_url: Callable[[str], str]) -> dict[str, Any]:
        """The instance's attributes as DICOM JSON (PS3.18 F.2); binary values longer
        than :data:`BULK_THRESHOLD` at the top level, and Pixel Data, as BulkDataURIs
        (``bulk_url(tag)``, tag as 8 hex digits); long binary values inside sequences are
        left out (PS3.18 allows either; there is no URI to fetch them by)."""
        ds = _read(self.path(match), stop_before_pixels=True)
        top = {id(element) for element in ds.elements()}

        def bulk(element: DataElement) -> str:
            if id(element) in top:
                return bulk_url(f"{element.tag:08X}")
            raise _Omit

        json = _to_json(ds, bulk)
        if match.Rows is not None:  # an image: its Pixel Data by reference
            compressed = UID(match.transfer_syntax_uid).is_compressed
            bits = int(ds.get("BitsAllocated") or 8)
            json["7FE00010"] = {"vr": "OB" if compressed or bits <= 8 else "OW",
                                "BulkDataURI": bulk_url("7FE00010")}
        return json

    def bulkdata(self, match: InstanceMatch, tag: int) -> bytes:
        """The value of a top-level binary element as stored (Pixel Data: see
        :meth:`frames`).

        Raises:
            NotFound: no such element, or not a binary one.
        """
        ds = _read(self.path(match))
        element = ds.get(tag)
        if element is None or element.VR not in _BINARY_VRS or tag == 0x7FE00010:
            raise NotFound(f"no bulk data element ({tag:08X}) in this instance")
        return bytes(element.value or b"")

    # -- frames ------------------------------------------------------------------------

    def frame_count(self, ds: Dataset) -> int:
        try:
            return max(1, int(ds.get("NumberOfFrames") or 1))
        except (TypeError, ValueError):
            return 1

    def frames(self, match: InstanceMatch, numbers: Sequence[int] | None, *,
               as_stored: bool) -> list[Frame]:
        """Frames (1-based ``numbers``; None: all). ``as_stored``: compressed frames as
        their codestreams; otherwise decoded to native little-endian pixel bytes.

        Raises:
            NotFound: not an image, or a frame number out of range.
            CannotProduce: too large to decode, or undecodable.
        """
        ds = _read(self.path(match))
        if "PixelData" not in ds:
            raise NotFound("this instance has no pixel data")
        count = self.frame_count(ds)
        wanted = list(numbers) if numbers is not None else list(range(1, count + 1))
        bad = [n for n in wanted if not 1 <= n <= count]
        if bad:
            raise NotFound(f"frame {bad[0]} does not exist (the instance has {count})")
        syntax = str(ds.file_meta.TransferSyntaxUID)
        if UID(syntax).is_compressed:
            if as_stored:
                from pydicom.encaps import generate_frames

                stream = list(generate_frames(ds.PixelData, number_of_frames=count))
                return [Frame(stream[n - 1], syntax) for n in wanted]
            self._decodable(ds)
            try:
                ds.decompress()
            except Exception as exc:  # noqa: BLE001
                raise CannotProduce(f"its pixel data cannot be decoded "
                                    f"({type(exc).__name__})") from None
            syntax = ExplicitVRLittleEndian
        elif syntax == "1.2.840.10008.1.2.2":  # big endian: give little-endian pixels
            self._decodable(ds)
            ds.PixelData = ds.pixel_array.astype(ds.pixel_array.dtype.newbyteorder("<")) \
                .tobytes()
            syntax = ExplicitVRLittleEndian
        data = bytes(ds.PixelData)
        size = len(data) // count
        return [Frame(data[(n - 1) * size:n * size], syntax) for n in wanted]

    # -- rendering ---------------------------------------------------------------------

    def rendered(self, match: InstanceMatch, frame: int, rendering: Rendering) -> bytes:
        """One frame as the radiologist would see it: Modality LUT, then the VOI
        (``rendering.window`` or the instance's own), MONOCHROME1 inverted so bone is
        bright, scaled to 8 bits, fitted into the viewport; JPEG or PNG.

        Raises:
            NotFound: not an image, or no such frame.
            CannotProduce: too large or undecodable, or not an image we can render.
        """
        ds = _read(self.path(match))
        if "PixelData" not in ds:
            raise NotFound("this instance has no pixel data")
        count = self.frame_count(ds)
        if not 1 <= frame <= count:
            raise NotFound(f"frame {frame} does not exist (the instance has {count})")
        self._decodable(ds)
        try:
            pixels = ds.pixel_array
        except Exception as exc:  # noqa: BLE001
            raise CannotProduce(f"its pixel data cannot be decoded "
                                f"({type(exc).__name__})") from None
        if count > 1:
            pixels = pixels[frame - 1]
        image = _display(ds, pixels, rendering.window)
        if rendering.viewport is not None:
            image = _fit(image, rendering.viewport)
        if rendering.media_type == "image/png":
            ok, encoded = cv2.imencode(".png", image)
        else:
            ok, encoded = cv2.imencode(".jpg", image,
                                       [cv2.IMWRITE_JPEG_QUALITY, rendering.quality])
        if not ok:
            raise CannotProduce("the image could not be encoded")
        return bytes(encoded.tobytes())


class _Omit(Exception):
    """A bulk value inside a sequence: left out of the metadata."""


def _to_json(ds: Dataset, bulk: Callable[[DataElement], str]) -> dict[str, Any]:
    """``ds.to_json_dict`` element by element, long binary values turned into
    BulkDataURIs; a sequence holding a long binary value is left out, and so is an element
    pydicom cannot put into JSON (its VR only), without logging its value."""
    result: dict[str, Any] = {}
    for element in ds:
        if element.tag.is_private and element.VR == "UN":
            continue  # unknown private bytes: nothing a viewer can use
        try:
            single = Dataset()
            single.add(element)
            result.update(single.to_json_dict(bulk_data_threshold=BULK_THRESHOLD,
                                              bulk_data_element_handler=bulk))
        except _Omit:
            continue
        except Exception:  # noqa: BLE001 - a value pydicom cannot put into JSON
            result[f"{element.tag:08X}"] = {"vr": element.VR}
    return result


def _display(ds: Dataset, pixels: np.ndarray, window: tuple[float, float] | None
             ) -> np.ndarray:
    """8-bit display values (grey, or BGR for colour)."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if pixels.ndim == 3 and pixels.shape[-1] == 3:
        # pydicom's pixel_array is RGB already: it converts YBR_FULL(_422) itself, and the
        # JPEG 2000 decoder undoes YBR_RCT / YBR_ICT; converting again shifted the colours
        # of YBR_FULL and failed on YBR_RCT (our overlays, lossless JPEG 2000).
        return cv2.cvtColor(pixels.astype(np.uint8), cv2.COLOR_RGB2BGR)
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    if window is not None:
        center, width = window
        low, high = center - width / 2, center + width / 2
    elif "WindowCenter" in ds or "VOILUTSequence" in ds:
        values = apply_voi_lut(values, ds, index=0).astype(np.float64)
        low, high = float(values.min()), float(values.max())
    else:
        low, high = float(values.min()), float(values.max())
    span = max(high - low, 1e-6)
    scaled = np.clip((values - low) / span, 0.0, 1.0)
    if photometric == "MONOCHROME1":
        scaled = 1.0 - scaled  # stored bright-is-low: shown bone-bright like MONOCHROME2
    return (scaled * 255.0 + 0.5).astype(np.uint8)


def _fit(image: np.ndarray, viewport: tuple[int, int]) -> np.ndarray:
    width, height = viewport
    scale = min(width / image.shape[1], height / image.shape[0])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interpolation)
