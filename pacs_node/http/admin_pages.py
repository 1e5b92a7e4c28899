"""The admin pages: the worklist at ``/``, a study at ``/studies/{uid}``, the queues at
``/queues``, the re-processing batches at ``/batches``. Each is a small server-rendered
shell; ``admin.js`` (served by the node from ``pacs_node/http/admin/``, no build step, no
CDN) fills it from ``/api/v1`` and acts through it.

With ``http.auth`` on, a browser that is not signed in is sent to ``/login``; one signed
in with a token of another role gets a 403 page. The pages show accession numbers, never a
patient's name, ID or birth date (the API does not return them).
"""

from __future__ import annotations

import html
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from storage import TokenRole

from .auth import role_of, token_of
from .common import checked_uid
from .session import login_url

__all__ = ["STATIC", "router"]

STATIC = "/admin/static"
_FILES = {"admin.js": "text/javascript", "admin.css": "text/css"}
_HEADERS = {"Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'none'; script-src 'self'; "
                                       "style-src 'self'; img-src 'self'; connect-src 'self'; "
                                       "form-action 'self'; frame-ancestors 'none'; "
                                       "base-uri 'none'"}

router = APIRouter(include_in_schema=False)


def _shell(title: str, page: str, *, study: str = "") -> HTMLResponse:
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)} - pacs-node</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="{STATIC}/admin.css">
<script src="{STATIC}/admin.js" defer></script></head>
<body data-page="{page}" data-study="{html.escape(study)}">
<header><strong>pacs-node</strong>
<nav><a href="/">Worklist</a> <a href="/queues">Queues</a> <a href="/batches">Batches</a>
<a href="/viewer/">Viewer</a>
<a href="/api/docs">API</a></nav>
<form method="post" action="/api/v1/session/logout"><button type="submit">Sign out</button>
</form></header>
<main id="app"><h1>{html.escape(title)}</h1><p class="muted" id="status">Loading…</p></main>
<footer class="muted">AI results from synthetic-data demo weights are not for clinical use
unless the site validated its models.</footer>
</body></html>
"""
    return HTMLResponse(body, headers=_HEADERS)


def _gate(request: Request) -> Response | None:
    """None when the browser may see the pages; else where it goes instead."""
    if not request.app.state.settings.http.auth:
        return None
    role = role_of(request, token_of(request))
    if role is None:
        return RedirectResponse(login_url(request), status_code=303,
                                headers={"Cache-Control": "no-store"})
    if role is not TokenRole.ADMIN:
        return HTMLResponse(
            "<!doctype html><title>Admins only</title><p>These pages need an admin token; "
            f"this browser is signed in as a {role.value}.</p>"
            '<form method="post" action="/api/v1/session/logout"><button>Sign out</button>'
            "</form>", status_code=403, headers=_HEADERS)
    return None


@router.get("/")
def worklist_page(request: Request) -> Response:
    return _gate(request) or _shell("Worklist", "worklist")


@router.get("/studies/{study_uid}")
def study_page(request: Request, study_uid: Annotated[str, Path(max_length=64)]) -> Response:
    uid = checked_uid(study_uid, "Study Instance")
    return _gate(request) or _shell("Study", "study", study=uid)


@router.get("/queues")
def queues_page(request: Request) -> Response:
    return _gate(request) or _shell("Queues", "queues")


@router.get("/batches")
def batches_page(request: Request) -> Response:
    return _gate(request) or _shell("Batches", "batches")


@router.get(STATIC + "/{name}")
def static(name: str) -> Response:
    if name not in _FILES:
        return Response("no such file", status_code=404, media_type="text/plain")
    content = resources.files("pacs_node.http").joinpath("admin", name).read_bytes()
    return Response(content, media_type=_FILES[name], headers={"Cache-Control": "no-cache"})
