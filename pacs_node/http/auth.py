"""Bearer-token authorization of the HTTP layer (when ``http.auth`` is on).

Tokens are made with ``pacs-node token create`` and kept as SHA-256 only
(:class:`storage.TokenRepository`). A role grants permissions: ``reader`` searches and
retrieves (QIDO-RS, WADO-RS), ``writer`` stores (STOW-RS), ``admin`` does everything (and
the admin API). No token or an unknown one: 401 with ``WWW-Authenticate: Bearer``
(RFC 6750); a token whose role lacks the permission: 403. A browser signed in at ``/login``
carries its token in a cookie, accepted for reading (GET, HEAD) and, for the admin pages'
own requests, for changes: an unsafe method is authorised by the cookie only when the
request carries :data:`REQUEST_HEADER` (``X-PACS-Node-Request: 1``, which a cross-site form
cannot send and a cross-site script may not without a CORS preflight the node refuses) and,
when it has an ``Origin`` header, that origin is the node's own. Bearer tokens work for
every method, as before."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from fastapi import HTTPException, Request

from storage import TokenRepository, TokenRole, run_write

__all__ = ["COOKIE", "REQUEST_HEADER", "Permission", "actor_of", "require", "role_of",
           "token_of"]

#: The cookie of a browser signed in at /login.
COOKIE = "pacsnode_session"
#: The header a page of the node adds to its own API calls (CSRF defence, see above).
REQUEST_HEADER = "X-PACS-Node-Request"
_SAFE = frozenset({"GET", "HEAD"})


class Permission(StrEnum):
    READ = "read"
    STORE = "store"
    ADMIN = "admin"


_GRANTED = {TokenRole.READER: {Permission.READ},
            TokenRole.WRITER: {Permission.STORE},
            TokenRole.ADMIN: set(Permission)}
_REALM = 'Bearer realm="pacs-node"'


def _unauthorized(detail: str, error: str | None = None) -> HTTPException:
    challenge = _REALM + (f', error="{error}"' if error else "")
    return HTTPException(401, detail, headers={"WWW-Authenticate": challenge})


def token_of(request: Request) -> str | None:
    """The request's token: a bearer token, or the cookie of a browser signed in at
    ``/login`` (:mod:`pacs_node.http.session`) for reading (GET, HEAD), or for a change
    the node's own page asked for (:func:`_same_site_request`)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token:
        return token
    if request.method in _SAFE or _same_site_request(request):
        return request.cookies.get(COOKIE) or None
    return None


def _same_site_request(request: Request) -> bool:
    """An unsafe request sent by the node's own page: it carries :data:`REQUEST_HEADER`
    and no ``Origin`` other than the node's own (scheme, host and port the browser used)."""
    if request.headers.get(REQUEST_HEADER) != "1":
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    return bool(host) and origin == f"{request.url.scheme}://{host}"


def actor_of(request: Request) -> str:
    """Who is acting, for the records: the token's name, or ``local`` with auth off."""
    if not request.app.state.settings.http.auth:
        return "local"
    token = token_of(request)
    if not token:
        return "unknown"
    sessions = request.app.state.sessions
    name = run_write(sessions, lambda session: TokenRepository(session).name_of(token))
    return name or "unknown"


def role_of(request: Request, token: str | None) -> TokenRole | None:
    """The role of a valid, unrevoked token, or None (blocking: a database read)."""
    if not token:
        return None
    sessions = request.app.state.sessions
    return run_write(sessions, lambda session: TokenRepository(session).check(token))


def require(permission: Permission) -> Callable[[Request], None]:
    """A FastAPI dependency: the request must carry a token granting ``permission``."""

    def check(request: Request) -> None:
        if not request.app.state.settings.http.auth:
            return
        token = token_of(request)
        if token is None:
            raise _unauthorized("a bearer token is required (pacs-node token create)")
        role = role_of(request, token)
        if role is None:
            raise _unauthorized("the token is not valid (unknown or revoked)", "invalid_token")
        if permission not in _GRANTED[role]:
            raise HTTPException(403, f"a {role.value} token may not {permission.value}")

    return check
