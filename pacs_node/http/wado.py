"""WADO-RS (PS3.18 10.4): retrieve studies, series and instances (multipart/related
application/dicom, as stored with ``transfer-syntax=*`` or in Explicit VR Little Endian,
the default), their metadata (DICOM JSON), frames, bulk data and rendered images. The
``Accept`` header is negotiated here; the reading and decoding is
:class:`pacs_node.retrieve.RetrieveService`. What the node cannot produce is a 406."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, cast

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import StreamingResponse
from pydicom.uid import UID, ExplicitVRLittleEndian

from storage import InstanceMatch, NotFound

from ..retrieve import CannotProduce, Rendering, RetrieveService
from .common import DicomJSONResponse, checked_uid

__all__ = ["MediaRange", "parse_accept", "router"]

router = APIRouter(tags=["WADO-RS"])

_CHUNK = 1 << 20
_ANY_TS = "*"
# Media types of compressed frames (PS3.18 Table 8.7.3-2) by transfer syntax.
_FRAME_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
_FRAME_LIST = re.compile(r"^[1-9][0-9]{0,8}(,[1-9][0-9]{0,8}){0,999}$")
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")


@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept header: ``media_type`` (lower case), its parameters, q."""

    media_type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def part_type(self) -> str:
        """For multipart/related: the type of its parts ("" when not given)."""
        return self.params.get("type", "").lower()


def parse_accept(header: str | None) -> list[MediaRange]:
    """The media ranges of an Accept header, highest q first (none: ``*/*``). Quoted
    parameter values may hold commas and semicolons."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges: list[MediaRange] = []
    for entry in re.findall(r'(?:[^,"]|"[^"]*")+', header):
        pieces = re.findall(r'(?:[^;"]|"[^"]*")+', entry)
        if not pieces or "/" not in pieces[0]:
            continue
        params: dict[str, str] = {}
        q = 1.0
        for piece in pieces[1:]:
            name, _, value = piece.strip().partition("=")
            value = value.strip().strip('"')
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
            else:
                params[name.strip().lower()] = value
        if q > 0:
            ranges.append(MediaRange(pieces[0].strip().lower(), params, q))
    ranges.sort(key=lambda r: -r.q)
    return ranges


def _service(request: Request) -> RetrieveService:
    return request.app.state.retrieve  # type: ignore[no-any-return]


Service = Annotated[RetrieveService, Depends(_service)]


def _not_acceptable(what: str) -> HTTPException:
    return HTTPException(406, f"cannot produce {what}")


def _find(service: RetrieveService, study: str, series: str | None = None,
          instance: str | None = None) -> list[InstanceMatch]:
    study = checked_uid(study, "study")
    series = checked_uid(series, "series") if series is not None else None
    instance = checked_uid(instance, "SOP instance") if instance is not None else None
    try:
        return service.instances(study, series, instance)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None


# -- retrieve instances ----------------------------------------------------------------

def _dicom_syntax(ranges: list[MediaRange]) -> str | None:
    """The transfer syntax asked for application/dicom parts: a UID, ``*`` (as stored), or
    None when the Accept header allows no DICOM parts."""
    for accepted in ranges:
        kind = accepted.media_type
        if kind in ("*/*", "multipart/*") or (kind == "multipart/related" and
                                               accepted.part_type in ("", "application/dicom")) \
                or kind == "application/dicom":
            return accepted.params.get("transfer-syntax") or ExplicitVRLittleEndian
    return None


def _multipart(parts: Iterator[tuple[str, Callable[[], Iterator[bytes]]]],
               part_type: str) -> StreamingResponse:
    boundary = secrets.token_hex(16)

    def body() -> Iterator[bytes]:
        for content_type, chunks in parts:
            yield f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()
            yield from chunks()
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    media = f'multipart/related; type="{part_type}"; boundary={boundary}'
    return StreamingResponse(body(), media_type=media)


def _file_chunks(path: Path) -> Callable[[], Iterator[bytes]]:
    def chunks() -> Iterator[bytes]:
        with path.open("rb") as handle:
            while block := handle.read(_CHUNK):
                yield block
    return chunks


def _retrieve(request: Request, service: RetrieveService,
              found: list[InstanceMatch]) -> StreamingResponse:
    syntax = _dicom_syntax(parse_accept(request.headers.get("accept")))
    if syntax is None:
        raise _not_acceptable("the media types in Accept (this resource is "
                              'multipart/related; type="application/dicom")')
    plan: list[tuple[InstanceMatch, str]] = []
    for match in found:
        stored = match.transfer_syntax_uid
        if syntax in (_ANY_TS, stored):
            plan.append((match, stored))
        elif syntax == ExplicitVRLittleEndian:
            plan.append((match, ExplicitVRLittleEndian))
        else:
            raise _not_acceptable(f"transfer syntax {syntax[:64]} (instances are given as "
                                  f"stored, transfer-syntax=*, or in {ExplicitVRLittleEndian})")

    def parts() -> Iterator[tuple[str, Callable[[], Iterator[bytes]]]]:
        for match, out in plan:
            content_type = f"application/dicom; transfer-syntax={out}"
            if out == match.transfer_syntax_uid:
                yield content_type, _file_chunks(service.path(match))
            else:
                data = service.explicit_little(match)  # bounded by storage.max_pixels
                yield content_type, cast("Callable[[], Iterator[bytes]]",
                                         lambda data=data: iter((data,)))

    for match, out in plan:  # refuse before streaming what cannot be decoded
        if out != match.transfer_syntax_uid and UID(match.transfer_syntax_uid).is_compressed:
            reason = service.too_large(match)
            if reason:
                raise _not_acceptable(f"{match.SOPInstanceUID} in Explicit VR Little "
                                      f"Endian: the image is {reason}; ask for "
                                      "transfer-syntax=*")
    return _multipart(parts(), "application/dicom")


@router.get("/studies/{study}", summary="Retrieve a study")
def retrieve_study(study: str, request: Request, service: Service) -> Response:
    return _retrieve(request, service, _find(service, study))


@router.get("/studies/{study}/series/{series}", summary="Retrieve a series")
def retrieve_series(study: str, series: str, request: Request, service: Service) -> Response:
    return _retrieve(request, service, _find(service, study, series))


@router.get("/studies/{study}/series/{series}/instances/{instance}",
            summary="Retrieve an instance")
def retrieve_instance(study: str, series: str, instance: str, request: Request,
                      service: Service) -> Response:
    return _retrieve(request, service, _find(service, study, series, instance))


# -- metadata --------------------------------------------------------------------------

def _metadata(request: Request, service: RetrieveService,
              found: list[InstanceMatch]) -> Response:
    for accepted in parse_accept(request.headers.get("accept")):
        if accepted.media_type in ("*/*", "application/*", "application/dicom+json",
                                   "application/json"):
            break
    else:
        raise _not_acceptable("metadata other than application/dicom+json")
    base = str(request.base_url).rstrip("/")
    prefix = request.app.state.dicomweb_prefix
    documents = []
    for match in found:
        url = (f"{base}{prefix}/studies/{match.StudyInstanceUID}/series/"
               f"{match.SeriesInstanceUID}/instances/{match.SOPInstanceUID}")
        try:
            documents.append(service.metadata(match, cast(
                "Callable[[str], str]", lambda tag, url=url: f"{url}/bulkdata/{tag}")))
        except NotFound:
            continue  # the file went between the query and the read (superseded)
    return DicomJSONResponse(documents)


@router.get("/studies/{study}/metadata", summary="A study's metadata")
def study_metadata(study: str, request: Request, service: Service) -> Response:
    return _metadata(request, service, _find(service, study))


@router.get("/studies/{study}/series/{series}/metadata", summary="A series' metadata")
def series_metadata(study: str, series: str, request: Request, service: Service) -> Response:
    return _metadata(request, service, _find(service, study, series))


@router.get("/studies/{study}/series/{series}/instances/{instance}/metadata",
            summary="An instance's metadata")
def instance_metadata(study: str, series: str, instance: str, request: Request,
                      service: Service) -> Response:
    return _metadata(request, service, _find(service, study, series, instance))


# -- frames and bulk data --------------------------------------------------------------

def _frame_choice(ranges: list[MediaRange], stored: str) -> tuple[bool, str] | None:
    """(as stored?, part media type) for frames, or None if nothing acceptable."""
    stored_type = _FRAME_TYPES.get(stored)
    for accepted in ranges:
        kind, part = accepted.media_type, accepted.part_type
        syntax = accepted.params.get("transfer-syntax", "")
        if kind == "multipart/related":
            kind = part or "application/octet-stream"
        if kind in ("*/*", "multipart/*"):
            return (stored_type is not None and syntax == _ANY_TS), \
                "application/octet-stream"
        if kind == "application/octet-stream":
            if syntax in (_ANY_TS, stored) and stored_type is not None:
                return True, "application/octet-stream"
            if syntax in ("", _ANY_TS, ExplicitVRLittleEndian, "1.2.840.10008.1.2",
                          "1.2.840.10008.1.2.1"):
                return False, "application/octet-stream"
        elif stored_type is not None and kind == stored_type:
            return True, stored_type
    return None


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
            summary="Frames of an instance")
def retrieve_frames(study: str, series: str, instance: str, frames: str, request: Request,
                    service: Service) -> Response:
    (match,) = _find(service, study, series, instance)
    if not _FRAME_LIST.match(frames):
        raise HTTPException(400, "frames must be a comma-separated list of frame numbers")
    return _frames(match, [int(n) for n in frames.split(",")], request, service)


@router.get("/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag}",
            summary="A bulk data value of an instance")
def retrieve_bulkdata(study: str, series: str, instance: str, tag: str, request: Request,
                      service: Service) -> Response:
    (match,) = _find(service, study, series, instance)
    if not _TAG.match(tag):
        raise HTTPException(400, "the bulk data reference must be a tag (8 hex digits)")
    if int(tag, 16) == 0x7FE00010:  # Pixel Data: every frame, as the frames resource
        return _frames(match, None, request, service)
    try:
        value = service.bulkdata(match, int(tag, 16))
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    return _multipart(iter([("application/octet-stream", lambda: iter((value,)))]),
                      "application/octet-stream")


def _frames(match: InstanceMatch, numbers: list[int] | None, request: Request,
            service: RetrieveService) -> Response:
    """Frames ``numbers`` (None: all, the Pixel Data bulk data) in a media type of the
    Accept header: as stored, or decoded to native pixels."""
    choice = _frame_choice(parse_accept(request.headers.get("accept")),
                           match.transfer_syntax_uid)
    if choice is None:
        raise _not_acceptable("frames in the media types of Accept (stored: "
                              f"{match.transfer_syntax_uid})")
    as_stored, part_type = choice
    try:
        found = service.frames(match, numbers, as_stored=as_stored)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except CannotProduce as exc:
        raise _not_acceptable(f"decoded frames: {exc}; ask for transfer-syntax=*") from None
    parts = ((f"{part_type}; transfer-syntax={frame.transfer_syntax_uid}",
              lambda data=frame.data: iter((data,))) for frame in found)
    return _multipart(parts, part_type)


# -- rendered --------------------------------------------------------------------------

def _rendering(request: Request) -> Rendering:
    media_type = None
    for accepted in parse_accept(request.headers.get("accept")):
        if accepted.media_type in ("*/*", "image/*", "image/jpeg"):
            media_type = "image/jpeg"
            break
        if accepted.media_type == "image/png":
            media_type = "image/png"
            break
    if media_type is None:
        raise _not_acceptable("a rendering other than image/jpeg or image/png")
    params = request.query_params
    window = None
    if params.get("window"):
        parts = params["window"].split(",")
        try:
            center, width = float(parts[0]), float(parts[1])
        except (ValueError, IndexError):
            raise HTTPException(400, "window must be center,width[,function]") from None
        if width <= 0:
            raise HTTPException(400, "the window width must be positive")
        window = (center, width)
    viewport = None
    if params.get("viewport"):
        try:
            width_px, height_px = (int(v) for v in params["viewport"].split(",")[:2])
        except ValueError:
            raise HTTPException(400, "viewport must be width,height") from None
        if not (1 <= width_px <= 8192 and 1 <= height_px <= 8192):
            raise HTTPException(400, "the viewport must be 1 to 8192 pixels each way")
        viewport = (width_px, height_px)
    quality = 90
    if params.get("quality"):
        try:
            quality = int(params["quality"])
        except ValueError:
            raise HTTPException(400, "quality must be an integer 1-100") from None
        if not 1 <= quality <= 100:
            raise HTTPException(400, "quality must be 1 to 100")
    return Rendering(media_type, window, viewport, quality)


def _rendered(match: InstanceMatch, frame: int, request: Request,
              service: RetrieveService) -> Response:
    rendering = _rendering(request)
    try:
        image = service.rendered(match, frame, rendering)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except CannotProduce as exc:
        raise _not_acceptable(f"a rendering: {exc}") from None
    return Response(image, media_type=rendering.media_type)


@router.get("/studies/{study}/series/{series}/rendered",
            summary="A series rendered as one image: its first image (a series thumbnail)")
def rendered_series(study: str, series: str, request: Request,
                    service: Service) -> Response:
    # OHIF's study list asks this for a series' thumbnail before it knows any instance; one
    # image is what it can show (a 404 made it retry through QIDO and the instance).
    images = [match for match in _find(service, study, series) if match.Rows]
    if not images:
        raise HTTPException(404, "this series has no image to render")
    first = min(images, key=lambda m: (m.InstanceNumber is None, m.InstanceNumber or 0,
                                       m.SOPInstanceUID))
    return _rendered(first, 1, request, service)


@router.get("/studies/{study}/series/{series}/instances/{instance}/rendered",
            summary="An instance rendered (first frame)")
def rendered_instance(study: str, series: str, instance: str, request: Request,
                      service: Service) -> Response:
    (match,) = _find(service, study, series, instance)
    return _rendered(match, 1, request, service)


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frame}/rendered",
            summary="A frame rendered")
def rendered_frame(study: str, series: str, instance: str, frame: int, request: Request,
                   service: Service) -> Response:
    (match,) = _find(service, study, series, instance)
    return _rendered(match, frame, request, service)

