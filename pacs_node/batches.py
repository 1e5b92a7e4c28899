"""Re-processing batches: pull studies from a remote archive (or take those the node
holds), run them below live traffic with a chosen model, and report per study.

Everything a batch knows is in the index (``batches``, ``batch_items``, and the jobs it
made), so any process may create, pause, resume, cancel or export one, and the runner of a
node killed mid-batch continues where it was after the restart:

- an item being queried or retrieved when the node died is retrieved again (a retrieve of
  instances already held stores nothing new);
- an item whose job exists is never given a second one: its job is recovered by the
  ordinary job machinery (released at start, or its lease lapses), and a job's results
  carry UIDs derived from the job, so nothing is delivered twice.

The runner (:class:`BatchRunner`, a thread of ``pacs-node serve``) asks the remote (C-FIND
or QIDO-RS), retrieves at most ``max_retrieves`` studies of a batch at a time (C-MOVE to
the node's own AE title, C-GET or WADO-RS, through the normal ingest path), and then
settles the study itself: the retrieve has ended, every instance is in. The study's job
goes to the batch lane, below urgent and live studies (storage.triage), and keeps at most
``batch.max_queued`` jobs of a batch waiting. A failed query or retrieve is retried with
capped exponential backoff up to ``batch.max_attempts``, then the item fails with why.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import queue
import threading
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session, sessionmaker

from storage import (
    LANE_BATCH,
    Batch,
    BatchRepository,
    BatchState,
    FileStore,
    ItemState,
    Series,
    Study,
    StudyRepository,
    is_valid_uid,
    run_write,
)
from storage._db import utcnow
from workers.batch_options import parse_deliver, parse_window

from .archive import ArchiveClient, ArchiveError, DicomwebArchive, Retrieved, StudyRef
from .config import Remote, Settings
from .delivery import backoff_seconds
from .receive import Receiver
from .tls import destination_contexts

if TYPE_CHECKING:  # the dispatcher module imports the pipeline and torch
    from workers.dispatch import Dispatcher

__all__ = ["BatchError", "BatchProgress", "BatchRunner", "BatchSpec", "cancel_batch",
           "create_batch", "describe", "export_batch", "model_key", "pause_batch",
           "progress", "read_accessions", "resume_batch", "retry_failed"]

log = logging.getLogger(__name__)

MAX_ITEMS = 100_000  # studies in one batch (an accession list, a local selection)
_ACCESSION_WIDTH = 16


class BatchError(ValueError):
    """A batch cannot be created or changed as asked; the message says why."""


@dataclass(frozen=True)
class BatchSpec:
    """What ``batch create`` asks for. ``remote`` None: the studies the node holds."""

    remote: str | None = None
    accessions: tuple[str, ...] = ()
    date_from: str = ""
    date_to: str = ""
    modalities: tuple[str, ...] = ()
    body_part: str | None = None
    model: str | None = None
    deliver: str = "none"
    skip_done: bool = False
    max_retrieves: int | None = None
    window: str | None = None
    name: str = ""

    def criteria(self) -> dict[str, Any]:
        criteria: dict[str, Any] = {}
        if self.accessions:
            criteria["accessions"] = len(self.accessions)
        for key in ("date_from", "date_to", "body_part"):
            if getattr(self, key):
                criteria[key] = getattr(self, key)
        if self.modalities:
            criteria["modalities"] = list(self.modalities)
        return criteria


def read_accessions(text: str) -> list[str]:
    """Accession numbers from a file's text: one per line, or CSV (the column named
    accession / accession_number / AccessionNumber, else the first). Blank lines and
    repeats are left out.

    Raises:
        BatchError: a value longer than 16 characters or with a control character or
            backslash (not an accession number), none at all, or more than 100,000.
    """
    rows = list(csv.reader(io.StringIO(text)))
    column = 0
    if rows and len(rows[0]) > 1 or rows and rows[0] and rows[0][0].strip().lower() in (
            "accession", "accession_number", "accessionnumber"):
        header = [h.strip().lower() for h in rows[0]]
        for name in ("accession", "accession_number", "accessionnumber"):
            if name in header:
                column = header.index(name)
                rows = rows[1:]
                break
    found: dict[str, None] = {}
    for number, row in enumerate(rows, 1):
        value = row[column].strip() if len(row) > column else ""
        if not value:
            continue
        if len(value) > _ACCESSION_WIDTH or any(ord(c) < 32 or c == "\\" for c in value):
            raise BatchError(f"line {number}: {value[:40]!r} is not an accession number "
                             "(at most 16 characters, no control character or backslash)")
        found[value] = None
    if not found:
        raise BatchError("the accession list holds no accession number")
    if len(found) > MAX_ITEMS:
        raise BatchError(f"the accession list holds {len(found)} numbers; at most "
                         f"{MAX_ITEMS} in one batch")
    return list(found)


def _model_refs(settings: Settings, model: str | None) -> list[str]:
    if model is None:
        return sorted({r.model for r in settings.pipeline.routes}) or ["demo"]
    named = [r.model for r in settings.pipeline.routes if r.name == model]
    return named or [model]


def model_key(settings: Settings, model: str | None) -> list[str]:
    """The "name version" of each model a batch with ``--model`` ``model`` runs (the
    configured routes' models when None): what ``--skip-done`` compares.

    Raises:
        BatchError: the model is neither a route's name, ``demo``, nor a readable
            checkpoint.
    """
    from models.registry import DEMO_WEIGHTS, ModelMetadata, read_checkpoint

    pairs = set()
    for ref in _model_refs(settings, model):
        path = DEMO_WEIGHTS if ref == "demo" else Path(ref)
        try:
            metadata = ModelMetadata.from_dict(read_checkpoint(path)["metadata"])
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise BatchError(f"--model {ref!r} is neither a route's name, 'demo', nor a "
                             f"readable pacs-node checkpoint ({type(exc).__name__}: "
                             f"{str(exc)[:200]})") from None
        pairs.add(f"{metadata.name} {metadata.version}")
    return sorted(pairs)


def _date(value: str, what: str) -> str:
    text = value.replace("-", "")
    if text and (len(text) != 8 or not text.isdigit()):
        raise BatchError(f"{what} {value!r} is not a date (YYYYMMDD or YYYY-MM-DD)")
    return text


def _local_studies(session: Session, spec: BatchSpec) -> list[tuple[str, str]]:
    """(accession, study UID) of the studies the node holds that match ``spec``."""
    stmt = select(Study.accession_number, Study.study_instance_uid)
    if spec.accessions:
        stmt = stmt.where(Study.accession_number.in_(list(spec.accessions)))
    if spec.date_from:
        stmt = stmt.where(Study.study_date >= spec.date_from)
    if spec.date_to:
        stmt = stmt.where(Study.study_date <= spec.date_to)
    if spec.modalities:  # whole codes, as ModalitiesInStudy matches (no substring, no LIKE)
        stmt = stmt.where(exists(select(Series.id).where(
            Series.study_id == Study.id, Series.modality.in_(list(spec.modalities)))))
    if spec.body_part:
        stmt = stmt.where(exists(select(Series.id).where(
            Series.study_id == Study.id,
            func.upper(Series.body_part_examined) == spec.body_part.upper())))
    rows = session.execute(stmt.order_by(Study.study_date, Study.id).limit(MAX_ITEMS + 1)).all()
    if len(rows) > MAX_ITEMS:
        raise BatchError(f"more than {MAX_ITEMS} studies match; narrow the selection")
    return [(str(a or ""), str(u)) for a, u in rows]


def _check_remote_reach(settings: Settings, model: str | None, folder: Path | None) -> None:
    """What a batch created over HTTP may name on the node's disk (see create_batch)."""
    routes = settings.pipeline.routes
    if model is not None and model != "demo" and not any(model in (r.name, r.model)
                                                         for r in routes):
        raise BatchError(f"model {model!r}: over HTTP a batch names a route, 'demo' or a "
                         "configured route's checkpoint (any checkpoint: pacs-node batch "
                         "create on the node)")
    if folder is not None:
        inside = any(folder.resolve().is_relative_to(root.resolve())
                     for root in settings.batch.folder_roots)
        if not inside:
            raise BatchError(f"folder {folder}: over HTTP results go only under "
                             "batch.folder_roots (none configured)" if not
                             settings.batch.folder_roots else
                             f"folder {folder} is not under batch.folder_roots")


def create_batch(settings: Settings, sessions: sessionmaker[Session], spec: BatchSpec, *,
                 actor: str, local_operator: bool = True) -> int:
    """Check ``spec`` and record the batch; the node's runner starts it within a second.
    Returns its id.

    Args:
        local_operator: the request comes from a shell on the node (the CLI). Over HTTP
            (False) a token must not reach the node's file system: ``--model`` is then a
            route's name, ``demo`` or a configured route's checkpoint, and a delivery
            folder must lie under one of ``batch.folder_roots``.

    Raises:
        BatchError: an unknown remote, a bad date, window, deliver or model, no selection
            for a remote, or ``--deliver destinations`` with none configured.
    """
    remote = None
    if spec.remote is not None:
        remote = next((r for r in settings.remotes if r.name == spec.remote), None)
        if remote is None:
            raise BatchError(f"no remote named {spec.remote!r} (remotes: "
                             f"{', '.join(r.name for r in settings.remotes) or 'none'})")
        if not spec.accessions and not (spec.date_from or spec.date_to):
            raise BatchError("a batch from a remote needs --accessions FILE or a date range "
                             "(--from/--to): it would ask the archive for everything")
    if spec.accessions and (spec.date_from or spec.date_to):
        raise BatchError("choose either an accession list or a date range, not both")
    spec = BatchSpec(**{**spec.__dict__,
                        "date_from": _date(spec.date_from, "--from"),
                        "date_to": _date(spec.date_to, "--to"),
                        "modalities": tuple(m.strip().upper() for m in spec.modalities
                                            if m.strip())})
    try:
        window = parse_window(spec.window)
        mode, folder = parse_deliver(spec.deliver)
    except ValueError as exc:
        raise BatchError(str(exc)) from None
    if mode == "destinations" and not settings.destinations:
        raise BatchError("--deliver destinations, but the config has no destinations")
    if not local_operator:
        _check_remote_reach(settings, spec.model, folder)
    max_retrieves = spec.max_retrieves or settings.batch.max_retrieves
    if not 1 <= max_retrieves <= 32:
        raise BatchError(f"--max-retrieves {max_retrieves}: between 1 and 32")
    key = ", ".join(model_key(settings, spec.model))
    criteria = spec.criteria()

    def create(session: Session) -> int:
        if remote is None:
            items: Sequence[tuple[str, str | None]] = _local_studies(session, spec)
        else:
            items = [(a, None) for a in spec.accessions]
        batch = BatchRepository(session).create(
            source="local" if remote is None else "remote",
            remote=remote.name if remote else None, criteria=criteria, items=items,
            name=spec.name, model=spec.model, model_key=key, deliver=spec.deliver,
            skip_done=spec.skip_done, max_retrieves=max_retrieves,
            window=str(window) if window is not None else None,
            created_by=actor)
        return batch.id

    batch_id = run_write(sessions, create)
    log.info("batch %s created by %s (%s)", batch_id, actor,
             f"remote {remote.name}" if remote else "local")
    return batch_id


# -- operator's controls ---------------------------------------------------------------


def pause_batch(sessions: sessionmaker[Session], batch_id: int, *, actor: str) -> None:
    """Stop starting retrieves and jobs; the jobs running finish. Raises BatchError when
    the batch is not querying or running."""
    def pause(session: Session) -> None:
        repo = BatchRepository(session)
        repo.require(batch_id)
        if not repo.set_state(batch_id, BatchState.PAUSED, reason=f"paused by {actor}",
                              from_states=[BatchState.QUERYING, BatchState.RUNNING]):
            raise BatchError(f"batch {batch_id} is {repo.require(batch_id).state}: "
                             "only a querying or running batch can be paused")
    run_write(sessions, pause)


def resume_batch(sessions: sessionmaker[Session], batch_id: int, *, actor: str) -> None:
    """Continue a paused batch; its waiting jobs are woken."""
    def resume(session: Session) -> None:
        repo = BatchRepository(session)
        batch = repo.require(batch_id)
        state = BatchState.QUERYING if batch.next_query_at is not None else BatchState.RUNNING
        if not repo.set_state(batch_id, state, reason=None, from_states=[BatchState.PAUSED]):
            raise BatchError(f"batch {batch_id} is {batch.state}, not paused")
        repo.wake_jobs(batch_id)
    run_write(sessions, resume)
    log.info("batch %s resumed by %s", batch_id, actor)


def cancel_batch(sessions: sessionmaker[Session], batch_id: int, *, actor: str) -> int:
    """Skip every study not yet brought in; jobs already queued or running finish.
    Returns how many items were skipped."""
    def cancel(session: Session) -> int:
        repo = BatchRepository(session)
        batch = repo.require(batch_id)
        if batch.state in (BatchState.DONE, BatchState.CANCELLED, BatchState.FAILED):
            raise BatchError(f"batch {batch_id} is already {batch.state}")
        waiting = [i.study_instance_uid for i in repo.items(
            batch_id, states=[ItemState.PENDING, ItemState.QUERYING, ItemState.RETRIEVING])]
        skipped = repo.skip_waiting(batch_id, f"batch cancelled by {actor}")
        studies = StudyRepository(session)
        for uid in waiting:
            if uid:
                studies.settle_without_job(uid)
        repo.set_state(batch_id, BatchState.CANCELLED, reason=f"cancelled by {actor}")
        return skipped
    return run_write(sessions, cancel)


def retry_failed(sessions: sessionmaker[Session], batch_id: int, *, actor: str) -> int:
    """Start the failed items of a batch again; return how many. A finished batch runs
    again (a batch whose query failed asks again)."""
    def retry(session: Session) -> int:
        repo = BatchRepository(session)
        batch = repo.require(batch_id)
        if batch.state == BatchState.CANCELLED:
            raise BatchError(f"batch {batch_id} was cancelled")
        count = repo.retry_failed(batch_id)
        if batch.state == BatchState.FAILED and batch.next_query_at is not None:
            batch.state, batch.query_attempts = BatchState.QUERYING, 0
            batch.next_query_at, batch.finished_at, batch.reason = utcnow(), None, None
            count = max(count, 1)
        elif count and batch.state == BatchState.DONE:
            repo.set_state(batch_id, BatchState.RUNNING, reason=f"failed items retried by "
                           f"{actor}")
        return count
    return run_write(sessions, retry)


# -- progress and export ---------------------------------------------------------------


@dataclass(frozen=True)
class BatchProgress:
    """A batch and how far it is: items per state, finished, the rate of the last
    minutes and an estimate of the time left."""

    batch: dict[str, Any]
    counts: dict[str, int]
    total: int
    finished: int
    per_hour: float | None
    eta_seconds: float | None
    window_open: bool = True
    items: list[dict[str, Any]] = field(default_factory=list)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def describe(batch: Batch) -> dict[str, Any]:
    return {"id": batch.id, "name": batch.name, "source": batch.source,
            "remote": batch.remote, "criteria": batch.criteria, "model": batch.model,
            "models": batch.model_key, "deliver": batch.deliver, "skip_done": batch.skip_done,
            "max_retrieves": batch.max_retrieves, "window": batch.window,
            "state": batch.state, "reason": batch.reason, "created_by": batch.created_by,
            "created_at": _iso(batch.created_at), "finished_at": _iso(batch.finished_at)}


def progress(session: Session, batch_id: int, *, with_items: bool = False,
             now: datetime | None = None) -> BatchProgress:
    """Raises storage.NotFound for an unknown batch."""
    now = now or utcnow()
    repo = BatchRepository(session)
    batch = repo.require(batch_id)
    counts = repo.counts(batch_id)
    total = sum(counts.values())
    finished = sum(counts[s] for s in (ItemState.DONE, ItemState.SKIPPED, ItemState.FAILED))
    since = max(batch.created_at, now - timedelta(minutes=10))
    recent = repo.finished_since(batch_id, since)
    elapsed = (now - since).total_seconds()
    per_hour = recent / elapsed * 3600 if recent and elapsed > 0 else None
    left = total - finished
    eta = left / per_hour * 3600 if per_hour and left and batch.state == BatchState.RUNNING \
        else None
    window = parse_window(batch.window)
    items = []
    if with_items:
        items = [{"id": i.id, "study_instance_uid": i.study_instance_uid,
                  "accession_number": i.accession_number, "state": i.state,
                  "reason": i.reason, "attempts": i.attempts, "job_id": i.job_id,
                  "next_attempt_at": _iso(i.next_attempt_at)}
                 for i in repo.items(batch_id, limit=10_000)]
    return BatchProgress(batch=describe(batch), counts=counts, total=total, finished=finished,
                         per_hour=per_hour, eta_seconds=eta,
                         window_open=window is None or window.open_at(now), items=items)


EXPORT_FIELDS = ("study_instance_uid", "accession_number", "item_state", "item_reason",
                 "result", "fracture_probability", "triage_priority", "views", "model",
                 "model_version", "synthetic_data_weights", "job_id")


def _result_word(row: Any) -> str:
    if row.job_state == "failed":
        return "failed"
    if row.result_state is None:
        return "pending" if row.state not in ("skipped", "failed") else ""
    if row.result_state != "analysed" or row.fracture_probability is None:
        return "not_analysed"
    return "positive" if row.positive else "negative"


def _views(summary: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each view of a result: its model, state, probability (only where analysed), why
    not analysed, and the regions shown to a reader."""
    if not summary:
        return []
    views = []
    for model, entry in (summary.get("models") or {}).items():
        states = entry.get("states", {})
        for sop, probability in (entry.get("views") or {}).items():
            view: dict[str, Any] = {"sop_instance_uid": sop, "model": model,
                                    "state": states.get(sop, "")}
            if probability is not None:
                view["fracture_probability"] = probability
            if sop in (entry.get("not_analysed") or {}):
                view["reason"] = entry["not_analysed"][sop]
            view["findings"] = (entry.get("findings") or {}).get(sop, [])
            views.append(view)
    for skipped in summary.get("skipped") or []:
        views.append({"sop_instance_uid": skipped.get("sop_instance_uid"), "model": None,
                      "state": skipped.get("state"), "reason": skipped.get("reason"),
                      "findings": []})
    return views


def export_records(session: Session, batch_id: int) -> Iterable[dict[str, Any]]:
    BatchRepository(session).require(batch_id)
    for row in BatchRepository(session).export_rows(batch_id):
        yield {"study_instance_uid": row.study_instance_uid,
               "accession_number": row.accession_number, "item_state": row.state,
               "item_reason": row.reason or "", "result": _result_word(row),
               "fracture_probability": row.fracture_probability,
               "triage_priority": row.triage_priority or "", "views": _views(row.summary),
               "model": row.model_name or "", "model_version": row.model_version or "",
               # True: made with synthetic-data (demo) weights, not a clinical finding.
               "synthetic_data_weights": (row.summary or {}).get("synthetic_data_weights"),
               "job_id": row.job_id}


def export_batch(session: Session, batch_id: int, out: TextIO, fmt: str) -> int:
    """Write the batch's studies as ``csv`` (views as a JSON column) or ``jsonl``;
    return how many. A probability appears only where a study was analysed."""
    count = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS, lineterminator="\n")
        writer.writeheader()
        for record in export_records(session, batch_id):
            record["views"] = json.dumps(record["views"], separators=(",", ":"))
            if record["fracture_probability"] is None:
                record["fracture_probability"] = ""
            synthetic = record["synthetic_data_weights"]
            record["synthetic_data_weights"] = "" if synthetic is None else str(synthetic).lower()
            writer.writerow(record)
            count += 1
    elif fmt == "jsonl":
        for record in export_records(session, batch_id):
            out.write(json.dumps(record, separators=(",", ":")) + "\n")
            count += 1
    else:
        raise BatchError(f"export format {fmt!r}: csv or jsonl")
    return count


# -- the runner ------------------------------------------------------------------------


def _why(exc: Exception) -> str:
    """An archive's error says what went wrong; another exception is named and logged
    (its text may quote data element values)."""
    if isinstance(exc, ArchiveError):
        return str(exc)
    log.error("batch: unexpected %s\n%s", type(exc).__name__,
              "".join(traceback.format_tb(exc.__traceback__)).rstrip())
    return f"{type(exc).__name__} (see the node's log)"


class _Source:
    """Finding and retrieving studies at one remote, the way it is configured."""

    def __init__(self, remote: Remote, settings: Settings, receiver: Receiver) -> None:
        self.remote = remote
        self.receiver = receiver
        contexts = destination_contexts([remote], section="remotes") \
            if remote.tls.enabled else {}
        self.web = (DicomwebArchive(remote.url, token=remote.token, name=remote.name)
                    if remote.retrieve == "dicomweb" and remote.url else None)
        self.dimse = None if self.web is not None else ArchiveClient(
            remote, calling_ae=settings.node.ae_title, tls_context=contexts.get(remote.name))

    def find(self, **criteria: Any) -> list[StudyRef]:
        finder: Any = self.web if self.web is not None else self.dimse
        return list(finder.find_studies(**criteria))

    def retrieve(self, study_uid: str) -> Retrieved:
        if self.web is not None:
            return self.web.retrieve(study_uid, self.receiver)
        assert self.dimse is not None
        if self.remote.retrieve == "c-get":
            return self.dimse.get(study_uid, self.receiver)
        return self.dimse.move(study_uid)


class BatchRunner:
    """Drives the index's batches from one thread of ``pacs-node serve``; queries and
    retrieves run on a small pool (at most ``max_retrieves`` of a batch at a time). Jobs
    go to ``dispatcher`` in the batch lane once their study is in."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], store: FileStore,
                 dispatcher: Dispatcher, *,
                 source_factory: Callable[[Remote], _Source] | None = None) -> None:
        self.settings = settings
        self.sessions = sessions
        self.dispatcher = dispatcher
        receiver = Receiver(store, sessions, min_free_bytes=settings.storage.min_free_bytes,
                            overwrite_conflicts=settings.node.overwrite_conflicting_duplicates)
        self._source = source_factory or (lambda r: _Source(r, settings, receiver))
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="pacs-node-batch")
        self._busy: dict[int, set[int | str]] = {}  # batch id -> item ids / "query" in flight
        self._lock = threading.Lock()
        self._created: queue.SimpleQueue[int] = queue.SimpleQueue()  # jobs to dispatch
        self._open: dict[int, bool] = {}  # whether each batch's window was open last tick
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pacs-node-batches",
                                        daemon=True)

    def start(self) -> None:
        released = run_write(self.sessions, lambda s: BatchRepository(s).release_in_flight())
        if released:
            log.info("batches: %d studies were being retrieved when the node stopped; "
                     "retrieving them again", released)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def nudge(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - keep driving; the next tick retries
                log.exception("batch runner tick failed")
            self._wake.wait(self.settings.batch.tick_seconds)
            self._wake.clear()

    def tick(self) -> None:
        """One pass over every batch with work left (also called by tests)."""
        self._dispatch_created()
        with self.sessions() as session:
            batches = [(b.id, b.state, b.source, b.window, b.max_retrieves, b.next_query_at)
                       for b in BatchRepository(session).working()]
        now = utcnow()
        for batch_id, state, source, window_text, max_retrieves, next_query in batches:
            window = parse_window(window_text)
            is_open = window is None or window.open_at(now)
            if is_open and self._open.get(batch_id) is False:
                self._write(batch_id, BatchRepository.wake_jobs)
            self._open[batch_id] = is_open
            if state == BatchState.QUERYING:
                if is_open and next_query is not None and next_query <= now:
                    self._submit(batch_id, "query", self._query, batch_id)
                continue
            self._write(batch_id, BatchRepository.sync_with_jobs)
            if is_open:
                self._start_items(batch_id, source, max_retrieves, now)
            self._finish_if_done(batch_id)
        with self.sessions() as session:  # paused or cancelled: their jobs still end
            others = BatchRepository(session).waiting_on_jobs(exclude=[b[0] for b in batches])
        for batch_id in others:
            self._write(batch_id, BatchRepository.sync_with_jobs)
        self._dispatch_created()

    def _write(self, batch_id: int, method: Callable[[BatchRepository, int], object]) -> None:
        run_write(self.sessions, lambda session: method(BatchRepository(session), batch_id))

    def _busy_count(self, batch_id: int) -> int:
        with self._lock:
            return len(self._busy.get(batch_id, ()))

    def _submit(self, batch_id: int, key: int | str, work: Callable[..., None],
                *args: Any) -> bool:
        with self._lock:
            busy = self._busy.setdefault(batch_id, set())
            if key in busy:
                return False
            busy.add(key)

        def run() -> None:
            try:
                work(*args)
            except Exception:  # noqa: BLE001 - recorded on the item by work; never lost
                log.exception("batch %s: %s failed", batch_id, key)
            finally:
                with self._lock:
                    self._busy.get(batch_id, set()).discard(key)
                self._wake.set()

        self._pool.submit(run)
        return True

    def _start_items(self, batch_id: int, source: str, max_retrieves: int,
                     now: datetime) -> None:
        max_queued = self.settings.batch.max_queued
        with self.sessions() as session:
            repo = BatchRepository(session)
            flight = repo.in_flight(batch_id)
            room = max_queued - flight["queued"] - self._busy_count(batch_id)
            if source == "remote":
                room = min(room, max_retrieves - self._busy_count(batch_id))
            if room <= 0:
                return
            pending = [(i.id, i.study_instance_uid) for i in repo.items(
                batch_id, states=[ItemState.PENDING], due=now, limit=room + max_retrieves)]
        for item_id, uid in pending:
            if room <= 0:
                break
            if source == "local":
                self._settle_local(batch_id, item_id, uid)
                room -= 1
            elif self._submit(batch_id, item_id, self._bring_in, batch_id, item_id):
                room -= 1

    def _finish_if_done(self, batch_id: int) -> None:
        if self._busy_count(batch_id):
            return

        def finish(session: Session) -> None:
            repo = BatchRepository(session)
            counts = repo.counts(batch_id)
            if sum(counts[s] for s in (ItemState.PENDING, ItemState.QUERYING,
                                       ItemState.RETRIEVING, ItemState.SETTLED,
                                       ItemState.PROCESSING)):
                return
            failed = counts[ItemState.FAILED]
            if repo.set_state(batch_id, BatchState.DONE, from_states=[BatchState.RUNNING],
                              reason=f"{failed} studies failed" if failed else None):
                log.info("batch %s done: %s", batch_id, {k: v for k, v in counts.items() if v})
        run_write(self.sessions, finish)

    def _dispatch_created(self) -> None:
        while True:
            try:
                job_id = self._created.get_nowait()
            except queue.Empty:
                return
            self.dispatcher.enqueue(job_id, lane=LANE_BATCH)

    # -- the work of one batch or item (pool threads) ----------------------------------

    def _remote_of(self, batch: Batch) -> _Source:
        remote = next((r for r in self.settings.remotes if r.name == batch.remote), None)
        if remote is None:
            raise ArchiveError(f"remote {batch.remote!r} is no longer in the config")
        return self._source(remote)

    def _backoff(self, attempts: int) -> datetime | None:
        """When to try again after ``attempts`` failed tries; None once they are spent."""
        if attempts >= self.settings.batch.max_attempts:
            return None
        return utcnow() + timedelta(seconds=backoff_seconds(attempts, self.settings.batch))

    def _query(self, batch_id: int) -> None:
        """Ask the remote which studies match a date-range batch; create its items."""
        with self.sessions() as session:
            batch = BatchRepository(session).require(batch_id)
            criteria, attempts = dict(batch.criteria), batch.query_attempts
            try:
                source = self._remote_of(batch)
            except ArchiveError as exc:
                source, error = None, str(exc)
        try:
            if source is None:
                raise ArchiveError(error)
            refs = source.find(date_from=criteria.get("date_from", ""),
                               date_to=criteria.get("date_to", ""),
                               modalities=criteria.get("modalities", []),
                               body_part=criteria.get("body_part"))
        except Exception as exc:  # noqa: BLE001 - any failure is an attempt, never a loop
            retry_at = self._backoff(attempts + 1)
            reason = f"the query failed: {_why(exc)}"
            log.warning("batch %s: %s; %s", batch_id, reason,
                        "retrying" if retry_at else "giving up")
            run_write(self.sessions, lambda s: BatchRepository(s).query_failed(
                batch_id, reason, retry_at=retry_at))
            return

        def record(session: Session) -> None:
            repo = BatchRepository(session)
            batch = repo.require(batch_id)
            if batch.state != BatchState.QUERYING:
                return  # paused or cancelled meanwhile: ask again on resume
            added = repo.add_items(batch_id, [(r.accession_number, r.study_instance_uid)
                                              for r in refs])
            batch.next_query_at = None
            if added:
                repo.set_state(batch_id, BatchState.RUNNING, reason=None)
            else:
                repo.set_state(batch_id, BatchState.DONE, reason="no study matched")
        run_write(self.sessions, record)
        log.info("batch %s: %d studies matched", batch_id, len(refs))

    def _settle_local(self, batch_id: int, item_id: int, uid: str | None) -> None:
        def settle(session: Session) -> int | None:
            repo = BatchRepository(session)
            batch = repo.require(batch_id)
            study = StudyRepository(session).get(uid) if uid else None
            if study is None:
                repo.move(item_id, ItemState.FAILED, from_states=[ItemState.PENDING],
                          reason="the study is no longer held by the node")
                return None
            skip = self._already_done(session, batch, uid or "")
            if skip:
                repo.move(item_id, ItemState.SKIPPED, from_states=[ItemState.PENDING],
                          reason=skip)
                return None
            return self._create_job(session, batch, item_id, study, ItemState.PENDING)
        job_id = run_write(self.sessions, settle)
        if job_id is not None:
            self.dispatcher.enqueue(job_id, lane=LANE_BATCH)

    def _already_done(self, session: Session, batch: Batch, uid: str) -> str:
        """Why ``--skip-done`` skips the study ("" when it does not)."""
        if not batch.skip_done:
            return ""
        done = BatchRepository(session).done_models(uid)
        if done is None or not done[1]:
            return ""
        job_id, pairs = done
        wanted = set(batch.model_key.split(", ")) if batch.model_key else set()
        if set(pairs) <= wanted:
            return f"already processed by {', '.join(pairs)} (job {job_id})"
        return ""

    def _create_job(self, session: Session, batch: Batch, item_id: int, study: Study,
                    from_state: ItemState, reason: str | None = None) -> int | None:
        """Settle the item's study and queue its job; None (and no job) when the item left
        ``from_state`` meanwhile (the batch was cancelled)."""
        repo = BatchRepository(session)
        if not repo.move(item_id, ItemState.SETTLED, from_states=[from_state], reason=reason):
            return None
        job = StudyRepository(session).settle_for_batch(
            study, batch.id, max_attempts=self.settings.queue.max_attempts,
            max_interruptions=self.settings.queue.max_interruptions)
        repo.move(item_id, ItemState.SETTLED, from_states=[ItemState.SETTLED], reason=reason,
                  job_id=job.id)
        return job.id

    def _bring_in(self, batch_id: int, item_id: int) -> None:
        """Resolve an accession, skip a done study, retrieve it, settle it: one item."""
        with self.sessions() as session:
            repo = BatchRepository(session)
            batch = repo.require(batch_id)
            item = repo.item(item_id)
            if item is None or item.state != ItemState.PENDING:
                return
            uid, accession, attempts = item.study_instance_uid, item.accession_number, \
                item.attempts
        try:
            source = self._remote_of(batch)
            if uid is None:
                uid = self._resolve(batch_id, item_id, accession, source)
                if uid is None:
                    return
            with self.sessions() as session:
                skip = self._already_done(session, batch, uid)
            if skip:
                run_write(self.sessions, lambda s: BatchRepository(s).move(
                    item_id, ItemState.SKIPPED, from_states=[ItemState.PENDING], reason=skip))
                return
            if not run_write(self.sessions, lambda s: BatchRepository(s).move(
                    item_id, ItemState.RETRIEVING, from_states=[ItemState.PENDING])):
                return
            counts = source.retrieve(uid)
        except Exception as exc:  # noqa: BLE001 - an item never stays "retrieving" forever
            self._item_failed(item_id, uid, attempts, _why(exc))
            return
        note = None
        if counts.failed or counts.warning:
            note = (f"the archive reported {counts.completed} instances sent, "
                    f"{counts.failed} failed, {counts.warning} with warnings")

        def settle(session: Session) -> int | None | str:
            study = StudyRepository(session).get(uid or "")
            if study is None:
                return "the archive sent no instance of the study"
            job_id = self._create_job(session, batch, item_id, study, ItemState.RETRIEVING,
                                      reason=note)
            if job_id is None:  # cancelled while it was retrieved: held, not processed
                StudyRepository(session).settle_without_job(uid or "")
            return job_id
        outcome = run_write(self.sessions, settle)
        if isinstance(outcome, str):
            self._item_failed(item_id, uid, attempts, outcome)
        elif outcome is not None:
            self._created.put(outcome)
            self._wake.set()

    def _resolve(self, batch_id: int, item_id: int, accession: str,
                 source: _Source) -> str | None:
        """The study of an accession-list item (more studies: more items)."""
        if not run_write(self.sessions, lambda s: BatchRepository(s).move(
                item_id, ItemState.QUERYING, from_states=[ItemState.PENDING])):
            return None
        try:
            refs = [r for r in source.find(accession=accession)
                    if is_valid_uid(r.study_instance_uid)]
        except ArchiveError:
            run_write(self.sessions, lambda s: BatchRepository(s).move(
                item_id, ItemState.PENDING, from_states=[ItemState.QUERYING]))
            raise

        def record(session: Session) -> str | None:
            repo = BatchRepository(session)
            if not refs:
                repo.move(item_id, ItemState.FAILED, from_states=[ItemState.QUERYING],
                          reason=f"no study with accession {accession} at "
                                 f"{source.remote.name}")
                return None
            first, *more = refs
            other = repo.has_study(batch_id, first.study_instance_uid)
            if other is not None:
                repo.move(item_id, ItemState.SKIPPED, from_states=[ItemState.QUERYING],
                          reason=f"the same study as item {other}")
                return None
            repo.move(item_id, ItemState.PENDING, from_states=[ItemState.QUERYING],
                      study_instance_uid=first.study_instance_uid)
            repo.add_items(batch_id, [(accession, r.study_instance_uid) for r in more])
            return first.study_instance_uid
        return run_write(self.sessions, record)

    def _item_failed(self, item_id: int, uid: str | None, attempts: int, error: str) -> None:
        retry_at = self._backoff(attempts + 1)

        def record(session: Session) -> None:
            repo = BatchRepository(session)
            states = [ItemState.PENDING, ItemState.QUERYING, ItemState.RETRIEVING]
            if retry_at is not None:
                repo.move(item_id, ItemState.PENDING, from_states=states, count_attempt=True,
                          retry_at=retry_at, reason=f"attempt {attempts + 1} failed: {error}")
            else:
                repo.move(item_id, ItemState.FAILED, from_states=states, count_attempt=True,
                          reason=f"failed after {attempts + 1} attempts: {error}")
                if uid:
                    StudyRepository(session).settle_without_job(uid)
        run_write(self.sessions, record)
        log.warning("batch item %s: %s (%s)", item_id, error,
                    "retrying" if retry_at else "attempts spent")
