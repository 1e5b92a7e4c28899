"""ingest(): durable file + index row, the duplicate policy, concurrency."""

from __future__ import annotations

import importlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, RLELossless
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from storage import (
    FileStore,
    Instance,
    InstanceMeta,
    InstanceRepository,
    InstanceSource,
    InvalidUID,
    Patient,
    Series,
    StorageError,
    StoreOutcome,
    Study,
    StudyRepository,
    StudyState,
    ingest,
    ingest_many,
)
from storage import filestore as filestore_module

from .storage_helpers import at, content, encoded_instance, meta, uid

ingest_module = importlib.import_module("storage.ingest")

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _files(store: FileStore) -> list[Path]:
    return sorted(p for p in store.root.rglob("*") if p.is_file())


def _count(sessions: sessionmaker[Session], model: type) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_first_store_then_identical_duplicate(store: FileStore,
                                              sessions: sessionmaker[Session]) -> None:
    m = meta()
    assert ingest(store, sessions, content("a"), m, now=at(0)) is StoreOutcome.STORED
    assert ingest(store, sessions, content("a"), m, now=at(5)) is \
        StoreOutcome.DUPLICATE_IDENTICAL
    assert len(_files(store)) == 1
    assert _count(sessions, Instance) == 1
    with sessions() as session:
        study = session.scalars(select(Study)).one()
        assert study.instance_count == 1
        assert study.last_received_at == at(0)  # an identical re-send changes nothing
        instance = InstanceRepository(session).get(m.sop_instance_uid)
        assert instance is not None
        assert store.path_of(instance.relpath).read_bytes() == content("a")
        assert instance.received_at == at(0) and instance.received_at.tzinfo is not None


def test_conflicting_duplicate_keeps_the_first(store: FileStore,
                                               sessions: sessionmaker[Session]) -> None:
    m = meta()
    ingest(store, sessions, content("first"), m)
    assert ingest(store, sessions, content("second"), m) is StoreOutcome.DUPLICATE_CONFLICT_KEPT
    (path,) = _files(store)
    assert path.read_bytes() == content("first")
    with sessions() as session:
        instance = InstanceRepository(session).get(m.sop_instance_uid)
        assert instance is not None and instance.sha256 == store.sha256_of(path)


def test_conflicting_duplicate_can_overwrite(store: FileStore,
                                             sessions: sessionmaker[Session]) -> None:
    m = meta()
    ingest(store, sessions, content("first"), m, now=at(0))
    outcome = ingest(store, sessions, content("second"), m, overwrite_conflicts=True,
                     now=at(10))
    assert outcome is StoreOutcome.DUPLICATE_OVERWRITTEN
    (path,) = _files(store)
    assert path.read_bytes() == content("second")
    with sessions() as session:
        instance = InstanceRepository(session).get(m.sop_instance_uid)
        assert instance is not None and instance.sha256 == store.sha256_of(path)
        study = session.scalars(select(Study)).one()
        assert study.instance_count == 1
        assert study.last_received_at == at(10)
    assert _count(sessions, Instance) == 1


def test_overwrite_that_moves_the_instance_to_another_series(
        store: FileStore, sessions: sessionmaker[Session]) -> None:
    first = meta(study=1, series=1, sop=1)
    moved = meta(study=1, series=2, sop=1, sop_instance_uid=first.sop_instance_uid)
    ingest(store, sessions, content("first"), first)
    assert ingest(store, sessions, content("moved"), moved, overwrite_conflicts=True) is \
        StoreOutcome.DUPLICATE_OVERWRITTEN
    (path,) = _files(store)
    assert path.read_bytes() == content("moved")
    assert path == store.instance_path(moved.study_instance_uid, moved.series_instance_uid,
                                       moved.sop_instance_uid)
    with sessions() as session:
        assert session.scalars(select(Study)).one().instance_count == 1


def test_rows_hold_the_header(store: FileStore, sessions: sessionmaker[Session]) -> None:
    m = meta(study=3, series=2, sop=7)
    ingest(store, sessions, content("x"), m, calling_ae="MODALITY1", now=at(0))
    with sessions() as session:
        instance = InstanceRepository(session).get(m.sop_instance_uid)
        assert instance is not None
        series = session.get(Series, instance.series_id)
        assert series is not None
        study = session.get(Study, series.study_id)
        assert study is not None
        patient = session.get(Patient, study.patient_id)
        assert patient is not None
        assert (patient.patient_id, patient.patient_name) == ("PID0003", "Doe^Jane3")
        assert (study.study_instance_uid, study.state, study.modalities_in_study,
                study.first_received_at) == (uid(3), StudyState.RECEIVING, "CR", at(0))
        assert (series.series_instance_uid, series.modality, series.series_number,
                series.body_part_examined) == (uid(3, 2), "CR", 2, "WRIST")
        assert (instance.instance_number, instance.rows, instance.view_position,
                instance.source, instance.calling_ae) == (7, 512, "PA", "received",
                                                          "MODALITY1")
        assert instance.relpath == f"{uid(3)}/{uid(3, 2)}/{uid(3, 2, 7)}.dcm"
        assert instance.size_bytes == len(content("x"))


def test_meta_from_a_real_dicom_file(store: FileStore, sessions: sessionmaker[Session],
                                     tmp_path: Path) -> None:
    expected = meta(study=4, series=1, sop=2)
    data = encoded_instance(expected)
    parsed = InstanceMeta.read(data)
    assert parsed == expected
    source = tmp_path / "pynetdicom-stream.dcm"
    source.write_bytes(data)
    assert InstanceMeta.read(source) == expected
    assert ingest(store, sessions, source, parsed) is StoreOutcome.STORED
    assert _files(store)[0].read_bytes() == data


def test_invalid_uids_in_the_header_are_refused_before_any_write(
        store: FileStore, sessions: sessionmaker[Session]) -> None:
    with pytest.raises(InvalidUID, match="SeriesInstanceUID"):
        meta(series_instance_uid="../../etc")
    good = meta()
    bad = InstanceMeta.__new__(InstanceMeta)  # bypass __post_init__, as a buggy caller might
    object.__setattr__(bad, "__dict__", {**good.__dict__, "study_instance_uid": "../../x"})
    with pytest.raises(InvalidUID):
        ingest(store, sessions, b"data", bad)
    assert _files(store) == []
    assert _count(sessions, Instance) == 0


def test_produced_instances_do_not_wake_the_study(store: FileStore,
                                                  sessions: sessionmaker[Session]) -> None:
    ingest(store, sessions, content("image"), meta(sop=1), now=at(0))
    with sessions() as session:
        study = session.scalars(select(Study)).one()
        study.state = StudyState.SETTLED
        session.commit()
    result = meta(series=99, sop=1, modality="SR", sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34")
    ingest(store, sessions, content("sr"), result, source="produced", now=at(100))
    with sessions() as session:
        study = session.scalars(select(Study)).one()
        assert study.state == StudyState.SETTLED
        assert study.last_received_at == at(0)
        assert study.instance_count == 2
        assert study.modalities_in_study == "CR\\SR"
        received = InstanceRepository(session).for_study(uid(1), source="received")
        assert [i.sop_instance_uid for i in received] == [uid(1, 1, 1)]


def test_concurrent_ingest_of_one_study(store: FileStore, sessions: sessionmaker[Session],
                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="storage")
    metas = [meta(study=7, series=1 + i % 3, sop=i) for i in range(50)]
    start = threading.Barrier(4)

    def send(batch: list[InstanceMeta]) -> list[StoreOutcome]:
        start.wait(timeout=30)
        return [ingest(store, sessions, content(m.sop_instance_uid), m) for m in batch]

    with ThreadPoolExecutor(4) as pool:
        outcomes = [o for part in pool.map(send, [metas[i::4] for i in range(4)]) for o in part]
    assert outcomes == [StoreOutcome.STORED] * 50
    assert "40P01" not in caplog.text  # no deadlock between first instances of a study
    assert _count(sessions, Instance) == 50
    assert _count(sessions, Series) == 3
    assert _count(sessions, Patient) == 1
    with sessions() as session:
        study = session.scalars(select(Study)).one()
        assert study.instance_count == 50
        assert len(InstanceRepository(session).for_study(uid(7))) == 50
    assert len(_files(store)) == 50


def test_concurrent_conflicting_copies_of_one_instance(store: FileStore,
                                                       sessions: sessionmaker[Session]) -> None:
    m = meta()
    start = threading.Barrier(6)

    def send(i: int) -> StoreOutcome:
        start.wait(timeout=30)
        return ingest(store, sessions, content(f"copy {i}"), m)

    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(send, range(6)))
    assert sorted(outcomes) == sorted([StoreOutcome.STORED]
                                      + [StoreOutcome.DUPLICATE_CONFLICT_KEPT] * 5)
    (path,) = _files(store)
    with sessions() as session:
        instance = InstanceRepository(session).get(m.sop_instance_uid)
        assert instance is not None and instance.sha256 == store.sha256_of(path)
        assert session.scalars(select(Study)).one().instance_count == 1


def test_no_patient_data_in_logs(store: FileStore, sessions: sessionmaker[Session],
                                 caplog: pytest.LogCaptureFixture) -> None:
    m = meta(patient_name="Secret^Person", patient_id="SECRET-ID-42",
             patient_birth_date="19111111")
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO)
        try:
            ingest(store, sessions, content("a"), m)
            ingest(store, sessions, content("b"), m)  # conflict: a warning is logged
        finally:
            logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
    assert "INSERT INTO patients" in caplog.text  # the SQL was logged ...
    assert m.sop_instance_uid in caplog.text
    for secret in ("Secret", "SECRET-ID-42", "19111111"):
        assert secret not in caplog.text  # ... its parameters were not
        assert secret not in repr(m)


def _image(m: InstanceMeta, *, syntax: str = ExplicitVRLittleEndian, seed: int = 0,
           manufacturer: str = "") -> bytes:
    """A real 64 x 64 16-bit image carrying ``m``'s attributes, in ``syntax``."""
    ds = dcmread(BytesIO(encoded_instance(m)))
    ds.SamplesPerPixel = 1
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.Rows = ds.Columns = 64
    if manufacturer:
        ds.Manufacturer = manufacturer
    pixels = np.random.default_rng(seed).integers(0, 4096, (64, 64), dtype=np.uint16)
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW"
    if syntax != ExplicitVRLittleEndian:
        ds.compress(syntax, pixels, generate_instance_uid=False)
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _study_state(sessions: sessionmaker[Session], study_uid: str) -> str:
    with sessions() as session:
        study = StudyRepository(session).get(study_uid)
        assert study is not None
        return study.state


def test_the_same_image_in_another_transfer_syntax_is_a_duplicate(
        store: FileStore, sessions: sessionmaker[Session]) -> None:
    """An archive forwarding its lossless copy of an image the modality sent uncompressed:
    Success, nothing re-opened, the first copy kept; other pixels stay a conflict."""
    m = meta()
    assert ingest(store, sessions, _image(m), m, now=at(0)) is StoreOutcome.STORED
    with sessions() as session:
        StudyRepository(session).mark_settled_and_create_job(
            StudyRepository(session).get(m.study_instance_uid), now=at(60))  # type: ignore[arg-type]
        session.commit()
    rle = _image(m, syntax=RLELossless)
    assert ingest(store, sessions, rle, m, now=at(70),
                  overwrite_conflicts=True) is StoreOutcome.DUPLICATE_IDENTICAL
    assert _study_state(sessions, m.study_instance_uid) == StudyState.SETTLED
    with sessions() as session:
        row = InstanceRepository(session).get(m.sop_instance_uid)
        assert row is not None and row.transfer_syntax_uid == ExplicitVRLittleEndian
    other = _image(m, syntax=RLELossless, seed=1)
    assert ingest(store, sessions, other, m,
                  now=at(80)) is StoreOutcome.DUPLICATE_CONFLICT_KEPT


def test_the_nodes_own_results_never_reopen_a_study(store: FileStore,
                                                     sessions: sessionmaker[Session]) -> None:
    """A PACS that forwards whole studies sends the node's results back: they are kept as
    they are and the study stays settled, with overwrite on or off."""
    image = meta()
    ingest(store, sessions, _image(image), image, now=at(0))
    with sessions() as session:
        StudyRepository(session).mark_settled_and_create_job(
            StudyRepository(session).get(image.study_instance_uid), now=at(60))  # type: ignore[arg-type]
        session.commit()
    result = meta(series=9002, sop=1, sop_class_uid=SECONDARY_CAPTURE, modality="OT")
    ingest(store, sessions, _image(result, manufacturer="pacs-node"), result,
           source=InstanceSource.PRODUCED, now=at(61))
    for overwrite in (False, True):
        back = _image(result, syntax=RLELossless, seed=5, manufacturer="pacs-node")
        assert ingest(store, sessions, back, result, overwrite_conflicts=overwrite,
                      now=at(90)) is StoreOutcome.OWN_RESULT
    assert _study_state(sessions, image.study_instance_uid) == StudyState.SETTLED
    # A result of this or another node the index does not know is stored, re-opening nothing.
    foreign = InstanceMeta.read(_image(meta(series=9003, sop=1, sop_class_uid=SECONDARY_CAPTURE),
                                       manufacturer="pacs-node"))
    assert foreign.node_result
    assert ingest(store, sessions, _image(meta(series=9003, sop=1,
                                               sop_class_uid=SECONDARY_CAPTURE),
                                          manufacturer="pacs-node"), foreign,
                  now=at(95)) is StoreOutcome.STORED
    assert _study_state(sessions, image.study_instance_uid) == StudyState.SETTLED


def test_many_instances_in_one_call(store: FileStore, sessions: sessionmaker[Session],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A STOW-RS request's parts: new, duplicate and conflicting ones in one call, more
    than one transaction's worth; each gets its own outcome, and every folder a file was
    renamed into is fsynced before the index commits."""
    monkeypatch.setattr(ingest_module, "BATCH", 3)
    assert ingest(store, sessions, content("held"), meta(1, 1, 1)) is StoreOutcome.STORED
    items = [(content("held"), meta(1, 1, 1)), (content("other"), meta(1, 1, 1)),
             *[(content(f"new{n}"), meta(1, 1 + n % 2, 10 + n)) for n in range(5)]]
    synced: list[Path] = []
    real = filestore_module._fsync_dir
    monkeypatch.setattr(filestore_module, "_fsync_dir",
                        lambda path: (synced.append(path), real(path))[1])
    outcomes = ingest_many(store, sessions, items)
    assert outcomes == [StoreOutcome.DUPLICATE_IDENTICAL, StoreOutcome.DUPLICATE_CONFLICT_KEPT,
                        *[StoreOutcome.STORED] * 5]
    assert {store.path_of(store.relpath_for(uid(1), uid(1, s), uid(1, 1, 1))).parent
            for s in (1, 2)} <= set(synced)
    assert len(_files(store)) == 6 and _count(sessions, Instance) == 6
    with sessions() as session:
        assert session.scalars(select(Study)).one().instance_count == 6


def test_one_failing_instance_of_many_fails_alone(store: FileStore,
                                                 sessions: sessionmaker[Session],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    real = ingest_module.index_staged

    def index_staged(session: Session, store: FileStore, staged: object, meta: InstanceMeta,
                     **kwargs: object) -> StoreOutcome:
        if meta.sop_instance_uid == uid(1, 1, 2):
            raise StorageError("index database error (simulated)")
        return real(session, store, staged, meta, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ingest_module, "index_staged", index_staged)
    items = [(content(f"c{n}"), meta(1, 1, n)) for n in (1, 2, 3)]
    outcomes = ingest_many(store, sessions, items)
    assert outcomes[0] is StoreOutcome.STORED and outcomes[2] is StoreOutcome.STORED
    assert isinstance(outcomes[1], StorageError)
    with sessions() as session:
        held = {i.sop_instance_uid for i in session.scalars(select(Instance))}
    assert held == {uid(1, 1, 1), uid(1, 1, 3)}
    assert [p.name for p in _files(store)] == sorted(
        Path(store.relpath_for(uid(1), uid(1, 1), uid(1, 1, n))).name for n in (1, 3))
    assert not list(store.root.rglob("*.tmp-*"))
