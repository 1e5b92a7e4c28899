"""Bearer-token authorization of the HTTP layer (when ``http.auth`` is on).

Tokens are made with ``pacs-node token create`` and kept as SHA-256 only
(:class:`storage.TokenRepository`). A role grants permissions: ``reader`` searches and
retrieves (QIDO-RS, WADO-RS), ``writer`` stores (STOW-RS), ``admin`` does everything (and
the admin API). No token or an unknown one: 401 with ``WWW-Authenticate: Bearer``
(RFC 6750); a token whose role lacks the permission: 403. A browser signed in at ``/login``
carries its token in a cookie, accepted for reading only."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from fastapi import HTTPException, Request

from storage import TokenRepository, TokenRole, run_write

__all__ = ["COOKIE", "Permission", "require", "role_of", "token_of"]

#: The cookie of a browser signed in at /login.
COOKIE = "pacsnode_session"
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
    """The request's token: a bearer token, or for reading (GET, HEAD) the cookie of a
    browser signed in at ``/login`` (:mod:`pacs_node.http.session`)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token:
        return token
    if request.method in _SAFE:
        return request.cookies.get(COOKIE) or None
    return None


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
