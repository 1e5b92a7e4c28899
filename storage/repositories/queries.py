"""C-FIND / QIDO-RS queries over the index (Study Root: study, series, image level)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Select, exists, func, or_, select, true
from sqlalchemy.orm import Session

from ..schema import Instance, Patient, Series, Study
from ._matching import (
    date_match,
    fuzzy_name_match,
    int_match,
    string_match,
    text_of,
    time_match,
    uid_list_match,
)

__all__ = [
    "INSTANCE_MATCHING_KEYS",
    "RELATIONAL_INSTANCE_KEYS",
    "RELATIONAL_SERIES_KEYS",
    "SERIES_MATCHING_KEYS",
    "STUDY_MATCHING_KEYS",
    "InstanceMatch",
    "QueryRepository",
    "SeriesMatch",
    "StudyMatch",
]

Filters = Mapping[str, object]
_Matcher = Callable[[object], ColumnElement[bool] | None]
AnySelect = Select[*tuple[Any, ...]]


@dataclass(frozen=True)
class StudyMatch:
    """A study-level C-FIND response (fields are DICOM keywords; patient data not in repr)."""

    PatientName: str = field(repr=False)
    PatientID: str = field(repr=False)
    PatientBirthDate: str = field(repr=False)
    PatientSex: str = field(repr=False)
    StudyInstanceUID: str
    StudyDate: str
    StudyTime: str
    AccessionNumber: str = field(repr=False)
    StudyDescription: str
    ModalitiesInStudy: str
    NumberOfStudyRelatedSeries: int
    NumberOfStudyRelatedInstances: int


@dataclass(frozen=True)
class SeriesMatch:
    """A series-level C-FIND response (fields are DICOM keywords)."""

    StudyInstanceUID: str
    SeriesInstanceUID: str
    Modality: str
    SeriesNumber: int | None
    SeriesDescription: str
    BodyPartExamined: str
    Laterality: str
    NumberOfSeriesRelatedInstances: int


@dataclass(frozen=True)
class InstanceMatch:
    """An image-level C-FIND response (DICOM keywords), plus where the file is
    (``relpath``, ``transfer_syntax_uid``: not part of the identifier)."""

    StudyInstanceUID: str
    SeriesInstanceUID: str
    SOPClassUID: str
    SOPInstanceUID: str
    InstanceNumber: int | None
    Rows: int | None
    Columns: int | None
    relpath: str
    transfer_syntax_uid: str


def _modalities_in_study(value: object) -> ColumnElement[bool] | None:
    # Multi-valued on both sides: a study matches when one of its series has one of the
    # requested modalities.
    wanted = [part for part in text_of(value).split("\\") if part]
    conditions = [c for part in wanted
                  if (c := string_match(Series.modality, part)) is not None]
    if not conditions:
        return None
    return exists().where(Series.study_id == Study.id, or_(*conditions))


_STUDY_KEYS: dict[str, _Matcher] = {
    "PatientName": lambda v: string_match(Patient.patient_name, v, case_insensitive=True),
    "PatientID": lambda v: string_match(Patient.patient_id, v),
    "PatientBirthDate": lambda v: date_match(Patient.birth_date, v, "PatientBirthDate"),
    "PatientSex": lambda v: string_match(Patient.sex, v),
    "StudyInstanceUID": lambda v: uid_list_match(Study.study_instance_uid, v,
                                                 "StudyInstanceUID"),
    "StudyDate": lambda v: date_match(Study.study_date, v, "StudyDate"),
    "StudyTime": lambda v: time_match(Study.study_time, v, "StudyTime"),
    "AccessionNumber": lambda v: string_match(Study.accession_number, v),
    "StudyDescription": lambda v: string_match(Study.study_description, v),
    "ModalitiesInStudy": _modalities_in_study,
}
_SERIES_KEYS: dict[str, _Matcher] = {
    "StudyInstanceUID": _STUDY_KEYS["StudyInstanceUID"],
    "SeriesInstanceUID": lambda v: uid_list_match(Series.series_instance_uid, v,
                                                  "SeriesInstanceUID"),
    "Modality": lambda v: string_match(Series.modality, v),
    "SeriesNumber": lambda v: int_match(Series.series_number, v, "SeriesNumber"),
    "SeriesDescription": lambda v: string_match(Series.series_description, v),
    "BodyPartExamined": lambda v: string_match(Series.body_part_examined, v),
    "Laterality": lambda v: string_match(Series.laterality, v),
}
_INSTANCE_KEYS: dict[str, _Matcher] = {
    "StudyInstanceUID": _STUDY_KEYS["StudyInstanceUID"],
    "SeriesInstanceUID": _SERIES_KEYS["SeriesInstanceUID"],
    "SOPInstanceUID": lambda v: uid_list_match(Instance.sop_instance_uid, v, "SOPInstanceUID"),
    "SOPClassUID": lambda v: uid_list_match(Instance.sop_class_uid, v, "SOPClassUID"),
    "InstanceNumber": lambda v: int_match(Instance.instance_number, v, "InstanceNumber"),
}

# Relational queries (QIDO-RS /series and /instances, PS3.18 10.6.1.2.1): the keys of
# the levels above are matched too.
_RELATIONAL_SERIES_KEYS: dict[str, _Matcher] = {**_STUDY_KEYS, **_SERIES_KEYS}
_RELATIONAL_INSTANCE_KEYS: dict[str, _Matcher] = {**_STUDY_KEYS, **_SERIES_KEYS,
                                                   **_INSTANCE_KEYS}

STUDY_MATCHING_KEYS = frozenset(_STUDY_KEYS)
SERIES_MATCHING_KEYS = frozenset(_SERIES_KEYS)
INSTANCE_MATCHING_KEYS = frozenset(_INSTANCE_KEYS)
RELATIONAL_SERIES_KEYS = frozenset(_RELATIONAL_SERIES_KEYS)
RELATIONAL_INSTANCE_KEYS = frozenset(_RELATIONAL_INSTANCE_KEYS)


def _where(stmt: AnySelect, filters: Filters, keys: Mapping[str, _Matcher], *,
           fuzzy: bool = False) -> AnySelect:
    for keyword, value in filters.items():
        matcher = keys.get(keyword)
        if fuzzy and keyword == "PatientName" and matcher is not None:
            matcher = lambda v: fuzzy_name_match(Patient.patient_name, v)  # noqa: E731
        if matcher is not None and (condition := matcher(value)) is not None:
            stmt = stmt.where(condition)
    return stmt


class QueryRepository:
    """Study Root queries with DICOM matching on the keys in ``*_MATCHING_KEYS``.

    Filter values follow PS3.4 C.2.2.2: empty or ``*`` matches everything; ``*`` and
    ``?`` are wildcards (PatientName regardless of case, other strings case-sensitive);
    dates and times take ranges (``20240101-20240131``, ``-0930``); UIDs take lists
    separated by ``\\``. Keys with no matching support (return keys such as
    ``NumberOfStudyRelatedInstances``) are ignored.

    Results a newer job superseded (``Instance.superseded``) are left out, and so are
    series holding nothing else, unless ``history=True``: one current result per study.

    QIDO-RS options: ``relational=True`` lets series and instance queries match the keys
    of the levels above (``RELATIONAL_*_KEYS``; C-FIND's hierarchical queries do not),
    ``fuzzy=True`` matches PatientName word by word (:func:`fuzzy_name_match`), and
    ``offset`` skips that many matches (in the stable order the results come in).

    Raises:
        InvalidQuery: a date, time, UID or number value that cannot be matched.
    """

    def __init__(self, session: Session, *, history: bool = False, relational: bool = False,
                 fuzzy: bool = False) -> None:
        self.session = session
        self.history = history
        self.relational = relational
        self.fuzzy = fuzzy

    def _page(self, stmt: AnySelect, limit: int | None, offset: int) -> AnySelect:
        if limit is not None:
            stmt = stmt.limit(limit)
        return stmt.offset(offset) if offset else stmt

    def _current(self) -> ColumnElement[bool]:
        return Instance.superseded.is_(False) if not self.history else true()

    def _series_shown(self) -> ColumnElement[bool]:
        """A series is shown unless every instance in it was superseded."""
        if self.history:
            return true()
        return or_(exists().where(Instance.series_id == Series.id,
                                  Instance.superseded.is_(False)),
                   ~exists().where(Instance.series_id == Series.id))

    def find_studies(self, filters: Filters, *, limit: int | None = None,
                     offset: int = 0) -> list[StudyMatch]:
        n_series = (select(func.count(Series.id))
                    .where(Series.study_id == Study.id, self._series_shown())
                    .correlate(Study).scalar_subquery())
        n_instances = (select(func.count(Instance.id))
                       .join(Series, Instance.series_id == Series.id)
                       .where(Series.study_id == Study.id, self._current())
                       .correlate(Study).scalar_subquery())
        stmt: AnySelect = (select(Patient.patient_name, Patient.patient_id, Patient.birth_date,
                       Patient.sex, Study.study_instance_uid, Study.study_date,
                       Study.study_time, Study.accession_number, Study.study_description,
                       Study.modalities_in_study, n_series, n_instances)
                .join(Patient, Study.patient_id == Patient.id))
        stmt = _where(stmt, filters, _STUDY_KEYS, fuzzy=self.fuzzy)
        stmt = stmt.order_by(Study.study_date.desc(), Study.study_time.desc(), Study.id)
        stmt = self._page(stmt, limit, offset)
        return [StudyMatch(*row) for row in self.session.execute(stmt)]

    def find_series(self, filters: Filters, *, limit: int | None = None,
                    offset: int = 0) -> list[SeriesMatch]:
        n_instances = (select(func.count(Instance.id))
                       .where(Instance.series_id == Series.id, self._current())
                       .correlate(Series).scalar_subquery())
        stmt: AnySelect = (select(Study.study_instance_uid, Series.series_instance_uid,
                                    Series.modality,
                       Series.series_number, Series.series_description,
                       Series.body_part_examined, Series.laterality, n_instances)
                .join(Study, Series.study_id == Study.id)
                .where(self._series_shown()))
        if self.relational:
            stmt = _where(stmt.join(Patient, Study.patient_id == Patient.id), filters,
                          _RELATIONAL_SERIES_KEYS, fuzzy=self.fuzzy)
        else:
            stmt = _where(stmt, filters, _SERIES_KEYS)
        stmt = stmt.order_by(Study.id, Series.series_number.asc().nulls_last(), Series.id)
        stmt = self._page(stmt, limit, offset)
        return [SeriesMatch(*row) for row in self.session.execute(stmt)]

    def find_instances(self, filters: Filters, *, limit: int | None = None,
                       offset: int = 0) -> list[InstanceMatch]:
        stmt: AnySelect = (select(Study.study_instance_uid, Series.series_instance_uid,
                       Instance.sop_class_uid, Instance.sop_instance_uid,
                       Instance.instance_number, Instance.rows, Instance.columns,
                       Instance.relpath, Instance.transfer_syntax_uid)
                .join(Series, Instance.series_id == Series.id)
                .join(Study, Series.study_id == Study.id)
                .where(self._current()))
        if self.relational:
            stmt = _where(stmt.join(Patient, Study.patient_id == Patient.id), filters,
                          _RELATIONAL_INSTANCE_KEYS, fuzzy=self.fuzzy)
        else:
            stmt = _where(stmt, filters, _INSTANCE_KEYS)
        stmt = stmt.order_by(Series.id, Instance.instance_number.asc().nulls_last(),
                             Instance.id)
        stmt = self._page(stmt, limit, offset)
        return [InstanceMatch(*row) for row in self.session.execute(stmt)]
