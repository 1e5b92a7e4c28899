"""One bad view never sinks a study, and out-of-spec values never fail a job or reach a
log: the pipeline isolates a view the model fails on, repairs or drops patient/study
values the writers reject, and records failures without quoting data."""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from models.registry import FractureModel
from storage import Instance, InstanceSource, Job, JobRepository, JobState
from tests.dicom_checks import dciodvfy_errors
from tests.workers.conftest import ingest_file, settle_job
from tests.workers.test_pipeline import _study_files, tiny_checkpoint
from workers.pipeline import ModelCache, PipelineOptions, StudyPipeline
from workers.routing import Route

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SECRET = "Zyxwvut^Qponmlk"  # a patient name that must never reach a log or an error
BIRTH_DATE = "19400305"
QUOTE = f"cannot use {SECRET} born {BIRTH_DATE}"  # what a library error might say


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", threshold=1e9)


def _rewrite(path: Path, out: Path, **attributes: object) -> Path:
    ds = pydicom.dcmread(path)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.save_as(out, enforce_file_format=True)
    return out


def _texts(ds: pydicom.Dataset) -> list[str]:
    """Every Text Value of an SR content tree, and an image's comments."""
    out = [str(ds.ImageComments)] if "ImageComments" in ds else []
    for item in ds.get("ContentSequence", []):
        if "TextValue" in item:
            out.append(str(item.TextValue))
        out += _texts(item)
    return out


def _pipeline(store, sessions, checkpoint: Path) -> StudyPipeline:
    options = PipelineOptions(routes=(Route(model=str(checkpoint)),), destinations=("pacs",))
    return StudyPipeline(store, sessions, options, ModelCache(device="cpu"))


def test_a_view_the_model_fails_on_is_listed_and_the_good_view_gets_its_result(
        node_storage, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    store, sessions = node_storage
    good, bad = _study_files(tmp_path)[:2]
    ingest_file(store, sessions, good)
    bad_ds = pydicom.dcmread(bad)
    bad_uid = str(bad_ds.SOPInstanceUID)
    ingest_file(store, sessions, bad)
    good_ds = pydicom.dcmread(good)
    original = FractureModel.predict

    def flaky(self, views, **kwargs):  # the model raises on the bad view only
        if any(v is bad_view.get("view") for v in views):
            raise RuntimeError(f"model exploded on {SECRET}")
        return original(self, views, **kwargs)

    bad_view: dict[str, object] = {}
    original_prepare = FractureModel.prepare

    def prepare(self, ds):
        view = original_prepare(self, ds)
        if str(ds.SOPInstanceUID) == bad_uid:
            bad_view["view"] = view
        return view

    monkeypatch.setattr(FractureModel, "prepare", prepare)
    monkeypatch.setattr(FractureModel, "predict", flaky)
    job_id = settle_job(sessions)
    with caplog.at_level(logging.DEBUG):
        assert _pipeline(store, sessions, checkpoint).run(job_id) == "done"
    assert SECRET not in caplog.text

    with sessions() as session:
        produced = session.scalars(select(Instance).where(
            Instance.source == InstanceSource.PRODUCED)).all()
        result = JobRepository(session).result_for(job_id)
    assert sorted(i.sop_class_uid for i in produced) == [SC_CLASS, SR_CLASS]
    assert result is not None and (result.views_analysed, result.views_total) == (1, 2)
    assert "failed: the model raised RuntimeError" in (result.reason or "")
    (model,) = result.summary["models"].values()
    assert set(model["states"]) == {str(good_ds.SOPInstanceUID)}
    assert [(s["sop_instance_uid"], s["state"]) for s in result.summary["skipped"]] == [
        (bad_uid, "failed")]
    sr_row = next(i for i in produced if i.sop_class_uid == SR_CLASS)
    sr = pydicom.dcmread(store.path_of(sr_row.relpath))
    comments = _texts(sr)
    assert any(bad_uid in text and "failed" in text for text in comments), comments


def test_out_of_spec_patient_and_study_values_never_fail_a_job_or_reach_a_log(
        node_storage, checkpoint: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    store, sessions = node_storage
    files = _study_files(tmp_path)
    for index, path in enumerate(files):
        ingest_file(store, sessions, _rewrite(
            path, tmp_path / f"odd-{index}.dcm", PatientBirthDate="1901-02-03",
            PatientName=SECRET + "\x01", StudyDate="2024/13/45"))
    job_id = settle_job(sessions)
    with caplog.at_level(logging.DEBUG):
        assert _pipeline(store, sessions, checkpoint).run(job_id) == "done"
    for value in ("1901-02-03", "2024/13/45", SECRET):
        assert value not in caplog.text
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job.state == JobState.DONE and job.last_error is None
        produced = session.scalars(select(Instance).where(
            Instance.source == InstanceSource.PRODUCED)).all()
    assert len(produced) == len(files) + 1
    for row in produced:
        path = store.path_of(row.relpath)
        assert dciodvfy_errors(path) == []
        ds = pydicom.dcmread(path)
        assert ds.PatientBirthDate == "19010203"  # the plain intent, repaired
        assert ds.StudyDate in ("", None)  # no date to recover: left empty
        text = " ".join(_texts(ds))
        assert "Source attributes out of spec" in text
        assert "PatientBirthDate" in text and "StudyDate" in text


def test_a_failed_run_records_where_not_what(node_storage, checkpoint: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    store, sessions = node_storage
    for path in _study_files(tmp_path):
        ingest_file(store, sessions, path)
    job_id = settle_job(sessions)

    def explode(*_args, **_kwargs):
        raise ValueError(QUOTE)

    monkeypatch.setattr("workers.pipeline.build_sr", explode)
    from workers.pipeline import JobFailed

    with caplog.at_level(logging.DEBUG), pytest.raises(JobFailed):
        _pipeline(store, sessions, checkpoint).run(job_id)
    assert SECRET not in caplog.text and BIRTH_DATE not in caplog.text
    with sessions() as session:
        error = session.get(Job, job_id).last_error or ""
    assert error.startswith("ValueError in ") and SECRET not in error


def test_a_view_over_the_pixel_cap_is_not_analysed_and_never_decoded(
        node_storage, checkpoint: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    store, sessions = node_storage
    files = _study_files(tmp_path)
    for path in files:
        ingest_file(store, sessions, path)
    big = pydicom.dcmread(files[0], stop_before_pixels=True)
    cap = int(big.Rows) * int(big.Columns) - 1  # every view of this study is over it
    decoded: list[str] = []
    original_prepare = FractureModel.prepare

    def prepare(self, ds):
        decoded.append(str(ds.SOPInstanceUID))
        return original_prepare(self, ds)

    monkeypatch.setattr(FractureModel, "prepare", prepare)
    options = PipelineOptions(routes=(Route(model=str(checkpoint)),), max_pixels=cap)
    pipeline = StudyPipeline(store, sessions, options, ModelCache(device="cpu"))
    job_id = settle_job(sessions)
    assert pipeline.run(job_id) == "done"
    assert decoded == []
    with sessions() as session:
        result = JobRepository(session).result_for(job_id)
    assert result is not None and result.fracture_probability is None
    assert (result.reason or "").startswith("too large: ")
    assert f"over storage.max_pixels {cap}" in (result.reason or "")
