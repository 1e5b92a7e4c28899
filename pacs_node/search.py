"""Searching the index for DICOMweb (QIDO-RS, PS3.18 10.6): which keys match at which
level, which attributes come back, paging. The SQL is in :class:`storage.QueryRepository`
(shared with C-FIND); the HTTP translation in :mod:`pacs_node.http.qido`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from functools import cache
from typing import Any

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, tag_for_keyword
from sqlalchemy.orm import Session, sessionmaker

from storage import (
    RELATIONAL_INSTANCE_KEYS,
    RELATIONAL_SERIES_KEYS,
    STUDY_MATCHING_KEYS,
    InstanceMatch,
    QueryRepository,
    SeriesMatch,
    StudyMatch,
)

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "Level", "SearchRequest", "SearchResult",
           "SearchService"]

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


class Level(StrEnum):
    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"


_MATCHING = {Level.STUDY: STUDY_MATCHING_KEYS | {"Modality"},
             Level.SERIES: RELATIONAL_SERIES_KEYS,
             Level.INSTANCE: RELATIONAL_INSTANCE_KEYS}
# What each level can return (the index's columns), in the order they are listed.
_RETURNABLE = {
    Level.STUDY: ("StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
                  "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                  "StudyInstanceUID", "StudyDescription", "NumberOfStudyRelatedSeries",
                  "NumberOfStudyRelatedInstances", "Modality"),
    Level.SERIES: ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber",
                   "SeriesDescription", "BodyPartExamined", "Laterality",
                   "NumberOfSeriesRelatedInstances"),
    Level.INSTANCE: ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID",
                     "SOPInstanceUID", "InstanceNumber", "Rows", "Columns"),
}
# Returned without includefield (PS3.18 Table 10.6.3-3/4/5, as far as the index holds
# them); Modality at study level only when asked for (it is ModalitiesInStudy there).
_DEFAULT = {level: frozenset(keys) - {"Modality"} if level is Level.STUDY else frozenset(keys)
            for level, keys in _RETURNABLE.items()}


@dataclass(frozen=True)
class SearchRequest:
    """A parsed QIDO-RS query. ``filters`` maps DICOM keywords to matching values (PS3.4
    C.2.2.2 syntax, UID lists separated by ``\\``); ``include`` is the includefield
    keywords, or None for ``includefield=all``."""

    level: Level
    filters: Mapping[str, str]
    include: frozenset[str] | None = frozenset()
    fuzzy: bool = False
    limit: int = DEFAULT_LIMIT
    offset: int = 0


@dataclass(frozen=True)
class SearchResult:
    """Matches as DICOM JSON objects, and the query keys that were ignored."""

    matches: list[dict[str, Any]]
    ignored_keys: list[str]


def _set(ds: Dataset, keyword: str, value: object) -> None:
    if value is None or value == "":
        setattr(ds, keyword, None)  # present, without a value
    elif keyword in ("ModalitiesInStudy", "Modality") and isinstance(value, str):
        setattr(ds, keyword, [v for v in value.split("\\") if v])
    else:
        setattr(ds, keyword, value)


@cache
def _tag_vr(keyword: str) -> tuple[str, str]:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"{keyword!r} is not a DICOM keyword")
    return f"{tag:08X}", dictionary_VR(tag)


_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC",
                         "UI", "UR", "UT"})
_INT_VRS = frozenset({"IS", "US", "UL", "SS", "SL"})


def _element_json(keyword: str, value: object) -> tuple[str, dict[str, Any]]:
    """``(tag, DICOM JSON element)`` of one returned attribute: what :func:`_set` and
    pydicom's ``to_json_dict`` make of it, built directly for the plain values an index
    holds (pydicom takes ~0.3 ms per result, most of a 100-study answer); anything else
    (a backslash, PN groups, a string for a number) still goes through pydicom."""
    tag, vr = _tag_vr(keyword)
    if value is None or value == "":
        return tag, {"vr": vr}
    if keyword in ("ModalitiesInStudy", "Modality") and isinstance(value, str):
        parts = [v for v in value.split("\\") if v]
        return tag, {"vr": vr, "Value": parts} if parts else {"vr": vr}
    if type(value) is int and vr in _INT_VRS:
        return tag, {"vr": vr, "Value": [value]}
    if isinstance(value, str) and "\\" not in value:
        if vr in _STRING_VRS:
            return tag, {"vr": vr, "Value": [value]}
        if vr == "PN" and "=" not in value:
            return tag, {"vr": vr, "Value": [{"Alphabetic": value}]}
    ds = Dataset()
    _set(ds, keyword, value)
    return tag, ds.to_json_dict()[tag]


class SearchService:
    """QIDO-RS searches over the index (current results only: one per study).

    Args:
        sessions: the index's session factory.
        retrieve_url: called with ``(study, series, instance)`` UIDs (the last two may be
            None) to fill Retrieve URL (0008,1190); None leaves it out.
    """

    def __init__(self, sessions: sessionmaker[Session], *,
                 retrieve_url: Callable[[str, str | None, str | None], str] | None = None
                 ) -> None:
        self._sessions = sessions
        self._retrieve_url = retrieve_url

    @staticmethod
    def matching_keys(level: Level) -> frozenset[str]:
        """The keywords that match at ``level``; others are ignored."""
        return frozenset(_MATCHING[level])

    def search(self, request: SearchRequest) -> SearchResult:
        """Run ``request``.

        Raises:
            storage.InvalidQuery: a value that cannot be matched (bad date, UID...).
            ValueError: limit or offset out of range.
        """
        if not 1 <= request.limit <= MAX_LIMIT:
            raise ValueError(f"limit must be 1 to {MAX_LIMIT}, got {request.limit}")
        if request.offset < 0:
            raise ValueError(f"offset must not be negative, got {request.offset}")
        allowed = _MATCHING[request.level]
        ignored = sorted(k for k in request.filters if k not in allowed)
        filters = {k: v for k, v in request.filters.items() if k in allowed}
        if request.level is Level.STUDY and "Modality" in filters:
            # OHIF filters studies on Modality: at study level it means ModalitiesInStudy.
            filters.setdefault("ModalitiesInStudy", filters.pop("Modality"))
            filters.pop("Modality", None)
        with self._sessions() as session:
            repo = QueryRepository(session, relational=True, fuzzy=request.fuzzy)
            page = {"limit": request.limit, "offset": request.offset}
            found: Iterable[StudyMatch | SeriesMatch | InstanceMatch]
            if request.level is Level.STUDY:
                found = repo.find_studies(filters, **page)
            elif request.level is Level.SERIES:
                found = repo.find_series(filters, **page)
            else:
                found = repo.find_instances(filters, **page)
        wanted = self._returned(request)
        return SearchResult([self._json(request.level, m, wanted) for m in found], ignored)

    @staticmethod
    def _returned(request: SearchRequest) -> tuple[str, ...]:
        returnable = _RETURNABLE[request.level]
        if request.include is None:
            return returnable
        extra = request.include | frozenset(request.filters)
        return tuple(k for k in returnable if k in _DEFAULT[request.level] or k in extra)

    def _json(self, level: Level, match: StudyMatch | SeriesMatch | InstanceMatch,
              wanted: tuple[str, ...]) -> dict[str, Any]:
        values = {f.name: getattr(match, f.name) for f in fields(match)}  # flat: no asdict
        if level is Level.STUDY:
            values["Modality"] = values["ModalitiesInStudy"]
        elements = [_element_json(keyword, values.get(keyword)) for keyword in wanted]
        if self._retrieve_url is not None:
            elements.append(_element_json("RetrieveURL", self._retrieve_url(
                values["StudyInstanceUID"], values.get("SeriesInstanceUID")
                if level is not Level.STUDY else None,
                values.get("SOPInstanceUID") if level is Level.INSTANCE else None)))
        return dict(sorted(elements, key=lambda e: e[0]))  # tag order, as pydicom writes
