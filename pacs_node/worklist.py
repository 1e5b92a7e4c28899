"""The admin worklist service: what the admin pages and ``/api/v1`` show and do.

It decides (ordering, SLA colours, what a result says, who may change what); the
endpoints only translate HTTP; the SQL is in :mod:`storage.repositories.worklist`.

No patient name, ID or birth date is ever read here: a line names a study by its
accession number (what a radiology admin looks a study up by) and Study Instance UID.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pydicom
from sqlalchemy.orm import Session, sessionmaker

from storage import (
    LANE_BATCH,
    LANE_LIVE,
    LANE_URGENT,
    FileStore,
    JobRepository,
    PrioritySource,
    StudyRepository,
    TriagePriority,
    run_write,
)
from storage.repositories import (
    Control,
    ControlRepository,
    DeliveryCount,
    ExportRepository,
    StudyHistory,
    WorklistFilter,
    WorklistRepository,
    WorklistRow,
)

__all__ = ["MAX_REASON", "SLA_MINUTES", "AdminError", "StudyNotFound", "WorklistService"]

log = logging.getLogger(__name__)

#: The longest reason an admin may give for a priority change or a pause.
MAX_REASON = 500
#: How long a study may wait, by triage priority, before its SLA colour turns red
#: (amber from half of it). Studies without a priority yet use ``None``'s.
SLA_MINUTES: dict[str | None, float] = {
    "HIGH": 30, "MEDIUM": 120, "FAILED": 60, "NOT_ANALYSED": 240, "LOW": 24 * 60, None: 60}
LANE_NAMES = {LANE_URGENT: "urgent", LANE_LIVE: "live", LANE_BATCH: "batch"}
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
_SR_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.33",
               "1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.11"}
_SR_ROWS = 400


class AdminError(Exception):
    """A request the admin API refuses; ``status`` is its HTTP status."""

    status = 400


class StudyNotFound(AdminError):
    status = 404


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def sla(priority: str | None, age_seconds: float) -> str:
    """``ok``, ``warn`` (past half of the priority's target) or ``late``."""
    target = SLA_MINUTES.get(priority, SLA_MINUTES[None]) * 60
    return "late" if age_seconds >= target else "warn" if age_seconds >= target / 2 else "ok"


def _result(row: WorklistRow) -> dict[str, Any]:
    """What the worklist's result column says: a probability only where the study was
    analysed, else its state and why."""
    job, result = row.job, row.result
    if job is not None and job.state == "failed":
        return {"state": "failed", "probability": None, "text": "failed"}
    if result is None:
        state = "receiving" if job is None else job.state
        return {"state": "pending", "probability": None, "text": f"pending ({state})"}
    if result.state != "analysed" or result.fracture_probability is None:
        return {"state": "not_analysed", "probability": None,
                "text": f"not analysed ({result.reason or 'no view could be judged'})"}
    verdict = "positive" if result.positive else "negative"
    return {"state": verdict, "probability": result.fracture_probability,
            "text": f"{result.fracture_probability * 100:.1f} % ({verdict})",
            "views": f"{result.views_analysed} of {result.views_total}"}


def _deliveries(counts: dict[str, DeliveryCount]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, c in sorted(counts.items()):
        state = ("failed" if c.failed else "pending" if c.pending else
                 "sent" if c.sent else "none")
        out[name] = {"state": state, "pending": c.pending, "sent": c.sent, "failed": c.failed,
                     "attempts": c.attempts, "last_error": c.last_error,
                     "last_sent_at": _iso(c.last_sent_at)}
    return out


def _line(row: WorklistRow, now: datetime) -> dict[str, Any]:
    s, job = row.study, row.job
    age = (now - s.first_received_at).total_seconds()
    return {
        "study_instance_uid": s.study_instance_uid,
        "accession_number": s.accession_number,
        "study_date": s.study_date,
        "study_description": s.study_description,
        "body_parts": list(row.body_parts),
        "images": s.instance_count,
        "received_at": _iso(s.first_received_at),
        "age_seconds": round(age),
        "sla": sla(s.triage_priority, age),
        "triage_priority": s.triage_priority,
        "requested_priority": s.requested_priority,
        "state": "receiving" if s.state == "receiving" or job is None else job.state,
        "job": None if job is None else {
            "id": job.id, "state": job.state, "lane": LANE_NAMES.get(job.lane, str(job.lane)),
            "attempts": job.attempts, "error": job.last_error},
        "result": _result(row),
        "deliveries": _deliveries(row.deliveries),
    }


def sr_rows(ds: pydicom.Dataset, limit: int = _SR_ROWS) -> list[dict[str, Any]]:
    """An SR's content tree as table rows (depth, concept, value), at most ``limit``."""
    rows: list[dict[str, Any]] = []

    def value_of(item: pydicom.Dataset) -> str:
        kind = str(item.get("ValueType", ""))
        if kind == "TEXT":
            return str(item.get("TextValue", ""))
        if kind == "CODE" and item.get("ConceptCodeSequence"):
            return str(item.ConceptCodeSequence[0].get("CodeMeaning", ""))
        if kind == "NUM" and item.get("MeasuredValueSequence"):
            measured = item.MeasuredValueSequence[0]
            unit = measured.get("MeasurementUnitsCodeSequence")
            code = str(unit[0].get("CodeValue", "")) if unit else ""
            return f"{measured.get('NumericValue', '')} {'' if code == '1' else code}".strip()
        if kind in ("UIDREF",):
            return str(item.get("UID", ""))
        if kind == "IMAGE" and item.get("ReferencedSOPSequence"):
            return f"image {item.ReferencedSOPSequence[0].get('ReferencedSOPInstanceUID', '')}"
        if kind in ("SCOORD", "SCOORD3D"):
            return f"{item.get('GraphicType', '')} region"
        if kind in ("DATETIME", "DATE", "TIME"):
            return str(item.get(kind.capitalize() if kind != "DATETIME" else "DateTime", ""))
        return ""

    def walk(items: Sequence[pydicom.Dataset], depth: int) -> None:
        for item in items:
            if len(rows) >= limit or depth > 8:
                return
            if str(item.get("ValueType", "")) == "PNAME":
                continue  # a person's name: never shown
            names = item.get("ConceptNameCodeSequence")
            concept = str(names[0].get("CodeMeaning", "")) if names else ""
            rows.append({"depth": depth, "concept": concept,
                         "type": str(item.get("ValueType", "")), "value": value_of(item)})
            walk(item.get("ContentSequence") or [], depth + 1)

    names = ds.get("ConceptNameCodeSequence")
    rows.append({"depth": 0, "concept": str(names[0].get("CodeMeaning", "")) if names else "",
                 "type": "CONTAINER", "value": ""})
    walk(ds.get("ContentSequence") or [], 1)
    return rows


@dataclass(frozen=True)
class _Paths:
    dicomweb: str
    viewer: str


class WorklistService:
    """Over the node's index and store; each call is one transaction."""

    def __init__(self, sessions: sessionmaker[Session], store: FileStore, *,
                 destinations: Sequence[str] = (), max_attempts: int = 3,
                 max_interruptions: int = 20, dicomweb_prefix: str = "/dicomweb",
                 viewer_prefix: str = "/viewer") -> None:
        self.sessions = sessions
        self.store = store
        self.destinations = tuple(destinations)
        self.max_attempts = max_attempts
        self.max_interruptions = max_interruptions
        self.paths = _Paths(dicomweb_prefix, viewer_prefix)

    # -- reading -----------------------------------------------------------------------

    def worklist(self, f: WorklistFilter) -> dict[str, Any]:
        with self.sessions() as session:
            rows, total = WorklistRepository(session).rows(f)
            now = datetime.now(UTC)
            return {"total": total, "limit": f.limit, "offset": f.offset,
                    "studies": [_line(row, now) for row in rows]}

    def study(self, study_uid: str) -> dict[str, Any]:
        with self.sessions() as session:
            history = WorklistRepository(session).history(study_uid)
            if history is None:
                raise StudyNotFound(f"no study {study_uid}")
            line = _line(history.row, datetime.now(UTC))
            current = history.row.job.id if history.row.job else None
            current_objects = [p for p in history.produced if p.job_id == current
                               and not p.superseded]
            line.update(
                timeline=self._timeline(history),
                overlays=[{"series_instance_uid": p.series_instance_uid,
                           "sop_instance_uid": p.sop_instance_uid,
                           "rendered": self._rendered(study_uid, p.series_instance_uid,
                                                      p.sop_instance_uid)}
                          for p in current_objects if p.sop_class_uid == SC_CLASS],
                report=self._report(current_objects),
                priority_history=[{"priority": e.priority, "source": e.source,
                                   "reason": e.reason, "actor": e.actor, "job_id": e.job_id,
                                   "at": _iso(e.created_at)}
                                  for e in history.priority_events],
                viewer=f"{self.paths.viewer}/viewer?StudyInstanceUIDs={study_uid}")
            return line

    def _rendered(self, study: str, series: str, instance: str) -> str:
        return (f"{self.paths.dicomweb}/studies/{study}/series/{series}/instances/"
                f"{instance}/rendered")

    def _report(self, objects: Sequence[Any]) -> dict[str, Any] | None:
        srs = [p for p in objects if p.sop_class_uid in _SR_CLASSES]
        if not srs:
            return None
        sr = srs[-1]
        try:
            ds = pydicom.dcmread(self.store.path_of(sr.relpath), stop_before_pixels=True)
            rows = sr_rows(ds)
        except (OSError, ValueError, AttributeError, KeyError) as exc:
            log.warning("cannot read the SR %s: %s", sr.relpath, type(exc).__name__)
            return {"sop_instance_uid": sr.sop_instance_uid, "rows": [],
                    "error": "the SR could not be read"}
        return {"sop_instance_uid": sr.sop_instance_uid, "rows": rows}

    @staticmethod
    def _timeline(history: StudyHistory) -> list[dict[str, Any]]:
        s = history.row.study
        events: list[dict[str, Any]] = [{
            "step": "received", "at": _iso(s.first_received_at),
            "detail": f"{s.instance_count} instances (the node's results "
                      f"included), the last at "
                      f"{s.last_received_at.isoformat(timespec='seconds')}"}]
        if history.jobs:
            events.append({"step": "settled", "at": _iso(history.jobs[0].created_at),
                           "detail": "no new instance for the stable period"})
        for job in history.jobs:
            tag = f"job {job.id}" + (" (superseded)" if job.state == "superseded" else "")
            events.append({"step": "queued", "at": _iso(job.created_at), "job_id": job.id,
                           "detail": f"{tag}, {LANE_NAMES.get(job.lane, job.lane)} lane"})
            if job.started_at is not None:
                detail = f"{tag}, attempt {job.attempts}"
                if job.failures or job.interruptions:
                    detail += f", {job.failures} failed, {job.interruptions} interrupted"
                events.append({"step": "running", "at": _iso(job.started_at),
                               "job_id": job.id, "detail": detail,
                               "error": job.last_error})
            result = history.results.get(job.id)
            if result is not None:
                row = WorklistRow(s, job, result, ())
                events.append({"step": "result", "at": _iso(result.created_at),
                               "job_id": job.id,
                               "detail": f"{tag}: {_result(row)['text']}"})
            elif job.state == "failed":
                events.append({"step": "failed", "at": _iso(job.finished_at),
                               "job_id": job.id, "detail": f"{tag}: failed for good",
                               "error": job.last_error})
            for name, d in _deliveries(history.deliveries.get(job.id, {})).items():
                events.append({"step": "delivered", "destination": name,
                               "at": d["last_sent_at"], "job_id": job.id,
                               "detail": f"{tag} to {name}: {d['state']} ({d['sent']} sent, "
                                         f"{d['pending']} pending, {d['failed']} failed, "
                                         f"{d['attempts']} attempts)",
                               "error": d["last_error"]})
        return events

    def queues(self) -> dict[str, Any]:
        with self.sessions() as session:
            repo = WorklistRepository(session)
            depths = repo.lane_depths()
            lanes = [{"lane": lane, "name": name,
                      "queued": depths.get((lane, "queued"), 0),
                      "running": depths.get((lane, "running"), 0)}
                     for lane, name in LANE_NAMES.items()]
            controls = ControlRepository(session).all()
            return {
                "lanes": lanes,
                "controls": {name: {"paused": bool(row and row.paused),
                                    "actor": row.actor if row else None,
                                    "reason": row.reason if row else None,
                                    "changed_at": _iso(row.changed_at) if row else None}
                             for name, row in controls.items()},
                "failed_jobs": [{"study_instance_uid": j.study_instance_uid,
                                 "accession_number": j.accession_number, "job_id": j.job_id,
                                 "error": j.error, "failures": j.failures,
                                 "finished_at": _iso(j.finished_at)}
                                for j in repo.failed_jobs()],
                "destinations": [{"name": d.name, "pending": d.pending, "failed": d.failed,
                                  "sent": d.sent, "last_error": d.last_error,
                                  "last_success_at": _iso(d.last_success_at)}
                                 for d in repo.destination_health(self.destinations)],
            }

    # -- acting ------------------------------------------------------------------------

    def rerun(self, study_uid: str) -> dict[str, Any]:
        """Queue a new job for the study; the tracker's reconciler dispatches it."""

        def work(session: Session) -> int:
            studies = StudyRepository(session)
            study = studies.get(study_uid)
            if study is None:
                raise StudyNotFound(f"no study {study_uid}")
            if study.state != "settled":
                raise AdminError("the study is still receiving: it runs once it settles")
            return studies.rerun(study, max_attempts=self.max_attempts,
                                 max_interruptions=self.max_interruptions).id

        job_id = run_write(self.sessions, work)
        log.info("admin re-run of a study: job %s", job_id)
        return {"job_id": job_id, "state": "queued"}

    def retry_delivery(self, study_uid: str) -> dict[str, Any]:
        """Send the current result's exports that gave up again."""

        def work(session: Session) -> int:
            study = StudyRepository(session).get(study_uid)
            if study is None:
                raise StudyNotFound(f"no study {study_uid}")
            if study.current_job_id is None:
                return 0
            return ExportRepository(session).retry_failed(study.current_job_id)

        return {"retried": run_write(self.sessions, work)}

    def set_priority(self, study_uid: str, priority: str, reason: str, actor: str
                     ) -> dict[str, Any]:
        """An admin's priority, with the reason (required) and the token's name."""
        reason = reason.strip()
        if not reason:
            raise AdminError("a reason is required to change a study's priority")
        if len(reason) > MAX_REASON:
            raise AdminError(f"the reason is longer than {MAX_REASON} characters")
        try:
            wanted = TriagePriority(priority)
        except ValueError:
            raise AdminError(f"priority must be one of {[str(p) for p in TriagePriority]}"
                             ) from None

        def work(session: Session) -> str:
            studies = StudyRepository(session)
            study = studies.get(study_uid)
            if study is None:
                raise StudyNotFound(f"no study {study_uid}")
            return str(studies.set_triage(study.id, wanted, source=PrioritySource.USER,
                                          reason=reason, actor=actor))

        return {"triage_priority": run_write(self.sessions, work)}

    def set_paused(self, control: str, *, paused: bool, actor: str, reason: str = ""
                   ) -> dict[str, Any]:
        """Pause or resume processing or delivery. Resuming processing marks every queued
        job for the reconciler, which wakes a worker for each at its next pass."""
        if len(reason) > MAX_REASON:
            raise AdminError(f"the reason is longer than {MAX_REASON} characters")
        try:
            which = Control(control)
        except ValueError:
            raise StudyNotFound(f"no control {control!r}: processing or delivery") from None

        def work(session: Session) -> int:
            ControlRepository(session).set(which, paused=paused, actor=actor, reason=reason)
            if not paused and which is Control.PROCESSING:
                return JobRepository(session).wake_queued()
            return 0

        woken = run_write(self.sessions, work)
        log.info("%s %s by %s", which, "paused" if paused else "resumed", actor)
        return {"control": str(which), "paused": paused, "jobs_woken": woken}
