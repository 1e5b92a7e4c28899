"""The node's index and file store, opened from its settings: what ``serve`` builds on and
what every ``pacs-node`` command that reads or writes the index needs. Apart from
:mod:`pacs_node.node` so that those commands do not import the pipeline (and torch)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from storage import FileStore, create_engine_for, migrate, session_factory

from .config import Settings

__all__ = ["NodeStartError", "Storage", "open_storage"]

log = logging.getLogger(__name__)


class NodeStartError(RuntimeError):
    """The node cannot start (occupied port, unusable store...); the message says why."""


@dataclass
class Storage:
    engine: Engine
    sessions: sessionmaker[Session]
    store: FileStore


def open_storage(settings: Settings, *, clean: bool = True) -> Storage:
    """Engine (migrated), session factory and file store of ``settings``.

    Args:
        clean: remove temp files left by interrupted writes. Only a process starting the
            node may: a command run beside a running node (``token``, ``batch``, ``remote
            test``) would delete the temp files of writes in progress.
    """
    root = Path(settings.storage.root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NodeStartError(f"storage.root {root} cannot be created: {exc.strerror}") from None
    engine = create_engine_for(settings.storage.database_url)
    migrate(engine)
    store = FileStore(root)
    removed = store.remove_temp_files() if clean else 0
    if removed:
        log.info("removed %d left-over temporary files from the store", removed)
    return Storage(engine, session_factory(engine), store)
