"""Searching the index for DICOMweb (QIDO-RS, PS3.18 10.6): which keys match at which
level, which attributes come back, paging. The SQL is in :class:`storage.QueryRepository`
(shared with C-FIND); the HTTP translation in :mod:`pacs_node.http.qido`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from pydicom import Dataset
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
        values = asdict(match)
        if level is Level.STUDY:
            values["Modality"] = values["ModalitiesInStudy"]
        ds = Dataset()
        for keyword in wanted:
            _set(ds, keyword, values.get(keyword))
        if self._retrieve_url is not None:
            ds.RetrieveURL = self._retrieve_url(
                values["StudyInstanceUID"], values.get("SeriesInstanceUID")
                if level is not Level.STUDY else None,
                values.get("SOPInstanceUID") if level is Level.INSTANCE else None)
        return ds.to_json_dict()
