"""Real peers for end-to-end tests: the node as a process, Orthanc as the PACS, dcmtk.

Every process a test starts runs on free loopback ports with its own temporary config and
is stopped by PID, also when its start fails or the test forgets it. Waits are conditions
with deadlines, never bare sleeps. After each test, the logs of every node it made must
name no patient of the test data.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml

from tests.dicom_checks import dciodvfy_errors as dciodvfy_errors  # used by the e2e tests

REPO = Path(__file__).resolve().parents[2]
PACS_NODE = str(Path(sys.executable).with_name("pacs-node"))
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
# Orthanc 1.12 from Debian trixie (`make peers`, scripts/fetch_orthanc.sh): Debian 12's 1.10
# has no C-GET SCU.
ORTHANC_TRIXIE = REPO / ".cache" / "orthanc-trixie" / "orthanc"
# What the running test started (cleared and checked by `_stop_and_check_after_each_test`).
_STARTED: list[subprocess.Popen[bytes]] = []
_NODES: list[NodeProcess] = []


def require(tool: str) -> str:
    """The path of a peer; a missing peer is a failure, never a skip."""
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"peer {tool!r} is not installed: run `make test` (it installs the peers)")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], Any], *, timeout: float, what: str,
             interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def echo(port: int, called: str = "PACSNODE", calling: str = "ECHOSCU") -> bool:
    result = subprocess.run([require("echoscu"), "-aet", calling, "-aec", called,
                             "127.0.0.1", str(port)], capture_output=True, timeout=30)
    return result.returncode == 0


def storescu(port: int, files: list[Path], *, called: str = "PACSNODE",
             calling: str = "MODALITY", extra: list[str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TCP_NODELAY": "1"}
    return subprocess.run([require("storescu"), "-aet", calling, "-aec", called,
                           *(extra or []), "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=300, env=env)


# -- Orthanc ---------------------------------------------------------------------------


@dataclass
class Orthanc:
    dicom_port: int
    http_port: int
    aet: str = "ORTHANC"
    process: subprocess.Popen[bytes] | None = None

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}",
                                    timeout=30) as response:
            body = response.read()
        return json.loads(body) if path.split("?")[0].rsplit("/", 1)[-1] != "file" else body

    def alive(self) -> bool:
        try:
            return bool(self.get("/system"))
        except OSError:
            return False

    def instances_of(self, study_uid: str) -> list[dict[str, Any]]:
        """Every instance of a study: its tags (SOPClassUID, Modality...) and file bytes."""
        found = self.get_post("/tools/find", {"Level": "Study", "Query":
                                              {"StudyInstanceUID": study_uid}})
        out = []
        for study_id in found:
            for series_id in self.get(f"/studies/{study_id}")["Series"]:
                series = self.get(f"/series/{series_id}")
                for instance_id in series["Instances"]:
                    tags = self.get(f"/instances/{instance_id}/simplified-tags")
                    out.append({"id": instance_id, "tags": tags})
        return out

    def file(self, instance_id: str) -> bytes:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.http_port}/instances/{instance_id}/file", timeout=30
        ) as response:
            return response.read()

    def put_modality(self, name: str, aet: str, port: int) -> None:
        """Declare a DICOM peer on loopback (e.g. the node, to send studies back to it)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/modalities/{name}",
            data=json.dumps({"AET": aet, "Host": "127.0.0.1", "Port": port}).encode(),
            headers={"Content-Type": "application/json"}, method="PUT")
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()

    def get_post(self, path: str, payload: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())


def start_orthanc(workdir: Path, dicom_port: int | None = None, *,
                  trixie: bool = False) -> Orthanc:
    """Debian's Orthanc with its DICOMweb plugin, or (``trixie``) the newer one without it."""
    if trixie:
        if not os.access(ORTHANC_TRIXIE, os.X_OK):
            pytest.fail(f"{ORTHANC_TRIXIE} is missing: run `make peers`")
        binary, plugins = str(ORTHANC_TRIXIE), []
    else:
        binary = require("Orthanc")
        if not DICOMWEB_PLUGIN.is_file():
            pytest.fail("orthanc-dicomweb is not installed: run `make test`")
        plugins = [str(DICOMWEB_PLUGIN)]
    orthanc = Orthanc(dicom_port or free_port(), free_port())
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "pacs-node-test-pacs", "DicomAet": orthanc.aet,
        "DicomPort": orthanc.dicom_port, "HttpPort": orthanc.http_port,
        "StorageDirectory": str(workdir / "storage"), "IndexDirectory": str(workdir / "index"),
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": False,
        "Plugins": plugins, "StableAge": 2, "HttpTimeout": 30,
    }
    (workdir / "orthanc.json").write_text(json.dumps(config))
    with (workdir / "orthanc.log").open("wb") as log:
        orthanc.process = subprocess.Popen([binary, str(workdir / "orthanc.json")], stdout=log,
                                           stderr=subprocess.STDOUT,
                                           env={**os.environ, "TCP_NODELAY": "1"})
    _STARTED.append(orthanc.process)
    try:
        wait_for(orthanc.alive, timeout=60, what="Orthanc to answer on HTTP")
    except BaseException:
        stop_process(orthanc.process)
        raise
    return orthanc


def stop_process(process: subprocess.Popen[bytes] | None, *, kill: bool = False) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    pacs = start_orthanc(tmp_path / "orthanc")
    try:
        yield pacs
    finally:
        stop_process(pacs.process)


# -- the node --------------------------------------------------------------------------


@dataclass
class NodeProcess:
    workdir: Path
    config: Path
    port: int
    settings: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self, *, with_worker: bool = False) -> None:
        self.starts += 1
        env = {**os.environ, **self.env}
        try:
            with (self.workdir / f"node-{self.starts}.log").open("wb") as log:
                self.process = subprocess.Popen(
                    [PACS_NODE, "serve", "--config", str(self.config)], cwd=self.workdir,
                    stdout=log, stderr=subprocess.STDOUT, env=env)
            _STARTED.append(self.process)
            if with_worker:
                with (self.workdir / f"worker-{self.starts}.log").open("wb") as wlog:
                    self.worker = subprocess.Popen(
                        [PACS_NODE, "worker", "--config", str(self.config)], cwd=self.workdir,
                        stdout=wlog, stderr=subprocess.STDOUT, env=env)
                _STARTED.append(self.worker)
            process = self.process
            wait_for(lambda: process.poll() is not None or echo(self.port), timeout=90,
                     what="the node to answer C-ECHO", interval=0.3)
            if process.poll() is not None:
                raise AssertionError(f"node exited: {self.log()}")
        except BaseException:  # a node that did not come up is stopped, worker included
            self.stop()
            raise

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:]
                         for p in sorted(self.workdir.glob("*.log")))

    def stop(self, *, kill: bool = False) -> None:
        stop_process(self.process, kill=kill)
        stop_process(self.worker, kill=kill)

    def studies(self) -> list[dict[str, Any]]:
        out = subprocess.run([PACS_NODE, "studies", "--config", str(self.config), "--json"],
                             cwd=self.workdir, capture_output=True, text=True, timeout=120,
                             env={**os.environ, **self.env})
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def make_node(workdir: Path, *, destinations: list[dict[str, Any]] | None = None,
              database_url: str | None = None, broker_url: str = "memory://",
              stable_seconds: float = 2.0, extra: dict[str, Any] | None = None) -> NodeProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    settings: dict[str, Any] = {
        "node": {"ae_title": "PACSNODE", "dimse_host": "127.0.0.1", "dimse_port": port,
                 "http_port": free_port()},
        "storage": {"root": str(workdir / "store"),
                    "database_url": database_url or f"sqlite:///{workdir / 'index.db'}"},
        "queue": {"broker_url": broker_url, "reconcile_interval_seconds": 2.0,
                  "enqueue_timeout_seconds": 20.0},
        "study": {"stable_seconds": stable_seconds},
        "destinations": destinations or [],
        "delivery": {"backoff_initial_seconds": 1.0, "backoff_max_seconds": 8.0,
                     "max_attempts": 20},
    }
    for section, values in (extra or {}).items():
        settings.setdefault(section, {}).update(values)
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(settings))
    node = NodeProcess(workdir, config, port, settings)
    _NODES.append(node)
    return node


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


# -- looking into the node and the PACS -------------------------------------------------

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture


def index_rows(node: NodeProcess, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of a read-only query on the node's SQLite index (safe while the node writes)."""
    db = node.workdir / "index.db"
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return connection.execute(sql, params).fetchall()
    finally:
        connection.close()


def result_uids(orthanc: Orthanc, study_uid: str) -> tuple[list[str], list[str]]:
    """SOP Instance UIDs of the SRs and of the Secondary Captures Orthanc holds for a study."""
    instances = orthanc.instances_of(study_uid)
    srs = [str(i["tags"]["SOPInstanceUID"]) for i in instances
           if i["tags"].get("SOPClassUID") == SR_CLASS]
    scs = [str(i["tags"]["SOPInstanceUID"]) for i in instances
           if i["tags"].get("SOPClassUID") == SC_CLASS]
    return srs, scs


def find_image_uids(port: int, study_uid: str, series_uid: str,
                    called: str = "PACSNODE") -> set[str]:
    """SOP Instance UIDs the node answers for a Study Root C-FIND at IMAGE level."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        StudyRootQueryRetrieveInformationModelFind as FIND,
    )

    ae = AE(ae_title="FINDSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(FIND)
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = series_uid
    query.SOPInstanceUID = ""
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established, "C-FIND association refused"
    found: set[str] = set()
    final = None
    try:
        for status, identifier in assoc.send_c_find(query, FIND):
            final = getattr(status, "Status", None)
            if final in (0xFF00, 0xFF01) and identifier is not None:
                found.add(str(identifier.SOPInstanceUID))
    finally:
        assoc.release()
    assert final == 0x0000, f"C-FIND ended with status {final}"
    return found


def two_view_study_files(root: Path, *, size: int) -> list[Path]:
    """The files of a synthetic study with two views (seed 21), written under ``root``."""
    from models.synth import generate_dataset, read_manifest

    generate_dataset(root, studies=4, seed=21, size=size)
    by_study: dict[str, list[Path]] = {}
    for entry in read_manifest(root):
        by_study.setdefault(entry["study_instance_uid"], []).append(root / entry["path"])
    return next(files for files in by_study.values() if len(files) == 2)


def order_stat(paths: Iterable[Path]) -> None:
    """Mark the views as ordered STAT: Requested Procedure Priority STAT in a Request
    Attributes Sequence item, as a RIS order puts it (the node's urgent lane)."""
    for path in paths:
        ds = pydicom.dcmread(path)
        request = pydicom.Dataset()
        request.RequestedProcedureID = "RP1"
        request.RequestedProcedurePriority = "STAT"
        ds.RequestAttributesSequence = [request]
        ds.save_as(path)


# -- no patient data in the logs, nothing left running ---------------------------------

MIN_PATIENT_VALUE = 4  # shorter values (a given name such as JAN) would match other text
# The pydicom-data films the e2e tests send (as they are, or as copies with new UIDs).
TEST_FILMS = ("RG1_UNCR.dcm", "RG3_UNCR.dcm")
_PATIENT_TAGS = ("PatientName", "PatientID", "PatientBirthDate")


def patient_values(paths: Iterable[Path]) -> set[str]:
    """Patient Name (whole and each component), Patient ID and Birth Date (also as
    YYYY-MM-DD) of the DICOM files among ``paths``, without values under 4 characters."""
    import pydicom

    values: set[str] = set()
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_PATIENT_TAGS)
        except Exception:  # not DICOM, or a staging file cut short by a kill
            continue
        name = str(ds.get("PatientName", "") or "")
        birth = str(ds.get("PatientBirthDate", "") or "").strip()
        values.update([name, *re.split(r"[\^=]", name), str(ds.get("PatientID", "") or ""),
                       birth])
        if len(birth) == 8:
            values.add(f"{birth[:4]}-{birth[4:6]}-{birth[6:]}")
    return {v.strip() for v in values if len(v.strip()) >= MIN_PATIENT_VALUE}


def test_data_patient_values(node: NodeProcess) -> set[str]:
    """The patients of the test data: the pydicom-data films and whatever reached the node's
    store (the synthetic studies of models.synth, the films, their results)."""
    from pydicom.data import get_testdata_file

    store = Path(node.settings["storage"]["root"])
    stored = [p for p in store.rglob("*") if p.is_file()] if store.is_dir() else []
    return patient_values([*(Path(get_testdata_file(n)) for n in TEST_FILMS), *stored])


def assert_no_patient_data_in_logs(node: NodeProcess) -> None:
    """No patient name, ID or birth date of the test data appears in the node's logs (the
    `serve` and `worker` processes of every start)."""
    patterns = {v: re.compile(rf"(?<![A-Za-z0-9]){re.escape(v)}(?![A-Za-z0-9])")
                for v in test_data_patient_values(node)}
    found = [f"{log.name}: {value!r}" for log in sorted(node.workdir.glob("*.log"))
             for value, pattern in sorted(patterns.items())
             if pattern.search(log.read_text(errors="replace"))]
    assert not found, f"patient data in the node's logs: {found}"


@pytest.fixture(autouse=True)
def _stop_and_check_after_each_test() -> Iterator[None]:
    """After each test: stop by PID whatever it left running, then check the logs of every
    node it made for patient data."""
    _STARTED.clear()
    _NODES.clear()
    yield
    for process in reversed(_STARTED):
        stop_process(process)
    nodes = list(_NODES)
    _STARTED.clear()
    _NODES.clear()
    for node in nodes:
        assert_no_patient_data_in_logs(node)


def rg3_copy(folder: Path) -> Path:
    """RG3_UNCR (pydicom-data) with new Study/Series/SOP Instance UIDs: a fresh study."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm"))
    ds.StudyInstanceUID = generate_uid(prefix=None)
    ds.SeriesInstanceUID = generate_uid(prefix=None)
    ds.SOPInstanceUID = generate_uid(prefix=None)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path
