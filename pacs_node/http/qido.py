"""QIDO-RS (PS3.18 10.6): the six search resources, translated to
:class:`pacs_node.search.SearchRequest`. Query parameters are attribute keywords or tags
(``PatientID=X``, ``00100020=X``), ``includefield`` (keywords, tags or ``all``, repeated or
comma-separated), ``fuzzymatching``, ``limit`` and ``offset``. Keys the node cannot match
are ignored and named in a ``Warning: 299`` header (PS3.18 8.3.4.1), never a 400."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.tag import Tag

from ..search import DEFAULT_LIMIT, MAX_LIMIT, Level, SearchRequest, SearchService
from .common import DICOM_JSON, DicomJSONResponse, checked_uid

__all__ = ["router"]

router = APIRouter(tags=["QIDO-RS"])

_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_RESERVED = {"limit", "offset", "fuzzymatching", "includefield"}
_MAX_VALUE = 1024  # a longer matching value is refused, not matched


def _keyword(name: str) -> str | None:
    """The DICOM keyword a query parameter names (keyword or 8 hex digits), or None."""
    if _TAG.match(name):
        return keyword_for_tag(Tag(int(name, 16))) or None
    try:
        Tag(name)  # a keyword pydicom knows
    except (ValueError, TypeError):
        return None
    return name


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPException(400, f"{name} must be an integer, got {raw[:20]!r}") from None
    if not low <= value <= high:
        raise HTTPException(400, f"{name} must be {low} to {high}, got {value}")
    return value


def parse_search(request: Request, level: Level, fixed: dict[str, str]) -> tuple[
        SearchRequest, list[str]]:
    """The search the query string asks for, and the parameters that name no attribute."""
    filters: dict[str, str] = {}
    include: set[str] | None = set()
    unknown: list[str] = []
    for name, value in request.query_params.multi_items():
        if name == "includefield":
            for item in value.split(","):
                item = item.strip()
                if item == "all":
                    include = None
                elif include is not None and (keyword := _keyword(item)):
                    include.add(keyword)
            continue
        if name in _RESERVED:
            continue
        keyword = _keyword(name)
        if keyword is None:
            unknown.append(name[:64])
            continue
        if len(value) > _MAX_VALUE:
            raise HTTPException(400, f"the value of {keyword} is longer than {_MAX_VALUE} "
                                "characters")
        if dictionary_VR(keyword) == "UI":
            value = value.replace(",", "\\")  # PS3.18 8.3.4.1: UID lists are comma-separated
        filters[keyword] = f"{filters[keyword]}\\{value}" if keyword in filters else value
    filters.update(fixed)
    fuzzy = request.query_params.get("fuzzymatching", "false").lower() == "true"
    search = SearchRequest(
        level=level, filters=filters,
        include=None if include is None else frozenset(include), fuzzy=fuzzy,
        limit=_int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
        offset=_int_param(request, "offset", 0, 0, 1 << 31))
    return search, unknown


def _service(request: Request) -> SearchService:
    return request.app.state.search  # type: ignore[no-any-return]


Service = Annotated[SearchService, Depends(_service)]


def _answer(service: SearchService, request: Request, level: Level,
            fixed: dict[str, str]) -> Response:
    search, unknown = parse_search(request, level, fixed)
    result = service.search(search)
    ignored = unknown + result.ignored_keys
    headers = {}
    if ignored:
        headers["Warning"] = ('299 pacs-node "The following query keys are not supported '
                              f'and were ignored: {", ".join(ignored)}"')
    return DicomJSONResponse(result.matches, headers=headers)


_DOC: dict[str, Any] = {"response_class": DicomJSONResponse,
                        "responses": {200: {"content": {DICOM_JSON: {}}}}}


@router.get("/studies", summary="Search for studies", **_DOC)
def search_studies(request: Request, service: Service) -> Response:
    return _answer(service, request, Level.STUDY, {})


@router.get("/series", summary="Search for series", **_DOC)
def search_series(request: Request, service: Service) -> Response:
    return _answer(service, request, Level.SERIES, {})


@router.get("/instances", summary="Search for instances", **_DOC)
def search_instances(request: Request, service: Service) -> Response:
    return _answer(service, request, Level.INSTANCE, {})


@router.get("/studies/{study}/series", summary="Search for a study's series", **_DOC)
def search_study_series(study: str, request: Request, service: Service) -> Response:
    return _answer(service, request, Level.SERIES,
                   {"StudyInstanceUID": checked_uid(study, "study")})


@router.get("/studies/{study}/instances", summary="Search for a study's instances", **_DOC)
def search_study_instances(study: str, request: Request, service: Service) -> Response:
    return _answer(service, request, Level.INSTANCE,
                   {"StudyInstanceUID": checked_uid(study, "study")})


@router.get("/studies/{study}/series/{series}/instances",
            summary="Search for a series' instances", **_DOC)
def search_series_instances(study: str, series: str, request: Request,
                            service: Service) -> Response:
    return _answer(service, request, Level.INSTANCE,
                   {"StudyInstanceUID": checked_uid(study, "study"),
                    "SeriesInstanceUID": checked_uid(series, "series")})
