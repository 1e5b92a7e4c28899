"""A PACS pulling from the running node: Orthanc, with the node declared as a DICOM
modality, retrieves a study by C-MOVE (to itself, declared in the node's ``remotes``).

Orthanc 1.10 (Debian's) has no C-GET SCU (it came in 1.12.6): C-GET is tested with
dcmtk getscu and pynetdicom in tests/dimse/test_retrieve.py."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import yaml

from .conftest import Orthanc, make_node, rg3_copy, storescu, wait_for


def test_orthanc_pulls_a_study_by_c_move(tmp_path: Path, orthanc: Orthanc) -> None:
    node = make_node(tmp_path / "node")
    node.settings["remotes"] = [{"name": "pacs", "ae_title": orthanc.aet,
                                 "host": "127.0.0.1", "port": orthanc.dicom_port}]
    node.config.write_text(yaml.safe_dump(node.settings))
    node.start()
    study_file = rg3_copy(tmp_path / "study")
    sent = pydicom.dcmread(study_file)
    assert storescu(node.port, [study_file]).returncode == 0

    orthanc.put_modality("node", "PACSNODE", node.port)
    orthanc.get_post("/modalities/node/move", {
        "Level": "Study", "Resources": [{"StudyInstanceUID": sent.StudyInstanceUID}],
        "TargetAet": orthanc.aet, "Synchronous": True})
    wait_for(lambda: len(orthanc.instances_of(sent.StudyInstanceUID)) >= 1, timeout=60,
             what="Orthanc to hold the moved study")
    (held,) = [i for i in orthanc.instances_of(sent.StudyInstanceUID)
               if i["tags"]["SOPInstanceUID"] == sent.SOPInstanceUID]
    copy = pydicom.dcmread(BytesIO(orthanc.file(held["id"])))
    assert np.array_equal(copy.pixel_array, sent.pixel_array)
    assert "C-MOVE from" in node.log() and "to 'ORTHANC'" in node.log()
