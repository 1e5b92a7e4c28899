"""Results the PACS can rely on, end to end with dcmtk, Orthanc and the real node process.

- Studies the model cannot judge (CT, MR) are ``not_analysed``: no number, nothing sent.
- A view arriving after a study was processed: the new SR names the old one (Predecessor
  Documents Sequence) and an IOCM rejection note withdraws exactly the old SR and overlays;
  the node's C-FIND shows one report series.
- A held image re-sent in JPEG 2000, and the node's own results sent back by the PACS,
  are answered Success and re-open nothing.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless
from pynetdicom import AE

from .conftest import (
    SC_CLASS,
    SR_CLASS,
    Orthanc,
    dciodvfy_errors,
    index_rows,
    make_node,
    storescu,
    two_view_study_files,
    wait_for,
)

KOS_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"


@pytest.fixture(scope="module")
def two_view_study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return two_view_study_files(tmp_path_factory.mktemp("synth"), size=512)


def _destination(orthanc: Orthanc, **extra: str) -> list[dict]:
    return [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1",
             "port": orthanc.dicom_port, **extra}]


def _study_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _listing(node, study_uid: str) -> dict | None:
    rows = [s for s in node.studies() if s["study_instance_uid"] == study_uid]
    return rows[0] if rows else None


def _wait_done(node, study_uid: str, *, job_id: int | None = None, timeout: float = 120
               ) -> dict:
    def done() -> dict | None:
        row = _listing(node, study_uid)
        if row and row["job_state"] == "done" and (job_id is None or row["job_id"] > job_id):
            return row
        return None

    return wait_for(done, timeout=timeout, what=f"a finished job for {study_uid}",
                    interval=0.5)


def _all_sent(node) -> None:
    wait_for(lambda: not index_rows(node, "SELECT id FROM exports WHERE state = 'pending'"),
             timeout=90, what="every export to be sent", interval=0.5)


def _study_state(node, study_uid: str) -> str:
    (state,), = index_rows(node, "SELECT state FROM studies WHERE study_instance_uid = ?",
                           (study_uid,))
    return str(state)


def _counts(node) -> tuple[int, int]:
    (jobs,), = index_rows(node, "SELECT count(*) FROM jobs")
    (exports,), = index_rows(node, "SELECT count(*) FROM exports")
    return int(jobs), int(exports)


def _by_class(orthanc: Orthanc, study_uid: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for item in orthanc.instances_of(study_uid):
        out.setdefault(str(item["tags"].get("SOPClassUID")), []).append(item)
    return out


def _find_series(port: int, study_uid: str) -> list[str]:
    """Modalities of the series the node's C-FIND answers for a study."""
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        StudyRootQueryRetrieveInformationModelFind as FIND,
    )

    ae = AE(ae_title="FINDSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(FIND)
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study_uid
    query.Modality = ""
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSNODE")
    assert assoc.is_established
    found = []
    try:
        for status, identifier in assoc.send_c_find(query, FIND):
            if getattr(status, "Status", None) == 0xFF00 and identifier is not None:
                found.append(str(identifier.Modality))
    finally:
        assoc.release()
    return found


def _send_back(orthanc: Orthanc, node, study_uid: str) -> None:
    """Orthanc sends the whole study it holds, the node's results included, to the node
    (a PACS that forwards whole studies), and returns once the sending is done."""
    orthanc.put_modality("node", "PACSNODE", node.port)
    (orthanc_study,) = orthanc.get_post("/tools/find", {
        "Level": "Study", "Query": {"StudyInstanceUID": study_uid}})
    orthanc.get_post("/modalities/node/store", {"Resources": [orthanc_study],
                                                "Synchronous": True})


def _send_as_jpeg2000(port: int, path: Path) -> int:
    """Re-send a held image losslessly compressed (an archive forwarding its copy)."""
    ds = pydicom.dcmread(path)
    ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    ae = AE(ae_title="ARCHIVE")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(str(ds.SOPClassUID), [JPEG2000Lossless])
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSNODE")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    return int(status.Status)


def test_ct_and_mr_are_not_analysed_and_nothing_reaches_the_pacs(
        orthanc: Orthanc, tmp_path: Path) -> None:
    node = make_node(tmp_path / "node", destinations=_destination(orthanc))
    node.start()
    try:
        films = [Path(get_testdata_file(name)) for name in ("CT_small.dcm", "MR_small.dcm")]
        for film in films:
            result = storescu(node.port, [film])
            assert result.returncode == 0, result.stderr
        for film in films:
            study = _wait_done(node, _study_uid(film))
            assert study["result"] == "not_analysed", study
            assert "fracture_probability" not in study and "positive" not in study
            assert study["reason"], study
            assert study["images"] == 1
        assert index_rows(node, "SELECT id FROM instances WHERE source = 'produced'") == []
        assert index_rows(node, "SELECT id FROM exports") == []
        for film in films:
            assert orthanc.instances_of(_study_uid(film)) == []
    finally:
        node.stop()


def test_a_late_view_replaces_the_result_and_withdraws_the_old_one(
        orthanc: Orthanc, two_view_study: list[Path], tmp_path: Path) -> None:
    node = make_node(tmp_path / "node", destinations=_destination(orthanc, withdraw="iocm"))
    node.start()
    try:
        study_uid = _study_uid(two_view_study[0])
        assert storescu(node.port, two_view_study[:1]).returncode == 0
        first = _wait_done(node, study_uid)
        _all_sent(node)
        held = _by_class(orthanc, study_uid)
        (old_sr,), old_scs = held[SR_CLASS], held[SC_CLASS]
        assert len(old_scs) == 1
        old_uids = {str(i["tags"]["SOPInstanceUID"]) for i in (old_sr, *old_scs)}

        # The second view arrives late: the study is processed again.
        assert storescu(node.port, two_view_study[1:]).returncode == 0
        second = _wait_done(node, study_uid, job_id=first["job_id"])
        assert (second["views_analysed"], second["views_total"]) == (2, 2)
        _all_sent(node)
        held = _by_class(orthanc, study_uid)
        new_sr = next(i for i in held[SR_CLASS]
                      if str(i["tags"]["SOPInstanceUID"]) != str(old_sr["tags"]["SOPInstanceUID"]))
        sr = pydicom.dcmread(io.BytesIO(orthanc.file(new_sr["id"])))
        predecessors = [ref.ReferencedSOPInstanceUID
                        for st in sr.PredecessorDocumentsSequence
                        for se in st.ReferencedSeriesSequence for ref in se.ReferencedSOPSequence]
        assert predecessors == [str(old_sr["tags"]["SOPInstanceUID"])]

        (kos_item,) = held[KOS_CLASS]
        kos_bytes = orthanc.file(kos_item["id"])
        kos = pydicom.dcmread(io.BytesIO(kos_bytes))
        assert kos.ConceptNameCodeSequence[0].CodeValue == "113001"
        rejected = {ref.ReferencedSOPInstanceUID
                    for se in kos.CurrentRequestedProcedureEvidenceSequence[0]
                    .ReferencedSeriesSequence for ref in se.ReferencedSOPSequence}
        assert rejected == old_uids
        kos_file = tmp_path / "kos.dcm"
        kos_file.write_bytes(kos_bytes)
        assert dciodvfy_errors(kos_file) == []
        # The node itself serves one current report series.
        assert _find_series(node.port, study_uid).count("SR") == 1

        # A held image re-sent in JPEG 2000: Success, no re-open, no new job.
        jobs_before, exports_before = _counts(node)
        assert _send_as_jpeg2000(node.port, two_view_study[0]) == 0x0000
        assert _study_state(node, study_uid) == "settled"
        # The whole study sent back by the PACS, the node's results included.
        _send_back(orthanc, node, study_uid)
        assert _study_state(node, study_uid) == "settled"
        assert _counts(node) == (jobs_before, exports_before)
    finally:
        node.stop()


def test_results_sent_back_with_overwrite_on_reopen_nothing(
        orthanc: Orthanc, two_view_study: list[Path], tmp_path: Path) -> None:
    node = make_node(tmp_path / "node", destinations=_destination(orthanc),
                     extra={"node": {"overwrite_conflicting_duplicates": True}})
    node.start()
    try:
        study_uid = _study_uid(two_view_study[0])
        assert storescu(node.port, two_view_study).returncode == 0
        _wait_done(node, study_uid)
        _all_sent(node)
        before = _counts(node)
        _send_back(orthanc, node, study_uid)
        assert _study_state(node, study_uid) == "settled"
        assert _counts(node) == before
        srs = _by_class(orthanc, study_uid)[SR_CLASS]
        assert len(srs) == 1
    finally:
        node.stop()


def test_studies_table_shows_whole_uids_and_received_images(
        orthanc: Orthanc, two_view_study: list[Path], tmp_path: Path) -> None:
    from .conftest import PACS_NODE

    node = make_node(tmp_path / "node", destinations=_destination(orthanc))
    node.start()
    try:
        study_uid = _study_uid(two_view_study[0])
        assert storescu(node.port, two_view_study).returncode == 0
        study = _wait_done(node, study_uid)
        assert study["images"] == 2  # the node's SR and overlays are not counted
        assert study["result"] in ("positive", "negative")
        table = subprocess.run([PACS_NODE, "studies", "--config", str(node.config)],
                               cwd=node.workdir, capture_output=True, text=True, timeout=120,
                               env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"})
        assert table.returncode == 0, table.stderr
        # The UID column folds a long UID over several lines; it is never cut.
        first_column = "".join(line.split("│")[1].strip() for line in table.stdout.splitlines()
                               if line.count("│") > 2)
        assert study_uid in first_column, table.stdout
    finally:
        node.stop()
