"""Re-processing batches over HTTP, under ``/api/v1/batches``: list, create, show, pause,
resume, cancel, retry the failed items, export the results. Admin only when ``http.auth``
is on; a signed-in browser changes something only with the ``X-PACS-Node-Request: 1``
header (:mod:`pacs_node.http.auth`).

Endpoints translate HTTP to :mod:`pacs_node.batches` calls and its errors to status codes:
a batch that cannot be made as asked is 422, an action its state does not allow is 409, an
unknown batch 404. The API only records and changes rows; the runner of ``pacs-node
serve`` picks a new or resumed batch up within a second.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import asdict
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy.orm import Session, sessionmaker

from storage import BatchRepository, NotFound

from ..batches import (
    MAX_ITEMS,
    BatchError,
    BatchProgress,
    BatchSpec,
    cancel_batch,
    create_batch,
    export_batch,
    pause_batch,
    progress,
    read_accessions,
    resume_batch,
    retry_failed,
)
from ..config import Settings
from .auth import Permission, actor_of, require

__all__ = ["MAX_LIST", "BatchCreate", "router"]

#: The most batches one list request may ask for.
MAX_LIST = 500

router = APIRouter(prefix="/api/v1", tags=["Batches"],
                   dependencies=[Depends(require(Permission.ADMIN))],
                   responses={401: {"description": "no valid token (http.auth on)"},
                              403: {"description": "the token is not an admin's"}})

BatchId = Annotated[int, Path(ge=1, le=2**62)]
_Modality = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9]{1,16}$")]
_Accession = Annotated[str, StringConstraints(max_length=64)]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such batch"}}
_CONFLICT: dict[int | str, dict[str, Any]] = {
    **_NOT_FOUND, 409: {"description": "the batch's state does not allow it"}}
T = TypeVar("T")


class BatchCreate(BaseModel):
    """What ``pacs-node batch create`` asks for: the studies of a remote archive (by an
    accession list or a date range) or those the node holds (``local``), narrowed by
    modality and body part; the model, where results go, and when the batch may run."""

    model_config = ConfigDict(extra="forbid")

    local: bool = Field(False, description="the studies the node holds (no remote)")
    remote: str | None = Field(None, max_length=64, description="a name of remotes[]")
    accessions: list[_Accession] = Field(default_factory=list, max_length=MAX_ITEMS)
    date_from: str = Field("", max_length=10, description="YYYYMMDD or YYYY-MM-DD")
    date_to: str = Field("", max_length=10)
    modalities: list[_Modality] = Field(default_factory=list, max_length=32)
    body_part: str | None = Field(None, max_length=16)
    model: str | None = Field(None, max_length=512,
                              description="a route's name, 'demo' or a checkpoint path")
    deliver: str = Field("none", max_length=600,
                         description="none, destinations or folder:ABSOLUTE_PATH")
    skip_done: bool = False
    max_retrieves: int | None = Field(None, ge=1, le=32)
    window: str | None = Field(None, max_length=16, description="HH:MM-HH:MM, local time")
    name: str = Field("", max_length=64)

    def spec(self) -> BatchSpec:
        """The :class:`BatchSpec` asked for.

        Raises:
            BatchError: neither or both of ``local`` and ``remote``, or a value of
                ``accessions`` that is not an accession number.
        """
        if self.local == (self.remote is not None):
            raise BatchError("name a remote, or set local: true for the studies the node "
                             "holds (not both)")
        accessions: tuple[str, ...] = ()
        if self.accessions:
            # As read_accessions reads a file, with a header so that no value is taken
            # for one, and quoted so that a comma or quote stays in its value.
            text = io.StringIO()
            writer = csv.writer(text, lineterminator="\n")
            writer.writerow(["accession"])
            writer.writerows([value] for value in self.accessions)
            try:
                accessions = tuple(read_accessions(text.getvalue()))
            except BatchError as exc:
                raise BatchError(f"accessions: {exc}") from None
        return BatchSpec(remote=self.remote, accessions=accessions, date_from=self.date_from,
                         date_to=self.date_to, modalities=tuple(self.modalities),
                         body_part=self.body_part or None, model=self.model or None,
                         deliver=self.deliver, skip_done=self.skip_done,
                         max_retrieves=self.max_retrieves,
                         window=(self.window or "").strip() or None, name=self.name)


def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def _sessions(request: Request) -> sessionmaker[Session]:
    return request.app.state.sessions  # type: ignore[no-any-return]


def _json(shown: BatchProgress, *, with_items: bool = False) -> dict[str, Any]:
    body = asdict(shown)
    if not with_items:
        del body["items"]
    return body


def _progress(request: Request, batch_id: int, *, with_items: bool = False
              ) -> dict[str, Any]:
    try:
        with _sessions(request)() as session:
            return _json(progress(session, batch_id, with_items=with_items),
                         with_items=with_items)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None


def _act(request: Request, batch_id: int, action: Callable[[], T]) -> T:
    try:
        return action()
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except BatchError as exc:
        raise HTTPException(409, str(exc)) from None


@router.get("/batches", summary="Recent batches, newest first, with their progress")
def batches(request: Request,
            limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 100) -> dict[str, Any]:
    with _sessions(request)() as session:
        ids = [b.id for b in BatchRepository(session).recent(limit)]
        return {"batches": [_json(progress(session, i)) for i in ids]}


@router.post("/batches", status_code=201, summary="Create a batch (the node's runner starts it)",
             responses={422: {"description": "the batch cannot be made as asked"}})
def create(request: Request, body: BatchCreate) -> dict[str, Any]:
    actor = actor_of(request)
    try:
        batch_id = create_batch(_settings(request), _sessions(request), body.spec(),
                                actor=actor, local_operator=False)
    except BatchError as exc:
        raise HTTPException(422, str(exc)) from None
    return _progress(request, batch_id)


@router.get("/batches/{batch_id}", summary="A batch with its progress and its studies",
            responses=_NOT_FOUND)
def show(request: Request, batch_id: BatchId) -> dict[str, Any]:
    return _progress(request, batch_id, with_items=True)


@router.post("/batches/{batch_id}/pause", responses=_CONFLICT,
             summary="Start no more retrieves or jobs; those running finish")
def pause(request: Request, batch_id: BatchId) -> dict[str, Any]:
    actor = actor_of(request)
    _act(request, batch_id, lambda: pause_batch(_sessions(request), batch_id, actor=actor))
    return _progress(request, batch_id)


@router.post("/batches/{batch_id}/resume", responses=_CONFLICT,
             summary="Continue a paused batch")
def resume(request: Request, batch_id: BatchId) -> dict[str, Any]:
    actor = actor_of(request)
    _act(request, batch_id, lambda: resume_batch(_sessions(request), batch_id, actor=actor))
    return _progress(request, batch_id)


@router.post("/batches/{batch_id}/cancel", responses=_CONFLICT,
             summary="Skip every study not yet brought in; queued and running jobs finish")
def cancel(request: Request, batch_id: BatchId) -> dict[str, Any]:
    actor = actor_of(request)
    skipped = _act(request, batch_id,
                   lambda: cancel_batch(_sessions(request), batch_id, actor=actor))
    return {**_progress(request, batch_id), "skipped": skipped}


@router.post("/batches/{batch_id}/retry-failed", responses=_CONFLICT,
             summary="Start the failed studies of a batch again")
def retry(request: Request, batch_id: BatchId) -> dict[str, Any]:
    actor = actor_of(request)
    retried = _act(request, batch_id,
                   lambda: retry_failed(_sessions(request), batch_id, actor=actor))
    return {**_progress(request, batch_id), "retried": retried}


_EXPORT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}


@router.get("/batches/{batch_id}/export", responses=_NOT_FOUND,
            summary="The batch's studies and results, as CSV or JSON lines")
def export(request: Request, batch_id: BatchId,
           format: Annotated[Literal["csv", "jsonl"], Query()] = "csv") -> Response:  # noqa: A002
    out = io.StringIO()
    try:
        with _sessions(request)() as session:
            export_batch(session, batch_id, out, format)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    return Response(out.getvalue(), media_type=_EXPORT_TYPES[format], headers={
        "Content-Disposition": f'attachment; filename="batch-{batch_id}.{format}"',
        "Cache-Control": "no-store"})
