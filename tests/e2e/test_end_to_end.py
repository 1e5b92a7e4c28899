"""A modality pushes studies; the PACS (Orthanc) receives one SR and one SC per view.

Runs the real node process (`pacs-node serve`) with the embedded queue on SQLite, and with
PostgreSQL + Redis + a separate `pacs-node worker`. The real films of pydicom-data are a
chest (RG1) and a lower leg (RG3): outside the demo model's scope by default, and outside
its training domain when a route forces them through it.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import pydicom
import pytest
from highdicom.sr import srread
from pydicom.data import get_testdata_file

from .conftest import (
    SC_CLASS,
    SR_CLASS,
    NodeProcess,
    Orthanc,
    dciodvfy_errors,
    index_rows,
    make_node,
    storescu,
    two_view_study_files,
    wait_for,
)

# RG1 (CHEST) and RG3 (EXTREMITY) are forced through the demo model; everything else goes
# to it only inside its scope.
FORCED_ROUTES = {"pipeline": {"routes": [
    {"name": "forced", "model": "demo", "body_parts": ["EXTREMITY", "CHEST"]},
    {"name": "demo", "model": "demo"},
]}}


@pytest.fixture(scope="module")
def two_view_study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    # At the demo model's own 512 px, so that both views are inside its training domain.
    return two_view_study_files(tmp_path_factory.mktemp("synth"), size=512)


def _grey_below_banner(sc: pydicom.Dataset, source_rows: int) -> bool:
    """Whether the view part of an SC is plain grey: no heatmap colour, no box."""
    rgb = sc.pixel_array.astype(int)
    view = rgb[-max(1, min(source_rows, int(sc.Rows)) // 2):]
    return bool((view[..., 0] == view[..., 1]).all() and (view[..., 1] == view[..., 2]).all())


def _results(orthanc: Orthanc, study_uid: str) -> tuple[list[dict], list[dict]]:
    instances = orthanc.instances_of(study_uid)
    srs = [i for i in instances if i["tags"].get("SOPClassUID") == SR_CLASS]
    scs = [i for i in instances if i["tags"].get("SOPClassUID") == SC_CLASS]
    return srs, scs


def _wait_results(orthanc: Orthanc, study_uid: str, views: int, timeout: float,
                  node: NodeProcess) -> tuple[list[dict], list[dict]]:
    def ready() -> tuple[list[dict], list[dict]] | None:
        srs, scs = _results(orthanc, study_uid)
        return (srs, scs) if srs and len(scs) >= views else None

    try:
        return wait_for(ready, timeout=timeout, what=f"results of {study_uid} in Orthanc",
                        interval=1.0)
    except AssertionError:
        raise AssertionError(f"no results; node log:\n{node.log()}") from None


def _check_study(orthanc: Orthanc, node: NodeProcess, files: list[Path], tmp: Path) -> None:
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    study_uid = str(sources[0].StudyInstanceUID)
    pushed = {str(ds.SOPInstanceUID) for ds in sources}
    srs, scs = _wait_results(orthanc, study_uid, len(files), 60 + 30, node)
    # Nothing more arrives later: exactly one SR and one SC per view.
    srs, scs = _results(orthanc, study_uid)
    assert len(srs) == 1, srs
    assert len(scs) == len(files)
    for item in [*srs, *scs]:
        path = tmp / f"{item['id']}.dcm"
        path.write_bytes(orthanc.file(item["id"]))
        assert dciodvfy_errors(path) == [], path
    sr = srread(io.BytesIO(orthanc.file(srs[0]["id"])))
    evidence = {
        ref.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert evidence == pushed
    sc_sources = {
        str(pydicom.dcmread(io.BytesIO(orthanc.file(sc["id"]))).SourceImageSequence[0]
            .ReferencedSOPInstanceUID) for sc in scs
    }
    assert sc_sources == pushed


@pytest.mark.parametrize("backend", ["sqlite-embedded", "postgresql-redis"])
def test_pushed_studies_come_back_as_sr_and_sc(
    backend: str, orthanc: Orthanc, two_view_study: list[Path], tmp_path: Path,
    postgres_url_factory, redis_url_factory,
) -> None:
    dest = [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1",
             "port": orthanc.dicom_port}]
    if backend == "sqlite-embedded":
        node = make_node(tmp_path / "node", destinations=dest, extra=FORCED_ROUTES)
    else:
        node = make_node(tmp_path / "node", destinations=dest, extra=FORCED_ROUTES,
                         database_url=postgres_url_factory(), broker_url=redis_url_factory())
    node.start(with_worker=backend != "sqlite-embedded")
    try:
        rg1 = Path(get_testdata_file("RG1_UNCR.dcm"))
        rg3 = Path(get_testdata_file("RG3_UNCR.dcm"))
        for files in ([rg3], [rg1], two_view_study):
            result = storescu(node.port, files)
            assert result.returncode == 0, result.stderr
        for files in ([rg3], [rg1], two_view_study):
            _check_study(orthanc, node, files, tmp_path)
        listing = {s["study_instance_uid"]: s for s in node.studies()}

        # The real films are outside the demo model's training domain: no verdict, no
        # number, and overlays that show the view plain, without heatmap or boxes.
        for film in (rg1, rg3):
            source = pydicom.dcmread(film, stop_before_pixels=True)
            study = listing[str(source.StudyInstanceUID)]
            assert study["job_state"] == "done"
            assert study["result"] == "not_analysed", study
            assert study["reason"].startswith("outside the model's training domain"), study
            assert "fracture_probability" not in study and "positive" not in study
            assert (study["views_analysed"], study["views_total"]) == (0, 1)
            _, scs = _results(orthanc, str(source.StudyInstanceUID))
            sc = pydicom.dcmread(io.BytesIO(orthanc.file(scs[0]["id"])))
            assert _grey_below_banner(sc, int(source.Rows)), film.name
            if film == rg3:
                # The SC of RG3 (MONOCHROME1) shows bone bright on a dark background: its
                # tibia runs down the middle of the collimated field, air lies beside it.
                grey = sc.pixel_array.astype(float).mean(axis=2)
                rows, cols = grey.shape
                bone = grey[int(rows * 0.3):int(rows * 0.6), int(cols * 0.45):int(cols * 0.5)]
                air = grey[int(rows * 0.3):int(rows * 0.6), int(cols * 0.27):int(cols * 0.31)]
                assert bone.mean() > air.mean() + 60, (bone.mean(), air.mean())

        # The synthetic hip/wrist study is inside scope and domain: analysed, every view.
        synthetic = listing[str(pydicom.dcmread(two_view_study[0],
                                                stop_before_pixels=True).StudyInstanceUID)]
        assert synthetic["result"] in ("positive", "negative"), synthetic
        assert 0.0 <= synthetic["fracture_probability"] <= 1.0
        assert (synthetic["views_analysed"], synthetic["views_total"]) == (2, 2)
    finally:
        node.stop()


def test_default_config_never_judges_a_chest_film(orthanc: Orthanc, tmp_path: Path) -> None:
    """With no routes the demo model sees only its own anatomy: RG1, a chest PA film, is
    "not analysed: out of scope (CHEST)" and nothing is written to the PACS."""
    dest = [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1",
             "port": orthanc.dicom_port}]
    node = make_node(tmp_path / "node", destinations=dest)
    node.start()
    try:
        rg1 = Path(get_testdata_file("RG1_UNCR.dcm"))
        study_uid = str(pydicom.dcmread(rg1, stop_before_pixels=True).StudyInstanceUID)
        result = storescu(node.port, [rg1])
        assert result.returncode == 0, result.stderr

        def done() -> dict | None:
            rows = [s for s in node.studies() if s["study_instance_uid"] == study_uid]
            return rows[0] if rows and rows[0]["job_state"] == "done" else None

        study = wait_for(done, timeout=90, what="the job of RG1 to finish", interval=0.5)
        assert study["result"] == "not_analysed"
        assert study["reason"] == "out of scope (CHEST)"
        assert "fracture_probability" not in study
        # No verdict anywhere: no SR or overlay made, none queued for the PACS.
        assert index_rows(node, "SELECT id FROM instances WHERE source = 'produced'") == []
        assert index_rows(node, "SELECT id FROM exports") == []
        assert orthanc.instances_of(study_uid) == []
        # The table a person reads says the same.
        from .conftest import PACS_NODE

        table = subprocess.run([PACS_NODE, "studies", "--config", str(node.config)],
                               cwd=node.workdir, capture_output=True, text=True, timeout=120,
                               env={**os.environ, **node.env, "COLUMNS": "250"})
        assert table.returncode == 0, table.stderr
        assert "not analysed: out of scope (CHEST)" in table.stdout
        assert "FRACTURE" not in table.stdout.upper().replace("NOT ANALYSED", "")
    finally:
        node.stop()


def test_make_run_config_answers_echo(tmp_path: Path) -> None:
    """The shipped config.yaml starts a node that answers C-ECHO (what `make run` runs)."""
    from .conftest import PACS_NODE, REPO, echo, free_port, stop_process

    port = free_port()
    env = {"PACS_NODE__NODE__DIMSE_PORT": str(port),
           "PACS_NODE__STORAGE__ROOT": str(tmp_path / "store"),
           "PACS_NODE__STORAGE__DATABASE_URL": f"sqlite:///{tmp_path / 'index.db'}"}
    import os

    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen([PACS_NODE, "serve", "--config", str(REPO / "config.yaml")],
                               cwd=tmp_path, env={**os.environ, **env}, stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: process.poll() is not None or echo(port), timeout=90,
                 what="C-ECHO from the default node")
        assert process.poll() is None, (tmp_path / "serve.log").read_text()
        # A second node on the same port fails with a clear message.
        clash = subprocess.run([PACS_NODE, "serve", "--config", str(REPO / "config.yaml")],
                               cwd=tmp_path, env={**os.environ, **env}, capture_output=True,
                               text=True, timeout=120)
        assert clash.returncode == 2
        assert "already in use" in clash.stderr
    finally:
        stop_process(process)


def test_bad_config_names_the_key(tmp_path: Path) -> None:
    from .conftest import PACS_NODE

    config = tmp_path / "bad.yaml"
    config.write_text(json.dumps({"node": {"dimse_port": 70000}, "study": {"stabel": 1}}))
    out = subprocess.run([PACS_NODE, "serve", "--config", str(config)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert "node.dimse_port" in out.stderr
    assert "study.stabel" in out.stderr
