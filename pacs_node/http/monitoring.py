"""``/healthz``, ``/readyz`` and ``/metrics`` (:mod:`pacs_node.observability`).

``/healthz`` and ``/readyz`` need no token even with ``http.auth`` on: a load balancer or
an orchestrator probes them, and they tell no patient data (states and counts only).
``/metrics`` needs an ``admin`` token when ``http.auth`` is on (Prometheus sends it as
``authorization: credentials``); with auth off the node listens on loopback only, unless
``http.allow_insecure``."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from ..observability import Readiness, exposition
from .auth import Permission, require

__all__ = ["router"]

router = APIRouter(tags=["Monitoring"])


@router.get("/healthz", summary="Liveness: the node's HTTP server answers")
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "alive"})


@router.get("/readyz", summary="Readiness: index, broker, store and models, each with why "
                               "not")
async def readyz(request: Request) -> JSONResponse:
    readiness: Readiness = request.app.state.readiness
    checks = await run_in_threadpool(readiness.checks)
    ready = all(c.ok for c in checks)
    body = {"status": "ready" if ready else "not ready",
            "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks}}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics (text format)",
            dependencies=[Depends(require(Permission.ADMIN))],
            response_class=Response)
async def metrics(request: Request) -> Response:
    index: CollectorRegistry = request.app.state.metrics_registry
    body = await run_in_threadpool(exposition, index)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
