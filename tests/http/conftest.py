"""Fixtures of the HTTP tests: the node's HTTP app served by uvicorn on a free loopback
port, over a migrated temp SQLite index and a temp store holding a small archive."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from pacs_node.cli import app
from pacs_node.config import Settings
from pacs_node.http import HttpServer, create_app
from storage import FileStore, InstanceMeta, create_engine_for, ingest, migrate, session_factory
from tests.dimse.dimse_helpers import free_port, make_instance, part10, uid

SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.22"


@dataclass
class Web:
    """A running HTTP app and its storage."""

    url: str
    store: FileStore
    sessions: sessionmaker[Session]
    folder: Path
    nudged: list[str]

    def add(self, ds: Dataset) -> None:
        ingest(self.store, self.sessions, part10(ds), InstanceMeta.from_dataset(ds))


def archive() -> list[Dataset]:
    """Three patients, four studies: CR wrists and hands, a DX chest, an SR."""
    return [
        make_instance(1, 1, 1, PatientName="Smith^John", PatientID="P1",
                      StudyDate="20250110", StudyTime="081500", AccessionNumber="A1",
                      BodyPartExamined="WRIST", Modality="CR"),
        make_instance(1, 1, 2, PatientName="Smith^John", PatientID="P1",
                      StudyDate="20250110", StudyTime="081500", AccessionNumber="A1",
                      BodyPartExamined="WRIST", Modality="CR"),
        make_instance(1, 2, 1, PatientName="Smith^John", PatientID="P1",
                      StudyDate="20250110", StudyTime="081500", AccessionNumber="A1",
                      BodyPartExamined="HAND", Modality="CR", SeriesNumber=2),
        make_instance(2, 1, 1, PatientName="Jones-Smithers^Ann", PatientID="P2",
                      StudyDate="20250214", StudyTime="143000", AccessionNumber="A2",
                      BodyPartExamined="CHEST", Modality="DX"),
        make_instance(3, 1, 1, PatientName="Brown^Zoe", PatientID="P3",
                      StudyDate="20250301", StudyTime="091000", AccessionNumber="A3",
                      BodyPartExamined="WRIST", Modality="CR"),
        make_instance(3, 9, 1, PatientName="Brown^Zoe", PatientID="P3",
                      StudyDate="20250301", StudyTime="091000", AccessionNumber="A3",
                      Modality="SR", SOPClassUID=SR_STORAGE, BodyPartExamined=""),
        make_instance(4, 1, 1, PatientName="Brown^Zoe", PatientID="P3",
                      StudyDate="20251231", StudyTime="235900", AccessionNumber="A4",
                      BodyPartExamined="ANKLE", Modality="CR"),
    ]


@pytest.fixture
def make_web(tmp_path: Path) -> Iterator[Callable[..., Web]]:
    """Factory: serve the HTTP app with ``Settings(**overrides)`` over an empty store."""
    servers: list[HttpServer] = []
    engines: list[Any] = []

    def make(**overrides: Any) -> Web:
        folder = tmp_path / f"web{len(servers)}"
        folder.mkdir()
        engine = create_engine_for(f"sqlite:///{folder / 'index.db'}")
        engines.append(engine)
        migrate(engine)
        sessions = session_factory(engine)
        store = FileStore(folder / "store")
        port = free_port()
        node = {"http_host": "127.0.0.1", "http_port": port, **overrides.pop("node", {})}
        settings = Settings(node=node, **overrides)
        nudged: list[str] = []
        app = create_app(settings, sessions, store, on_stored=nudged.append)
        server = HttpServer(app, "127.0.0.1", port)
        server.start()
        servers.append(server)
        return Web(f"http://127.0.0.1:{port}", store, sessions, folder, nudged)

    try:
        yield make
    finally:
        for server in servers:
            server.stop()
        for engine in engines:
            engine.dispose()


@pytest.fixture
def web(make_web: Callable[..., Web]) -> Web:
    """The HTTP app over :func:`archive`."""
    served = make_web()
    for ds in archive():
        served.add(ds)
    return served


__all__ = ["SR_STORAGE", "Web", "archive", "uid"]


@pytest.fixture
def secured(make_web: Callable[..., Web]) -> tuple[Web, Path]:
    """A node with http.auth on, holding one study, and a config file naming its index."""
    web = make_web(http={"auth": True})
    web.add(make_instance(1, 1, 1))
    config = web.folder / "config.yaml"
    config.write_text(f"storage:\n  root: {web.store.root}\n"
                      f"  database_url: 'sqlite:///{web.folder / 'index.db'}'\n")
    return web, config


def create(config: Path, name: str, role: str) -> str:
    out = CliRunner().invoke(app, ["token", "create", "--name", name, "--role", role,
                                   "--config", str(config)])
    assert out.exit_code == 0, out.output
    token = out.stdout.strip().splitlines()[-1]
    assert token.startswith("pacsnode_")
    return token
