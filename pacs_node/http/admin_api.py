"""The admin API under ``/api/v1``: the worklist, a study's history, its actions (re-run,
retry delivery, set priority), the queues and the pause switches. Every route needs the
``admin`` role when ``http.auth`` is on; a signed-in browser's cookie authorises a change
only with the ``X-PACS-Node-Request: 1`` header (:mod:`pacs_node.http.auth`).

Endpoints translate HTTP to :class:`pacs_node.worklist.WorklistService` calls and its
:class:`~pacs_node.worklist.AdminError` to status codes; nothing here decides.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field

from storage import TriagePriority
from storage.repositories import WorklistFilter

from ..worklist import MAX_REASON, AdminError, WorklistService
from .auth import Permission, actor_of, require
from .common import checked_uid

__all__ = ["MAX_PAGE", "router"]

#: The most worklist lines one request may ask for.
MAX_PAGE = 500

router = APIRouter(prefix="/api/v1", tags=["Admin"],
                   dependencies=[Depends(require(Permission.ADMIN))],
                   responses={401: {"description": "no valid token (http.auth on)"},
                              403: {"description": "the token is not an admin's"}})

PriorityFilter = Literal["HIGH", "MEDIUM", "LOW", "NOT_ANALYSED", "FAILED", "NONE"]
StateFilter = Literal["receiving", "queued", "running", "done", "failed"]
ControlName = Literal["processing", "delivery"]
T = TypeVar("T")


class PriorityChange(BaseModel):
    """An admin's triage priority for a study, and why (required, recorded)."""

    priority: TriagePriority
    reason: str = Field(min_length=1, max_length=MAX_REASON)


class ControlChange(BaseModel):
    reason: str = Field("", max_length=MAX_REASON)


def _service(request: Request) -> WorklistService:
    return request.app.state.worklist  # type: ignore[no-any-return]


def _call(action: Callable[[], T]) -> T:
    try:
        return action()
    except AdminError as exc:
        raise HTTPException(exc.status, str(exc)) from None


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


@router.get("/worklist", summary="Studies by triage priority, then waiting time")
def worklist(
    request: Request,
    priority: Annotated[list[PriorityFilter], Query(
        description="triage priorities to show (NONE: not set yet); all by default")] = [],  # noqa: B006
    state: Annotated[list[StateFilter], Query(description="receiving or the job's state")
                     ] = [],  # noqa: B006
    body_part: Annotated[str | None, Query(max_length=16)] = None,
    received_from: Annotated[date | None, Query(description="first day received (UTC)")
                             ] = None,
    received_to: Annotated[date | None, Query(description="last day received (UTC)")
                           ] = None,
    q: Annotated[str | None, Query(max_length=64,
                                   description="in the accession number or description")
                 ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> dict[str, Any]:
    f = WorklistFilter(
        priorities=tuple(priority), states=tuple(state), body_part=body_part or None,
        received_from=_day_start(received_from) if received_from else None,
        received_before=_day_start(received_to) + timedelta(days=1) if received_to else None,
        text=(q or "").strip() or None, limit=limit, offset=offset)
    return _service(request).worklist(f)


@router.get("/studies/{study_uid}", summary="A study's timeline, overlays, report, history",
            responses={404: {"description": "no such study"}})
def study(request: Request, study_uid: Annotated[str, Path(max_length=64)]) -> dict[str, Any]:
    uid = checked_uid(study_uid, "Study Instance")
    return _call(lambda: _service(request).study(uid))


@router.post("/studies/{study_uid}/rerun", status_code=202,
             summary="Analyse the study again (a new job; its result supersedes the old)",
             responses={404: {"description": "no such study"}})
def rerun(request: Request, study_uid: Annotated[str, Path(max_length=64)]) -> dict[str, Any]:
    uid = checked_uid(study_uid, "Study Instance")
    return _call(lambda: _service(request).rerun(uid))


@router.post("/studies/{study_uid}/retry-delivery",
             summary="Send the current result again where its delivery gave up",
             responses={404: {"description": "no such study"}})
def retry_delivery(request: Request, study_uid: Annotated[str, Path(max_length=64)]
                   ) -> dict[str, Any]:
    uid = checked_uid(study_uid, "Study Instance")
    return _call(lambda: _service(request).retry_delivery(uid))


@router.post("/studies/{study_uid}/priority",
             summary="Set the study's triage priority, with a reason (recorded)",
             responses={404: {"description": "no such study"}})
def set_priority(request: Request, study_uid: Annotated[str, Path(max_length=64)],
                 change: PriorityChange) -> dict[str, Any]:
    uid = checked_uid(study_uid, "Study Instance")
    actor = actor_of(request)
    return _call(lambda: _service(request).set_priority(uid, change.priority, change.reason,
                                                       actor))


@router.get("/queues", summary="Queue depth per lane, pause switches, failed jobs, "
                               "destinations' health")
def queues(request: Request) -> dict[str, Any]:
    return _service(request).queues()


def _switch(request: Request, name: str, paused: bool, change: ControlChange | None
            ) -> dict[str, Any]:
    actor = actor_of(request)
    reason = change.reason if change else ""
    return _call(lambda: _service(request).set_paused(name, paused=paused, actor=actor,
                                                      reason=reason))


@router.post("/controls/{name}/pause",
             summary="Pause processing (no new job is claimed) or delivery (nothing sent)")
def pause(request: Request, name: ControlName,
          change: Annotated[ControlChange | None, Body()] = None) -> dict[str, Any]:
    return _switch(request, name, True, change)


@router.post("/controls/{name}/resume", summary="Resume processing or delivery")
def resume(request: Request, name: ControlName,
           change: Annotated[ControlChange | None, Body()] = None) -> dict[str, Any]:
    return _switch(request, name, False, change)
