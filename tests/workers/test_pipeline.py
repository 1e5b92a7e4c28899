"""The study pipeline in-process: views in, SR + SCs stored as produced, exports queued."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file
from sqlalchemy import select

from models.domain import fit_domain
from models.nets import GlobalPoolClassifier
from models.registry import Finding, ModelMetadata, ViewPrediction, save_checkpoint
from models.synth import generate_dataset, read_manifest
from storage import (
    Export,
    Instance,
    InstanceMeta,
    InstanceSource,
    Job,
    JobRepository,
    JobState,
    StudyRepository,
    ingest,
)
from tests.dicom_checks import dciodvfy_errors
from tests.workers.conftest import ingest_file, settle_job
from workers.pipeline import (
    JobFailed,
    ModelCache,
    PipelineOptions,
    StudyPipeline,
    reported_findings,
)
from workers.routing import Route, Routing, ViewHeader, route_for

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


ARCH = {"num_classes": 2, "backbone": "resnet18", "stages": 1, "pooling": "lse",
        "lse_r": 10.0, "transition_channels": 8, "in_channels": 1}
SCOPE = {"body_parts": ["HIP", "PELVIS", "WRIST"], "view_positions": []}


def tiny_checkpoint(path: Path, *, threshold: float | None,
                    scope: dict[str, list[str]] | None = None) -> Path:
    """A tiny untrained model; ``threshold`` None leaves it uncalibrated, else its domain
    check lets views pass up to that score (1e9: every view, 0: none)."""
    torch.manual_seed(0)
    meta = ModelMetadata(model_type="global_pool", name="tiny-test", version="0.0.1",
                         classes=("normal", "fracture"), input_size=64, architecture=ARCH,
                         synthetic_demo=True, intended_use="test",
                         scope=SCOPE if scope is None else scope)
    domain = None
    if threshold is not None:
        rng = np.random.default_rng(0)
        dims = 2 * 64  # mean and spread of the 64 channels of a one-stage ResNet-18
        stats = fit_domain(rng.normal(size=(40, dims)), rng.integers(0, 2, 40),
                           rng.normal(size=(10, dims)), layer="features")
        domain = dataclasses.replace(stats, threshold=threshold)
    save_checkpoint(path, GlobalPoolClassifier(**ARCH), meta, domain=domain)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", threshold=1e9)


def _study_files(tmp_path: Path) -> list[Path]:
    root = tmp_path / "synth"
    generate_dataset(root, studies=3, seed=5, size=192)
    entries = read_manifest(root)
    uid = entries[0]["study_instance_uid"]
    return [root / e["path"] for e in entries if e["study_instance_uid"] == uid]


def test_pipeline_writes_sr_and_scs_and_queues_exports(
    node_storage, checkpoint: Path, tmp_path: Path
) -> None:
    store, sessions = node_storage
    files = _study_files(tmp_path)
    metas = [ingest_file(store, sessions, f) for f in files]
    # An undecodable view of the same study: reported and skipped, not fatal.
    broken = pydicom.dcmread(files[0])
    broken.SOPInstanceUID = "1.2.826.0.1.3680043.99.1"
    broken.PixelData = broken.PixelData[: len(broken.PixelData) // 3]
    buffer = io.BytesIO()
    broken.save_as(buffer, enforce_file_format=True)
    ingest(store, sessions, buffer.getvalue(), InstanceMeta.read(buffer.getvalue()))
    job_id = settle_job(sessions)

    options = PipelineOptions(routes=(Route(model=str(checkpoint)),), destinations=("pacs",))
    pipeline = StudyPipeline(store, sessions, options, ModelCache(device="cpu"))
    assert pipeline.run(job_id) == "done"
    assert pipeline.run(job_id) == "skipped"  # idempotent: a duplicate wake-up does nothing

    with sessions() as session:
        job = session.get(Job, job_id)
        assert job.state == JobState.DONE
        result = session.scalars(select(Job).where(Job.id == job_id)).one()
        produced = session.scalars(select(Instance).where(
            Instance.source == InstanceSource.PRODUCED)).all()
        exports = session.scalars(select(Export)).all()
        summary = JobRepository(session).result_for(job_id).summary
    assert result is not None
    classes = sorted(i.sop_class_uid for i in produced)
    assert classes == [SC_CLASS] * len(files) + [SR_CLASS]
    assert {e.destination for e in exports} == {"pacs"} and len(exports) == len(produced)
    assert [s["sop_instance_uid"] for s in summary["skipped"]] == ["1.2.826.0.1.3680043.99.1"]
    assert "cannot decode" in summary["skipped"][0]["reason"]
    (model,) = summary["models"].values()
    assert set(model["states"].values()) <= {"positive", "negative"}
    assert set(model["states"]) == {m.sop_instance_uid for m in metas}

    sr = next(i for i in produced if i.sop_class_uid == SR_CLASS)
    sr_ds = pydicom.dcmread(store.path_of(sr.relpath))
    evidence = {ref.ReferencedSOPInstanceUID
                for st in sr_ds.CurrentRequestedProcedureEvidenceSequence
                for se in st.ReferencedSeriesSequence for ref in se.ReferencedSOPSequence}
    assert evidence == {m.sop_instance_uid for m in metas}
    for item in produced:
        assert dciodvfy_errors(store.path_of(item.relpath)) == []


def test_a_run_that_dies_before_completing_leaves_nothing_and_the_retry_delivers(
    node_storage, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Results are indexed in the transaction that completes the job: a run that fails
    there leaves no result row, no indexed object and no file; the retry writes them."""
    store, sessions = node_storage
    for f in _study_files(tmp_path):
        ingest_file(store, sessions, f)
    job_id = settle_job(sessions)
    options = PipelineOptions(routes=(Route(model=str(checkpoint)),))
    pipeline = StudyPipeline(store, sessions, options, ModelCache(device="cpu"))

    original = JobRepository.complete
    monkeypatch.setattr(JobRepository, "complete",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("worker died")))
    with pytest.raises(JobFailed) as failed:
        pipeline.run(job_id)
    assert failed.value.retry

    def produced() -> list[str]:
        with sessions() as session:
            return sorted(i.sop_instance_uid for i in session.scalars(select(Instance).where(
                Instance.source == InstanceSource.PRODUCED)))

    assert produced() == []
    assert not any(".tmp-" in p.name for p in store.root.rglob("*"))
    monkeypatch.setattr(JobRepository, "complete", original)
    assert pipeline.run(job_id) == "done"
    first = produced()
    assert first
    with sessions() as session:
        job = session.get(Job, job_id)
        assert (job.state, job.attempts, job.failures) == (JobState.DONE, 2, 1)
        rows = session.scalars(select(Instance).where(
            Instance.source == InstanceSource.PRODUCED)).all()
        assert {r.job_id for r in rows} == {job_id}


def _demo_scope(ref: str) -> tuple[str, ...]:
    return ("HIP", "PELVIS", "WRIST") if ref == "demo" else ()


def test_routing_never_processes_reports_or_own_output() -> None:
    cr = "1.2.840.10008.5.1.4.1.1.1"
    view = ViewHeader("1.2.3", cr, "WRIST", "PA", "R", produced=False)
    assert route_for(view, [], _demo_scope).route is not None
    sr = route_for(ViewHeader("1.2.3", SR_CLASS, "WRIST", "", "", False), [], _demo_scope)
    assert sr.route is None and sr.reason == ""  # never an image: not even "not analysed"
    own = route_for(ViewHeader("1.2.3", cr, "WRIST", "PA", "R", produced=True), [], _demo_scope)
    assert own.route is None and own.reason == ""
    hips_only = [Route(name="hips", body_parts=["Hüfte"])]
    assert route_for(view, hips_only, _demo_scope).reason == "no route matches"
    hip = ViewHeader("1.2.4", cr, "HIP", "AP", "L", produced=False)
    assert route_for(hip, hips_only, _demo_scope).route.name == "hips"
    rg3 = pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm"), stop_before_pixels=True)
    assert rg3.SOPClassUID == cr


def test_default_routing_keeps_each_model_inside_its_scope() -> None:
    cr = "1.2.840.10008.5.1.4.1.1.1"
    chest = ViewHeader("1.2.5", cr, "CHEST", "PA", "", produced=False)
    unknown = ViewHeader("1.2.6", cr, "UNKNOWN", "AP", "", produced=False)
    assert route_for(chest, [], _demo_scope) == Routing(None, "out of scope (CHEST)")
    assert route_for(unknown, [], _demo_scope) == Routing(None,
                                                          "out of scope (body part unknown)")
    # A route without body parts is still held to the model's scope ...
    any_view = [Route(name="all", model="demo")]
    assert route_for(chest, any_view, _demo_scope).reason == "out of scope (CHEST)"
    # ... one that names body parts is the operator's choice, followed as written.
    forced = [Route(name="forced", model="demo", body_parts=["CHEST"])]
    assert route_for(chest, forced, _demo_scope).route.name == "forced"
    # A model that records no scope analyses nothing unless a route names body parts.
    other = [Route(name="other", model="/models/old.pt")]
    assert "no anatomy" in route_for(chest, other, _demo_scope).reason


def _value_types(items) -> list[str]:
    found = []
    for item in items:
        found.append(item.ValueType)
        if "ContentSequence" in item:
            found.extend(_value_types(item.ContentSequence))
    return found


def test_views_called_negative_carry_no_candidate_regions(
    node_storage, checkpoint: Path, tmp_path: Path
) -> None:
    store, sessions = node_storage
    for f in _study_files(tmp_path):
        ingest_file(store, sessions, f)
    job_id = settle_job(sessions)
    # A threshold no view reaches: every view is negative, so no boxes or points are drawn.
    options = PipelineOptions(routes=(Route(model=str(checkpoint)),), threshold=0.999)
    assert StudyPipeline(store, sessions, options, ModelCache(device="cpu")).run(job_id) == "done"
    with sessions() as session:
        sr = session.scalars(select(Instance).where(Instance.sop_class_uid == SR_CLASS)).one()
        summary = JobRepository(session).result_for(job_id).summary
    types = _value_types(pydicom.dcmread(store.path_of(sr.relpath)).ContentSequence)
    assert "SCOORD" not in types
    assert all(p < 0.999 for m in summary["models"].values() for p in m["views"].values())


def _prediction(p: float, n: int) -> ViewPrediction:
    findings = tuple(Finding(score=0.9 - 0.1 * k, point=(float(k), 0.0),
                             box=(float(k), 0.0, float(k), 0.0)) for k in range(n))
    return ViewPrediction(probabilities={"normal": 1 - p, "fracture": p},
                          fracture_probability=p, heatmap=torch.zeros(2, 2).numpy(),
                          findings=findings)


def test_a_positive_view_reports_only_its_strongest_findings() -> None:
    shown = reported_findings([_prediction(0.9, 6), _prediction(0.2, 4), _prediction(0.7, 1)],
                              threshold=0.5, max_findings=3)
    assert [len(p.findings) for p in shown] == [3, 0, 1]
    assert [f.score for f in shown[0].findings] == pytest.approx([0.9, 0.8, 0.7])
    assert [p.fracture_probability for p in shown] == [0.9, 0.2, 0.7]  # scores untouched
    with pytest.raises(ValueError, match="max_findings"):
        reported_findings([], threshold=0.5, max_findings=-1)


def test_max_findings_zero_marks_no_regions(node_storage, checkpoint: Path, tmp_path: Path) -> None:
    store, sessions = node_storage
    for f in _study_files(tmp_path):
        ingest_file(store, sessions, f)
    job_id = settle_job(sessions)
    # Every view positive, but the site reports probabilities only: no boxes or points.
    options = PipelineOptions(routes=(Route(model=str(checkpoint)),), threshold=1e-6,
                              max_findings=0)
    assert StudyPipeline(store, sessions, options, ModelCache(device="cpu")).run(job_id) == "done"
    with sessions() as session:
        sr = session.scalars(select(Instance).where(Instance.sop_class_uid == SR_CLASS)).one()
    types = _value_types(pydicom.dcmread(store.path_of(sr.relpath)).ContentSequence)
    assert "SCOORD" not in types


def _comments(sr: pydicom.Dataset) -> list[str]:
    found = []

    def walk(items) -> None:
        for item in items:
            if item.ValueType == "TEXT":
                found.append(str(item.TextValue))
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(sr.ContentSequence)
    return found


def test_views_outside_the_training_domain_are_not_analysed(
    node_storage, tmp_path: Path
) -> None:
    store, sessions = node_storage
    files = _study_files(tmp_path)
    for f in files:
        ingest_file(store, sessions, f)
    job_id = settle_job(sessions)
    refuse_all = tiny_checkpoint(tmp_path / "strict.pt", threshold=0.0)
    options = PipelineOptions(routes=(Route(model=str(refuse_all)),), threshold=1e-6)
    assert StudyPipeline(store, sessions, options, ModelCache(device="cpu")).run(job_id) == "done"

    with sessions() as session:
        result = JobRepository(session).result_for(job_id)
        produced = session.scalars(select(Instance).where(
            Instance.source == InstanceSource.PRODUCED)).all()
        study = session.get(Job, job_id).study
        assert study.priority is None  # nothing to triage on
        state, reason = result.state, result.reason
        counts = (result.views_analysed, result.views_total)
        probability, positive = result.fracture_probability, result.positive
    assert (state, probability, positive) == ("not_analysed", None, None)
    assert reason == "outside the model's training domain"  # per-view scores left out
    assert counts == (0, len(files))

    sr_row = next(i for i in produced if i.sop_class_uid == SR_CLASS)
    sr = pydicom.dcmread(store.path_of(sr_row.relpath))
    types = _value_types(sr.ContentSequence)
    assert "NUM" not in types and "SCOORD" not in types  # no probability, no region
    comments = _comments(sr)
    assert f"Views analysed: 0 of {len(files)}." in comments
    assert "Study not analysed: outside the model's training domain." in comments
    assert sum("outside the model's training domain (score" in c for c in comments) == len(files)

    scs = [i for i in produced if i.sop_class_uid == SC_CLASS]
    assert len(scs) == len(files)
    for item in scs + [sr_row]:
        assert dciodvfy_errors(store.path_of(item.relpath)) == []
    for item in scs:
        sc = pydicom.dcmread(store.path_of(item.relpath))
        rgb = sc.pixel_array.astype(int)
        view = rgb[-int(sc.Rows) // 2:]  # below the banner: the view itself
        # Grey everywhere: no heatmap colour and no box drawn on a view not analysed.
        assert np.array_equal(view[..., 0], view[..., 1])
        assert np.array_equal(view[..., 1], view[..., 2])
        assert "not analysed" in sc.DerivationDescription


@pytest.mark.parametrize("allow", [False, True])
def test_an_uncalibrated_model_answers_only_when_the_config_allows(
    node_storage, tmp_path: Path, allow: bool
) -> None:
    store, sessions = node_storage
    for f in _study_files(tmp_path):
        ingest_file(store, sessions, f)
    uncalibrated = tiny_checkpoint(tmp_path / "raw.pt", threshold=None)
    options = PipelineOptions(routes=(Route(model=str(uncalibrated)),),
                              allow_uncalibrated=allow)
    job_id = settle_job(sessions)
    assert StudyPipeline(store, sessions, options, ModelCache(device="cpu")).run(job_id) == "done"
    with sessions() as session:
        result = JobRepository(session).result_for(job_id)
        state, probability, reason = result.state, result.fracture_probability, result.reason
        checks = list(result.summary["models"]["tiny-test 0.0.1"]["domain"].values())
    assert checks and all(not c["calibrated"] and c["in_domain"] == allow for c in checks)
    if allow:
        assert state == "analysed" and probability is not None and reason is None
    else:
        assert (state, probability) == ("not_analysed", None)
        assert "no domain calibration" in reason


def _triage_in_sr(sr: pydicom.Dataset) -> tuple[str, list[str]]:
    (evaluations,) = [i for i in sr.ContentSequence
                      if i.ConceptNameCodeSequence[0].CodeValue == "C0034375"]
    (code,) = [i.ConceptCodeSequence[0].CodeValue for i in evaluations.ContentSequence
               if i.ConceptNameCodeSequence[0].CodeValue == "TRIAGE-PRIORITY"]
    comments = [i.TextValue for i in evaluations.ContentSequence if i.ValueType == "TEXT"]
    return code, comments


@pytest.mark.parametrize(("stat", "points", "expected"), [
    (False, (0.0, 0.0), "HIGH"),  # every probability is at or above both points
    (False, (0.0, 1.0), "MEDIUM"),
    (False, (1.0, 1.0), "LOW"),  # the tiny model never says 1.0
    (True, (1.0, 1.0), "HIGH"),  # sent STAT: the low result does not lower it
])
def test_the_result_sets_the_triage_priority_and_the_sr_states_it(
        node_storage, checkpoint: Path, tmp_path: Path, stat: bool,
        points: tuple[float, float], expected: str) -> None:
    store, sessions = node_storage
    files = _study_files(tmp_path)
    if stat:
        first = pydicom.dcmread(files[0])
        first.RequestedProcedurePriority = "STAT"
        first.save_as(files[0])
    for path in files:
        ingest_file(store, sessions, path)
    job_id = settle_job(sessions)
    doubt, high = points
    options = PipelineOptions(routes=(Route(model=str(checkpoint)),),
                              doubt_threshold=doubt, high_threshold=high)
    assert StudyPipeline(store, sessions, options, ModelCache(device="cpu")).run(job_id) == "done"

    with sessions() as session:
        study = session.get(Job, job_id).study
        history = StudyRepository(session).priority_history(study.id)
        sr = next(i for i in session.scalars(select(Instance).where(
            Instance.source == InstanceSource.PRODUCED)) if i.sop_class_uid == SR_CLASS)
        assert study.triage_priority == expected
        assert (history[-1].source, history[-1].priority, history[-1].job_id) == \
            ("result", expected, job_id)
        assert history[-1].actor.startswith("tiny-test 0.0.1")
        assert [e.source for e in history] == (["sender", "result"] if stat else ["result"])
        sr_path = store.path_of(sr.relpath)
    code, comments = _triage_in_sr(pydicom.dcmread(sr_path))
    assert code == f"TRIAGE-{expected.replace('_', '-')}"
    assert any(c.startswith(f"Triage priority {expected}: fracture probability ")
               for c in comments), comments
    if stat:
        assert any("raised to HIGH by the sender: Requested Procedure Priority STAT" in c
                   for c in comments)
    assert dciodvfy_errors(sr_path) == []


def test_a_job_that_fails_for_good_marks_the_study_failed(
        node_storage, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, sessions = node_storage
    for path in _study_files(tmp_path):
        ingest_file(store, sessions, path)
    job_id = settle_job(sessions)
    options = PipelineOptions(routes=(Route(model=str(checkpoint)),))
    pipeline = StudyPipeline(store, sessions, options, ModelCache(device="cpu"))

    def crash(*_args: object, **_kwargs: object) -> str:
        raise RuntimeError("model crashed")

    monkeypatch.setattr(pipeline, "_process", crash)
    for attempt in range(3):
        with pytest.raises(JobFailed) as failed:
            pipeline.run(job_id)
        assert failed.value.retry is (attempt < 2)
    with sessions() as session:
        study = session.get(Job, job_id).study
        assert study.triage_priority == "FAILED"
        (event,) = StudyRepository(session).priority_history(study.id)
        assert "the analysis failed" in event.reason and "RuntimeError" in event.reason
