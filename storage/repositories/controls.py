"""Node controls: the pause switches of processing and delivery (:class:`NodeControl`)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from .._db import insert_ignore, utcnow
from ..schema import NodeControl

__all__ = ["Control", "ControlRepository"]


class Control(StrEnum):
    PROCESSING = "processing"  # paused: no worker claims a new job
    DELIVERY = "delivery"  # paused: no export is sent


class ControlRepository:
    """Control rows; a missing row means "running". The caller owns the transaction."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def paused(self, control: Control | str) -> bool:
        return bool(self.session.scalar(select(NodeControl.paused).where(
            NodeControl.name == str(Control(control)))))

    def all(self) -> dict[str, NodeControl | None]:
        rows = {row.name: row for row in self.session.scalars(select(NodeControl))}
        return {str(c): rows.get(str(c)) for c in Control}

    def set(self, control: Control | str, *, paused: bool, actor: str, reason: str = "",
            now: datetime | None = None) -> NodeControl:
        """Pause or resume ``control``; return its row."""
        name = str(Control(control))
        now = now or utcnow()
        values = dict(paused=paused, actor=actor[:64], reason=reason[:1000], changed_at=now)
        insert_ignore(self.session, NodeControl, dict(name=name, **values), ("name",))
        row = self.session.scalars(select(NodeControl).where(NodeControl.name == name)
                                   .with_for_update()
                                   .execution_options(populate_existing=True)).one()
        for key, value in values.items():
            setattr(row, key, value)
        self.session.flush()
        return row
