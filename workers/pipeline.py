"""The study pipeline: one job in, a study result plus DICOM results stored and queued out.

``StudyPipeline.run(job_id)`` claims the job (a conditional update: a second worker or a
duplicate wake-up message gets nothing) and renews its short lease by heartbeat while it
runs (a dead worker's job is re-dispatched once the lease lapses), selects and routes the
study's views, preprocesses and infers through the model registry, aggregates per anatomic
site then per study (seed 004 §6.2.2), and writes an SR (naming the SR it replaces in its
Predecessor Documents Sequence) and one Secondary Capture per processed view. The files
are staged first; then one transaction completes the job, indexes the results as
``produced`` instances of the job, marks the study's earlier results superseded (hidden from
queries, their unsent exports cancelled), and queues the exports, plus an IHE IOCM
rejection note for destinations with ``withdraw: iocm`` that received the earlier ones. A
job superseded while it ran therefore leaves nothing behind: one current result per study.

A view is analysed only when it is inside a model's scope (:mod:`workers.routing`) and
passes the model's domain check (:mod:`models.domain`); every other view is "not analysed"
with its reason, and a study with no analysed view gets a ``not_analysed`` result with no
probability. A view that cannot be decoded is reported in the result and skipped. Result
UIDs derive from the job, so a retried job reproduces the same objects.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import re
import threading
import time
import traceback
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy.orm import Session, sessionmaker

from models.aggregation import StudyAggregate, aggregate_learned, aggregate_study
from models.findings import reported_findings as shown_findings
from models.preprocess import PreparedView, body_part_of
from models.registry import DEMO_WEIGHTS, FractureModel, ViewPrediction, load_model
from storage import (
    BatchRepository,
    ExportRepository,
    FileStore,
    InstanceMeta,
    InstanceRepository,
    InstanceSource,
    JobRepository,
    JobState,
    NotificationRepository,
    PrioritySource,
    StagedFile,
    StudyRepository,
    TriagePriority,
    floored,
    from_result,
    index_staged,
    keep_values_out_of_logs,
    run_write,
    too_large,
)
from storage._db import utcnow
from storage.repositories import Control, ControlRepository

from .batch_options import BatchOptions
from .metrics import instruments
from .results import (
    AlgorithmInfo,
    SkippedView,
    StudyResult,
    ViewResult,
    build_rejection_note,
    build_secondary_captures,
    build_sr,
)
from .routing import RouteLike, ViewHeader, route_for, site_of

__all__ = ["JobFailed", "ModelCache", "PipelineOptions", "StudyPipeline", "not_analysed_reason",
           "reported_findings"]

log = logging.getLogger(__name__)


class _GroupFailed(Exception):
    """Every view routed to one model failed; they are listed as failed views."""


def _failure_text(exc: BaseException) -> str:
    """What a failed run records: the exception type and where it was raised, without its
    message (which may quote patient data)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" in {Path(frames[-1].filename).name}:{frames[-1].lineno} ({frames[-1].name})" \
        if frames else ""
    return f"{type(exc).__name__}{where}"


class JobFailed(RuntimeError):
    """A job run failed; ``retry`` says whether the job was queued again."""

    def __init__(self, job_id: int, message: str, *, retry: bool) -> None:
        super().__init__(f"job {job_id}: {message}")
        self.job_id = job_id
        self.retry = retry


@dataclass(frozen=True)
class _Claim:
    attempt: int
    study_uid: str
    requested: str | None  # the sender's urgency (storage.triage)
    batch: BatchOptions | None  # the batch the job was made for; None: a live study


@dataclass(frozen=True)
class _Delivery:
    """Where one job's results go: the destinations (and those that get a rejection note
    for what they received before), whether a HIGH result owes a webhook call, and a
    folder (a batch's ``--deliver folder:PATH``)."""

    destinations: tuple[str, ...]
    withdraw: tuple[str, ...]
    notify_high: bool
    folder: Path | None = None


@dataclass(frozen=True)
class PipelineOptions:
    routes: Sequence[RouteLike] = ()
    aggregation: str = "max"
    threshold: float = 0.5
    max_findings: int = 3  # candidate regions reported per positive view, best first
    destinations: tuple[str, ...] = ()
    # Destinations that get an IOCM rejection note for a superseded result they received.
    withdraw_destinations: tuple[str, ...] = ()
    lease_seconds: float = 30.0
    batch_size: int = 8
    # Views with more pixels (Rows x Columns x Frames x Samples) are "not analysed: too
    # large" and never decoded (storage.max_pixels).
    max_pixels: int = 64 * 1024 * 1024
    # A model without domain calibration is refused ("not analysable") unless this is set;
    # then every view counts as inside its domain (pipeline.allow_uncalibrated).
    allow_uncalibrated: bool = False
    # Operating points of the triage priority (triage.high_threshold, doubt_threshold).
    high_threshold: float = 0.8
    doubt_threshold: float = 0.3
    # Queue a webhook call for each study a result makes HIGH (webhook.url is set).
    notify_high: bool = False


def reported_findings(predictions: Sequence[ViewPrediction], threshold: float,
                      max_findings: int) -> list[ViewPrediction]:
    """The predictions with the findings a reader is shown
    (:func:`models.findings.reported_findings`: none on a negative or unanalysed view, at
    most ``max_findings`` on a positive one)."""
    if max_findings < 0:
        raise ValueError(f"max_findings must be >= 0, got {max_findings}")
    return [dataclasses.replace(p, findings=shown_findings(
        p.findings, p.fracture_probability, threshold, max_findings)) for p in predictions]


_SCORE_DETAIL = re.compile(r" \(score [^)]*\)")


def not_analysed_reason(reasons: Sequence[str]) -> str:
    """One reason for a study from its views' reasons: distinct ones in order, the per-view
    domain scores left out when several views share a reason."""
    distinct = list(dict.fromkeys(r for r in reasons if r))
    if len(distinct) > 1:
        distinct = list(dict.fromkeys(_SCORE_DETAIL.sub("", r) for r in distinct))
    return "; ".join(distinct) or "no radiograph (CR/DX) to analyse"


def _view_state(view: ViewResult, threshold: float) -> str:
    """``positive``, ``negative`` or ``not_analysed``: the words of the SR and the table."""
    p = view.prediction.fracture_probability
    if p is None:
        return "not_analysed"
    return "positive" if p >= threshold else "negative"


class ModelCache:
    """Loaded models by reference (``"demo"`` or a checkpoint path), loaded once."""

    def __init__(self, *, device: str | None = None) -> None:
        self._device = device
        self._models: dict[str, FractureModel] = {}
        self._lock = threading.Lock()

    def get(self, ref: str) -> FractureModel:
        with self._lock:
            if ref not in self._models:
                path = DEMO_WEIGHTS if ref == "demo" else Path(ref)
                self._models[ref] = load_model(path, device=self._device)
            return self._models[ref]

    def scope_of(self, ref: str) -> tuple[str, ...]:
        """The body parts model ``ref`` was trained for (empty when it records none)."""
        return self.get(ref).metadata.body_parts


@dataclass
class _Stored:
    sop_instance_uid: str
    relpath: str
    sop_class_uid: str
    produced: bool


_SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
_KOS_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"


class _Heartbeat:
    """Renews a running job's lease every ``lease_seconds / 3`` until stopped, so a live
    worker keeps its job and a dead one's lease lapses within ``lease_seconds``."""

    def __init__(self, sessions: sessionmaker[Session], job_id: int, attempt: int,
                 lease_seconds: float) -> None:
        self._sessions = sessions
        self._job_id = job_id
        self._attempt = attempt
        self._lease = lease_seconds
        self._stop = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._loop, name=f"pacs-node-lease-{job_id}",
                                        daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self._lease / 3):
            try:
                renewed = run_write(self._sessions, lambda s: JobRepository(s).renew_lease(
                    self._job_id, lease_seconds=self._lease, attempt=self._attempt))
            except Exception:  # noqa: BLE001 - the next beat retries; the lease is long enough
                log.warning("job %s: lease renewal failed", self._job_id, exc_info=True)
                continue
            if not renewed:
                # Superseded or taken over: the completion's fence will discard this run.
                self.lost = True
                return


@dataclass
class _Group:
    route: RouteLike
    views: list[tuple[ViewHeader, pydicom.Dataset, PreparedView]] = field(default_factory=list)


def _write_to_folder(folder: Path, staged: Sequence[tuple[InstanceMeta, StagedFile]]) -> None:
    """Copy a job's results into ``folder``/study/series/SOP.dcm (a batch's
    ``--deliver folder:PATH``), each through a temp file, fsync and rename: a retried job
    writes the same names (its UIDs derive from the job), so nothing appears twice."""
    for meta, file in staged:
        target = (folder / meta.study_instance_uid / meta.series_instance_uid
                  / f"{meta.sop_instance_uid}.dcm")
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.tmp")
        with open(file.temp_path, "rb") as source, open(temp, "wb") as out:
            while chunk := source.read(1 << 20):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)


def _to_bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class StudyPipeline:
    """Runs jobs against the store and index it is given (nothing global)."""

    def __init__(self, store: FileStore, sessions: sessionmaker[Session],
                 options: PipelineOptions, models: ModelCache) -> None:
        self.store = store
        self.sessions = sessions
        self.options = options
        self.models = models
        keep_values_out_of_logs()

    def run(self, job_id: int) -> str:
        """Process job ``job_id``; returns ``"done"``, ``"skipped"`` (not claimable: done,
        superseded, held by another worker) or ``"discarded"`` (superseded while running).

        Raises:
            JobFailed: the run failed; the job is queued again while attempts remain.
        """
        claimed = run_write(self.sessions, lambda s: self._claim(s, job_id))
        if claimed is None:
            return "skipped"
        attempt = claimed.attempt
        try:
            with _Heartbeat(self.sessions, job_id, attempt, self.options.lease_seconds):
                return self._process(job_id, claimed)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded on the job
            message = _failure_text(exc)
            # The exception's text can quote data element values (a patient name, a date):
            # the log and the job row get its type and where it was raised, never its text.
            log.error("job %s failed on attempt %s: %s\n%s", job_id, attempt, message,
                      "".join(traceback.format_tb(exc.__traceback__)).rstrip())

            def fail(s: Session) -> bool:
                job = JobRepository(s).fail(job_id, message, retry=True, attempt=attempt)
                if job is not None and job.state == JobState.FAILED:  # for good
                    StudyRepository(s).set_triage(
                        job.study_id, TriagePriority.FAILED, source=PrioritySource.RESULT,
                        reason=f"the analysis failed: {message}"[:300], actor="pacs-node",
                        job_id=job_id)
                return job is not None and job.state == JobState.QUEUED

            retry = run_write(self.sessions, fail)
            raise JobFailed(job_id, message, retry=retry) from exc

    def _claim(self, session: Session, job_id: int) -> _Claim | None:
        if ControlRepository(session).paused(Control.PROCESSING):
            return None  # an admin paused processing: the job waits, queued, for resume
        jobs = JobRepository(session)
        queued = jobs.get(job_id)
        batch = None
        if queued is not None and queued.batch_id is not None:
            row = BatchRepository(session).get(queued.batch_id)
            batch = BatchOptions.of(row) if row is not None else None
            if batch is not None and not batch.may_run(utcnow()):
                # Paused, or outside its off-peak window: the job waits, queued; the batch
                # runner wakes it when the batch may run again.
                return None
        job = jobs.claim(job_id, lease_seconds=self.options.lease_seconds)
        if job is None:
            return None
        study = StudyRepository(session).get_by_id(job.study_id)
        if study is None:
            return None
        return _Claim(job.attempts, study.study_instance_uid, study.requested_priority, batch)

    def _delivery(self, batch: BatchOptions | None) -> _Delivery:
        """A live study's results go to every destination; a batch's only with
        ``--deliver destinations`` (retrospective results stay off the clinical PACS
        unless asked), or into its folder."""
        o = self.options
        if batch is None or batch.delivers:
            return _Delivery(o.destinations, o.withdraw_destinations, o.notify_high)
        return _Delivery((), (), False, batch.folder)

    def _stored_instances(self, study_uid: str) -> list[_Stored]:
        with self.sessions() as session:
            return [
                _Stored(i.sop_instance_uid, i.relpath, i.sop_class_uid,
                        i.source == InstanceSource.PRODUCED)
                for i in InstanceRepository(session).for_study(study_uid)
            ]

    def _select(self, instances: list[_Stored], routes: Sequence[RouteLike]
                ) -> tuple[dict[str, _Group], list[SkippedView]]:
        groups: dict[str, _Group] = {}
        skipped: list[SkippedView] = []
        for item in instances:
            if item.produced:
                continue
            try:
                header = pydicom.dcmread(self.store.path_of(item.relpath),
                                         stop_before_pixels=True)
            except Exception as exc:  # noqa: BLE001 - reported, not fatal
                skipped.append(SkippedView(item.sop_instance_uid,
                                           f"unreadable file ({type(exc).__name__})"))
                continue
            view = ViewHeader(
                sop_instance_uid=item.sop_instance_uid,
                sop_class_uid=item.sop_class_uid,
                body_part=body_part_of(header),
                view_position=str(header.get("ViewPosition", "") or ""),
                laterality=str(header.get("ImageLaterality", "")
                               or header.get("Laterality", "") or ""),
                produced=str(header.get("Manufacturer", "")) == "pacs-node",
            )
            routing = route_for(view, routes, self.models.scope_of)
            route = routing.route
            if route is None:
                if routing.reason:
                    skipped.append(SkippedView(item.sop_instance_uid, routing.reason))
                continue
            group = groups.setdefault(route.model, _Group(route))
            oversize = too_large(header, self.options.max_pixels)
            if oversize:
                skipped.append(SkippedView(item.sop_instance_uid, oversize))
                continue
            try:
                ds = pydicom.dcmread(self.store.path_of(item.relpath))
                prepared = self.models.get(route.model).prepare(ds)
            except Exception as exc:  # noqa: BLE001 - a bad view never fails the study
                reason = str(exc)[:200] if isinstance(exc, ValueError) else type(exc).__name__
                skipped.append(SkippedView(item.sop_instance_uid, f"cannot decode: {reason}"))
                continue
            group.views.append((view, ds, prepared))
        return groups, skipped

    def _previous_results(self, study_uid: str, job_id: int) -> list[pydicom.Dataset]:
        """Headers of the study's current results made by earlier jobs (SR, overlays; not
        earlier rejection notes): what this job's result replaces."""
        with self.sessions() as session:
            rows = [(i.relpath, i.sop_class_uid) for i in InstanceRepository(session)
                    .current_results(study_uid, except_job=job_id)]
        headers: list[pydicom.Dataset] = []
        for relpath, sop_class in rows:
            if sop_class == _KOS_CLASS:
                continue
            try:
                headers.append(pydicom.dcmread(self.store.path_of(relpath),
                                               stop_before_pixels=True))
            except Exception as exc:  # noqa: BLE001 - a lost file cannot be named; go on
                log.warning("job %s: earlier result %s unreadable (%s)", job_id, relpath,
                            type(exc).__name__)
        return headers

    def _process(self, job_id: int, claim: _Claim) -> str:
        attempt, study_uid, requested = claim.attempt, claim.study_uid, claim.requested
        routes = claim.batch.routes(self.options.routes) if claim.batch else self.options.routes
        delivery = self._delivery(claim.batch)
        groups, skipped = self._select(self._stored_instances(study_uid), routes)
        previous = self._previous_results(study_uid, job_id)
        previous_srs = [ds for ds in previous if str(ds.SOPClassUID) == _SR_CLASS]
        outputs: list[pydicom.Dataset] = []
        studies: list[tuple[str, StudyResult]] = []
        judged: list[tuple[int, FractureModel, StudyResult]] = []
        for index, (ref, group) in enumerate(sorted(groups.items())):
            if not group.views:
                continue
            model = self.models.get(ref)
            started = time.perf_counter()
            try:
                judged.append((index, model, self._study_result(model, group, skipped)))
            except _GroupFailed:
                continue  # every view of this model failed: listed in skipped
            finally:  # pacsnode_inference_duration_seconds (workers.metrics)
                instruments().inference(model.metadata.name, time.perf_counter() - started)
        triage = self._triage([result for _, _, result in judged], requested)
        for index, model, result in judged:
            algorithm = AlgorithmInfo.from_model(model)
            job_key = f"pacs-node:{study_uid}:job-{job_id}:{index}"

            def overlay_failed(view: ViewResult, exc: Exception) -> None:
                log.warning("job %s: no overlay for view %s (%s)", job_id,
                            view.sop_instance_uid, type(exc).__name__)

            # Library warnings quote the values they dislike (patient names, dates): they
            # must not reach the log; the writers repair or drop such values themselves.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                outputs.append(build_sr(result, algorithm, job_key=job_key,
                                        series_number=9001 + 2 * index,
                                        previous_versions=previous_srs,
                                        triage=(str(triage[0]), triage[1])))
                outputs.extend(build_secondary_captures(
                    result, algorithm, job_key=job_key, series_number=9002 + 2 * index,
                    on_error=overlay_failed))
            studies.append((f"{model.metadata.name} {model.metadata.version}", result))
        models = [(m.metadata.name, m.metadata.version) for _, m, _ in judged]
        rejection = None
        if previous and delivery.withdraw:
            rejection = build_rejection_note(
                previous, job_key=f"pacs-node:{study_uid}:job-{job_id}")

        staged: list[tuple[InstanceMeta, StagedFile]] = []
        try:
            for ds in [*outputs, *([rejection] if rejection is not None else [])]:
                data = _to_bytes(ds)
                meta = InstanceMeta.read(data)
                staged.append((meta, self.store.stage(
                    meta.study_instance_uid, meta.series_instance_uid, meta.sop_instance_uid,
                    data)))
            if delivery.folder is not None:
                _write_to_folder(delivery.folder, staged[:len(outputs)])
            return self._complete(job_id, attempt, studies, skipped, staged,
                                  with_rejection=rejection is not None, triage=triage,
                                  synthetic=any(m.metadata.synthetic_demo for _, m, _ in judged),
                                  delivery=delivery, used_models=models)
        finally:
            for _, file in staged:
                self.store.discard(file)

    def _triage(self, results: list[StudyResult], requested: str | None
                ) -> tuple[TriagePriority, str]:
        """The study's triage priority from its most probable analysed result, raised to
        HIGH when the sender asked for urgency (storage.triage), and why in words."""
        analysed = [r for r in results if r.analysed and r.fracture_probability is not None]
        best = max(analysed, key=lambda r: r.fracture_probability or 0.0, default=None)
        p = best.fracture_probability if best is not None else None
        earned = from_result("analysed" if best is not None else None, p,
                             high_threshold=self.options.high_threshold,
                             doubt_threshold=self.options.doubt_threshold)
        if p is None:
            reason = "no view could be analysed"
        elif earned is TriagePriority.HIGH:
            reason = f"fracture probability {p:.2f} >= {self.options.high_threshold:g}"
        elif earned is TriagePriority.MEDIUM:
            reason = (f"fracture probability {p:.2f} >= {self.options.doubt_threshold:g} "
                      f"(doubt), < {self.options.high_threshold:g}")
        else:
            reason = f"fracture probability {p:.2f} < {self.options.doubt_threshold:g}"
        priority = floored(earned, requested)
        if priority is not earned:
            reason += f"; raised to {priority} by the sender: {requested}"
        return priority, reason

    def _complete(self, job_id: int, attempt: int, studies: list[tuple[str, StudyResult]],
                  skipped: list[SkippedView], staged: list[tuple[InstanceMeta, StagedFile]],
                  *, with_rejection: bool, triage: tuple[TriagePriority, str],
                  delivery: _Delivery, synthetic: bool = False,
                  used_models: Sequence[tuple[str, str]] = ()) -> str:
        """One transaction: complete the job, index its results, supersede the earlier
        ones, queue the exports. Nothing is indexed when the job was superseded."""
        results = staged[:-1] if with_rejection else staged
        produced = [meta.sop_instance_uid for meta, _ in results]
        summary = self._summary(studies, skipped, produced)
        analysed = [r for _, r in studies if r.analysed]
        best = max(analysed, key=lambda r: r.fracture_probability or 0.0, default=None)
        views_total = sum(len(r.views) for _, r in studies) + len(skipped)
        views_analysed = sum(r.views_analysed for _, r in studies)
        reason: str | None
        if best is None:
            reason = not_analysed_reason(
                [r.reason for _, r in studies] + [s.reason for s in skipped])
        elif views_analysed < views_total:
            reason = not_analysed_reason(
                [v.prediction.not_analysed_reason for _, r in studies for v in r.views]
                + [s.reason for s in skipped])
        else:
            reason = None
        summary["reason"] = reason
        # Whether a model that judged views was trained on synthetic data only (demo
        # weights): every output, the batch export too, says so.
        summary["synthetic_data_weights"] = synthetic
        destinations = delivery.destinations

        def complete(session: Session) -> int | None:
            result = JobRepository(session).complete(
                job_id, attempt=attempt,
                fracture_probability=best.fracture_probability if best else None,
                positive=best.positive if best else None,
                aggregation=best.aggregation if best else self.options.aggregation,
                threshold=self.options.threshold, summary=summary, reason=reason,
                views_analysed=views_analysed, views_total=views_total, models=used_models)
            if result is None:
                return None
            instances = InstanceRepository(session)
            exports = ExportRepository(session)
            study = StudyRepository(session).get_by_id(result.study_id)
            assert study is not None
            old = instances.supersede_results(study.study_instance_uid, except_job=job_id)
            # An earlier rejection note still goes out: it withdraws what came before it.
            replaced = [i.id for i in old if i.sop_class_uid != _KOS_CLASS]
            exports.cancel_pending(replaced, error=f"superseded by the result of job {job_id}")
            for meta, file in results:
                index_staged(session, self.store, file, meta, overwrite=True,
                             source=InstanceSource.PRODUCED, job_id=job_id)
                row = instances.get(meta.sop_instance_uid)
                if row is not None and destinations:
                    exports.add(row.id, destinations)
            if with_rejection:
                # Only where the superseded results went: elsewhere there is nothing to hide.
                sent = exports.sent_destinations(replaced)
                targets = [d for d in delivery.withdraw if d in sent]
                if targets:
                    meta, file = staged[-1]
                    index_staged(session, self.store, file, meta, overwrite=True,
                                 source=InstanceSource.PRODUCED, job_id=job_id)
                    row = instances.get(meta.sop_instance_uid)
                    if row is not None:
                        exports.add(row.id, targets)
            repo = StudyRepository(session)
            repo.set_priority(result.study_id, best.fracture_probability if best else None)
            models = ", ".join(name for name, _ in studies) or "pacs-node"
            priority = repo.set_triage(result.study_id, triage[0], source=PrioritySource.RESULT,
                                       reason=triage[1], actor=models, job_id=job_id)
            if priority is TriagePriority.HIGH and delivery.notify_high:
                NotificationRepository(session).add(result.study_id, job_id, {
                    "event": "study.priority.high",
                    "study_instance_uid": study.study_instance_uid,
                    "accession_number": study.accession_number,
                    "priority": str(priority), "priority_reason": triage[1],
                    "result_state": result.state,
                    # A probability only where the node analysed the study.
                    **({"fracture_probability": result.fracture_probability}
                       if result.fracture_probability is not None else {}),
                    "models": models, "synthetic_data_weights": synthetic,
                    "job_id": job_id, "result_at": result.created_at.isoformat(),
                })
            return len(old)

        superseded = run_write(self.sessions, complete)
        if superseded is None:
            log.info("job %s was superseded while running; its results are discarded", job_id)
            return "discarded"
        log.info("job %s done: %d of %d views analysed, %d objects, %d earlier results "
                 "superseded", job_id, views_analysed, views_total, len(produced), superseded)
        return "done"

    def _study_result(self, model: FractureModel, group: _Group,
                      skipped: list[SkippedView]) -> StudyResult:
        """Predict every view of ``group`` and aggregate the analysed ones. A view the model
        fails on is taken out (``failed``, in ``skipped``); the others go on."""
        predictions = self._predict_isolated(model, group, skipped)
        if not group.views:
            raise _GroupFailed
        predictions = reported_findings(predictions, self.options.threshold,
                                        self.options.max_findings)
        views = [ViewResult(source=ds, prediction=pred, site=site_of(header))
                 for (header, ds, _), pred in zip(group.views, predictions, strict=True)]
        analysed = [v for v in views if v.analysed]
        if not analysed:
            return StudyResult(
                fracture_probability=None, positive=None, aggregation=self.options.aggregation,
                threshold=self.options.threshold, views=views, skipped=list(skipped),
                reason=not_analysed_reason([v.prediction.not_analysed_reason for v in views]))
        if model.study_level:
            agg = self._learned_aggregate(model, group, views)
        else:
            agg = aggregate_study([(v.site, v.prediction.fracture_probability or 0.0)
                                   for v in analysed],
                                  self.options.aggregation, threshold=self.options.threshold)
        return StudyResult(
            fracture_probability=agg.probability, positive=agg.positive, aggregation=agg.method,
            threshold=agg.threshold, site_probabilities={s.site: s.probability for s in agg.sites},
            views=views, skipped=list(skipped))

    def _predict_isolated(self, model: FractureModel, group: _Group,
                          skipped: list[SkippedView]) -> list[ViewPrediction]:
        """Predict the group's views as one batch; if that raises, view by view, moving
        the views that still raise from ``group`` to ``skipped`` as ``failed``."""
        def predict(views: list[PreparedView]) -> list[ViewPrediction]:
            return model.predict(views, batch_size=self.options.batch_size,
                                 allow_uncalibrated=self.options.allow_uncalibrated)

        try:
            return predict([p for _, _, p in group.views])
        except Exception:  # noqa: BLE001 - find the view that fails; the others go on
            log.warning("model %s failed on a batch of %d views; trying them one by one",
                        model.metadata.name, len(group.views))
        kept, predictions = [], []
        for item in group.views:
            try:
                predictions.extend(predict([item[2]]))
                kept.append(item)
            except Exception as exc:  # noqa: BLE001 - reported as the view's result
                log.warning("view %s: model failed (%s)", item[0].sop_instance_uid,
                            type(exc).__name__)
                skipped.append(SkippedView(item[0].sop_instance_uid,
                                           f"failed: the model raised {type(exc).__name__}"))
        group.views[:] = kept
        return predictions

    def _learned_aggregate(self, model: FractureModel, group: _Group,
                           views: list[ViewResult]) -> StudyAggregate:
        """Per-site study probabilities from a study-level model (seed 004 §5.3)."""
        by_site: dict[str, list[PreparedView]] = defaultdict(list)
        for view, (_, _, prepared) in zip(views, group.views, strict=True):
            if view.analysed:  # a view outside the model's domain never enters the study
                by_site[view.site].append(prepared)
        sites = {site: (1.0 - model.predict_study(members)["normal"], len(members))
                 for site, members in by_site.items()}
        return aggregate_learned(sites, method=f"learned ({model.metadata.model_type})",
                                 threshold=self.options.threshold)

    @staticmethod
    def _summary(studies: list[tuple[str, StudyResult]], skipped: list[SkippedView],
                 produced: list[str]) -> dict[str, Any]:
        models: dict[str, Any] = defaultdict(dict)
        for name, result in studies:
            models[name] = {
                "fracture_probability": result.fracture_probability,
                "positive": result.positive,
                "reason": result.reason or None,
                "sites": result.site_probabilities,
                "views": {v.sop_instance_uid: v.prediction.fracture_probability
                          for v in result.views},
                "not_analysed": {v.sop_instance_uid: v.prediction.not_analysed_reason
                                 for v in result.views if not v.analysed},
                "domain": {v.sop_instance_uid: v.prediction.domain.to_dict()
                           for v in result.views},
                # Each view in the node's vocabulary, at the study threshold.
                "states": {v.sop_instance_uid: _view_state(v, result.threshold)
                           for v in result.views},
                # The regions a reader is shown (none on a negative or unanalysed view).
                "findings": {v.sop_instance_uid: [f.to_dict() for f in v.prediction.findings]
                             for v in result.views if v.prediction.findings},
            }
        return {
            "models": dict(models),
            # Views no model judged: "failed" (the model raised on it) or "not_analysed".
            "skipped": [{"sop_instance_uid": s.sop_instance_uid, "reason": s.reason,
                         "state": "failed" if s.reason.startswith("failed") else "not_analysed"}
                        for s in skipped],
            "produced": produced,
            "note": "no view reached a model" if not studies else "",
        }
