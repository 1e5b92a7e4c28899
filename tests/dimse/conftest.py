"""Fixtures of the DIMSE tests: the real SCP in-process on a free port, over a temp store
and a migrated temp SQLite index (helpers in ``dimse_helpers``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import config as pydicom_config
from pynetdicom import _config

from pacs_node.config import NodeSettings
from pacs_node.dimse import DimseServer
from storage import FileStore, create_engine_for, migrate, session_factory

from .dimse_helpers import AE_TITLE, Node, free_port


@pytest.fixture(autouse=True)
def _restore_process_switches() -> Iterator[None]:
    """Starting a server flips process-wide logging/validation switches (and some tests
    flip pynetdicom's chunked modes): put them back for the other test packages."""
    names = ("LOG_REQUEST_IDENTIFIERS", "LOG_RESPONSE_IDENTIFIERS",
             "STORE_SEND_CHUNKED_DATASET", "STORE_RECV_CHUNKED_DATASET")
    saved = {name: getattr(_config, name) for name in names}
    mode = pydicom_config.settings.reading_validation_mode
    yield
    for name, value in saved.items():
        setattr(_config, name, value)
    pydicom_config.settings.reading_validation_mode = mode


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Factory: start an SCP with ``NodeSettings(**overrides)``; all are stopped at the end."""
    started: list[Node] = []
    counter = iter(range(1000))

    def make(*, on_stored: Callable[[str], None] | None = None,
             move_destinations: dict[str, Any] | None = None, **overrides: Any) -> Node:
        folder = tmp_path / f"node{next(counter)}"
        folder.mkdir()
        engine = create_engine_for(f"sqlite:///{folder / 'index.db'}")
        migrate(engine)
        sessions = session_factory(engine)
        store = FileStore(folder / "store")
        values: dict[str, Any] = {"ae_title": AE_TITLE, "dimse_host": "127.0.0.1",
                                  "dimse_port": free_port(), **overrides}
        settings = NodeSettings(**values)
        nudged: list[str] = []
        server = DimseServer(settings, store, sessions, on_stored=on_stored or nudged.append,
                             move_destinations=move_destinations)
        node = Node(server, settings, store, sessions, engine, folder, nudged)
        try:
            server.start()
        except BaseException:
            engine.dispose()
            raise
        started.append(node)
        return node

    try:
        yield make
    finally:
        for node in started:
            node.server.stop()
            node.engine.dispose()


@pytest.fixture
def node(make_node: Callable[..., Node]) -> Node:
    """An SCP with default settings (any calling AE)."""
    return make_node()
