"""The node as a query/retrieve SCU of a remote archive (issue 15, items 1-2): Orthanc,
started here on free loopback ports and filled over its REST API, is asked by accession
number, by date range + modality, by body part; a study comes to the running node by
C-MOVE and into a store by C-GET (Orthanc 1.12 from Debian trixie); `pacs-node remote
test` gives its verdicts, and says which step failed when one does."""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pydicom
import yaml

from models.synth import generate_dataset, read_manifest
from pacs_node.archive import ArchiveClient, ArchiveError, DicomwebArchive
from pacs_node.config import Remote
from pacs_node.receive import Receiver
from storage import FileStore, InstanceRepository, create_engine_for, migrate, session_factory

from .conftest import (
    PACS_NODE,
    NodeProcess,
    Orthanc,
    free_port,
    make_node,
    start_orthanc,
    stop_process,
    wait_for,
)


def _fill(orthanc: Orthanc, root: Path) -> dict[str, list[Any]]:
    """Four synthetic two-view studies into Orthanc; per study: its files' headers."""
    generate_dataset(root, studies=4, seed=5, size=96)
    studies: dict[str, list[Any]] = {}
    for entry in read_manifest(root):
        path = root / entry["path"]
        request = urllib.request.Request(f"http://127.0.0.1:{orthanc.http_port}/instances",
                                         data=path.read_bytes(), method="POST",
                                         headers={"Content-Type": "application/dicom"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            answer.read()
        studies.setdefault(entry["study_instance_uid"], []).append(
            pydicom.dcmread(path, stop_before_pixels=True))
    return studies


def _remote(orthanc: Orthanc, retrieve: str = "c-move", port: int | None = None) -> Remote:
    return Remote(name="pacs", ae_title=orthanc.aet, host="127.0.0.1",
                  port=port or orthanc.dicom_port, retrieve=retrieve)


def _remote_test(node: NodeProcess) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PACS_NODE, "remote", "test", "pacs", "--config", str(node.config)],
                          capture_output=True, text=True, timeout=120, cwd=node.workdir)


def _node_with(tmp_path: Path, orthanc: Orthanc, retrieve: str) -> NodeProcess:
    node = make_node(tmp_path / "node")
    node.settings["remotes"] = [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1",
                                 "port": orthanc.dicom_port, "retrieve": retrieve}]
    node.config.write_text(yaml.safe_dump(node.settings))
    return node


def test_queries_and_a_c_move_pull_from_the_archive(tmp_path: Path, orthanc: Orthanc) -> None:
    studies = _fill(orthanc, tmp_path / "synth")
    node = _node_with(tmp_path, orthanc, "c-move")
    node.start()
    orthanc.put_modality("node", "PACSNODE", node.port)
    client = ArchiveClient(_remote(orthanc), calling_ae="PACSNODE")

    by_accession = {str(h[0].AccessionNumber): uid for uid, h in studies.items()}
    accession, uid = sorted(by_accession.items())[1]
    (found,) = client.find_studies(accession=accession)
    assert (found.study_instance_uid, found.accession_number) == (uid, accession)
    assert client.find_studies(accession="NO-SUCH-ACCESSION") == []

    def expected(date_from: str, date_to: str, modalities: set[str]) -> list[str]:
        return sorted(u for u, h in studies.items()
                      if date_from <= h[0].StudyDate <= date_to and h[0].Modality in modalities)

    got = client.find_studies(date_from="20210101", date_to="20221231", modalities=["CR", "DX"])
    assert sorted(s.study_instance_uid for s in got) == expected("20210101", "20221231",
                                                                {"CR", "DX"})
    assert len(got) == 3
    only_dx = client.find_studies(date_from="20180101", modalities=["DX"])
    assert [s.study_instance_uid for s in only_dx] == expected("20180101", "99991231", {"DX"})
    wrists = client.find_studies(date_from="20180101", body_part="WRIST")
    assert [s.study_instance_uid for s in wrists] == sorted(
        u for u, h in studies.items() if h[0].BodyPartExamined == "WRIST")

    counts = client.move(uid)
    assert (counts.completed, counts.failed) == (len(studies[uid]), 0)
    engine = create_engine_for(node.settings["storage"]["database_url"])
    sessions = session_factory(engine)
    try:
        def held() -> bool:
            with sessions() as session:
                return len(InstanceRepository(session).for_study(uid)) == len(studies[uid])
        wait_for(held, timeout=30, what="the moved study in the node's index")
    finally:
        engine.dispose()

    answer = _remote_test(node)
    assert answer.returncode == 0, answer.stdout + answer.stderr
    for step in ("C-ECHO: ok", "C-FIND: ok", "C-MOVE: ok", "stored: ok"):
        assert step in answer.stdout, answer.stdout


def test_a_c_get_pull_goes_through_the_nodes_checks_into_its_store(tmp_path: Path) -> None:
    orthanc = start_orthanc(tmp_path / "orthanc", trixie=True)
    try:
        studies = _fill(orthanc, tmp_path / "synth")
        orthanc.put_modality("node", "PACSNODE", free_port())  # it answers known AEs only
        uid = sorted(studies)[0]
        engine = create_engine_for(f"sqlite:///{tmp_path / 'index.db'}")
        migrate(engine)
        sessions = session_factory(engine)
        receiver = Receiver(FileStore(tmp_path / "store"), sessions)
        counts = ArchiveClient(_remote(orthanc, "c-get"), calling_ae="PACSNODE").get(
            uid, receiver)
        assert (counts.completed, counts.failed) == (len(studies[uid]), 0)
        with sessions() as session:
            held = {i.sop_instance_uid for i in InstanceRepository(session).for_study(uid)}
        assert held == {str(h.SOPInstanceUID) for h in studies[uid]}
        engine.dispose()

        node = _node_with(tmp_path, orthanc, "c-get")  # the CLI's C-GET into its store
        answer = _remote_test(node)
        assert answer.returncode == 0, answer.stdout + answer.stderr
        assert "C-GET: ok" in answer.stdout and "stored: ok" in answer.stdout
    finally:
        stop_process(orthanc.process)


def test_the_remote_test_says_which_step_failed(tmp_path: Path, orthanc: Orthanc) -> None:
    node = _node_with(tmp_path, orthanc, "c-move")
    answer = _remote_test(node)  # Orthanc does not know PACSNODE: it refuses the C-FIND
    assert answer.returncode == 1
    assert "C-ECHO: ok" in answer.stdout and "C-FIND: FAILED" in answer.stdout
    assert "does it list our AE title" in answer.stdout

    orthanc.put_modality("node", "PACSNODE", node.port)
    answer = _remote_test(node)  # it knows us now, but holds nothing
    assert answer.returncode == 1 and "no instance" in answer.stdout

    node.settings["remotes"][0]["port"] = free_port()  # nobody listens there
    node.config.write_text(yaml.safe_dump(node.settings))
    answer = _remote_test(node)
    assert answer.returncode == 1 and "C-ECHO: FAILED" in answer.stdout
    try:
        ArchiveClient(_remote(orthanc, port=free_port()), calling_ae="PACSNODE").echo()
        raise AssertionError("a C-ECHO to a closed port succeeded")
    except ArchiveError as exc:
        assert "no association" in str(exc)


def test_queries_and_a_pull_over_dicomweb(tmp_path: Path, orthanc: Orthanc) -> None:
    """Orthanc's DICOMweb plugin as the archive: QIDO-RS finds, WADO-RS brings the study
    as stored, each part through the node's checks into its store."""
    studies = _fill(orthanc, tmp_path / "synth")
    archive = DicomwebArchive(f"http://127.0.0.1:{orthanc.http_port}/dicom-web", name="pacs")
    by_accession = {str(h[0].AccessionNumber): uid for uid, h in studies.items()}
    accession, uid = sorted(by_accession.items())[2]
    (found,) = archive.find_studies(accession=accession)
    assert (found.study_instance_uid, found.accession_number) == (uid, accession)
    got = archive.find_studies(date_from="20210101", date_to="20221231", modalities=["CR", "DX"])
    assert sorted(s.study_instance_uid for s in got) == sorted(
        u for u, h in studies.items() if "20210101" <= h[0].StudyDate <= "20221231")
    wrists = archive.find_studies(body_part="WRIST")
    assert [s.study_instance_uid for s in wrists] == [
        u for u, h in studies.items() if h[0].BodyPartExamined == "WRIST"]

    engine = create_engine_for(f"sqlite:///{tmp_path / 'index.db'}")
    migrate(engine)
    sessions = session_factory(engine)
    store = FileStore(tmp_path / "store")
    counts = archive.retrieve(uid, Receiver(store, sessions))
    assert (counts.completed, counts.failed) == (len(studies[uid]), 0)
    with sessions() as session:
        held = {i.sop_instance_uid: i.relpath
                for i in InstanceRepository(session).for_study(uid)}
    engine.dispose()
    assert set(held) == {str(h.SOPInstanceUID) for h in studies[uid]}
    assert not list((store.root / ".incoming").glob("*"))  # the parts were moved or removed
    try:
        archive.retrieve("1.2.3.999", Receiver(store, session_factory(
            create_engine_for(f"sqlite:///{tmp_path / 'index.db'}"))))
        raise AssertionError("a study the archive does not hold was retrieved")
    except ArchiveError as exc:
        assert "HTTP 404" in str(exc) or "stored nothing" in str(exc)


def test_the_remote_test_of_a_dicomweb_archive(tmp_path: Path, orthanc: Orthanc) -> None:
    _fill(orthanc, tmp_path / "synth")
    node = _node_with(tmp_path, orthanc, "dicomweb")
    node.settings["remotes"][0]["url"] = f"http://127.0.0.1:{orthanc.http_port}/dicom-web"
    node.config.write_text(yaml.safe_dump(node.settings))
    answer = _remote_test(node)
    assert answer.returncode == 0, answer.stdout + answer.stderr
    for step in ("QIDO-RS: ok", "WADO-RS: ok", "stored: ok"):
        assert step in answer.stdout, answer.stdout
