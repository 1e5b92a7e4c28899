"""Builders and clients shared by the DIMSE tests."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, Association
from pynetdicom.dsutils import encode
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from pacs_node.config import NodeSettings
from pacs_node.dimse import DimseServer
from storage import FileStore, QueryRepository

AE_TITLE = "PACSNODE"
SCU_AE = "TESTSCU"
ROOT = "1.2.826.0.1.3680043.10.4321"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
PATIENT_NAME = "Secret^Patient"
PATIENT_ID = "PID-SECRET-77"
BIRTH_DATE = "19010203"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


class RssSampler(threading.Thread):
    """Samples ``VmRSS`` of process ``pid`` every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(name="battery-rss", daemon=True)
        self.pid, self.interval = pid, interval
        self.stop = threading.Event()
        self.baseline = rss_bytes(pid)
        self.peak, self.peak_at = self.baseline, time.monotonic()
        self.samples = 0

    def run(self) -> None:
        while not self.stop.is_set():
            value = rss_bytes(self.pid)
            if value > self.peak:
                self.peak, self.peak_at = value, time.monotonic()
            self.samples += 1
            self.stop.wait(self.interval)


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def uid(*parts: int) -> str:
    return ".".join([ROOT, *(str(p) for p in parts)])


def make_instance(study: int = 1, series: int = 1, sop: int = 1, *,
                  study_uid: str | None = None, series_uid: str | None = None,
                  sop_uid: str | None = None, **attributes: Any) -> Dataset:
    """A small CR instance (16x16, 8 bit) in Explicit VR Little Endian."""
    ds = Dataset()
    ds.SOPClassUID = CR_IMAGE
    ds.SOPInstanceUID = sop_uid if sop_uid is not None else uid(study, series, sop)
    ds.StudyInstanceUID = study_uid if study_uid is not None else uid(study)
    ds.SeriesInstanceUID = series_uid if series_uid is not None else uid(study, series)
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = BIRTH_DATE
    ds.PatientSex = "F"
    ds.StudyDate = "20260105"
    ds.StudyTime = "081500"
    ds.AccessionNumber = f"ACC{study}"
    ds.StudyDescription = "WRIST 2 VIEWS"
    ds.Modality = "CR"
    ds.SeriesNumber = series
    ds.SeriesDescription = "PA"
    ds.BodyPartExamined = "WRIST"
    ds.InstanceNumber = sop
    ds.Rows = 16
    ds.Columns = 16
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes((study * 31 + series * 7 + sop + i) % 256 for i in range(256))
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def part10(ds: Dataset, body: bytes | None = None) -> bytes:
    """A Part 10 file of ``ds`` as given (even when not conformant), in Explicit VR Little
    Endian; ``body`` replaces the encoded data set after the file meta."""
    out = BytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, ds.file_meta, enforce_standard=True)
    out.write(body if body is not None else encode(ds, False, True))
    return out.getvalue()


def dataset_bytes(path: Path | bytes) -> bytes:
    """The encoded data set of a Part 10 file, without preamble and file meta."""
    raw = path if isinstance(path, bytes) else Path(path).read_bytes()
    ds = dcmread(BytesIO(raw), stop_before_pixels=True)
    # The file meta group ends where the data set starts: 132 + group length + 12.
    offset = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
    return raw[offset:]


def tree(folder: Path) -> set[str]:
    """Every path under ``folder`` (relative), to compare before and after."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@dataclass
class Node:
    """A running SCP with its store and index."""

    server: DimseServer
    settings: NodeSettings
    store: FileStore
    sessions: sessionmaker[Session]
    engine: Engine
    tmp: Path
    nudged: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.port

    def files(self) -> list[Path]:
        return sorted(p for p in self.store.root.rglob("*") if p.is_file())

    def instances(self, **filters: object) -> list[Any]:
        with self.sessions() as session:
            return QueryRepository(session).find_instances(filters)

    def associate(self, contexts: list[tuple[str, list[str]]] | None = None, *,
                  ae_title: str = SCU_AE, called: str = AE_TITLE) -> Association:
        """A pynetdicom SCU association (explicit/implicit LE unless told otherwise)."""
        ae = AE(ae_title=ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        for abstract, syntaxes in contexts or [(CR_IMAGE, [ExplicitVRLittleEndian])]:
            ae.add_requested_context(abstract, syntaxes)
        return ae.associate("127.0.0.1", self.port, ae_title=called)

    def send(self, *datasets: Dataset | Path, **kwargs: Any) -> list[int]:
        """C-STORE each item on one association; return the statuses (-1: no response)."""
        assoc = self.associate(**kwargs)
        assert assoc.is_established, "association not established"
        try:
            statuses = []
            for item in datasets:
                rsp = assoc.send_c_store(item)
                statuses.append(int(rsp.Status) if "Status" in rsp else -1)
            return statuses
        finally:
            assoc.release()


def run_dcmtk(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a dcmtk tool (Nagle off, as the field notes advise)."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                          env=env, check=False)
