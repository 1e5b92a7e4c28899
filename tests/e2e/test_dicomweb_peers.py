"""The running node over DICOMweb with peers no one here wrote: a study stored with
dicomweb-client (a writer token) is retrieved by Orthanc's DICOMweb plugin (a reader
token), pixel for pixel; bad HTTP input leaves the node serving DIMSE and HTTP."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file

from .conftest import PACS_NODE, Orthanc, echo, make_node, wait_for


def _token(config: Path, workdir: Path, name: str, role: str) -> str:
    out = subprocess.run([PACS_NODE, "token", "create", "--name", name, "--role", role,
                          "--config", str(config)], cwd=workdir, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def _orthanc_call(orthanc: Orthanc, method: str, path: str, payload: object) -> object:
    request = urllib.request.Request(
        f"http://127.0.0.1:{orthanc.http_port}{path}", data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"}, method=method)
    with urllib.request.urlopen(request, timeout=120) as response:
        body = response.read()
    return json.loads(body) if body else None


def test_orthanc_retrieves_a_study_from_the_node_over_dicomweb(
        tmp_path: Path, orthanc: Orthanc) -> None:
    node = make_node(tmp_path / "node", extra={"http": {"auth": True}})
    writer = _token(node.config, node.workdir, "gateway", "writer")
    reader = _token(node.config, node.workdir, "orthanc", "reader")
    node.start()
    http_port = node.settings["node"]["http_port"]
    base = f"http://127.0.0.1:{http_port}/dicomweb"
    files = [Path(get_testdata_file(n)) for n in ("RG3_UNCR.dcm", "RG3_J2KR.dcm")]
    sent = [pydicom.dcmread(f) for f in files]
    stored = DICOMwebClient(url=base, headers={"Authorization": f"Bearer {writer}"}) \
        .store_instances(sent)
    assert len(stored.ReferencedSOPSequence) == 2
    study_uid = sent[0].StudyInstanceUID

    _orthanc_call(orthanc, "PUT", "/dicom-web/servers/node",
                  {"Url": f"{base}/", "HttpHeaders": {"Authorization": f"Bearer {reader}"}})
    _orthanc_call(orthanc, "POST", "/dicom-web/servers/node/retrieve",
                  {"Resources": [{"Study": study_uid}]})
    wait_for(lambda: len(orthanc.instances_of(study_uid)) >= 2, timeout=60,
             what="Orthanc to hold the retrieved study")
    held = {pydicom.dcmread(BytesIO(orthanc.file(i["id"]))).SOPInstanceUID:
            pydicom.dcmread(BytesIO(orthanc.file(i["id"])))
            for i in orthanc.instances_of(study_uid)}
    for original in sent:
        copy = held[original.SOPInstanceUID]
        assert np.array_equal(copy.pixel_array, original.pixel_array)

    # Bad HTTP input: answered, and both listeners keep serving.
    assert requests.get(f"{base}/studies", timeout=30).status_code == 401
    bad = requests.post(f"{base}/studies", data=b"--x\r\nnot dicom",
                        headers={"Authorization": f"Bearer {writer}",
                                 "Content-Type": 'multipart/related; '
                                                 'type="application/dicom"; boundary=x'},
                        timeout=30)
    assert bad.status_code == 400
    assert requests.get(f"{base}/studies/1.2.x/metadata",
                        headers={"Authorization": f"Bearer {reader}"},
                        timeout=30).status_code == 400
    assert echo(node.port)
    found = requests.get(f"{base}/studies", params={"StudyInstanceUID": study_uid},
                         headers={"Authorization": f"Bearer {reader}"}, timeout=30)
    assert found.status_code == 200 and len(found.json()) == 1
