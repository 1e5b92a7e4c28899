"""Unit tests of the observability pieces (issue 14 items 4 and 5): the index collector's
gauges over a real migrated index, the readiness checks and what they say, the free-space
watermark, the DICOMweb service of a request, and the multiprocess metrics folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from pacs_node.observability import IndexCollector, Readiness, http_service
from pacs_node.receive import ensure_free_space
from storage import (
    Export,
    FileStore,
    InstanceMeta,
    Job,
    OutOfResources,
    Result,
    Study,
    create_engine_for,
    ingest,
    migrate,
    session_factory,
)
from tests.dimse.dimse_helpers import make_instance, part10

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def index(tmp_path: Path):  # type: ignore[no-untyped-def]
    engine = create_engine_for(f"sqlite:///{tmp_path / 'index.db'}")
    migrate(engine)
    try:
        yield session_factory(engine), FileStore(tmp_path / "store")
    finally:
        engine.dispose()


def _scrape(collector: IndexCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in registry.collect() for s in family.samples}


def _fill(sessions, store: FileStore) -> list[int]:  # type: ignore[no-untyped-def]
    """Three studies (5 instances); study 1 has a positive result, study 2 a negative and
    a superseded one, study 3 a queued job; exports pending to two destinations."""
    sizes = []
    for study, sop in ((1, 1), (1, 2), (2, 1), (2, 2), (3, 1)):
        data = part10(make_instance(study, 1, sop))
        sizes.append(len(data))
        ds = make_instance(study, 1, sop)
        ingest(store, sessions, data, InstanceMeta.from_dataset(ds))
    now = datetime.now(UTC)
    with sessions.begin() as session:
        studies = {s.id: s for s in session.query(Study).order_by(Study.id)}
        ids = sorted(studies)

        def job(study_id: int, state: str) -> Job:
            row = Job(study_id=study_id, state=state, created_at=now, updated_at=now)
            session.add(row)
            session.flush()
            return row

        def result(j: Job, *, positive: bool | None, superseded: bool = False) -> None:
            session.add(Result(job_id=j.id, study_id=j.study_id,
                               state="analysed" if positive is not None else "not_analysed",
                               positive=positive, fracture_probability=0.9 if positive else 0.1,
                               aggregation="max", threshold=0.5, summary={}, created_at=now,
                               superseded=superseded))

        result(job(ids[0], "done"), positive=True)
        result(job(ids[1], "superseded"), positive=True, superseded=True)
        result(job(ids[1], "done"), positive=False)
        job(ids[2], "queued")
        job(ids[2], "failed")
        instance_ids = [i for (i,) in session.execute(
            Export.__table__.metadata.tables["instances"].select().with_only_columns(
                Export.__table__.metadata.tables["instances"].c.id))]
        for k, (destination, age) in enumerate((("pacs", 120), ("pacs", 30), ("ris", 5),
                                                ("gone", 600))):
            session.add(Export(instance_id=instance_ids[k], destination=destination,
                               state="pending", next_attempt_at=now,
                               created_at=now - timedelta(seconds=age)))
        session.add(Export(instance_id=instance_ids[4], destination="ris", state="sent",
                           next_attempt_at=now, created_at=now - timedelta(hours=1)))
    return sizes


def test_collector_reports_the_index_as_it_is(index) -> None:  # type: ignore[no-untyped-def]
    sessions, store = index
    sizes = _fill(sessions, store)
    got = _scrape(IndexCollector(sessions, store, destinations=["pacs", "ris"],
                                 min_free_bytes=12345))
    assert got[("pacsnode_index_up", ())] == 1
    assert got[("pacsnode_jobs", (("state", "queued"),))] == 1
    assert got[("pacsnode_jobs", (("state", "failed"),))] == 1
    assert got[("pacsnode_jobs", (("state", "running"),))] == 0
    queued = {labels: v for (name, labels), v in got.items() if name == "pacsnode_queue_depth"}
    assert sum(queued.values()) == 1  # one queued job, whatever the lanes
    # the superseded positive is not a current result
    assert got[("pacsnode_results", (("state", "positive"),))] == 1
    assert got[("pacsnode_results", (("state", "negative"),))] == 1
    assert got[("pacsnode_results", (("state", "not_analysed"),))] == 0
    studies = {labels: v for (name, labels), v in got.items() if name == "pacsnode_studies"}
    assert sum(studies.values()) == 3
    assert got[("pacsnode_exports_pending", (("destination", "pacs"),))] == 2
    assert got[("pacsnode_exports_pending", (("destination", "ris"),))] == 1
    # an unconfigured destination's name never becomes a label
    assert got[("pacsnode_exports_pending", (("destination", "other"),))] == 1
    assert not any("gone" in str(labels) for _, labels in got)
    oldest = got[("pacsnode_exports_oldest_pending_age_seconds", (("destination", "pacs"),))]
    assert 119 <= oldest < 180
    assert got[("pacsnode_store_instances", ())] == 5
    assert got[("pacsnode_store_bytes", ())] == sum(sizes)
    assert got[("pacsnode_store_min_free_bytes", ())] == 12345
    assert got[("pacsnode_store_free_bytes", ())] > 0


def test_collector_says_the_index_is_down_and_still_reports_the_store(
        tmp_path: Path) -> None:
    engine = create_engine_for(f"sqlite:///{tmp_path / 'empty.db'}")  # never migrated
    try:
        store = FileStore(tmp_path / "store")
        got = _scrape(IndexCollector(session_factory(engine), store, destinations=[],
                                     min_free_bytes=0))
    finally:
        engine.dispose()
    assert got[("pacsnode_index_up", ())] == 0
    assert ("pacsnode_jobs", (("state", "queued"),)) not in got
    assert got[("pacsnode_store_free_bytes", ())] > 0


def test_watermark_refuses_below_and_is_off_at_zero(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    free = store.free_bytes()
    assert ensure_free_space(store, 0, incoming=10 ** 18) == 0  # disabled
    assert ensure_free_space(store, 1024) >= 1024
    with pytest.raises(OutOfResources) as refused:
        ensure_free_space(store, free + 10 ** 12)
    assert "storage.min_free_bytes" in str(refused.value)
    assert str(tmp_path) not in str(refused.value)
    # the instance being received counts
    with pytest.raises(OutOfResources):
        ensure_free_space(store, 1024, incoming=free)


def _readiness(index, **overrides):  # type: ignore[no-untyped-def]
    sessions, store = index
    loads: list[str] = []
    options = dict(broker_url="memory://", min_free_bytes=0, models=["demo"],
                   model_check=loads.append)
    options.update(overrides)
    return Readiness(sessions, store, **options), loads


def test_readiness_all_ok_loads_each_model_once(index) -> None:  # type: ignore[no-untyped-def]
    readiness, loads = _readiness(index)
    for _ in range(3):
        checks = {c.name: c for c in readiness.checks()}
        assert all(c.ok for c in checks.values()), checks
    assert set(checks) == {"index", "broker", "storage", "models"}
    assert loads == ["demo"]  # later probes reuse the outcome


def test_readiness_says_what_is_wrong(index, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    def broker_down(url: str) -> None:
        raise ConnectionRefusedError(url)

    def broken(ref: str) -> None:
        raise ValueError("bad checkpoint")

    bad = tmp_path / "secret-folder" / "bad.pt"
    bad.parent.mkdir()
    bad.write_bytes(b"not a checkpoint")
    readiness, _ = _readiness(index, broker_url="redis://127.0.0.1:1/0",
                              broker_check=broker_down, min_free_bytes=10 ** 18,
                              models=[str(bad), str(tmp_path / "missing.pt")],
                              model_check=broken)
    checks = {c.name: c for c in readiness.checks()}
    assert checks["index"].ok
    assert not checks["broker"].ok and "broker does not answer" in checks["broker"].detail
    assert not checks["storage"].ok
    assert "below storage.min_free_bytes" in checks["storage"].detail
    assert not checks["models"].ok
    assert "bad.pt: does not load (ValueError)" in checks["models"].detail
    assert "missing.pt: no such checkpoint" in checks["models"].detail
    assert "secret-folder" not in json.dumps([c.detail for c in checks.values()])


def test_readiness_of_an_unwritable_store(index) -> None:  # type: ignore[no-untyped-def]
    sessions, store = index
    if os.geteuid() == 0:
        # root writes through permissions: make the incoming folder a file instead
        (store.root / ".incoming").write_bytes(b"")
    else:
        store.root.chmod(0o500)
    try:
        readiness, _ = _readiness((sessions, store))
        storage = {c.name: c for c in readiness.checks()}["storage"]
    finally:
        store.root.chmod(0o700)
    assert not storage.ok and "not writable" in storage.detail


@pytest.mark.parametrize(("method", "path", "service"), [
    ("POST", "/dicomweb/studies", "stow"),
    ("POST", "/dicomweb/studies/1.2.3", "stow"),
    ("GET", "/dicomweb/studies", "qido"),
    ("GET", "/dicomweb/studies/1.2/series", "qido"),
    ("GET", "/dicomweb/studies/1.2/series/1.3/instances", "qido"),
    ("GET", "/dicomweb/studies/1.2", "wado"),
    ("GET", "/dicomweb/studies/1.2/metadata", "wado"),
    ("GET", "/dicomweb/studies/1.2/series/1.3/instances/1.4/frames/1", "wado"),
    ("GET", "/dicomweb/studies/1.2/series/1.3/instances/1.4/rendered", "wado"),
    ("GET", "/metrics", "other"),
    ("GET", "/dicomwebx/studies", "other"),
])
def test_http_service_of_a_request(method: str, path: str, service: str) -> None:
    assert http_service(method, path, "/dicomweb") == service


_RECORD = """
import sys
from pathlib import Path
from workers.metrics import use_multiprocess_dir, instruments
use_multiprocess_dir(Path(sys.argv[1]), clean=False)
instruments().cstore(0, int(sys.argv[2]))
instruments().inference("demo", 0.2)
"""

_READ = """
import sys
from pathlib import Path
from workers.metrics import use_multiprocess_dir
use_multiprocess_dir(Path(sys.argv[1]), clean=sys.argv[2] == "clean")
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
registry = CollectorRegistry()
MultiProcessCollector(registry, path=sys.argv[1])
print(generate_latest(registry).decode())
"""


def _python(code: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _value(text: str, series: str) -> float:
    lines = [line for line in text.splitlines() if line.startswith(series + " ")]
    assert lines, f"{series} not in:\n{text}"
    return float(lines[0].rsplit(" ", 1)[1])


def test_processes_sharing_the_folder_are_summed(tmp_path: Path) -> None:
    folder = tmp_path / "metrics"
    _python(_RECORD, str(folder), "100")
    _python(_RECORD, str(folder), "23")
    text = _python(_READ, str(folder), "keep")
    assert _value(text, 'pacsnode_cstore_instances_total{status="0x0000"}') == 2
    assert _value(text, 'pacsnode_cstore_bytes_total{status="0x0000"}') == 123
    assert _value(text, 'pacsnode_inference_duration_seconds_count{model="demo"}') == 2
    # serve cleans the files of processes that have ended (an earlier run) at its start
    text = _python(_READ, str(folder), "clean")
    assert "pacsnode_cstore_instances_total{" not in text


def test_folder_set_after_prometheus_client_was_imported_is_refused(tmp_path: Path) -> None:
    code = ("import sys, prometheus_client\nfrom pathlib import Path\n"
            "from workers.metrics import use_multiprocess_dir\n"
            "try:\n    use_multiprocess_dir(Path(sys.argv[1]), clean=False)\n"
            "except RuntimeError as exc:\n    print('refused:', exc)\n")
    assert "refused: prometheus_client was imported before" in _python(code, str(tmp_path))
