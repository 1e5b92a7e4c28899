"""DICOM over TLS: the node's TLS listener against real dcmtk clients, delivery to a TLS
destination, and bad TLS settings failing at start with the key named.

The certificates are made here with ``openssl``: a CA, the node's certificate (for
127.0.0.1), a good client certificate, one from another CA and an expired one.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy.orm import Session

import pacs_node.tls
from pacs_node.config import (
    ConfigError,
    DeliverySettings,
    Destination,
    NodeSettings,
    Settings,
    load_settings,
)
from pacs_node.delivery import DeliveryService
from pacs_node.dimse import DimseServer
from pacs_node.node import Node as RunningNode
from pacs_node.node import NodeStartError
from pacs_node.tls import destination_contexts, server_context
from storage import (
    Export,
    ExportRepository,
    FileStore,
    InstanceMeta,
    InstanceRepository,
    InstanceSource,
    create_engine_for,
    ingest,
    migrate,
    run_write,
    session_factory,
)

from .dimse_helpers import (
    AE_TITLE,
    SCU_AE,
    Node,
    RssSampler,
    free_port,
    make_instance,
    part10,
    run_dcmtk,
    uid,
    wait_for,
)

# ---------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Pki:
    folder: Path

    def __getitem__(self, name: str) -> Path:
        return self.folder / name


def _openssl(folder: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True,
                   timeout=60)


def _make_ca(folder: Path, name: str) -> None:
    _openssl(folder, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "30",
             "-subj", f"/CN=pacs-node test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")


def _issue(folder: Path, ca: str, name: str, *, san: str | None = None,
           expired: bool = False) -> None:
    _openssl(folder, "req", "-newkey", "rsa:2048", "-nodes", "-sha256", "-keyout",
             f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
    if not expired:
        extra = []
        if san is not None:
            (folder / f"{name}.ext").write_text(f"subjectAltName={san}\n")
            extra = ["-extfile", f"{name}.ext"]
        _openssl(folder, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem",
                 "-CAkey", f"{ca}.key", "-CAcreateserial", "-sha256", "-days", "30",
                 "-out", f"{name}.pem", *extra)
        return
    # `openssl ca` is the one that sets both dates (2020-01-01 to 2020-01-02).
    (folder / "newcerts").mkdir(exist_ok=True)
    (folder / "index.txt").write_text("")
    (folder / "serial").write_text("1000\n")
    (folder / "ca.cnf").write_text(
        "[ca]\ndefault_ca = ca_default\n[ca_default]\ndatabase = index.txt\n"
        "new_certs_dir = newcerts\nserial = serial\ndefault_md = sha256\n"
        "policy = policy_any\nunique_subject = no\n[policy_any]\ncommonName = supplied\n")
    _openssl(folder, "ca", "-batch", "-config", "ca.cnf", "-cert", f"{ca}.pem", "-keyfile",
             f"{ca}.key", "-in", f"{name}.csr", "-out", f"{name}.pem", "-notext",
             "-startdate", "20200101000000Z", "-enddate", "20200102000000Z")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    _make_ca(folder, "ca")
    _make_ca(folder, "other-ca")
    _issue(folder, "ca", "server", san="DNS:localhost,IP:127.0.0.1")
    _issue(folder, "ca", "client")
    _issue(folder, "other-ca", "stranger")
    _issue(folder, "ca", "expired", expired=True)
    _openssl(folder, "pkey", "-in", "client.key", "-out", "encrypted.key", "-aes256",
             "-passout", "pass:secret")
    return Pki(folder)


def _node_tls(pki: Pki, **overrides: Any) -> dict[str, Any]:
    return {"enabled": True, "port": free_port(), "certificate": pki["server.pem"],
            "key": pki["server.key"], "ca_bundle": pki["ca.pem"], **overrides}


# ---------------------------------------------------------------- the TLS listener


@pytest.fixture
def make_tls_node(tmp_path: Path, pki: Pki) -> Iterator[Callable[..., Node]]:
    """Factory: the real SCP in-process as the TLS listener on a free loopback port (as
    ``conftest.make_node``, plus ``node.tls``); all are stopped at the end."""
    started: list[Node] = []
    counter = iter(range(1000))

    def make(tls: dict[str, Any] | None = None, **overrides: Any) -> Node:
        folder = tmp_path / f"tls-node{next(counter)}"
        folder.mkdir()
        engine = create_engine_for(f"sqlite:///{folder / 'index.db'}")
        migrate(engine)
        sessions = session_factory(engine)
        store = FileStore(folder / "store")
        settings = NodeSettings(ae_title=AE_TITLE, dimse_host="127.0.0.1",
                                dimse_port=free_port(), tls=_node_tls(pki, **(tls or {})),
                                **overrides)
        nudged: list[str] = []
        server = DimseServer(settings, store, sessions, on_stored=nudged.append,
                             ssl_context=server_context(settings.tls))
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


def _client(pki: Pki, name: str | None) -> tuple[str, ...]:
    """dcmtk's TLS options for a client presenting ``name``'s certificate (None: plain
    TCP; "anonymous": TLS without a client certificate). The node's is always checked."""
    if name is None:
        return ()
    if name == "anonymous":
        return ("+tla", "+cf", str(pki["ca.pem"]))
    return ("+tls", str(pki[f"{name}.key"]), str(pki[f"{name}.pem"]), "+cf",
            str(pki["ca.pem"]))


def _echo(node: Node, pki: Pki, client: str | None) -> subprocess.CompletedProcess[str]:
    return run_dcmtk("echoscu", "-aet", SCU_AE, "-aec", AE_TITLE, *_client(pki, client),
                     "127.0.0.1", str(node.port), timeout=30)


def _store(node: Node, pki: Pki, client: str | None, file: Path
           ) -> subprocess.CompletedProcess[str]:
    return run_dcmtk("storescu", "-aet", SCU_AE, "-aec", AE_TITLE, *_client(pki, client),
                     "127.0.0.1", str(node.port), str(file), timeout=30)


def _instance_file(tmp_path: Path, sop: int) -> tuple[Path, str]:
    ds = make_instance(study=7, series=1, sop=sop)
    path = tmp_path / f"instance-{sop}.dcm"
    path.write_bytes(part10(ds))
    return path, str(ds.SOPInstanceUID)


def test_good_client_certificate_echoes_and_stores_over_tls(
        make_tls_node: Callable[..., Node], pki: Pki, tmp_path: Path) -> None:
    node = make_tls_node()
    echo = _echo(node, pki, "client")
    assert echo.returncode == 0, echo.stderr
    file, sop_uid = _instance_file(tmp_path, 1)
    result = _store(node, pki, "client", file)
    assert result.returncode == 0, result.stderr
    assert [i.SOPInstanceUID for i in node.instances(SOPInstanceUID=sop_uid)] == [sop_uid]
    assert node.nudged == [uid(7)]


@pytest.mark.parametrize("client", [None, "stranger", "expired", "anonymous"],
                         ids=["plain-tcp", "certificate-from-another-ca",
                              "expired-certificate", "no-certificate"])
def test_refused_client_stores_nothing_and_the_node_keeps_serving(
        make_tls_node: Callable[..., Node], pki: Pki, tmp_path: Path, client: str | None,
        caplog: pytest.LogCaptureFixture) -> None:
    # One association slot: a refused connection that kept its slot would lock out the
    # good client that follows.
    node = make_tls_node(max_associations=1)
    file, sop_uid = _instance_file(tmp_path, 2)
    for _ in range(3):
        assert _echo(node, pki, client).returncode != 0
        assert _store(node, pki, client, file).returncode != 0
    assert node.instances(SOPInstanceUID=sop_uid) == []
    assert node.files() == []
    refusals = [r for r in caplog.records if "TLS handshake" in r.getMessage()]
    assert refusals and all(r.exc_info is None for r in refusals)

    def good_client_served() -> bool:
        return _echo(node, pki, "client").returncode == 0

    wait_for(good_client_served, 5, "the good client to be served after the refusals")
    assert _store(node, pki, "client", file).returncode == 0
    assert len(node.instances(SOPInstanceUID=sop_uid)) == 1


def test_without_a_ca_bundle_clients_need_no_certificate(
        make_tls_node: Callable[..., Node], pki: Pki) -> None:
    node = make_tls_node(tls={"ca_bundle": None})
    assert _echo(node, pki, "anonymous").returncode == 0
    assert _echo(node, pki, "stranger").returncode == 0  # not asked for, not checked
    assert _echo(node, pki, None).returncode != 0  # still TLS only


def test_a_silent_connection_does_not_hold_up_the_tls_listener(
        make_tls_node: Callable[..., Node], pki: Pki) -> None:
    """pynetdicom would shake hands in its accept thread: one peer that connects and
    says nothing would keep every other client waiting."""
    node = make_tls_node()
    silent = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(3)]
    try:
        result = run_dcmtk("echoscu", "-to", "5", "-aet", SCU_AE, "-aec", AE_TITLE,
                           *_client(pki, "client"), "127.0.0.1", str(node.port), timeout=10)
        assert result.returncode == 0, result.stderr
    finally:
        for sock in silent:
            sock.close()


def test_a_handshake_that_stalls_is_dropped_and_frees_its_slot(
        make_tls_node: Callable[..., Node], pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pacs_node.tls, "HANDSHAKE_TIMEOUT_S", 0.5)
    node = make_tls_node(max_associations=1)
    with socket.create_connection(("127.0.0.1", node.port)) as stalled:
        stalled.sendall(b"\x16\x03\x01\x02\x00")  # the start of a ClientHello, then nothing
        stalled.settimeout(5)
        assert stalled.recv(1024) == b""  # closed by the node, not by our timeout

    def good_client_served() -> bool:
        return _echo(node, pki, "client").returncode == 0

    wait_for(good_client_served, 5, "the good client to get the freed slot")


def _tls_echo(node: Node, pki: Pki, *, maximum: ssl.TLSVersion) -> bool:
    context = ssl.create_default_context(cafile=str(pki["ca.pem"]))
    context.load_cert_chain(str(pki["client.pem"]), str(pki["client.key"]))
    context.maximum_version = maximum
    ae = AE(ae_title=SCU_AE)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 10
    ae.add_requested_context(Verification, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", node.port, ae_title=AE_TITLE,
                         tls_args=(context, "127.0.0.1"))
    if not assoc.is_established:
        return False
    try:
        return int(assoc.send_c_echo().Status) == 0
    finally:
        assoc.release()


def test_min_version_refuses_older_tls(make_tls_node: Callable[..., Node], pki: Pki) -> None:
    default = make_tls_node()
    assert _tls_echo(default, pki, maximum=ssl.TLSVersion.TLSv1_2)
    assert _tls_echo(default, pki, maximum=ssl.TLSVersion.TLSv1_3)
    strict = make_tls_node(tls={"min_version": "1.3"})
    assert not _tls_echo(strict, pki, maximum=ssl.TLSVersion.TLSv1_2)
    assert _tls_echo(strict, pki, maximum=ssl.TLSVersion.TLSv1_3)


# ---------------------------------------------------------------- the whole node


def _settings(tmp_path: Path, pki: Pki, tls: dict[str, Any] | None = None,
              destinations: list[dict[str, Any]] | None = None) -> Settings:
    return Settings(
        node={"ae_title": AE_TITLE, "dimse_port": free_port(),
              "tls": _node_tls(pki, **(tls or {}))},
        storage={"root": tmp_path / "store", "database_url": f"sqlite:///{tmp_path / 'i.db'}"},
        study={"stable_seconds": 3600},
        destinations=destinations or [])


def _refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_node_serves_the_plain_and_the_tls_port_side_by_side(
        tmp_path: Path, pki: Pki) -> None:
    settings = _settings(tmp_path, pki)
    node = RunningNode(settings)
    try:
        node.start()
        assert node.dimse is not None and node.dimse_tls is not None
        plain = run_dcmtk("echoscu", "-aec", AE_TITLE, "127.0.0.1",
                          str(settings.node.dimse_port), timeout=30)
        assert plain.returncode == 0, plain.stderr
        secure = run_dcmtk("echoscu", "-aec", AE_TITLE, *_client(pki, "client"),
                           "127.0.0.1", str(settings.node.tls.port), timeout=30)
        assert secure.returncode == 0, secure.stderr
    finally:
        node.stop()


def test_node_without_the_plain_listener_opens_only_the_tls_port(
        tmp_path: Path, pki: Pki) -> None:
    settings = _settings(tmp_path, pki, tls={"plain_listener": False})
    node = RunningNode(settings)
    try:
        node.start()
        assert node.dimse is None
        assert _refuses_connections(settings.node.dimse_port)
        secure = run_dcmtk("echoscu", "-aec", AE_TITLE, *_client(pki, "client"),
                           "127.0.0.1", str(settings.node.tls.port), timeout=30)
        assert secure.returncode == 0, secure.stderr
    finally:
        node.stop()


# ---------------------------------------------------------------- bad TLS settings


@pytest.mark.parametrize(("tls", "key"), [
    ({"certificate": "missing.pem"}, "node.tls.certificate"),
    ({"key": "missing.key"}, "node.tls.key"),
    ({"ca_bundle": "missing.pem"}, "node.tls.ca_bundle"),
    ({"key": "client.key"}, "node.tls.key"),  # not the certificate's key
    ({"key": "ca.pem"}, "node.tls.key"),  # not a key
    ({"certificate": "server.key"}, "node.tls.certificate"),  # not a certificate
    ({"ca_bundle": "client.key"}, "node.tls.ca_bundle"),  # no certificate in it
    ({"key": "encrypted.key"}, "node.tls.key"),  # would prompt for a password
], ids=["missing-certificate", "missing-key", "missing-ca-bundle", "key-of-another",
        "key-not-a-key", "certificate-not-a-certificate", "ca-bundle-without-ca",
        "encrypted-key"])
def test_bad_listener_tls_fails_at_start_naming_the_key(
        tmp_path: Path, pki: Pki, tls: dict[str, str], key: str) -> None:
    settings = _settings(tmp_path, pki, tls={k: pki[v] for k, v in tls.items()})
    node = RunningNode(settings)
    try:
        with pytest.raises(NodeStartError, match=key.replace(".", r"\.")):
            node.start()
        assert node.dimse is None and node.dimse_tls is None
        assert node.storage is None  # refused before anything was opened
    finally:
        node.stop()


def test_unreadable_key_fails_naming_the_key(tmp_path: Path, pki: Pki) -> None:
    key = tmp_path / "locked.key"
    key.write_bytes(pki["server.key"].read_bytes())
    key.chmod(0)
    if os.access(key, os.R_OK):
        pytest.skip("running as root: permissions do not stop reading")
    settings = NodeSettings(tls=_node_tls(pki, key=key))
    with pytest.raises(ConfigError, match=r"node\.tls\.key: .* cannot be read"):
        server_context(settings.tls)


def test_bad_destination_tls_fails_at_start_naming_the_key(tmp_path: Path, pki: Pki) -> None:
    destination = {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104,
                   "tls": {"enabled": True, "ca_bundle": pki["ca.pem"],
                           "certificate": pki["client.pem"], "key": pki["missing.key"]}}
    node = RunningNode(_settings(tmp_path, pki, destinations=[destination]))
    try:
        with pytest.raises(NodeStartError, match=r"destinations\.0\.tls\.key"):
            node.start()
    finally:
        node.stop()


@pytest.mark.parametrize(("text", "key"), [
    ("node:\n  tls:\n    enabled: true\n", "node.tls.certificate"),
    ("node:\n  dimse_port: 11112\n  tls:\n    enabled: true\n    port: 11112\n"
     "    certificate: a.pem\n    key: a.key\n", "node.tls.port"),
    ("node:\n  tls:\n    plain_listener: false\n", "node.tls.plain_listener"),
    ("node:\n  tls:\n    min_version: '1.1'\n", "node.tls.min_version"),
    ("destinations:\n  - {name: p, ae_title: P, host: h, port: 104,\n"
     "     tls: {enabled: true, certificate: a.pem}}\n", "tls.key"),
], ids=["enabled-without-files", "same-port-as-plain", "nothing-listening",
        "tls-1.1", "certificate-without-key"])
def test_inconsistent_tls_settings_are_refused_at_load(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, key: str) -> None:
    for name in [n for n in os.environ if n.upper().startswith("PACS_NODE__")]:
        monkeypatch.delenv(name)
    config = tmp_path / "config.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(config)


def test_tls_settings_come_from_the_environment_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pki: Pki) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("node:\n  ae_title: PACSNODE\n")
    monkeypatch.setenv("PACS_NODE__NODE__TLS__ENABLED", "true")
    monkeypatch.setenv("PACS_NODE__NODE__TLS__CERTIFICATE", str(pki["server.pem"]))
    monkeypatch.setenv("PACS_NODE__NODE__TLS__KEY", str(pki["server.key"]))
    tls = load_settings(config).node.tls
    assert tls.enabled and tls.port == 2762 and tls.certificate == pki["server.pem"]
    assert tls.ca_bundle is None and tls.min_version == "1.2" and tls.plain_listener


# ---------------------------------------------------------------- delivery over TLS


@dataclass
class Sender:
    store: FileStore
    sessions: Any

    def queue(self, sop: int, destination: str) -> int:
        data = part10(make_instance(study=8, series=1, sop=sop))
        meta = InstanceMeta.read(data)
        ingest(self.store, self.sessions, data, meta, source=InstanceSource.PRODUCED)

        def work(session: Session) -> int:
            instance = InstanceRepository(session).get(meta.sop_instance_uid)
            assert instance is not None
            return ExportRepository(session).add(instance.id, [destination])[0].id

        return run_write(self.sessions, work)

    def export(self, export_id: int) -> Export:
        with self.sessions() as session:
            row = session.get(Export, export_id)
            assert row is not None
            session.expunge(row)
            return row


@pytest.fixture
def sender(tmp_path: Path) -> Iterator[Sender]:
    engine = create_engine_for(f"sqlite:///{tmp_path / 'sender.db'}")
    migrate(engine)
    try:
        yield Sender(FileStore(tmp_path / "sender-store"), session_factory(engine))
    finally:
        engine.dispose()


def _destination(node: Node, pki: Pki, **tls: Any) -> Destination:
    values = {"enabled": True, "ca_bundle": pki["ca.pem"], "certificate": pki["client.pem"],
              "key": pki["client.key"], **tls}
    return Destination(name="secure-pacs", ae_title=AE_TITLE, host="127.0.0.1",
                       port=node.port, tls=values)


def _deliver(sender: Sender, destination: Destination) -> int:
    service = DeliveryService(sender.sessions, sender.store, [destination],
                              DeliverySettings(max_attempts=3), calling_ae="PACSNODE")
    try:
        return service.deliver_once()
    finally:
        service.stop()


def test_delivery_to_a_tls_destination_stores_there(
        make_tls_node: Callable[..., Node], pki: Pki, sender: Sender) -> None:
    receiver = make_tls_node()
    export_id = sender.queue(1, "secure-pacs")
    assert _deliver(sender, _destination(receiver, pki)) == 1
    assert sender.export(export_id).state == "sent"
    assert len(receiver.instances(SOPInstanceUID=uid(8, 1, 1))) == 1


@pytest.mark.parametrize("tls", [{"ca_bundle": "other-ca.pem"}, {"enabled": False},
                                 {"certificate": "stranger.pem", "key": "stranger.key"}],
                         ids=["destination-not-trusted", "plain-to-tls-port",
                              "our-certificate-not-trusted-there"])
def test_delivery_that_tls_refuses_is_retried_later_not_sent(
        make_tls_node: Callable[..., Node], pki: Pki, sender: Sender,
        tls: dict[str, Any]) -> None:
    receiver = make_tls_node()
    export_id = sender.queue(2, "secure-pacs")
    overrides = {k: (pki[v] if isinstance(v, str) else v) for k, v in tls.items()}
    assert _deliver(sender, _destination(receiver, pki, **overrides)) == 0
    export = sender.export(export_id)
    assert export.state == "pending" and export.attempts == 1
    assert receiver.instances(SOPInstanceUID=uid(8, 1, 2)) == []


def test_destination_contexts_only_for_tls_destinations(pki: Pki) -> None:
    plain = Destination(name="plain", ae_title="A", host="h", port=104)
    secure = Destination(name="secure", ae_title="B", host="h", port=2762,
                         tls={"enabled": True, "ca_bundle": pki["ca.pem"]})
    contexts = destination_contexts([plain, secure])
    assert list(contexts) == ["secure"]
    assert contexts["secure"].verify_mode == ssl.CERT_REQUIRED
    assert contexts["secure"].check_hostname
    assert contexts["secure"].minimum_version >= ssl.TLSVersion.TLSv1_2


def test_a_pdu_over_the_limit_is_closed_unread_over_tls_too(
        make_tls_node: Callable[..., Node], pki: Pki) -> None:
    """The PDU guard peeked at the header, which a TLS socket cannot do: over TLS an
    A-ASSOCIATE-RQ declaring 1 GiB was read into memory for as long as bytes came."""
    node = make_tls_node()
    context = ssl.create_default_context(cafile=str(pki["ca.pem"]))
    context.load_cert_chain(str(pki["client.pem"]), str(pki["client.key"]))
    rss = RssSampler(os.getpid())
    rss.start()
    try:
        with socket.create_connection(("127.0.0.1", node.port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(b"\x01\x00" + struct.pack(">I", 1 << 30))
            started, sent = time.monotonic(), 0
            try:
                while sent < 256 << 20 and time.monotonic() - started < 5:
                    sock.sendall(b"\x00" * (1 << 20))
                    sent += 1 << 20
                sock.settimeout(5)
                while sock.recv(65536):
                    pass
            except OSError:
                pass  # reset or broken pipe: closed by the node
            closed_after = time.monotonic() - started
    finally:
        rss.stop.set()
        rss.join()
    assert closed_after < 2.0, f"{sent >> 20} MiB taken in {closed_after:.1f} s"
    assert rss.peak - rss.baseline < 128 << 20
    assert _echo(node, pki, "client").returncode == 0
