"""Signing a browser in when ``http.auth`` is on: the viewer at ``/viewer`` (and the
admin pages) cannot add an ``Authorization`` header to the requests OHIF makes itself.

``GET /login`` is a form asking for a token (``pacs-node token create``);
``POST /api/v1/session`` checks it and keeps it in an HttpOnly cookie (``SameSite=Lax``,
``Secure`` over HTTPS) for :data:`SESSION_HOURS`, then sends the browser on to where it was
going; ``POST /api/v1/session/logout`` forgets it. The cookie is accepted for reading
(GET and HEAD, :func:`pacs_node.http.auth.token_of`) and for the changes the node's own
admin pages ask for (with the ``X-PACS-Node-Request: 1`` header and the node's own
``Origin``): a page on another site that makes the browser post to the node carries no
credential that could store or change anything.
A revoked token stops working in the browser at its next request, as it does elsewhere.
"""

from __future__ import annotations

import html
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from .auth import COOKIE, role_of

__all__ = ["SESSION_HOURS", "login_url", "router"]

SESSION_HOURS = 12
_DEFAULT_NEXT = "/viewer/"
_PAGE_HEADERS = {"Cache-Control": "no-store",
                 "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                            "form-action 'self'; frame-ancestors 'none'"}

router = APIRouter(tags=["Session"])


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this node only (no open redirect)."""
    if (not target or not target.startswith("/") or target.startswith("//")
            or "\\" in target or any(ord(c) < 0x21 for c in target) or len(target) > 2048):
        return _DEFAULT_NEXT
    return target


def login_url(request: Request) -> str:
    """``/login`` with the current path and query as where to go back to."""
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return f"/login?next={quote(here, safe='')}"


def _page(next_path: str, message: str = "", status: int = 200) -> HTMLResponse:
    note = f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in - pacs-node</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; background: #10151c; color: #e6e9ee;
       display: flex; justify-content: center; margin-top: 12vh; }}
form {{ background: #1b232e; padding: 2rem; border-radius: 8px; width: 26rem; }}
label, input, button {{ display: block; width: 100%; box-sizing: border-box; }}
input {{ margin: .5rem 0 1rem; padding: .5rem; font-family: monospace; }}
button {{ padding: .6rem; }}
.error {{ color: #ff8a80; }}
.hint {{ color: #9aa5b1; font-size: .9rem; }}
</style></head>
<body><form method="post" action="/api/v1/session">
<h1>pacs-node</h1>
{note}
<label for="token">Access token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required
       autofocus>
<input type="hidden" name="next" value="{html.escape(next_path)}">
<button type="submit">Sign in</button>
<p class="hint">An administrator creates one with
<code>pacs-node token create --name NAME --role reader</code>.</p>
</form></body></html>
"""
    return HTMLResponse(body, status_code=status, headers=_PAGE_HEADERS)


@router.get("/login", include_in_schema=False)
async def login_page(next: str | None = None) -> Response:  # noqa: A002 - the query key
    return _page(safe_next(next))


@router.post("/api/v1/session", summary="Sign a browser in with a token (form post)",
             status_code=303, responses={401: {"description": "the token is not valid"}})
def sign_in(request: Request, token: Annotated[str, Form(max_length=256)],
                  next: Annotated[str, Form(max_length=2048)] = _DEFAULT_NEXT  # noqa: A002
                  ) -> Response:
    target = safe_next(next)
    if role_of(request, token.strip()) is None:
        return _page(target, "That token is not valid (unknown or revoked).", status=401)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, token.strip(), max_age=SESSION_HOURS * 3600, path="/",
                        httponly=True, samesite="lax", secure=request.url.scheme == "https")
    return response


@router.post("/api/v1/session/logout", summary="Sign a browser out", status_code=303)
async def sign_out() -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response
