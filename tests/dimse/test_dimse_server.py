"""The DimseServer object: construction, start/stop, context manager."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pacs_node.config import NodeSettings
from pacs_node.dimse import DimseServer, StoreStatus
from storage import FileStore, create_engine_for, migrate, session_factory

from .dimse_helpers import AE_TITLE, Node, free_port, make_instance, run_dcmtk, wait_for


def test_constructor_checks_its_arguments(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    sessions = session_factory(create_engine_for(f"sqlite:///{tmp_path / 'index.db'}"))
    with pytest.raises(TypeError, match="settings"):
        DimseServer({"ae_title": "X"}, store, sessions)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="store"):
        DimseServer(NodeSettings(), tmp_path, sessions)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="on_stored"):
        DimseServer(NodeSettings(), store, sessions, on_stored="nudge")  # type: ignore[arg-type]


def test_context_manager_start_stop_and_restart(tmp_path: Path) -> None:
    engine = create_engine_for(f"sqlite:///{tmp_path / 'index.db'}")
    migrate(engine)
    port = free_port()
    server = DimseServer(NodeSettings(ae_title=AE_TITLE, dimse_port=port),
                         FileStore(tmp_path / "store"), session_factory(engine))
    try:
        with server:
            assert server.is_running and server.address == ("127.0.0.1", port)
            with pytest.raises(RuntimeError, match="already running"):
                server.start()
            assert run_dcmtk("echoscu", "-aec", AE_TITLE, "127.0.0.1", str(port)).returncode == 0
        assert not server.is_running
        with pytest.raises(RuntimeError, match="not running"):
            _ = server.port
        server.stop()  # idempotent
        # The port is free again: a restart binds it.
        server.start()
        assert run_dcmtk("echoscu", "-aec", AE_TITLE, "127.0.0.1", str(port)).returncode == 0
    finally:
        server.stop()
        engine.dispose()


def test_port_in_use_fails_at_start(make_node: Callable[..., Node]) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        with pytest.raises(OSError):
            make_node(dimse_port=holder.getsockname()[1])


def test_stop_aborts_open_associations(node: Node) -> None:
    assoc = node.associate([(Verification, [ExplicitVRLittleEndian])])
    assert assoc.is_established
    assert node.send(make_instance(1, 1, 1)) == [StoreStatus.SUCCESS]
    node.server.stop()
    wait_for(lambda: not assoc.is_established, 10, "the open association to end")
    assert assoc.is_aborted
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", node.settings.dimse_port)) != 0
