"""DeliveryService against a real SQLite index and an in-process pynetdicom storage SCP.

Each test queues exports in a migrated index, calls :meth:`DeliveryService.deliver_once`
and reads the Export rows; the receiver answers the C-STORE statuses the test chooses and
records what it got. No sleeps: waits are on conditions with deadlines.
"""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
from pynetdicom.events import Event
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from models.registry import Finding, ViewPrediction
from models.synth import generate_dataset, read_manifest
from pacs_node.config import DeliverySettings, Destination
from pacs_node.delivery import DeliveryService, backoff_seconds
from storage import (
    Export,
    ExportRepository,
    ExportState,
    FileStore,
    InstanceMeta,
    InstanceRepository,
    InstanceSource,
    PrioritySource,
    StudyRepository,
    TriagePriority,
    create_engine_for,
    ingest,
    migrate,
    run_write,
    session_factory,
)
from workers.metrics import local_registry
from workers.results import AlgorithmInfo, StudyResult, ViewResult, build_secondary_captures

from .storage.storage_helpers import CR_IMAGE, encoded_instance, meta

CALLING_AE = "PACSNODE"
RECEIVER_AE = "RECEIVER"
SETTINGS = DeliverySettings(max_attempts=3, backoff_initial_seconds=30.0,
                            backoff_max_seconds=300.0, max_concurrent=2)


# ---------------------------------------------------------------- receiver


class Receiver:
    """A storage SCP on a free loopback port answering ``status`` to every C-STORE.

    ``syntaxes``: the transfer syntaxes it accepts for every storage SOP class (all by
    default); ``contexts``: instead, the only SOP classes it takes, each in its syntaxes.
    With ``hold``, each
    C-STORE waits until ``hold`` associations are open (deadline 10 s), then a moment more
    for any association beyond them to show up, so overlapping associations are seen.
    """

    def __init__(self, *, status: int = 0x0000, syntaxes: Sequence[str] = ALL_TRANSFER_SYNTAXES,
                 contexts: Mapping[str, Sequence[str]] | None = None,
                 hold: int | None = None) -> None:
        self.status = status
        self.hold = hold
        self.received: list[tuple[UID, Dataset]] = []
        self.priorities: list[int] = []  # the C-STORE Priority of each request
        self.active = self.peak = self.associations = 0
        self._cond = threading.Condition()
        ae = AE(ae_title=RECEIVER_AE)
        ae.maximum_associations = 16
        if contexts is None:
            contexts = {cx.abstract_syntax: syntaxes for cx in StoragePresentationContexts}
        for sop_class, accepted in contexts.items():
            ae.add_supported_context(sop_class, list(accepted))
        handlers = [(evt.EVT_C_STORE, self._store), (evt.EVT_ESTABLISHED, self._opened),
                    (evt.EVT_RELEASED, self._closed), (evt.EVT_ABORTED, self._closed)]
        self._server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        self.port = int(self._server.server_address[1])

    def _opened(self, event: Event) -> None:
        with self._cond:
            self.active += 1
            self.associations += 1
            self.peak = max(self.peak, self.active)
            self._cond.notify_all()

    def _closed(self, event: Event) -> None:
        with self._cond:
            self.active -= 1
            self._cond.notify_all()

    def _store(self, event: Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self._cond:
            self.received.append((UID(event.context.transfer_syntax), ds))
            self.priorities.append(int(event.request.Priority))
            if self.hold is not None:
                limit = self.hold
                self._cond.wait_for(lambda: self.active >= limit, timeout=10)
                self._cond.wait_for(lambda: self.active > limit, timeout=0.3)
        return self.status

    def destination(self, name: str = "pacs") -> Destination:
        return Destination(name=name, ae_title=RECEIVER_AE, host="127.0.0.1", port=self.port)

    def shutdown(self) -> None:
        self._server.shutdown()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    """Receivers a test starts (append them); all shut down at the end."""
    started: list[Receiver] = []
    try:
        yield started
    finally:
        for receiver in started:
            receiver.shutdown()


def _start(receivers: list[Receiver], **kwargs: object) -> Receiver:
    receiver = Receiver(**kwargs)  # type: ignore[arg-type]
    receivers.append(receiver)
    return receiver


def _closed_port() -> int:
    """A loopback port where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- node side


@dataclass
class Node:
    store: FileStore
    sessions: sessionmaker[Session]

    def add(self, data: bytes, destinations: Sequence[str]) -> list[int]:
        """Ingest an encoded result and queue it; returns the export ids."""
        m = InstanceMeta.read(data)
        ingest(self.store, self.sessions, data, m, source=InstanceSource.PRODUCED)

        def work(session: Session) -> list[int]:
            instance = InstanceRepository(session).get(m.sop_instance_uid)
            assert instance is not None
            return [e.id for e in ExportRepository(session).add(instance.id, destinations)]

        return run_write(self.sessions, work)

    def export(self, export_id: int) -> Export:
        with self.sessions() as session:
            row = session.get(Export, export_id)
            assert row is not None
            session.expunge(row)
            return row

    def make_due(self) -> None:
        """Move every pending export's next attempt into the past (skip the backoff)."""
        past = datetime.now(UTC) - timedelta(seconds=1)
        run_write(self.sessions, lambda session: session.execute(
            update(Export).where(Export.state == ExportState.PENDING)
            .values(next_attempt_at=past)))

    def service(self, destinations: Sequence[Destination],
                settings: DeliverySettings = SETTINGS) -> DeliveryService:
        return DeliveryService(self.sessions, self.store, destinations, settings,
                               calling_ae=CALLING_AE)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    engine = create_engine_for(f"sqlite:///{tmp_path / 'index.sqlite'}")
    migrate(engine)
    try:
        yield Node(FileStore(tmp_path / "store"), session_factory(engine))
    finally:
        engine.dispose()


@pytest.fixture
def deliver(node: Node) -> Iterator[list[DeliveryService]]:
    """Services a test builds (append them); all stopped at the end."""
    services: list[DeliveryService] = []
    try:
        yield services
    finally:
        for service in services:
            service.stop()


def _service(deliver: list[DeliveryService], node: Node, destinations: Sequence[Destination],
             settings: DeliverySettings = SETTINGS) -> DeliveryService:
    service = node.service(destinations, settings)
    deliver.append(service)
    return service


def _cr(sop: int = 1) -> bytes:
    """A small CR instance in Explicit VR Little Endian (no pixels)."""
    return encoded_instance(meta(study=7, series=1, sop=sop))


def _sc(syntax: str) -> bytes:
    """A Secondary Capture the node produced (RGB, 512 px wide), encoded in ``syntax``."""
    source = pydicom.dcmread(io.BytesIO(encoded_instance(meta(study=8, rows=96, columns=64))))
    rows, cols = 96, 64
    yy, xx = np.mgrid[0:rows, 0:cols]
    source.SamplesPerPixel = 1
    source.BitsAllocated, source.BitsStored, source.HighBit = 16, 12, 11
    source.PixelRepresentation = 0
    source.PixelData = (xx * 40 + yy * 10).astype(np.uint16).tobytes()
    source.WindowCenter, source.WindowWidth = 1500, 3000
    heat = np.exp(-((xx - 32) ** 2 + (yy - 48) ** 2) / (2 * 10.0**2)).astype(np.float32)
    prediction = ViewPrediction({"normal": 0.2, "fracture": 0.8}, 0.8, heat,
                                (Finding(0.8, (32.0, 48.0), (22.0, 38.0, 42.0, 58.0)),))
    study = StudyResult(0.8, True, "max", 0.5, {"WRIST": 0.8},
                        [ViewResult(source, prediction, "WRIST")], [])
    algorithm = AlgorithmInfo(name="t", version="1", notice="test", synthetic_demo=True)
    (sc,) = build_secondary_captures(study, algorithm, job_key="job-delivery",
                                     transfer_syntax_uid=syntax)
    assert sc.file_meta.TransferSyntaxUID == syntax
    buffer = io.BytesIO()
    sc.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def rle_sc() -> bytes:
    return _sc(RLELossless)


def _between(value: datetime, before: datetime, after: datetime, delay: float) -> bool:
    return before + timedelta(seconds=delay) <= value <= after + timedelta(seconds=delay)


# ---------------------------------------------------------------- tests


def test_a_stored_object_marks_the_export_sent(
    node: Node, receivers: list[Receiver], deliver: list[DeliveryService]
) -> None:
    receiver = _start(receivers)
    (export_id,) = node.add(_cr(), ["pacs"])
    assert _service(deliver, node, [receiver.destination()]).deliver_once() == 1
    row = node.export(export_id)
    assert (row.state, row.attempts, row.last_error) == (ExportState.SENT, 1, None)
    assert row.sent_at is not None
    ((syntax, ds),) = receiver.received
    assert ds.SOPInstanceUID == meta(study=7, series=1, sop=1).sop_instance_uid
    assert ds.SOPClassUID == CR_IMAGE and syntax == ExplicitVRLittleEndian


def test_a_failure_status_schedules_a_retry_after_the_backoff(
    node: Node, receivers: list[Receiver], deliver: list[DeliveryService]
) -> None:
    receiver = _start(receivers, status=0xA700)
    (export_id,) = node.add(_cr(), ["pacs"])
    service = _service(deliver, node, [receiver.destination()])
    before = datetime.now(UTC)
    assert service.deliver_once() == 0
    after = datetime.now(UTC)
    row = node.export(export_id)
    assert (row.state, row.attempts) == (ExportState.PENDING, 1)
    assert row.last_error == "C-STORE status 0xA700"
    assert _between(row.next_attempt_at, before, after, backoff_seconds(1, SETTINGS))
    # Not due yet: the next round sends nothing.
    assert service.deliver_once() == 0
    assert len(receiver.received) == 1 and node.export(export_id).attempts == 1


def test_the_last_allowed_attempt_fails_the_export(
    node: Node, receivers: list[Receiver], deliver: list[DeliveryService]
) -> None:
    receiver = _start(receivers, status=0xC000)
    (export_id,) = node.add(_cr(), ["pacs"])
    service = _service(deliver, node, [receiver.destination()])
    for attempt in range(1, SETTINGS.max_attempts + 1):
        before = datetime.now(UTC)
        assert service.deliver_once() == 0
        after = datetime.now(UTC)
        row = node.export(export_id)
        assert row.attempts == attempt and row.last_error == "C-STORE status 0xC000"
        if attempt < SETTINGS.max_attempts:
            assert row.state == ExportState.PENDING
            assert _between(row.next_attempt_at, before, after, backoff_seconds(attempt, SETTINGS))
            node.make_due()
    assert node.export(export_id).state == ExportState.FAILED
    node.make_due()  # a failed export is final: no further attempt
    assert service.deliver_once() == 0
    assert len(receiver.received) == SETTINGS.max_attempts


@pytest.mark.parametrize("status", [0xB000, 0xB007])
def test_storage_warnings_count_as_delivered(
    status: int, node: Node, receivers: list[Receiver], deliver: list[DeliveryService]
) -> None:
    receiver = _start(receivers, status=status)
    (export_id,) = node.add(_cr(), ["pacs"])
    assert _service(deliver, node, [receiver.destination()]).deliver_once() == 1
    assert node.export(export_id).state == ExportState.SENT


def test_a_destination_that_is_down_gets_a_retry(
    node: Node, deliver: list[DeliveryService]
) -> None:
    down = Destination(name="pacs", ae_title=RECEIVER_AE, host="127.0.0.1", port=_closed_port())
    (export_id,) = node.add(_cr(), ["pacs"])
    before = datetime.now(UTC)
    assert _service(deliver, node, [down]).deliver_once() == 0
    after = datetime.now(UTC)
    row = node.export(export_id)
    assert (row.state, row.attempts) == (ExportState.PENDING, 1)
    assert "unreachable" in (row.last_error or "")
    assert _between(row.next_attempt_at, before, after, backoff_seconds(1, SETTINGS))


@pytest.mark.parametrize("max_concurrent", [1, 2])
def test_max_concurrent_bounds_simultaneous_associations(
    max_concurrent: int, node: Node, receivers: list[Receiver],
    deliver: list[DeliveryService]
) -> None:
    receiver = _start(receivers, hold=max_concurrent)
    names = [f"pacs-{i}" for i in range(4)]
    export_ids = node.add(_cr(), names)
    settings = SETTINGS.model_copy(update={"max_concurrent": max_concurrent})
    service = _service(deliver, node, [receiver.destination(n) for n in names], settings)
    assert service.deliver_once() == 4
    assert receiver.associations == 4 and len(receiver.received) == 4
    assert receiver.peak == max_concurrent
    assert all(node.export(i).state == ExportState.SENT for i in export_ids)


@pytest.mark.parametrize(("accepts", "arrives_in"), [
    ([ExplicitVRLittleEndian], ExplicitVRLittleEndian),
    ([ImplicitVRLittleEndian], ImplicitVRLittleEndian),
    (ALL_TRANSFER_SYNTAXES, RLELossless),
])
def test_an_rle_sc_arrives_intact_whatever_syntax_the_receiver_accepts(
    accepts: list[str], arrives_in: str, rle_sc: bytes, node: Node,
    receivers: list[Receiver], deliver: list[DeliveryService]
) -> None:
    receiver = _start(receivers, syntaxes=accepts)
    (export_id,) = node.add(rle_sc, ["pacs"])
    assert _service(deliver, node, [receiver.destination()]).deliver_once() == 1
    assert node.export(export_id).state == ExportState.SENT
    ((syntax, got),) = receiver.received
    assert syntax == arrives_in
    stored = pydicom.dcmread(io.BytesIO(rle_sc))
    assert got.SOPClassUID == SecondaryCaptureImageStorage
    assert got.SOPInstanceUID == stored.SOPInstanceUID
    assert (got.PhotometricInterpretation, got.SamplesPerPixel) == ("RGB", 3)
    if arrives_in == RLELossless:
        assert got.PixelData == stored.PixelData  # sent as stored, not re-encoded
    assert np.array_equal(got.pixel_array, stored.pixel_array)


def test_an_object_the_receiver_takes_in_no_offered_syntax_fails_alone(
    rle_sc: bytes, node: Node, receivers: list[Receiver], deliver: list[DeliveryService]
) -> None:
    # CR in Explicit VR, SC only in JPEG Baseline: the SC has no context, the CR goes.
    receiver = _start(receivers, contexts={
        CR_IMAGE: [ExplicitVRLittleEndian], SecondaryCaptureImageStorage: [JPEGBaseline8Bit]})
    (cr_export,) = node.add(_cr(), ["pacs"])
    (sc_export,) = node.add(rle_sc, ["pacs"])
    assert _service(deliver, node, [receiver.destination()]).deliver_once() == 1
    assert [ds.SOPClassUID for _, ds in receiver.received] == [CR_IMAGE]
    assert node.export(cr_export).state == ExportState.SENT
    row = node.export(sc_export)
    assert (row.state, row.attempts) == (ExportState.PENDING, 1)
    assert "presentation context" in (row.last_error or "")


def test_a_jpeg2000_overlay_reaches_a_receiver_that_takes_only_explicit_vr_little_endian(
    node: Node, receivers: list[Receiver], deliver: list[DeliveryService]
) -> None:
    """The node's default overlay encoding (JPEG 2000 Lossless) is decompressed, same SOP
    Instance UID, same decoded pixels, for a receiver that accepts nothing compressed."""
    data = _sc(JPEG2000Lossless)
    receiver = _start(receivers, syntaxes=[ExplicitVRLittleEndian])
    (export_id,) = node.add(data, ["pacs"])
    assert _service(deliver, node, [receiver.destination()]).deliver_once() == 1
    assert node.export(export_id).state == ExportState.SENT
    ((syntax, got),) = receiver.received
    stored = pydicom.dcmread(io.BytesIO(data))
    assert syntax == ExplicitVRLittleEndian
    assert got.SOPInstanceUID == stored.SOPInstanceUID
    assert np.array_equal(got.pixel_array, stored.pixel_array)


def test_results_of_a_study_triaged_high_go_first_with_c_store_priority_high(
    node: Node, receivers: list[Receiver], deliver: list[DeliveryService]
) -> None:
    receiver = _start(receivers)
    node.add(encoded_instance(meta(study=7, series=1, sop=1)), ["pacs"])  # routine, first
    node.add(encoded_instance(meta(study=9, series=1, sop=1)), ["pacs"])

    def triage(session: Session) -> None:
        studies = StudyRepository(session)
        study = studies.get(meta(study=9).study_instance_uid)
        assert study is not None
        studies.set_triage(study.id, TriagePriority.HIGH, source=PrioritySource.RESULT,
                           reason="fracture probability 0.95 >= 0.8", actor="test")

    run_write(node.sessions, triage)
    assert _service(deliver, node, [receiver.destination()]).deliver_once() == 2
    studies = [str(ds.StudyInstanceUID) for _, ds in receiver.received]
    assert studies == [meta(study=9).study_instance_uid, meta(study=7).study_instance_uid]
    assert receiver.priorities == [0x0001, 0x0000]  # HIGH, then MEDIUM (the default)


def _sample(name: str, labels: dict[str, str]) -> float:
    registry = local_registry()
    assert registry is not None, "the test process records metrics in a folder"
    return registry.get_sample_value(name, labels) or 0.0


def test_a_jobs_delivery_is_counted_and_timed_once_all_its_objects_are_there(
    node: Node, receivers: list[Receiver], deliver: list[DeliveryService], tmp_path: Path
) -> None:
    """pacsnode_delivery_attempts counts each object; pacsnode_time_to_delivery_seconds
    observes a job once, when the last object of its result reaches the destination,
    labelled with the study's triage priority."""
    from tests.workers.conftest import ingest_file, settle_job
    from tests.workers.test_pipeline import tiny_checkpoint
    from workers.pipeline import ModelCache, PipelineOptions, StudyPipeline
    from workers.routing import Route

    root = tmp_path / "synth"
    generate_dataset(root, studies=1, seed=3, size=128)
    for entry in read_manifest(root):
        ingest_file(node.store, node.sessions, root / entry["path"])
    job_id = settle_job(node.sessions)
    options = PipelineOptions(routes=(Route(model=str(tiny_checkpoint(
        tmp_path / "tiny.pt", threshold=1e9))),), destinations=("pacs",),
        doubt_threshold=0.0, high_threshold=0.0)  # every probability: HIGH
    assert StudyPipeline(node.store, node.sessions, options,
                         ModelCache(device="cpu")).run(job_id) == "done"
    with node.sessions() as session:
        exports = session.scalars(select(Export)).all()
    assert len(exports) >= 2  # the SR and an overlay per view

    timed = {"priority": "HIGH", "destination": "pacs"}
    sent = {"destination": "pacs", "outcome": "sent"}
    before = (_sample("pacsnode_time_to_delivery_seconds_count", timed),
              _sample("pacsnode_delivery_attempts_total", sent))
    down = _service(deliver, node, [Destination(name="pacs", ae_title=RECEIVER_AE,
                                                host="127.0.0.1", port=_closed_port())])
    assert down.deliver_once() == 0  # nothing there yet: not timed
    assert _sample("pacsnode_time_to_delivery_seconds_count", timed) == before[0]

    receiver = _start(receivers)
    node.make_due()
    assert _service(deliver, node, [receiver.destination()]).deliver_once() == len(exports)
    assert _sample("pacsnode_time_to_delivery_seconds_count", timed) == before[0] + 1
    assert _sample("pacsnode_delivery_attempts_total", sent) == before[1] + len(exports)
    assert _sample("pacsnode_time_to_delivery_seconds_sum", timed) > 0
