"""Shared fixtures: real PostgreSQL and Redis.

PostgreSQL: the server at 127.0.0.1:5432 (user ``postgres``, database ``test``, trust auth)
when one answers there, or ``PACS_NODE_TEST_POSTGRES_URL`` (an admin URL) when set;
otherwise a throwaway server started from /usr/lib/postgresql/*/bin (``initdb`` +
``pg_ctl``) on a free port in a temp dir, stopped by PID at the end. Set
``PACS_NODE_TEST_POSTGRES=throwaway`` to force the throwaway server. If no server can be
had, the PostgreSQL tests fail: they are never skipped.

Redis: the server at 127.0.0.1:6379 when one answers there, otherwise a throwaway
``redis-server`` (no persistence) on a free port, stopped by PID at the end. A test claims
one of databases 8-15 that is empty (a SET NX claim key, so parallel sessions never share
one) and deletes only the keys left there; no test ever runs FLUSHDB or FLUSHALL.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from storage import create_engine_for

DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ThrowawayPostgres:
    folder: Path
    pid: int
    port: int

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"


def _start_throwaway_postgres() -> ThrowawayPostgres:
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not binaries:
        raise RuntimeError("no PostgreSQL answers on 127.0.0.1:5432 and no "
                           "/usr/lib/postgresql/*/bin/initdb to start one")
    bindir = Path(binaries[-1]).parent
    folder = Path(tempfile.mkdtemp(prefix="pacsnode-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data = folder / "data"
    port = _free_port()
    subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
                    "-A", "trust", "--no-sync"], check=True, capture_output=True)
    subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l",
                    str(folder / "server.log"), "-w", "-t", "60", "-o",
                    f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off",
                    "start"], check=True, capture_output=True)
    pid = int((data / "postmaster.pid").read_text().split()[0])
    _wait_for(lambda: _answers("127.0.0.1", port), 30, "the throwaway PostgreSQL")
    return ThrowawayPostgres(folder, pid, port)


def _stop_throwaway_postgres(server: ThrowawayPostgres) -> None:
    try:
        os.kill(server.pid, signal.SIGINT)  # "fast" shutdown
    except ProcessLookupError:
        pass

    def gone() -> bool:
        try:
            os.kill(server.pid, 0)
        except ProcessLookupError:
            return True
        return False

    try:
        _wait_for(gone, 30, f"PostgreSQL (pid {server.pid}) to stop")
    finally:
        shutil.rmtree(server.folder, ignore_errors=True)


def _accepts(url: str) -> bool:
    """Whether ``url`` logs in (Debian's own cluster answers on 5432 but wants a password)."""
    engine = create_engine_for(url, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """URL of a database on a running server from which test databases are created."""
    explicit = os.environ.get("PACS_NODE_TEST_POSTGRES_URL")
    if explicit:
        yield explicit
        return
    if (os.environ.get("PACS_NODE_TEST_POSTGRES") != "throwaway"
            and _answers("127.0.0.1", 5432) and _accepts(DEFAULT_ADMIN_URL)):
        yield DEFAULT_ADMIN_URL
        return
    server = _start_throwaway_postgres()
    try:
        yield server.admin_url
    finally:
        _stop_throwaway_postgres(server)


@pytest.fixture(scope="session")
def make_postgres_database(postgres_admin_url: str) -> Iterator[Callable[[], str]]:
    """Factory of fresh, empty PostgreSQL databases; all are dropped at the end."""
    admin = create_engine_for(postgres_admin_url, isolation_level="AUTOCOMMIT")
    created: list[str] = []

    def make() -> str:
        name = f"pacsnode_test_{secrets.token_hex(6)}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return make_url(postgres_admin_url).set(database=name).render_as_string(
            hide_password=False)

    try:
        yield make
    finally:
        with admin.connect() as conn:
            for name in created:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_TEST_DBS = (15, 14, 13, 12, 11, 10, 9, 8)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[tuple[str, int]]:
    """The Redis at 127.0.0.1:6379, or a throwaway ``redis-server`` on a free port."""
    if _answers(REDIS_HOST, REDIS_PORT):
        yield REDIS_HOST, REDIS_PORT
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("no Redis answers on 127.0.0.1:6379 and redis-server is not installed")
    port = _free_port()
    process = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port),
                                "--save", "", "--appendonly", "no"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: _answers("127.0.0.1", port), 30, "redis-server")
        yield "127.0.0.1", port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


REDIS_CLAIM_KEY = "pacs-node-tests:claim"  # expires: held while a test uses the database
REDIS_MARK_KEY = "pacs-node-tests:used"  # stays: the keys beside it are test leftovers
REDIS_CLAIM_SECONDS = 3600


def _delete_test_keys(client: Any, token: str) -> None:
    """Delete what a test left in a database it claimed (never FLUSHDB), then the claim."""
    for key in client.scan_iter(count=500):
        if key != REDIS_CLAIM_KEY.encode():
            client.delete(key)
    if client.get(REDIS_CLAIM_KEY) == token.encode():
        client.delete(REDIS_CLAIM_KEY)


def _claim_redis_db(host: str, port: int, token: str) -> Any:
    """A client on a database no one else uses: empty, or holding only our marked leftovers.

    The claim is a SET NX key, so concurrent test sessions on one server never share a
    database; a database holding anyone else's keys is left alone.
    """
    import redis

    for db in REDIS_TEST_DBS:
        client = redis.Redis(host=host, port=port, db=db)
        try:
            claimed = client.set(REDIS_CLAIM_KEY, token, nx=True, ex=REDIS_CLAIM_SECONDS)
        except redis.ResponseError:  # a server configured with fewer databases
            client.close()
            continue
        if claimed and (client.dbsize() == 1 or client.exists(REDIS_MARK_KEY)):
            _delete_test_keys(client, "")  # leftovers of an interrupted test session
            client.set(REDIS_MARK_KEY, "1")
            return client
        if claimed:  # someone else's keys: give the database back untouched
            client.delete(REDIS_CLAIM_KEY)
        client.close()
    pytest.fail(f"no free Redis database among {REDIS_TEST_DBS} on {host}:{port}")


@pytest.fixture
def redis_url_factory(redis_server: tuple[str, int]) -> Iterator[Callable[[], str]]:
    """Factory of Redis URLs on databases this test claimed; only test keys are deleted."""
    host, port = redis_server
    token = secrets.token_hex(8)
    claimed: list[Any] = []

    def make() -> str:
        client = _claim_redis_db(host, port, token)
        claimed.append(client)
        return f"redis://{host}:{port}/{client.connection_pool.connection_kwargs['db']}"

    yield make
    for client in claimed:
        _delete_test_keys(client, token)
        client.close()


@pytest.fixture
def postgres_url_factory(make_postgres_database: Callable[[], str]) -> Callable[[], str]:
    """Fresh empty PostgreSQL databases (the node migrates them itself)."""
    return make_postgres_database


@pytest.fixture
def node_storage(tmp_path: Path):  # type: ignore[no-untyped-def]
    """(FileStore, sessionmaker) over a fresh SQLite index (the pipeline and batch tests)."""
    from storage import FileStore, create_engine_for, migrate, session_factory

    engine = create_engine_for(f"sqlite:///{tmp_path / 'index.db'}")
    migrate(engine)
    yield FileStore(tmp_path / "store"), session_factory(engine)
    engine.dispose()
