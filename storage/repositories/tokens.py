"""HTTP API tokens: created (shown once), checked by their SHA-256, listed, revoked."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from .._db import utcnow
from ..errors import StorageError
from ..schema import ApiToken, TokenRole

__all__ = ["TOKEN_PREFIX", "TokenInfo", "TokenRepository"]

#: Tokens start with it, so a leaked one is recognisable (secret scanners, logs).
TOKEN_PREFIX = "pacsnode_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_LAST_USED_GRANULARITY = timedelta(minutes=1)  # not a write per request


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class TokenInfo:
    """A token as listed: never the token itself."""

    name: str
    role: TokenRole
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def _info(row: ApiToken) -> TokenInfo:
    return TokenInfo(row.name, TokenRole(row.role), row.created_at, row.last_used_at,
                     row.revoked_at)


class TokenRepository:
    """Tokens are 256-bit random strings; the index keeps their SHA-256 only (a slow hash
    adds nothing for a secret of that entropy)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def create(self, name: str, role: TokenRole | str) -> str:
        """Add a token; return it (the only time it can be seen).

        Raises:
            ValueError: a bad name or role, or the name is taken.
        """
        if not _NAME.match(name):
            raise ValueError("a token name is 1-64 letters, digits, '.', '_' or '-'")
        role = TokenRole(role)
        if self.session.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
            raise ValueError(f"a token named {name!r} exists; revoke it or pick another name")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        self.session.add(ApiToken(name=name, role=role.value, token_sha256=_digest(token),
                                  created_at=utcnow()))
        self.session.flush()
        return token

    def check(self, token: str) -> TokenRole | None:
        """The role of a valid, unrevoked token, or None."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            return None
        row = self.session.scalar(select(ApiToken).where(
            ApiToken.token_sha256 == _digest(token), ApiToken.revoked_at.is_(None)))
        if row is None:
            return None
        now = utcnow()
        if row.last_used_at is None or now - row.last_used_at > _LAST_USED_GRANULARITY:
            row.last_used_at = now
        return TokenRole(row.role)

    def name_of(self, token: str) -> str | None:
        """The name of a valid, unrevoked token (who did something), or None."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            return None
        return self.session.scalar(select(ApiToken.name).where(
            ApiToken.token_sha256 == _digest(token), ApiToken.revoked_at.is_(None)))

    def list(self) -> list[TokenInfo]:
        return [_info(row) for row in self.session.scalars(
            select(ApiToken).order_by(ApiToken.created_at, ApiToken.id))]

    def revoke(self, name: str) -> TokenInfo:
        """Revoke the token ``name`` (kept, listed as revoked).

        Raises:
            StorageError: no such token.
        """
        row = self.session.scalar(select(ApiToken).where(ApiToken.name == name))
        if row is None:
            raise StorageError(f"no token named {name[:64]!r}")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
        return _info(row)
