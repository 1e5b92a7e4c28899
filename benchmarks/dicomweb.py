"""DICOMweb: pacs-node against Orthanc's DICOMweb plugin on the same instances, loopback.

    .venv/bin/python benchmarks/dicomweb.py
    .venv/bin/python benchmarks/dicomweb.py --phases qido --qido-sizes 10000 --rounds 30

Three phases (``--phases``, default all):

``stow``: STOW-RS throughput. The same small synthetic CRs (512x512 16-bit from models.synth,
~0.5 MB, explicit VR little endian, one study) posted by one ``requests`` client as
``multipart/related; type="application/dicom"`` bodies of ``--batch`` parts, built in memory
before the clock starts. Each rep every receiver is started fresh on an empty store (every
instance is new to it) and the runs are interleaved node, node-pg, orthanc, node...; timed:
wall clock of all the requests; every response must list every part as stored, and the
receiver, once stopped, must hold every instance. Medians, min/max, ratios.

``qido``: QIDO-RS latency of six kinds of query a viewer or a script sends, at each
``--qido-sizes`` (cumulative: 10k, then 90k more). The instances (tiny 16x16 CR/DX/CT/MR with
realistic patient/study/series spread, generated from byte templates) are filled into the node
on SQLite, the node on PostgreSQL (a fresh database created and dropped here) and Orthanc,
all three at once: the node's index through ``storage.InstanceRepository.record`` (its ingest
repository, 500 instances a transaction, files hard-linked into its store: no STOW, no fsync),
Orthanc through its REST API (``POST /instances`` with ZIP archives). Then each server is
restarted fresh and the same queries go to all three, interleaved (the order rotates each
round); p50/p95 per kind. Result sets are compared across the three servers.

``rss``: the node's resident memory (VmRSS every 0.1 s) while one multipart STOW of
``--rss-instances`` x 10 MB instances (2500x2000 16-bit noise) is stored; Orthanc's for
comparison.

The node is the committed HEAD, run from a ``git worktree`` with this venv's interpreter (the
benchmark stops unless it imported ``pacs_node`` and ``storage`` from there), as ``pacs-node
serve`` (DIMSE, tracker and HTTP in one process, INFO log), study.stable_seconds one day so no
job runs. Runs itself in a private network namespace (``unshare -n``, loopback only: Orthanc
binds every address), so it needs root; PostgreSQL is reached through its Unix socket.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import random
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
import pydicom
import requests
from _common import (
    LAUNCHER,
    PYTHON,
    REPO,
    check_imports,
    free_port,
    git,
    in_private_netns,
    node_env,
    version,
)
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

PG_SOCKET = "/var/run/postgresql"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
RECEIVERS = ("node", "node-pg", "orthanc")
PHASES = ("stow", "qido", "rss")
DICOM_JSON = "application/dicom+json"
FILL_BATCH = 500  # node instances per index transaction while filling
ZIP_BATCH = 1000  # instances per ZIP posted to Orthanc while filling
UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root; + 30 digits = 56 characters
TARGET_QIDO_MS = 50.0
TARGET_RSS_MB = 100.0



# -- processes, ports, databases ------------------------------------------------------------

def psql(sql: str, database: str = "postgres") -> str:
    r = subprocess.run(["psql", "-h", PG_SOCKET, "-U", "postgres", "-d", database, "-tA",
                        "-v", "ON_ERROR_STOP=1", "-c", sql],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"psql {sql[:60]!r} failed: {r.stderr.strip()}")
    return r.stdout.strip()


class Databases:
    """PostgreSQL databases created for this run; all dropped by :meth:`drop_all`."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(4)
        self.made: list[str] = []

    def create(self) -> str:
        name = f"pacsnode_bench_{self.tag}_{len(self.made)}"
        psql(f'CREATE DATABASE "{name}"')
        self.made.append(name)
        return name

    def drop(self, name: str) -> None:
        psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.made.remove(name)

    def drop_all(self) -> None:
        for name in list(self.made):
            try:
                self.drop(name)
            except RuntimeError as exc:
                print(f"warning: {exc}", file=sys.stderr)


def pg_url(database: str) -> str:
    return f"postgresql+psycopg://postgres@/{database}?host={PG_SOCKET}"


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()  # SIGTERM to this PID only
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Server:
    """A running DICOMweb server: ``base`` is its DICOMweb root URL."""

    name: str
    proc: subprocess.Popen[bytes]
    base: str
    work: Path
    database: str | None = None  # the node's index: SQLite file path or PostgreSQL name

    def stop(self) -> None:
        stop(self.proc)


def wait_http(proc: subprocess.Popen[bytes], url: str, log: Path, what: str,
              timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=10).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    stop(proc)
    sys.exit(f"{what} did not answer {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def start_node(name: str, work: Path, src: Path, database_url: str) -> Server:
    """``pacs-node serve`` from the worktree ``src`` over ``work/store`` and ``database_url``."""
    work.mkdir(parents=True, exist_ok=True)
    http = free_port()
    (work / "config.yaml").write_text(
        f"node: {{ae_title: BENCHNODE, dimse_host: 127.0.0.1, dimse_port: {free_port()},\n"
        f"       http_host: 127.0.0.1, http_port: {http}}}\n"
        f"storage: {{root: '{work / 'store'}', database_url: '{database_url}'}}\n"
        "queue: {broker_url: 'memory://'}\nstudy: {stable_seconds: 86400}\ndestinations: []\n"
        "http: {enabled: true, auth: false}\n")
    log = work / "node.log"
    cmd = [str(PYTHON), "-c", LAUNCHER, "serve", "--config", str(work / "config.yaml")]
    proc = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            env=node_env(src), cwd=src)
    base = f"http://127.0.0.1:{http}/dicomweb"
    wait_http(proc, f"{base}/studies?limit=1", log, name)
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("bench-import")]
    first = lines[-1].split()
    if not all(Path(f).is_relative_to(src) for f in first[1:]):
        stop(proc)
        sys.exit(f"the node started from {src} imported {first[1:]}")
    return Server(name, proc, base, work)


def start_orthanc(work: Path, *, sync: bool = True) -> Server:
    """Orthanc with its DICOMweb plugin (DICOM listener off), SQLite index, no compression."""
    work.mkdir(parents=True, exist_ok=True)
    http = free_port()
    config = {
        "Name": "dicomweb-bench", "HttpPort": http, "DicomServerEnabled": False,
        "StorageDirectory": str(work / "storage"), "IndexDirectory": str(work / "index"),
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "StorageCompression": False, "SyncStorageArea": sync,
        "Plugins": [DICOMWEB_PLUGIN], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (work / "orthanc.json").write_text(json.dumps(config))
    log = work / "orthanc.log"
    proc = subprocess.Popen(["Orthanc", str(work / "orthanc.json")], stdout=log.open("ab"),
                            stderr=subprocess.STDOUT)
    wait_http(proc, f"http://127.0.0.1:{http}/system", log, "Orthanc")
    return Server("orthanc", proc, f"http://127.0.0.1:{http}/dicom-web", work)


def orthanc_root(server: Server) -> str:
    return server.base.rsplit("/dicom-web", 1)[0]


def orthanc_count(server: Server) -> int:
    r = requests.get(f"{orthanc_root(server)}/statistics", timeout=60)
    r.raise_for_status()
    return int(r.json()["CountInstances"])


def node_count(server: Server) -> int:
    """Instances in the node's index (rows), counted with the node stopped or running."""
    if server.database is None:
        raise ValueError(f"{server.name} has no database recorded")
    if server.database.endswith(".db"):
        with sqlite3.connect(server.database) as db:
            return int(db.execute("SELECT count(*) FROM instances").fetchone()[0])
    return int(psql("SELECT count(*) FROM instances", server.database))


def store_files(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*.dcm") if not p.name.startswith(".")]
    return len(files), sum(p.stat().st_size for p in files)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


# -- data -------------------------------------------------------------------------------------

def base_dataset(tmp: Path) -> Dataset:
    """One synthetic 512x512 16-bit CR from models.synth, explicit VR little endian."""
    from models.synth import generate_dataset

    generate_dataset(tmp / "synth", studies=1, seed=11, size=512)
    ds = pydicom.dcmread(next(iter(sorted((tmp / "synth").rglob("*.dcm")))))
    shutil.rmtree(tmp / "synth")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


class Uids:
    """Unique 56-character UIDs: pydicom's root, a per-run nonce, a counter."""

    def __init__(self) -> None:
        self.nonce = str(random.SystemRandom().randrange(10**11, 10**12))
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"{UID_ROOT}{self.nonce}{self.n:018d}"


def copies(ds: Dataset, n: int, uids: Uids, shape: tuple[int, int] | None = None,
           seed: int = 5) -> Iterator[bytes]:
    """``n`` Part 10 copies of ``ds`` in one new study/series with new SOP Instance UIDs;
    with ``shape``, fresh noise pixel data of that size in each."""
    ds = ds.copy()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids(), uids()
    rng = np.random.default_rng(seed)
    if shape is not None:
        ds.Rows, ds.Columns = shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    for i in range(n):
        if shape is not None:
            ds.PixelData = rng.integers(0, 4096, size=shape, dtype=np.uint16).tobytes()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(uids())
        ds.InstanceNumber = i + 1
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        yield out.getvalue()


def multipart(parts: Sequence[bytes], boundary: str) -> bytes:
    out = bytearray()
    for part in parts:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        out += part + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def stow_headers(boundary: str) -> dict[str, str]:
    return {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": DICOM_JSON}


# The QIDO corpus: tiny instances from one byte template per modality; each field patched
# in place (fixed widths: the element lengths never change).
SOP_CLASSES = {"CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1",
               "CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}
FIELDS = {  # keyword: (tag, VR, width)
    "MediaStorageSOPInstanceUID": (0x00020003, "UI", 56),
    "SOPInstanceUID": (0x00080018, "UI", 56),
    "StudyInstanceUID": (0x0020000D, "UI", 56),
    "SeriesInstanceUID": (0x0020000E, "UI", 56),
    "PatientName": (0x00100010, "PN", 32),
    "PatientID": (0x00100020, "LO", 8),
    "PatientBirthDate": (0x00100030, "DA", 8),
    "PatientSex": (0x00100040, "CS", 2),
    "StudyDate": (0x00080020, "DA", 8),
    "StudyTime": (0x00080030, "TM", 6),
    "AccessionNumber": (0x00080050, "SH", 8),
    "StudyDescription": (0x00081030, "LO", 24),
    "SeriesNumber": (0x00200011, "IS", 4),
    "SeriesDescription": (0x0008103E, "LO", 24),
    "BodyPartExamined": (0x00180015, "CS", 16),
    "InstanceNumber": (0x00200013, "IS", 4),
}
FAMILY = ("SMITH JOHNSON WILLIAMS BROWN JONES GARCIA MILLER DAVIS RODRIGUEZ MARTINEZ "
          "HERNANDEZ LOPEZ GONZALEZ WILSON ANDERSON THOMAS TAYLOR MOORE JACKSON MARTIN LEE "
          "PEREZ THOMPSON WHITE HARRIS SANCHEZ CLARK RAMIREZ LEWIS ROBINSON WALKER YOUNG "
          "ALLEN KING WRIGHT SCOTT TORRES NGUYEN HILL FLORES GREEN ADAMS NELSON BAKER HALL "
          "RIVERA CAMPBELL MITCHELL CARTER ROBERTS MULLER SCHMIDT SCHNEIDER FISCHER WEBER "
          "MEYER WAGNER BECKER SCHULZ HOFFMANN DUBOIS DURAND LEROY MOREAU SIMON LAURENT "
          "LEFEBVRE MICHEL ROSSI RUSSO FERRARI ESPOSITO BIANCHI ROMANO COLOMBO RICCI "
          "JANSEN DEVRIES VANDIJK BAKKER VISSER SMIT MEIJER PEETERS MAES JACOBS MERTENS "
          "NOWAK KOWALSKI WISNIEWSKI WOJCIK KOWALCZYK KAMINSKI LEWANDOWSKI ZIELINSKI "
          "SZYMANSKI WOZNIAK DABROWSKI KOZLOWSKI JENSEN NIELSEN HANSEN PEDERSEN ANDERSEN "
          "LARSEN SORENSEN RASMUSSEN").split()
GIVEN = ("JAMES MARY ROBERT PATRICIA MICHAEL JENNIFER WILLIAM LINDA DAVID ELIZABETH RICHARD "
         "BARBARA JOSEPH SUSAN THOMAS JESSICA CHARLES SARAH ANNA PETER MARIE PAUL EVA JAN "
         "SOPHIE LUCAS EMMA NOAH MIA LEON HANNAH FELIX LENA MAX LAURA OSCAR ZOE IDA").split()
# (modality, share of studies, series per study, instances per series, body parts)
PROFILES = (("CR", 0.55, (1, 2), (1, 3), ("WRIST", "HAND", "ANKLE", "KNEE", "HIP", "CHEST")),
            ("DX", 0.30, (1, 2), (1, 3), ("CHEST", "PELVIS", "SPINE", "SHOULDER")),
            ("CT", 0.10, (2, 3), (15, 30), ("HEAD", "CHEST", "ABDOMEN")),
            ("MR", 0.05, (3, 4), (10, 20), ("HEAD", "KNEE", "LSPINE")))


def templates() -> dict[str, tuple[bytes, dict[str, tuple[int, int, bytes]]]]:
    """Per modality: a Part 10 template and, per field, (offset, width, pad byte)."""
    out = {}
    for modality, sop_class in SOP_CLASSES.items():
        fm = FileMetaDataset()
        fm.MediaStorageSOPClassUID = UID(sop_class)
        fm.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = fm
        ds.SOPClassUID, ds.Modality = sop_class, modality
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = 16
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = np.full((16, 16), 100, np.uint16).tobytes()
        for keyword, (_tag, vr, width) in FIELDS.items():
            value = {"UI": "1." + "1" * (width - 2), "DA": "19000101", "TM": "000000",
                     "IS": "1" * width}.get(vr, "X" * width)
            setattr(fm if keyword.startswith("MediaStorage") else ds, keyword, value)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        data = buf.getvalue()
        offsets = {}
        for keyword, (tag, vr, width) in FIELDS.items():
            key = (tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little")
            key += vr.encode()
            if data.count(key) != 1:
                raise RuntimeError(f"{keyword}: tag found {data.count(key)} times in the template")
            pos = data.index(key)
            length = int.from_bytes(data[pos + 6:pos + 8], "little")
            if length != width:
                raise RuntimeError(f"{keyword}: length {length}, expected {width}")
            offsets[keyword] = (pos + 8, width, b"\0" if vr == "UI" else b" ")
        out[modality] = (data, offsets)
    return out


def patch(template: tuple[bytes, dict[str, tuple[int, int, bytes]]],
          values: dict[str, str]) -> bytes:
    data, offsets = template
    buf = bytearray(data)
    for keyword, value in values.items():
        offset, width, pad = offsets[keyword]
        raw = value.encode("ascii")
        if len(raw) > width:
            raise ValueError(f"{keyword} {value!r} is wider than {width}")
        buf[offset:offset + width] = raw.ljust(width, pad)
    return bytes(buf)


def meta_fields(study: dict[str, str], series: dict[str, str], modality: str, sop: str,
                number: int) -> dict[str, Any]:
    """The ``storage.InstanceMeta`` fields of a corpus instance (the fill worker checks
    them against the file's header)."""
    return {
        "sop_instance_uid": sop, "sop_class_uid": SOP_CLASSES[modality],
        "study_instance_uid": study["StudyInstanceUID"],
        "series_instance_uid": series["SeriesInstanceUID"],
        "transfer_syntax_uid": ExplicitVRLittleEndian, "patient_id": study["PatientID"],
        "patient_name": study["PatientName"], "patient_birth_date": study["PatientBirthDate"],
        "patient_sex": study["PatientSex"], "study_date": study["StudyDate"],
        "study_time": study["StudyTime"], "accession_number": study["AccessionNumber"],
        "study_description": study["StudyDescription"], "modality": modality,
        "series_number": int(series["SeriesNumber"]),
        "series_description": series["SeriesDescription"],
        "body_part_examined": series["BodyPartExamined"], "instance_number": number,
        "rows": 16, "columns": 16, "photometric_interpretation": "MONOCHROME2"}


@dataclass
class Corpus:
    """The QIDO instances as files ``src/<index>.dcm`` (study after study), and what the
    queries are drawn from."""

    src: Path
    count: int = 0
    stages: list[int] = field(default_factory=list)  # instances at the end of each stage
    # per stage: studies (uid, patient id, family name, date, modality, instances)
    studies: list[list[tuple[str, str, str, str, str, int]]] = field(default_factory=list)
    seconds: float = 0.0


def make_corpus(src: Path, sizes: Sequence[int], seed: int, uids: Uids) -> Corpus:
    """Generate ``sizes[-1]`` instances; stage k holds the first ``sizes[k]``."""
    started = time.perf_counter()
    src.mkdir(parents=True)
    rng = random.Random(seed)
    tmpl = templates()
    corpus = Corpus(src)
    patients: list[tuple[str, str, str, str]] = []
    stage_studies: list[tuple[str, str, str, str, str, int]] = []
    weights = [p[1] for p in PROFILES]
    study_no = 0
    manifest = (src / "manifest.jsonl").open("w")
    for stage_end in sizes:
        while corpus.count < stage_end:
            if not patients or rng.random() < 0.45:
                pid = f"P{len(patients):07d}"
                name = f"{rng.choice(FAMILY)}^{rng.choice(GIVEN)}"
                birth = f"{rng.randrange(1930, 2015)}{rng.randrange(1, 13):02d}" \
                        f"{rng.randrange(1, 29):02d}"
                patients.append((pid, name, birth, rng.choice("MF")))
            pid, name, birth, sex = rng.choice(patients)
            modality, _, n_series, n_inst, parts = rng.choices(PROFILES, weights)[0]
            study_no += 1
            date = f"{rng.randrange(2015, 2025)}{rng.randrange(1, 13):02d}" \
                   f"{rng.randrange(1, 29):02d}"
            study = {"StudyInstanceUID": uids(), "PatientName": name, "PatientID": pid,
                     "PatientBirthDate": birth, "PatientSex": sex, "StudyDate": date,
                     "StudyTime": f"{rng.randrange(7, 20):02d}{rng.randrange(60):02d}"
                                  f"{rng.randrange(60):02d}",
                     "AccessionNumber": f"A{study_no:07d}",
                     "StudyDescription": f"{modality} {rng.choice(parts)}"}
            held = 0
            for s in range(rng.randint(*n_series)):
                series = {"SeriesInstanceUID": uids(), "SeriesNumber": str(s + 1),
                          "SeriesDescription": f"{modality} series {s + 1}",
                          "BodyPartExamined": rng.choice(parts)}
                for i in range(rng.randint(*n_inst)):
                    if corpus.count >= stage_end:
                        break
                    sop = uids()
                    data = patch(tmpl[modality], {**study, **series, "SOPInstanceUID": sop,
                                                  "MediaStorageSOPInstanceUID": sop,
                                                  "InstanceNumber": str(i + 1)})
                    (src / f"{corpus.count:07d}.dcm").write_bytes(data)
                    manifest.write(json.dumps(meta_fields(study, series, modality, sop, i + 1))
                                   + "\n")
                    corpus.count += 1
                    held += 1
            if held:
                stage_studies.append((study["StudyInstanceUID"], pid, name.split("^")[0],
                                      date, modality, held))
        corpus.stages.append(corpus.count)
        corpus.studies.append(list(stage_studies))
    manifest.close()
    corpus.seconds = time.perf_counter() - started
    check = pydicom.dcmread(src / "0000000.dcm")  # the patched bytes parse as DICOM
    if check.SOPInstanceUID != check.file_meta.MediaStorageSOPInstanceUID:
        raise RuntimeError("the template patching broke the SOP Instance UID")
    return corpus


# -- filling the node (a subprocess with the worktree's packages) ---------------------------

def fill_worker(args: argparse.Namespace) -> None:
    """Index ``src/<start..stop>.dcm`` into the node's index at ``--db`` and hard-link the
    files into its store; prints one JSON line. ``--mode record``: one
    ``InstanceRepository.record`` per instance on the header read from the file, 500 a
    transaction; ``bulk``: the same rows from the manifest (checked against the header of
    every 500th file) with multi-row INSERTs in one transaction."""
    import hashlib

    import storage
    from storage import (
        FileStore,
        InstanceMeta,
        InstanceRepository,
        StoredFile,
        begin_write,
        create_engine_for,
        migrate,
        session_factory,
    )

    started = time.perf_counter()
    engine = create_engine_for(args.db)
    migrate(engine)
    sessions = session_factory(engine)
    store = FileStore(Path(args.store))
    src = Path(args.src)

    def place(index: int, meta: InstanceMeta) -> StoredFile:
        path = src / f"{index:07d}.dcm"
        data = path.read_bytes()
        relpath = store.relpath_for(meta.study_instance_uid, meta.series_instance_uid,
                                    meta.sop_instance_uid)
        target = store.root / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, target)
        return StoredFile(target, relpath, hashlib.sha256(data).hexdigest(), len(data))

    if args.mode == "record":
        with sessions() as session:
            for first in range(args.start, args.stop, FILL_BATCH):
                begin_write(session)
                repo = InstanceRepository(session)
                for index in range(first, min(first + FILL_BATCH, args.stop)):
                    meta = InstanceMeta.read(src / f"{index:07d}.dcm")
                    repo.record(meta, place(index, meta), calling_ae="BENCHFILL")
                session.commit()
    else:
        metas = []
        with (src / "manifest.jsonl").open() as manifest:
            for index, line in enumerate(manifest):
                if args.start <= index < args.stop:
                    meta = InstanceMeta(**json.loads(line))
                    if index % 500 == 0 and InstanceMeta.read(src / f"{index:07d}.dcm") != meta:
                        raise RuntimeError(f"manifest line {index} differs from the file")
                    metas.append((meta, place(index, meta)))
        with sessions() as session:
            begin_write(session)
            bulk_index(session, metas)
            session.commit()
    engine.dispose()
    print(json.dumps({"seconds": time.perf_counter() - started, "storage": storage.__file__}))


def bulk_index(session: Any, metas: list[tuple[Any, Any]]) -> None:
    """The rows ``InstanceRepository.record`` writes for new instances of new studies
    (received, not results), inserted many at a time; patients may exist already."""
    from datetime import UTC, datetime

    from sqlalchemy import insert, select

    from storage import Instance, InstanceSource, Patient, Series, Study, StudyState

    now = datetime.now(UTC)
    patients = dict(session.execute(select(Patient.patient_id, Patient.id)).tuples().all())
    new_patients: dict[str, Any] = {}
    studies: dict[str, list[Any]] = {}
    series: dict[str, list[Any]] = {}
    for meta, _ in metas:
        if meta.patient_id not in patients:
            new_patients.setdefault(meta.patient_id, meta)
        studies.setdefault(meta.study_instance_uid, []).append(meta)
        series.setdefault(meta.series_instance_uid, []).append(meta)
    if new_patients:
        rows = session.execute(
            insert(Patient).returning(Patient.patient_id, Patient.id,
                                      sort_by_parameter_order=True),
            [{"patient_id": m.patient_id, "patient_name": m.patient_name,
              "birth_date": m.patient_birth_date, "sex": m.patient_sex}
             for m in new_patients.values()]).tuples().all()
        patients.update(rows)
    study_rows = []
    for uid, group in studies.items():
        first = group[0]
        row = {"study_instance_uid": uid, "patient_id": patients[first.patient_id],
               "study_date": "", "study_time": "", "accession_number": "",
               "study_description": "", "instance_count": len(group),
               "first_received_at": now, "last_received_at": now,
               "state": str(StudyState.RECEIVING)}
        modalities: list[str] = []
        for meta in group:  # what _touch_study does, instance after instance
            joined = "\\".join([*modalities, meta.modality])
            if meta.modality and meta.modality not in modalities and len(joined) <= 128:
                modalities.append(meta.modality)
            for name in ("study_date", "study_time", "accession_number", "study_description"):
                if not row[name] and getattr(meta, name):
                    row[name] = getattr(meta, name)
        row["modalities_in_study"] = "\\".join(modalities)
        study_rows.append(row)
    study_ids = dict(session.execute(
        insert(Study).returning(Study.study_instance_uid, Study.id,
                                sort_by_parameter_order=True), study_rows).tuples().all())
    series_ids = dict(session.execute(
        insert(Series).returning(Series.series_instance_uid, Series.id,
                                 sort_by_parameter_order=True),
        [{"series_instance_uid": uid, "study_id": study_ids[m[0].study_instance_uid],
          "modality": m[0].modality, "series_number": m[0].series_number,
          "series_description": m[0].series_description,
          "body_part_examined": m[0].body_part_examined, "laterality": m[0].laterality}
         for uid, m in series.items()]).tuples().all())
    rows = [{"sop_instance_uid": m.sop_instance_uid, "series_id": series_ids[m.series_instance_uid],
             "sop_class_uid": m.sop_class_uid, "transfer_syntax_uid": m.transfer_syntax_uid,
             "instance_number": m.instance_number, "relpath": f.relpath, "sha256": f.sha256,
             "size_bytes": f.size, "rows": m.rows, "columns": m.columns,
             "view_position": m.view_position, "image_laterality": m.image_laterality,
             "photometric_interpretation": m.photometric_interpretation, "received_at": now,
             "source": str(InstanceSource.RECEIVED), "calling_ae": "BENCHFILL",
             "job_id": None, "superseded": False} for m, f in metas]
    for first in range(0, len(rows), 5000):
        session.execute(insert(Instance), rows[first:first + 5000])


# Columns compared between a bulk fill and a repository fill (ids and times left out).
INDEX_CHECK = (
    "SELECT patient_id, patient_name, birth_date, sex FROM patients ORDER BY patient_id",
    "SELECT s.study_instance_uid, p.patient_id, study_date, study_time, accession_number, "
    "study_description, modalities_in_study, instance_count, state, priority, current_job_id "
    "FROM studies s JOIN patients p ON s.patient_id = p.id ORDER BY 1",
    "SELECT se.series_instance_uid, st.study_instance_uid, modality, series_number, "
    "series_description, body_part_examined, laterality FROM series se "
    "JOIN studies st ON se.study_id = st.id ORDER BY 1",
    "SELECT i.sop_instance_uid, se.series_instance_uid, sop_class_uid, transfer_syntax_uid, "
    "instance_number, relpath, sha256, size_bytes, rows, columns, view_position, "
    "image_laterality, photometric_interpretation, source, calling_ae, job_id, superseded "
    "FROM instances i JOIN series se ON i.series_id = se.id ORDER BY 1",
)


def check_bulk_fill(tmp: Path, src_tree: Path, corpus: Corpus, n: int) -> int:
    """Fill the first studies (about ``n`` instances, in two stages as the benchmark does)
    both ways into scratch SQLite indexes; stop unless the rows are the same. Returns how
    many instances were compared."""
    ends = []
    held = 0
    for study in corpus.studies[0]:
        held += study[-1]
        ends.append(held)
    split = next((e for e in ends if e >= n // 3), ends[-1])
    end = next((e for e in ends if e >= n), ends[-1])
    dbs = {}
    for mode in ("record", "bulk"):
        work = tmp / f"fillcheck-{mode}"
        url = f"sqlite:///{work / 'index.db'}"
        fill_node(work, url, src_tree, corpus, 0, split, mode)
        fill_node(work, url, src_tree, corpus, split, end, mode)
        dbs[mode] = work
    tables = {}
    for mode, work in dbs.items():
        with sqlite3.connect(work / "index.db") as db:
            tables[mode] = [db.execute(q).fetchall() for q in INDEX_CHECK]
    for query, a, b in zip(INDEX_CHECK, tables["record"], tables["bulk"], strict=True):
        if a != b or not a:
            sys.exit(f"the bulk fill differs from InstanceRepository.record: {query[:60]}...")
    for work in dbs.values():
        shutil.rmtree(work)
    return end


def fill_node(server_work: Path, database_url: str, src_tree: Path, corpus: Corpus,
              start: int, stop_at: int, mode: str = "bulk") -> float:
    cmd = [str(PYTHON), str(Path(__file__).resolve()), "--fill-worker", "--mode", mode,
           "--db", database_url,
           "--store", str(server_work / "store"), "--src", str(corpus.src),
           "--start", str(start), "--stop", str(stop_at)]
    r = subprocess.run(cmd, cwd=src_tree, env=node_env(src_tree), capture_output=True,
                       text=True, timeout=7200)
    if r.returncode != 0:
        raise RuntimeError(f"filling {database_url} failed:\n{r.stdout[-2000:]}{r.stderr[-3000:]}")
    result = json.loads(r.stdout.splitlines()[-1])
    if not Path(result["storage"]).is_relative_to(src_tree):
        raise RuntimeError(f"the fill imported storage from {result['storage']}")
    return float(result["seconds"])


def fill_orthanc(server: Server, corpus: Corpus, start: int, stop_at: int,
                 limit_s: float) -> tuple[float, bool]:
    """POST ZIP archives of ``ZIP_BATCH`` files to /instances, two at a time; returns the
    seconds and whether it finished within ``limit_s``."""
    started = time.perf_counter()
    url = f"{orthanc_root(server)}/instances"
    batches = [range(b, min(b + ZIP_BATCH, stop_at)) for b in range(start, stop_at, ZIP_BATCH)]
    local = threading.local()
    late = threading.Event()

    def post(indices: range) -> None:
        if late.is_set():
            return
        if time.perf_counter() - started > limit_s:
            late.set()
            return
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
            for index in indices:
                archive.write(corpus.src / f"{index:07d}.dcm", f"{index:07d}.dcm")
        r = session.post(url, data=buf.getvalue(), timeout=3600)
        r.raise_for_status()
        if len(r.json()) != len(indices):
            raise RuntimeError(f"Orthanc took {len(r.json())} of {len(indices)} instances")

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        list(pool.map(post, batches))
    return time.perf_counter() - started, not late.is_set()


# -- STOW-RS ---------------------------------------------------------------------------------

def stow_once(receiver: str, bodies: list[bytes], boundary: str, n: int, tmp: Path,
              src: Path, dbs: Databases) -> float:
    """Fresh receiver, empty store, all bodies posted; checks it holds ``n`` instances."""
    work = Path(tempfile.mkdtemp(prefix=f"stow-{receiver}-", dir=tmp))
    if receiver == "orthanc":
        server = start_orthanc(work)
    elif receiver == "node":
        server = start_node(receiver, work, src, f"sqlite:///{work / 'index.db'}")
        server.database = str(work / "index.db")
    else:
        database = dbs.create()
        server = start_node(receiver, work, src, pg_url(database))
        server.database = database
    try:
        session = requests.Session()
        headers = stow_headers(boundary)
        stored = 0
        t0 = time.perf_counter()
        for body in bodies:
            r = session.post(f"{server.base}/studies", data=body, headers=headers, timeout=600)
            if r.status_code != 200:
                raise RuntimeError(f"{receiver} STOW answered {r.status_code}: {r.text[:500]}")
            answer = r.json()
            stored += len(answer.get("00081199", {}).get("Value", []))
            if answer.get("00081198", {}).get("Value"):
                raise RuntimeError(f"{receiver} STOW failed parts: {r.text[:500]}")
        seconds = time.perf_counter() - t0
        if stored != n:
            raise RuntimeError(f"{receiver} acknowledged {stored} of {n} instances")
        held = orthanc_count(server) if receiver == "orthanc" else None
    finally:
        server.stop()
    if receiver != "orthanc":
        held = node_count(server)
        files, _ = store_files(work / "store")
        held = min(held, files)
        if receiver == "node-pg" and server.database:
            dbs.drop(server.database)
    if held != n:
        raise RuntimeError(f"{receiver} holds {held} instances; sent {n}")
    shutil.rmtree(work)
    return seconds


def run_stow(args: argparse.Namespace, tmp: Path, src: Path, dbs: Databases,
             uids: Uids) -> dict[str, Any]:
    base = base_dataset(tmp)
    files = list(copies(base, args.stow_instances, uids))
    total = sum(len(f) for f in files)
    boundary = f"bench-{secrets.token_hex(8)}"
    bodies = [multipart(files[i:i + args.batch], boundary)
              for i in range(0, len(files), args.batch)]
    receivers: list[str] = args.stow_receivers
    times: dict[str, list[float]] = {r: [] for r in receivers}
    for rep in range(args.reps):
        for receiver in receivers:
            times[receiver].append(stow_once(receiver, bodies, boundary, len(files), tmp, src,
                                             dbs))
        print(f"  stow rep {rep + 1}/{args.reps} done, load {load()}", flush=True)
    return {"n": len(files), "bytes": total, "requests": len(bodies), "times": times}


def print_stow(result: dict[str, Any], args: argparse.Namespace) -> None:
    n, total, times = result["n"], result["bytes"], result["times"]
    print(f"STOW-RS: {n} instances x {total / n / 1e6:.2f} MB ({total / 1e6:.1f} MB), "
          f"{result['requests']} requests of {args.batch}, one client, {args.reps} reps, "
          "fresh server + empty store each rep, interleaved")
    print(f"  {'receiver':10s} {'inst/s':>8s} {'MB/s':>7s}   (median; inst/s min..max; "
          "seconds per rep)")
    for receiver, ts in times.items():
        med = statistics.median(ts)
        print(f"  {receiver:10s} {n / med:8.1f} {total / 1e6 / med:7.1f}   "
              f"({n / max(ts):.1f}..{n / min(ts):.1f}; {', '.join(f'{t:.2f}' for t in ts)})")
    if "orthanc" in times:
        for receiver in times:
            if receiver != "orthanc":
                ratio = statistics.median(times["orthanc"]) / statistics.median(times[receiver])
                per = ", ".join(f"{o / t:.2f}" for t, o in
                                zip(times[receiver], times["orthanc"], strict=True))
                print(f"  {receiver}/orthanc throughput {ratio:.2f} (per rep {per})")
    print()


# -- QIDO-RS ---------------------------------------------------------------------------------

KINDS = (
    ("patient_id", "studies by PatientID"),
    ("name_wildcard", "studies by PatientName=ABC*"),
    ("date_modality", "studies by StudyDate 90-day range + ModalitiesInStudy"),
    ("series_of_study", "series of a study"),
    ("instances_of_study", "instances of a study"),
    ("studies_page", "studies, limit 25 offset 0..500 (a page)"),
)
LEVEL_UID = {"studies": "0020000D", "series": "0020000E", "instances": "00080018"}


def make_queries(studies: list[tuple[str, str, str, str, str, int]], rounds: int,
                 seed: int) -> list[tuple[str, str, dict[str, str]]]:
    """``rounds`` x each kind: (kind, path under the DICOMweb root, parameters)."""
    rng = random.Random(seed)
    queries = []
    for _ in range(rounds):
        uid, pid, family, date, modality, _ = rng.choice(studies)
        year, month = rng.randrange(2015, 2025), rng.randrange(1, 10)
        start, end = f"{year}{month:02d}01", f"{year}{month + 3:02d}01"  # ~90 days
        queries += [
            ("patient_id", "/studies", {"PatientID": pid}),
            ("name_wildcard", "/studies", {"PatientName": family[:3] + "*", "limit": "100"}),
            ("date_modality", "/studies", {"StudyDate": f"{start}-{end}",
                                           "ModalitiesInStudy": modality, "limit": "100"}),
            ("series_of_study", f"/studies/{uid}/series", {}),
            ("instances_of_study", f"/studies/{uid}/instances", {}),
            ("studies_page", "/studies",
             {"limit": "25", "offset": str(rng.randrange(max(1, min(501, len(studies) - 25))))}),
        ]
    return queries


def level_of(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def run_queries(servers: list[Server], queries: list[tuple[str, str, dict[str, str]]],
                warmup: int) -> tuple[dict[str, dict[str, list[float]]], dict[str, int]]:
    """Each query to every server (order rotating); latencies in ms per server and kind,
    and per kind how many queries the servers answered with different result sets."""
    sessions = {s.name: requests.Session() for s in servers}
    lat: dict[str, dict[str, list[float]]] = {s.name: {k: [] for k, _ in KINDS}
                                              for s in servers}
    mismatches = {k: 0 for k, _ in KINDS}
    for q, (kind, path, params) in enumerate(queries):
        order = servers[q % len(servers):] + servers[:q % len(servers)]
        answers = {}
        for server in order:
            # "*" left as it is: Orthanc 1.10.1 + DICOMweb 1.7 does not percent-decode QIDO
            # values (PatientName=ADA%2A, as requests sends it, matches nothing there).
            url = server.base + path + ("?" + urlencode(params, safe="*") if params else "")
            t0 = time.perf_counter()
            r = sessions[server.name].get(url, headers={"Accept": DICOM_JSON}, timeout=120)
            ms = (time.perf_counter() - t0) * 1000
            if r.status_code not in (200, 204):
                raise RuntimeError(f"{server.name} {path} {params}: {r.status_code} {r.text[:300]}")
            body = r.json() if r.status_code == 200 and r.content.strip() else []
            answers[server.name] = body
            if q >= warmup * len(KINDS):
                lat[server.name][kind].append(ms)
        tag = LEVEL_UID[level_of(path)]
        limit = int(params.get("limit", "100"))
        sets = {name: frozenset(item[tag]["Value"][0] for item in body)
                for name, body in answers.items()}
        counts = {len(v) for v in sets.values()}
        if max(counts) < limit and "offset" not in params:
            same = len(set(sets.values())) == 1  # everything matched: the same sets
        else:
            same = len(counts) == 1  # a page of a longer list: the same size
        if not same and q >= warmup * len(KINDS):
            mismatches[kind] += 1
    return lat, mismatches


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@dataclass
class QidoStage:
    size: int
    studies: int
    fills: dict[str, float]
    lat: dict[str, dict[str, list[float]]]
    mismatches: dict[str, int]
    skipped: dict[str, str]
    load: str


def run_qido(args: argparse.Namespace, tmp: Path, src: Path, dbs: Databases,
             uids: Uids) -> tuple[Corpus, list[QidoStage]]:
    corpus = make_corpus(tmp / "qido-src", args.qido_sizes, seed=7, uids=uids)
    print(f"  corpus: {corpus.count} instances generated in {corpus.seconds:.0f} s", flush=True)
    checked = check_bulk_fill(tmp, src, corpus, 600)
    print("  bulk fill checked: same rows as InstanceRepository.record on the first "
          f"{checked} instances", flush=True)
    database = dbs.create()
    works = {"node": tmp / "qido-node", "node-pg": tmp / "qido-node-pg",
             "orthanc": tmp / "qido-orthanc"}
    urls = {"node": f"sqlite:///{works['node'] / 'index.db'}", "node-pg": pg_url(database)}
    orthanc_ok = True
    stages = []
    done = 0
    for size, studies in zip(corpus.stages, corpus.studies, strict=True):
        fills: dict[str, float] = {}
        skipped: dict[str, str] = {}
        print(f"  filling {done}..{size} into node, node-pg"
              + (", orthanc" if orthanc_ok else "") + " (concurrently)", flush=True)
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            jobs = {name: pool.submit(fill_node, works[name], urls[name], src, corpus, done,
                                      size) for name in ("node", "node-pg")}
            orthanc_fill = filler = None
            if orthanc_ok:
                filler = start_orthanc(works["orthanc"], sync=False)
                orthanc_fill = pool.submit(fill_orthanc, filler, corpus, done, size,
                                           args.orthanc_fill_limit)
            try:
                for name, job in jobs.items():
                    fills[name] = job.result()
                if orthanc_fill is not None and filler is not None:
                    seconds, finished = orthanc_fill.result()
                    held = orthanc_count(filler)
            finally:
                if filler is not None:
                    filler.stop()
            if orthanc_fill is not None:
                fills["orthanc"] = seconds
                if not finished:
                    orthanc_ok = False
                    skipped["orthanc"] = (f"fill stopped after {seconds:.0f} s "
                                          f"(> --orthanc-fill-limit {args.orthanc_fill_limit:.0f}"
                                          f" s) at {held} instances")
                elif held != size:
                    raise RuntimeError(f"Orthanc holds {held} instances, expected {size}")
        if not orthanc_ok and "orthanc" not in skipped:
            skipped["orthanc"] = "not filled (an earlier fill ran over the limit)"
        done = size
        psql("ANALYZE", database)
        servers = [start_node("node", works["node"], src, urls["node"]),
                   start_node("node-pg", works["node-pg"], src, urls["node-pg"])]
        servers[0].database, servers[1].database = str(works["node"] / "index.db"), database
        if orthanc_ok:
            servers.append(start_orthanc(works["orthanc"]))
        try:
            for server in servers:
                held = orthanc_count(server) if server.name == "orthanc" else node_count(server)
                if held != size:
                    raise RuntimeError(f"{server.name} holds {held} instances, expected {size}")
            queries = make_queries(studies, args.rounds + args.warmup, seed=size)
            stage_load = load()
            lat, mismatches = run_queries(servers, queries, args.warmup)
        finally:
            for server in servers:
                server.stop()
        stages.append(QidoStage(size, len(studies), fills, lat, mismatches, skipped,
                                stage_load))
        print(f"  qido at {size} done, load {load()}", flush=True)
    return corpus, stages


def print_qido(corpus: Corpus, stages: list[QidoStage], args: argparse.Namespace) -> None:
    print(f"QIDO-RS latency, ms (p50 / p95 over {args.rounds} queries per kind after "
          f"{args.warmup} warm-up rounds; one client, sequential, interleaved across servers)")
    print("  filled: node + node-pg by multi-row INSERTs of the rows storage.InstanceRepository"
          ".record writes (checked equal to it on the first ~600 instances, the manifest checked "
          "against every 500th file's header), one transaction per stage, files hard-linked "
          "into each store (no STOW, no fsync); PostgreSQL "
          "ANALYZE after each fill (what autovacuum does within a minute); orthanc through "
          f"POST /instances with ZIP archives of {ZIP_BATCH} (SyncStorageArea off while "
          "filling, on while serving); each server restarted after the fill")
    print("  corpus: tiny 16x16 CR/DX/CT/MR instances; per study 1-2 series x 1-3 (CR, DX), "
          "2-3 x 15-30 (CT), 3-4 x 10-20 (MR); ~2.2 studies per patient")
    for stage in stages:
        names = [n for n in ("node", "node-pg", "orthanc") if n in stage.lat]
        print(f"  {stage.size} instances, {stage.studies} studies (load at start {stage.load}); "
              "fill seconds (concurrent): " +
              ", ".join(f"{n} {s:.0f}" for n, s in stage.fills.items()))
        for name, why in stage.skipped.items():
            print(f"    {name}: not measured at {stage.size}: {why}")
        width = max(len(title) for _, title in KINDS)
        print(f"    {'query':{width}s}" + "".join(f"{n:>18s}" for n in names) + "  mismatch")
        for kind, title in KINDS:
            cells = "".join(f"{pct(stage.lat[n][kind], 50):8.1f} /"
                            f"{pct(stage.lat[n][kind], 95):7.1f}  " for n in names)
            print(f"    {title:{width}s}{cells}{stage.mismatches[kind]:>8d}")
        cells = ""
        for n in names:
            every = [v for vs in stage.lat[n].values() for v in vs]
            cells += f"{pct(every, 50):8.1f} /{pct(every, 95):7.1f}  "
        print(f"    {'all kinds':{width}s}{cells}")
    print("  study queries by name and by date + modality send limit=100; all send \"*\" "
          "unescaped (Orthanc 1.10.1 + DICOMweb 1.7 does not percent-decode QIDO values)")
    print("  mismatch: queries whose result sets differ between the servers (sets compared "
          "when below the limit, sizes when a page is full or has an offset: the servers "
          "sort differently)")
    print()


# -- RSS during a large STOW -------------------------------------------------------------------

def sample_rss(pid: int, stop_event: threading.Event, out: list[tuple[float, int]]) -> None:
    t0 = time.perf_counter()
    while not stop_event.is_set():
        out.append((time.perf_counter() - t0, rss_kb(pid)))
        time.sleep(0.1)


def rss_upload(server: Server, body: Path, boundary: str, n: int,
               warm: bytes) -> dict[str, float]:
    session = requests.Session()
    headers = stow_headers(boundary)
    r = session.post(f"{server.base}/studies", data=warm, headers=headers, timeout=600)
    if r.status_code != 200:
        raise RuntimeError(f"{server.name} warm-up STOW answered {r.status_code}")
    time.sleep(1.0)
    baseline = statistics.median(rss_kb(server.proc.pid) for _ in range(5))
    samples: list[tuple[float, int]] = []
    done = threading.Event()
    sampler = threading.Thread(target=sample_rss, args=(server.proc.pid, done, samples))
    sampler.start()
    t0 = time.perf_counter()
    try:
        with body.open("rb") as stream:
            r = session.post(f"{server.base}/studies", data=stream, timeout=1800,
                             headers={**headers, "Content-Length": str(body.stat().st_size)})
        seconds = time.perf_counter() - t0
        time.sleep(1.0)
    finally:
        done.set()
        sampler.join()
    if r.status_code != 200:
        raise RuntimeError(f"{server.name} STOW answered {r.status_code}: {r.text[:500]}")
    stored = len(r.json().get("00081199", {}).get("Value", []))
    if stored != n:
        raise RuntimeError(f"{server.name} acknowledged {stored} of {n}")
    peak = max(kb for _, kb in samples)
    return {"baseline": baseline / 1024, "peak": peak / 1024, "after": samples[-1][1] / 1024,
            "growth": (peak - baseline) / 1024, "seconds": seconds, "samples": len(samples)}


def run_rss(args: argparse.Namespace, tmp: Path, src: Path, uids: Uids) -> dict[str, Any]:
    base = base_dataset(tmp)
    boundary = f"bench-{secrets.token_hex(8)}"
    body = tmp / "rss-body.bin"
    with body.open("wb") as out:
        for i, part in enumerate(copies(base, args.rss_instances, uids, shape=(2500, 2000))):
            out.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            out.write(part + b"\r\n")
            if i == 0:
                size = len(part)
        out.write(f"--{boundary}--\r\n".encode())
    warm = multipart(list(copies(base, 1, uids)), boundary)
    results: dict[str, Any] = {"body": body.stat().st_size, "instance": size}
    for name in ("node", "orthanc") if args.rss_orthanc else ("node",):
        work = tmp / f"rss-{name}"
        if name == "node":
            server = start_node(name, work, src, f"sqlite:///{work / 'index.db'}")
        else:
            server = start_orthanc(work)
        try:
            results[name] = rss_upload(server, body, boundary, args.rss_instances, warm)
        finally:
            server.stop()
        shutil.rmtree(work)
        print(f"  rss {name} done, load {load()}", flush=True)
    body.unlink()
    return results


def print_rss(result: dict[str, Any]) -> None:
    print(f"RSS during one multipart STOW of {result['body'] / 1e6:.0f} MB "
          f"({result['instance'] / 1e6:.1f} MB instances, 2500x2000 16-bit noise), "
          "VmRSS every 0.1 s; baseline after a one-instance warm-up STOW")
    for name in ("node", "orthanc"):
        if name in result:
            r = result[name]
            print(f"  {name:8s} baseline {r['baseline']:7.1f} MB  peak {r['peak']:7.1f} MB  "
                  f"growth {r['growth']:7.1f} MB  after {r['after']:7.1f} MB  "
                  f"({r['seconds']:.1f} s, {result['body'] / 1e6 / r['seconds']:.0f} MB/s, "
                  f"{r['samples']} samples)")
    print()


# -- main --------------------------------------------------------------------------------------

def csv_of(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in names if t not in choices]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {','.join(choices)}")
        return [c for c in choices if c in names]
    return parse


def sizes_arg(text: str) -> list[int]:
    sizes = [int(t) for t in text.split(",") if t.strip()]
    if not sizes or sizes != sorted(set(sizes)) or sizes[0] < 100:
        raise argparse.ArgumentTypeError("increasing sizes of at least 100, e.g. 10000,100000")
    return sizes


def verdict(ok: bool | None) -> str:
    return "n/a (not measured)" if ok is None else ("met" if ok else "NOT met")


def print_targets(stow: dict[str, Any] | None, stages: list[QidoStage] | None,
                  rss: dict[str, Any] | None) -> None:
    print("targets (issue 13)")
    ok: bool | None = None
    text = ""
    if stow and "orthanc" in stow["times"] and "node" in stow["times"]:
        n, times = stow["n"], stow["times"]
        node, orthanc = (n / statistics.median(times[r]) for r in ("node", "orthanc"))
        ok = node >= orthanc
        text = f"node {node:.1f} inst/s vs Orthanc {orthanc:.1f} inst/s (medians)"
        if "node-pg" in times:
            text += f"; node-pg {n / statistics.median(times['node-pg']):.1f}"
    print(f"  STOW-RS throughput node >= Orthanc: {verdict(ok)}  {text}")
    ok, text = None, ""
    if stages:
        big = [s for s in stages if s.size >= 100_000 and "node-pg" in s.lat]
        if big:
            stage = big[-1]
            p95 = {kind: pct(stage.lat["node-pg"][kind], 95) for kind, _ in KINDS}
            worst = max(p95, key=p95.__getitem__)
            ok = p95[worst] < TARGET_QIDO_MS
            every = [v for vs in stage.lat["node-pg"].values() for v in vs]
            text = (f"at {stage.size}: worst kind {worst} p95 {p95[worst]:.1f} ms; all kinds "
                    f"p95 {pct(every, 95):.1f} ms")
        else:
            text = "no stage of 100k instances was run"
    print(f"  QIDO-RS p95 < {TARGET_QIDO_MS:.0f} ms at 100k on PostgreSQL (every kind): "
          f"{verdict(ok)}  {text}")
    ok, text = None, ""
    if rss and "node" in rss:
        growth = rss["node"]["growth"]
        ok = growth < TARGET_RSS_MB
        text = f"grew {growth:.1f} MB during a {rss['body'] / 1e6:.0f} MB upload"
    print(f"  node RSS growth < {TARGET_RSS_MB:.0f} MB during a 500 MB STOW: {verdict(ok)}  {text}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phases", type=csv_of(PHASES), default=list(PHASES),
                    help="comma-separated subset of stow,qido,rss (default: all)")
    ap.add_argument("--stow-instances", type=int, default=200, help="512x512 CRs per rep")
    ap.add_argument("--batch", type=int, default=20, help="instances per STOW request")
    ap.add_argument("--reps", type=int, default=3, help="STOW reps")
    ap.add_argument("--stow-receivers", type=csv_of(RECEIVERS), default=list(RECEIVERS),
                    help=f"comma-separated subset of {','.join(RECEIVERS)}")
    ap.add_argument("--qido-sizes", type=sizes_arg, default=[10_000, 100_000],
                    help="indexed instances at each QIDO stage (cumulative)")
    ap.add_argument("--rounds", type=int, default=60, help="measured queries per kind")
    ap.add_argument("--warmup", type=int, default=3, help="warm-up rounds (not measured)")
    ap.add_argument("--orthanc-fill-limit", type=float, default=900.0,
                    help="seconds: Orthanc is not filled (nor measured) past a fill this long")
    ap.add_argument("--rss-instances", type=int, default=50, help="10 MB instances in the "
                    "one large STOW (50: 500 MB)")
    ap.add_argument("--no-rss-orthanc", dest="rss_orthanc", action="store_false",
                    help="skip Orthanc's RSS for comparison")
    ap.add_argument("--note", default="", help="printed with the machine line")
    ap.add_argument("--fill-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--db", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--src", help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--stop", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=("bulk", "record"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.fill_worker:
        fill_worker(args)
        return
    if args.batch < 1 or args.stow_instances < args.batch or args.reps < 1 or args.rounds < 2:
        ap.error("need --batch >= 1, --stow-instances >= --batch, --reps >= 1, --rounds >= 2")
    in_private_netns()
    import fastapi
    import uvicorn

    started = time.perf_counter()
    print(f"machine: nproc={os.cpu_count()}, load average {load()} (1/5/15 min) at start; "
          "other processes compete for the CPUs" + (f"; note: {args.note}" * bool(args.note)))
    pg_version = psql("SHOW server_version")
    orthanc = version(["Orthanc", "--version"], r"Orthanc (\S+)")
    plugin = version(["dpkg-query", "-W", "-f=${Version}", "orthanc-dicomweb"], r"(\S+)")
    print(f"Orthanc {orthanc} + DICOMweb plugin {plugin} "
          f"(SQLite index), PostgreSQL {pg_version}, SQLite {sqlite3.sqlite_version}, "
          f"python {sys.version.split()[0]}, pydicom {pydicom.__version__}, "
          f"fastapi {fastapi.__version__}, uvicorn {uvicorn.__version__}, "
          f"requests {requests.__version__}")
    tmp = Path(tempfile.mkdtemp(prefix="dicomweb-bench-", dir="/var/tmp"))
    src = tmp / "src"
    dbs = Databases()
    uids = Uids()
    stow = rss = None
    corpus: Corpus | None = None
    stages: list[QidoStage] | None = None
    try:
        git("worktree", "add", "--detach", str(src), "HEAD")
        commit = git("-C", str(src), "rev-parse", "--short", "HEAD")
        check_imports(src)
        print(f"node: HEAD = {commit}, run from a worktree at {src}, SQLite (node) or "
              "PostgreSQL over its Unix socket (node-pg)\n", flush=True)
        if "stow" in args.phases:
            stow = run_stow(args, tmp, src, dbs, uids)
        if "qido" in args.phases:
            corpus, stages = run_qido(args, tmp, src, dbs, uids)
        if "rss" in args.phases:
            rss = run_rss(args, tmp, src, uids)
        print(f"\nresults (load average at end {load()}; {time.perf_counter() - started:.0f} s "
              "in all)\n")
        if stow:
            print_stow(stow, args)
        if stages and corpus:
            print_qido(corpus, stages, args)
        if rss:
            print_rss(rss)
        print_targets(stow, stages, rss)
    finally:
        dbs.drop_all()
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(src)],
                       capture_output=True, timeout=120)
        subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], capture_output=True,
                       timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
