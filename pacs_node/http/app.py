"""The node's HTTP application: built by :func:`create_app` from settings and storage (no
import-time state). DICOMweb under ``/dicomweb``; OpenAPI at ``/api/docs``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from importlib import metadata
from urllib.parse import quote

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from storage import FileStore, InvalidQuery
from workers.metrics import instruments

from ..config import Settings
from ..dimse._logfilter import printable
from ..observability import IndexCollector, Readiness, http_service, index_registry
from ..receive import Receiver
from ..retrieve import RetrieveService
from ..search import SearchService
from ..worklist import WorklistService
from . import admin_api, admin_pages, batches_api, monitoring, qido, session, stow, viewer, wado
from .auth import Permission, require

__all__ = ["DICOMWEB_PREFIX", "create_app"]

log = logging.getLogger(__name__)

DICOMWEB_PREFIX = "/dicomweb"


def _version() -> str:
    try:
        return metadata.version("pacs-node")
    except metadata.PackageNotFoundError:
        return "unknown"


class _RequestLog:
    """One INFO line per request: method, path, status, duration. Never the query string
    (QIDO-RS queries carry patient names and IDs); the path with control characters
    escaped (it is the client's). Pure ASGI: Starlette's ``BaseHTTPMiddleware`` would wrap
    every body chunk of a STOW-RS upload in a task group of its own. The duration also
    goes to ``pacsnode_http_request_duration_seconds`` by service (stow, qido, wado)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless the app answers

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            seconds = time.perf_counter() - started
            log.info("%s %s %d %.0f ms", printable(scope["method"], 16),
                     printable(scope["path"], 300), status, seconds * 1000)
            instruments().http_request(
                http_service(scope["method"], scope["path"], DICOMWEB_PREFIX), status,
                seconds)


def create_app(settings: Settings, sessions: sessionmaker[Session], store: FileStore, *,
               on_stored: Callable[[str], None] | None = None) -> FastAPI:
    """The HTTP app over the node's index and store; ``on_stored`` is called with the
    Study Instance UID of new content received over STOW-RS (the tracker's nudge)."""
    app = FastAPI(title="pacs-node", version=_version(), docs_url="/api/docs",
                  openapi_url="/api/openapi.json", redoc_url=None,
                  description="DICOMweb (QIDO-RS, WADO-RS, STOW-RS) and the node's API.")
    app.state.settings = settings
    app.state.store = store

    def retrieve_url(study: str, series: str | None, instance: str | None) -> str:
        path = f"{DICOMWEB_PREFIX}/studies/{quote(study)}"
        if series:
            path += f"/series/{quote(series)}"
        if instance:
            path += f"/instances/{quote(instance)}"
        return path

    app.state.search = SearchService(sessions, retrieve_url=retrieve_url)
    app.state.retrieve = RetrieveService(sessions, store,
                                         max_pixels=settings.storage.max_pixels)
    app.state.receiver = Receiver(store, sessions,
                                  overwrite_conflicts=settings.node.overwrite_conflicting_duplicates,
                                  min_free_bytes=settings.storage.min_free_bytes,
                                  on_stored=on_stored)
    app.state.readiness = Readiness(
        sessions, store, broker_url=settings.queue.broker_url,
        min_free_bytes=settings.storage.min_free_bytes,
        models=[route.model for route in settings.pipeline.routes])
    app.state.metrics_registry = index_registry(IndexCollector(
        sessions, store, destinations=[d.name for d in settings.destinations],
        min_free_bytes=settings.storage.min_free_bytes))
    app.state.dicomweb_prefix = DICOMWEB_PREFIX
    app.add_middleware(_RequestLog)
    app.state.sessions = sessions
    reading = [Depends(require(Permission.READ))]
    app.include_router(qido.router, prefix=DICOMWEB_PREFIX, dependencies=reading)
    app.include_router(wado.router, prefix=DICOMWEB_PREFIX, dependencies=reading)
    app.include_router(stow.router, prefix=DICOMWEB_PREFIX,
                       dependencies=[Depends(require(Permission.STORE))])
    app.include_router(viewer.viewer_router(settings.http.viewer_dir,
                                            dicomweb_prefix=DICOMWEB_PREFIX,
                                            auth=settings.http.auth))
    app.include_router(session.router)
    app.state.worklist = WorklistService(
        sessions, store, destinations=[d.name for d in settings.destinations],
        max_attempts=settings.queue.max_attempts,
        max_interruptions=settings.queue.max_interruptions, dicomweb_prefix=DICOMWEB_PREFIX)
    app.include_router(admin_api.router)
    app.include_router(batches_api.router)
    app.include_router(admin_pages.router)
    app.include_router(monitoring.router)

    if settings.http.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.http.cors_origins),
                           allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["Authorization", "Accept", "Content-Type"],
                           expose_headers=["Warning", "Content-Location"])

    @app.exception_handler(InvalidQuery)
    async def invalid_query(_request: Request, exc: InvalidQuery) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(ValueError)
    async def bad_value(_request: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    return app
