"""What a re-processing batch changes about its jobs: the model, where results go, and
when its jobs may run (the off-peak window). Read by the pipeline when it claims a job of
a batch, and by the batch runner (pacs_node.batches) that makes those jobs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time
from pathlib import Path

from storage import Batch, BatchState

from .routing import Route, RouteLike

__all__ = ["BatchOptions", "Window", "parse_deliver", "parse_window"]

_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class Window:
    """An off-peak window in the node's local time, ``20:00-06:00``; it may span midnight.
    Equal ends mean the whole day."""

    start: time
    end: time

    def open_at(self, moment: datetime) -> bool:
        now = moment.astimezone().time().replace(tzinfo=None)
        if self.start == self.end:
            return True
        if self.start < self.end:
            return self.start <= now < self.end
        return now >= self.start or now < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def parse_window(text: str | None) -> Window | None:
    """``"20:00-06:00"`` as a :class:`Window`; None for None or "".

    Raises:
        ValueError: not two 24-hour HH:MM times joined by "-".
    """
    if not text:
        return None
    match = _WINDOW.match(text.strip())
    if match is None:
        raise ValueError(f"window {text!r} is not HH:MM-HH:MM (24-hour, e.g. 20:00-06:00)")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    return Window(time(h1, m1), time(h2, m2))


def parse_deliver(text: str) -> tuple[str, Path | None]:
    """``none``, ``destinations`` or ``folder:PATH`` as (mode, folder).

    Raises:
        ValueError: another value, or a folder that is not an absolute path.
    """
    if text in ("none", "destinations"):
        return text, None
    if text.startswith("folder:"):
        folder = Path(text[len("folder:"):])
        if not folder.is_absolute():
            raise ValueError(f"--deliver {text!r}: the folder must be an absolute path")
        return "folder", folder
    raise ValueError(f"--deliver {text!r}: expected none, destinations or folder:PATH")


@dataclass(frozen=True)
class BatchOptions:
    """A batch as its jobs see it."""

    batch_id: int
    state: str
    model: str | None
    deliver: str
    folder: Path | None
    window: Window | None

    @classmethod
    def of(cls, batch: Batch) -> BatchOptions:
        mode, folder = parse_deliver(batch.deliver)
        return cls(batch_id=batch.id, state=batch.state, model=batch.model, deliver=mode,
                   folder=folder, window=parse_window(batch.window))

    def may_run(self, now: datetime) -> bool:
        """Whether a job of the batch may start now: not while the batch is paused, nor
        outside its window (a cancelled batch lets the jobs it queued finish)."""
        if self.state == BatchState.PAUSED:
            return False
        return self.window is None or self.window.open_at(now)

    def routes(self, configured: Sequence[RouteLike]) -> Sequence[RouteLike]:
        """The routes of the batch's jobs: the configured ones when it names no model; the
        route of that name when it names one; else its checkpoint (or ``demo``) for every
        view, inside that model's scope."""
        if self.model is None:
            return configured
        named = [r for r in configured if r.name == self.model]
        return named or [Route(name=f"batch {self.batch_id}", model=self.model)]

    @property
    def delivers(self) -> bool:
        """Whether results go to the configured destinations (``--deliver destinations``)."""
        return self.deliver == "destinations"
