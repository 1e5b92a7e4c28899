"""Bearer-token authorization of the HTTP layer (when ``http.auth`` is on).

Tokens are made with ``pacs-node token create`` and kept as SHA-256 only
(:class:`storage.TokenRepository`). A role grants permissions: ``reader`` searches and
retrieves (QIDO-RS, WADO-RS), ``writer`` stores (STOW-RS), ``admin`` does everything (and
the admin API). No token or an unknown one: 401 with ``WWW-Authenticate: Bearer``
(RFC 6750); a token whose role lacks the permission: 403."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from fastapi import HTTPException, Request

from storage import TokenRepository, TokenRole, run_write

__all__ = ["Permission", "require"]


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


def require(permission: Permission) -> Callable[[Request], None]:
    """A FastAPI dependency: the request must carry a token granting ``permission``."""

    def check(request: Request) -> None:
        if not request.app.state.settings.http.auth:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized("a bearer token is required (pacs-node token create)")
        sessions = request.app.state.sessions
        role = run_write(sessions, lambda session: TokenRepository(session).check(token))
        if role is None:
            raise _unauthorized("the token is not valid (unknown or revoked)", "invalid_token")
        if permission not in _GRANTED[role]:
            raise HTTPException(403, f"a {role.value} token may not {permission.value}")

    return check
