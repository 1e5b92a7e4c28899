"""QueryRepository: DICOM matching for C-FIND / QIDO-RS."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from storage import FileStore, InvalidQuery, QueryRepository, ingest

from .storage_helpers import content, meta, uid


@pytest.fixture
def indexed(store: FileStore, sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    rows = [
        meta(study=1, series=1, sop=1, patient_name="Doe^Jane", patient_id="P1",
             study_date="20240110", study_time="093015", study_description="WRIST 2 VIEWS",
             accession_number="A100"),
        meta(study=1, series=1, sop=2, patient_name="Doe^Jane", patient_id="P1",
             study_date="20240110", study_time="093015"),
        meta(study=1, series=2, sop=1, patient_name="Doe^Jane", patient_id="P1",
             study_date="20240110", study_time="093015", modality="DX", series_number=2,
             body_part_examined="HAND", series_description="LAT"),
        meta(study=2, series=1, sop=1, patient_name="Smith^John", patient_id="P2",
             study_date="20240215", study_time="141500", study_description="HIP 100%",
             accession_number="A200", body_part_examined="HIP"),
        meta(study=3, series=1, sop=1, patient_name="DOE^JOHN", patient_id="P3",
             study_date="", study_time="", study_description="HIP_X",
             accession_number="A300", modality="DX"),
    ]
    for m in rows:
        ingest(store, sessions, content(m.sop_instance_uid), m)
    return sessions


def _studies(sessions: sessionmaker[Session], **filters: str) -> list[str]:
    with sessions() as session:
        return sorted(m.StudyInstanceUID for m in QueryRepository(session).find_studies(filters))


def test_universal_matching(indexed: sessionmaker[Session]) -> None:
    everything = [uid(1), uid(2), uid(3)]
    assert _studies(indexed) == everything
    assert _studies(indexed, PatientName="", StudyDate="", AccessionNumber="*") == everything
    assert _studies(indexed, NumberOfStudyRelatedInstances="", QueryRetrieveLevel="STUDY") \
        == everything


def test_study_attributes_and_counts(indexed: sessionmaker[Session]) -> None:
    with indexed() as session:
        (match,) = QueryRepository(session).find_studies({"StudyInstanceUID": uid(1)})
    assert (match.PatientName, match.PatientID, match.PatientBirthDate, match.PatientSex) == \
        ("Doe^Jane", "P1", "19700101", "F")
    assert (match.StudyDate, match.StudyTime, match.AccessionNumber, match.StudyDescription) \
        == ("20240110", "093015", "A100", "WRIST 2 VIEWS")
    assert match.ModalitiesInStudy == "CR\\DX"
    assert (match.NumberOfStudyRelatedSeries, match.NumberOfStudyRelatedInstances) == (2, 3)
    assert "Doe" not in repr(match)


def test_wildcards(indexed: sessionmaker[Session]) -> None:
    assert _studies(indexed, PatientName="Doe*") == [uid(1), uid(3)]  # PN: any case
    assert _studies(indexed, PatientName="doe^j?ne") == [uid(1)]
    assert _studies(indexed, PatientName="*john") == [uid(2), uid(3)]
    assert _studies(indexed, PatientID="P?") == [uid(1), uid(2), uid(3)]
    assert _studies(indexed, StudyDescription="HIP*") == [uid(2), uid(3)]
    assert _studies(indexed, StudyDescription="hip*") == []  # other strings: exact case
    assert _studies(indexed, AccessionNumber="A200") == [uid(2)]
    assert _studies(indexed, StudyDescription="WRIST") == []  # no wildcard: whole value


def test_sql_wildcards_are_literals(indexed: sessionmaker[Session]) -> None:
    assert _studies(indexed, StudyDescription="HIP 100%") == [uid(2)]
    assert _studies(indexed, StudyDescription="HIP_X") == [uid(3)]
    assert _studies(indexed, StudyDescription="HIP_*") == [uid(3)]
    assert _studies(indexed, StudyDescription="*%*") == [uid(2)]
    assert _studies(indexed, StudyDescription="HIP!*") == []


def test_date_and_time_ranges(indexed: sessionmaker[Session]) -> None:
    assert _studies(indexed, StudyDate="20240110") == [uid(1)]
    assert _studies(indexed, StudyDate="20240101-20240131") == [uid(1)]
    assert _studies(indexed, StudyDate="20240111-") == [uid(2)]
    assert _studies(indexed, StudyDate="-20240301") == [uid(1), uid(2)]  # not the empty date
    assert _studies(indexed, StudyDate="20240110-20240215") == [uid(1), uid(2)]
    assert _studies(indexed, StudyTime="0900-1000") == [uid(1)]
    assert _studies(indexed, StudyTime="-0930") == [uid(1)]  # 09:30:15 is within 09:30
    assert _studies(indexed, StudyTime="1415-") == [uid(2)]
    assert _studies(indexed, PatientBirthDate="19000101-19991231") == [uid(1), uid(2), uid(3)]
    for bad in ["2024", "2024-01-10", "20240110-2024", "-", "yesterday"]:
        with pytest.raises(InvalidQuery):
            _studies(indexed, StudyDate=bad)


def test_uid_list_matching(indexed: sessionmaker[Session]) -> None:
    assert _studies(indexed, StudyInstanceUID=f"{uid(1)}\\{uid(3)}") == [uid(1), uid(3)]
    assert _studies(indexed, StudyInstanceUID=uid(2)) == [uid(2)]
    assert _studies(indexed, StudyInstanceUID="1.2.3.4") == []
    for bad in ["1.2.*", f"{uid(1)}\\../x", "1..2"]:
        with pytest.raises(InvalidQuery):
            _studies(indexed, StudyInstanceUID=bad)


def test_modalities_in_study(indexed: sessionmaker[Session]) -> None:
    assert _studies(indexed, ModalitiesInStudy="DX") == [uid(1), uid(3)]
    assert _studies(indexed, ModalitiesInStudy="CR") == [uid(1), uid(2)]
    assert _studies(indexed, ModalitiesInStudy="MR\\DX") == [uid(1), uid(3)]
    assert _studies(indexed, ModalitiesInStudy="MR") == []


def test_series_level(indexed: sessionmaker[Session]) -> None:
    with indexed() as session:
        repo = QueryRepository(session)
        series = repo.find_series({"StudyInstanceUID": uid(1)})
        assert [(s.SeriesInstanceUID, s.Modality, s.SeriesNumber,
                 s.NumberOfSeriesRelatedInstances) for s in series] == [
            (uid(1, 1), "CR", 1, 2), (uid(1, 2), "DX", 2, 1)]
        assert [s.SeriesInstanceUID for s in repo.find_series(
            {"StudyInstanceUID": uid(1), "Modality": "DX"})] == [uid(1, 2)]
        assert [s.BodyPartExamined for s in repo.find_series(
            {"BodyPartExamined": "H*"})] == ["HAND", "HIP"]
        assert [s.SeriesInstanceUID for s in repo.find_series({"SeriesNumber": "2"})] == \
            [uid(1, 2)]
        with pytest.raises(InvalidQuery):
            repo.find_series({"SeriesNumber": "two"})


def test_instance_level(indexed: sessionmaker[Session]) -> None:
    with indexed() as session:
        repo = QueryRepository(session)
        found = repo.find_instances({"StudyInstanceUID": uid(1),
                                     "SeriesInstanceUID": uid(1, 1)})
        assert [(i.SOPInstanceUID, i.InstanceNumber, i.Rows, i.Columns) for i in found] == [
            (uid(1, 1, 1), 1, 512, 512), (uid(1, 1, 2), 2, 512, 512)]
        assert found[0].relpath == f"{uid(1)}/{uid(1, 1)}/{uid(1, 1, 1)}.dcm"
        assert found[0].SOPClassUID == "1.2.840.10008.5.1.4.1.1.1"
        listed = repo.find_instances({"SOPInstanceUID": f"{uid(2, 1, 1)}\\{uid(3, 1, 1)}"})
        assert sorted(i.SOPInstanceUID for i in listed) == [uid(2, 1, 1), uid(3, 1, 1)]
        assert len(repo.find_instances({"InstanceNumber": "1"})) == 4
        assert len(repo.find_instances({}, limit=2)) == 2
