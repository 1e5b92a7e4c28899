"""QIDO-RS answers are built without pydicom for plain index values: the DICOM JSON must
be exactly what pydicom's ``Dataset.to_json_dict`` makes of the same attributes."""

from __future__ import annotations

import warnings
from dataclasses import asdict
from typing import Any

import pytest
from pydicom import Dataset

from pacs_node.search import Level, SearchRequest, SearchService, _element_json, _set
from storage import QueryRepository

from .conftest import Web


def pydicom_json(keyword: str, value: object) -> dict[str, Any]:
    ds = Dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about odd values; it still encodes
        _set(ds, keyword, value)
        return ds.to_json_dict()


@pytest.mark.parametrize(("keyword", "value"), [
    ("PatientName", "Smith^John"), ("PatientName", "SMITH^JOHN  "), ("PatientName", "^^"),
    ("PatientName", "Yamada^Tarou=山田^太郎"), ("PatientName", "A\\B"), ("PatientName", ""),
    ("PatientName", None), ("PatientName", "Ünö^Ä"), ("PatientID", "P1"),
    ("PatientID", "P\\2"), ("AccessionNumber", "A\\"), ("StudyDate", "20250110"),
    ("StudyDate", " 2020"), ("StudyTime", "081500.123"), ("StudyDescription", "é ü"),
    ("StudyInstanceUID", "1.2.3.4"), ("ModalitiesInStudy", "CR\\DX"),
    ("ModalitiesInStudy", "CR"), ("ModalitiesInStudy", "\\"), ("ModalitiesInStudy", ""),
    ("Modality", "SR"), ("NumberOfStudyRelatedSeries", 0), ("NumberOfStudyRelatedInstances", 7),
    ("SeriesNumber", None), ("SeriesNumber", -3), ("SeriesNumber", "12"),
    ("InstanceNumber", 2**31 - 1), ("Rows", 512), ("Columns", None),
    ("RetrieveURL", "/dicomweb/studies/1.2.3"), ("Laterality", "L"),
])
def test_element_json_is_what_pydicom_writes(keyword: str, value: object) -> None:
    tag, element = _element_json(keyword, value)
    assert {tag: element} == pydicom_json(keyword, value)


@pytest.mark.parametrize("level", list(Level))
@pytest.mark.parametrize("include", [frozenset(), None])
def test_search_answers_are_what_pydicom_writes(web: Web, level: Level,
                                                include: frozenset[str] | None) -> None:
    service = SearchService(web.sessions, retrieve_url=lambda s, se, i: f"/x/{s}/{se}/{i}")
    request = SearchRequest(level=level, filters={}, include=include)
    answers = service.search(request).matches
    with web.sessions() as session:
        repo = QueryRepository(session, relational=True)
        found = {Level.STUDY: repo.find_studies, Level.SERIES: repo.find_series,
                 Level.INSTANCE: repo.find_instances}[level]({}, limit=100)
    assert answers and len(answers) == len(found)
    wanted = SearchService._returned(request)
    for answer, match in zip(answers, found, strict=True):
        values = asdict(match)
        values["Modality"] = values.get("Modality", values.get("ModalitiesInStudy"))
        ds = Dataset()
        for keyword in wanted:
            _set(ds, keyword, values.get(keyword))
        series = values.get("SeriesInstanceUID") if level is not Level.STUDY else None
        instance = values.get("SOPInstanceUID") if level is Level.INSTANCE else None
        ds.RetrieveURL = f"/x/{values['StudyInstanceUID']}/{series}/{instance}"
        assert answer == ds.to_json_dict()
        assert list(answer) == sorted(answer)  # tag order
