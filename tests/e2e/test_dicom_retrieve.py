"""A PACS pulling from the running node: Orthanc, with the node declared as a DICOM
modality, retrieves a study by C-MOVE (to itself, declared in the node's ``remotes``) and
by C-GET (over its own association). Debian 12's Orthanc 1.10 has no C-GET SCU (it came in
1.12.6): the C-GET pull runs Orthanc 1.12.7 from Debian trixie (scripts/fetch_orthanc.sh).
dcmtk getscu/movescu and pynetdicom retrieve at every level in tests/dimse/test_retrieve.py."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import yaml

from .conftest import (
    NodeProcess,
    Orthanc,
    make_node,
    rg3_copy,
    start_orthanc,
    stop_process,
    storescu,
    wait_for,
)


def _pull(tmp_path: Path, orthanc: Orthanc, node: NodeProcess, how: str,
          payload: dict[str, Any]) -> None:
    """Send RG3 to the node, have Orthanc pull its study (``how``: move or get), and check
    Orthanc holds the same pixels."""
    node.start()
    study_file = rg3_copy(tmp_path / "study")
    sent = pydicom.dcmread(study_file)
    assert storescu(node.port, [study_file]).returncode == 0
    orthanc.put_modality("node", "PACSNODE", node.port)
    orthanc.get_post(f"/modalities/node/{how}", {
        "Level": "Study", "Resources": [{"StudyInstanceUID": sent.StudyInstanceUID}],
        "Synchronous": True, **payload})
    wait_for(lambda: len(orthanc.instances_of(sent.StudyInstanceUID)) >= 1, timeout=60,
             what=f"Orthanc to hold the study it pulled by C-{how.upper()}")
    (held,) = [i for i in orthanc.instances_of(sent.StudyInstanceUID)
               if i["tags"]["SOPInstanceUID"] == sent.SOPInstanceUID]
    copy = pydicom.dcmread(BytesIO(orthanc.file(held["id"])))
    assert np.array_equal(copy.pixel_array, sent.pixel_array)


def test_orthanc_pulls_a_study_by_c_move(tmp_path: Path, orthanc: Orthanc) -> None:
    node = make_node(tmp_path / "node")
    node.settings["remotes"] = [{"name": "pacs", "ae_title": orthanc.aet,
                                 "host": "127.0.0.1", "port": orthanc.dicom_port}]
    node.config.write_text(yaml.safe_dump(node.settings))
    _pull(tmp_path, orthanc, node, "move", {"TargetAet": orthanc.aet})
    assert "C-MOVE from" in node.log() and "to 'ORTHANC'" in node.log()


def test_orthanc_pulls_a_study_by_c_get(tmp_path: Path) -> None:
    orthanc = start_orthanc(tmp_path / "orthanc", trixie=True)
    try:
        assert orthanc.get("/system")["Version"] >= "1.12.6"
        node = make_node(tmp_path / "node")
        _pull(tmp_path, orthanc, node, "get", {})
        assert "C-GET" in node.log()
    finally:
        stop_process(orthanc.process)
