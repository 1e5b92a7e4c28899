"""Metrics, readiness and the free-space watermark against the real node process
(issue 14 items 4 and 5): a real Prometheus (Debian's ``prometheus``) scrapes
``pacs-node serve`` and its query API returns what the test sent; a ``pacs-node worker``
records into the node's metrics; a store on a small tmpfs the test mounts fills, and
ingest stops before the disk is full and resumes once space is freed."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE

from .conftest import (
    NodeProcess,
    free_port,
    index_rows,
    make_node,
    require,
    rg3_copy,
    stop_process,
    two_view_study_files,
    wait_for,
)

MULTIPART = 'multipart/related; type="application/dicom"; boundary=observability'


def c_store(node: NodeProcess, files: list[Path]) -> list[int]:
    """C-STORE ``files`` over one association (pynetdicom sends each file's data set as it
    is in the file); the status of each."""
    ae = AE(ae_title="MODALITY")
    for context in sorted({(str(m.MediaStorageSOPClassUID), str(m.TransferSyntaxUID))
                           for m in map(read_file_meta_info, files)}):
        ae.add_requested_context(*context)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="PACSNODE")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(path).Status) for path in files]
    finally:
        assoc.release()


def dataset_bytes(path: Path) -> int:
    """The bytes of a Part 10 file's data set: what a C-STORE of it carries."""
    meta = read_file_meta_info(path)
    return path.stat().st_size - 132 - 12 - int(meta.FileMetaInformationGroupLength)


def stow(node: NodeProcess, files: list[Path]) -> requests.Response:
    body = b"".join(b"--observability\r\nContent-Type: application/dicom\r\n\r\n"
                    + f.read_bytes() + b"\r\n" for f in files) + b"--observability--\r\n"
    return requests.post(f"http://127.0.0.1:{node.settings['node']['http_port']}"
                         "/dicomweb/studies", data=body, timeout=120,
                         headers={"Content-Type": MULTIPART,
                                  "Accept": "application/dicom+json"})


def http_get(node: NodeProcess, path: str) -> requests.Response:
    return requests.get(f"http://127.0.0.1:{node.settings['node']['http_port']}{path}",
                        timeout=120)


def metric(text: str, series: str) -> float:
    """The value of one series in a /metrics text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- Prometheus ------------------------------------------------------------------------


class Prometheus:
    """Debian's prometheus on a free loopback port, with its own config and data folder,
    scraping one target every second."""

    def __init__(self, workdir: Path, target: str) -> None:
        binary = require("prometheus")
        workdir.mkdir(parents=True)
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "pacsnode", "scrape_interval": "1s",
                                "static_configs": [{"targets": [target]}]}]}))
        self.log = workdir / "prometheus.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
        try:
            wait_for(lambda: self.process.poll() is not None or self._ready(), timeout=60,
                     what="prometheus to be ready")
            assert self.process.poll() is None, self.log.read_text()[-3000:]
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready",
                                        timeout=5) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, ConnectionError):
            return False

    def query(self, expression: str) -> list[dict[str, Any]]:
        url = (f"http://127.0.0.1:{self.port}/api/v1/query?"
               + urllib.parse.urlencode({"query": expression}))
        with urllib.request.urlopen(url, timeout=10) as answer:
            body = json.load(answer)
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def value(self, expression: str) -> float | None:
        """The single value of an instant query, or None when it has no series."""
        result = self.query(expression)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        stop_process(self.process)


def test_prometheus_scrapes_what_the_node_received(tmp_path: Path) -> None:
    # No study settles during the test: the index holds exactly what was sent.
    node = make_node(tmp_path / "node", stable_seconds=600)
    node.start()
    http_port = node.settings["node"]["http_port"]
    prometheus = Prometheus(tmp_path / "prometheus", f"127.0.0.1:{http_port}")
    try:
        wait_for(lambda: prometheus.value('up{job="pacsnode"}') == 1, timeout=60,
                 what="prometheus to scrape the node")
        accepted = 'pacsnode_dimse_associations_total{outcome="accepted"}'
        echoes = prometheus.value(accepted)  # the C-ECHOs that saw the node up
        assert echoes is not None and echoes >= 1
        sent = [rg3_copy(tmp_path / "sent") for _ in range(3)]
        assert c_store(node, sent) == [0, 0, 0]
        posted = rg3_copy(tmp_path / "posted")
        assert stow(node, [posted]).status_code == 200
        expected_bytes = sum(dataset_bytes(path) for path in sent)

        def scraped() -> bool:
            return (prometheus.value('pacsnode_cstore_instances_total{status="0x0000"}') == 3
                    and prometheus.value('sum(pacsnode_http_request_duration_seconds_count'
                                         '{service="stow"})') == 1
                    and prometheus.value("pacsnode_store_instances") == 4)

        wait_for(scraped, timeout=60, what="prometheus to see the instances sent")
        assert prometheus.value('pacsnode_cstore_bytes_total{status="0x0000"}') == \
            expected_bytes
        assert prometheus.value(accepted) == echoes + 1  # one association carried all three
        assert prometheus.value('sum(pacsnode_http_request_duration_seconds_count'
                                '{service="stow",status="200"})') == 1
        stored = index_rows(node, "SELECT SUM(size_bytes) FROM instances")[0][0]
        assert prometheus.value("pacsnode_store_bytes") == stored
        assert prometheus.value('pacsnode_studies{priority="none"}') == 4
        assert prometheus.value('pacsnode_jobs{state="queued"}') == 0
        assert (prometheus.value("pacsnode_store_free_bytes") or 0) > 0
        # no label carries a UID or patient data: every label value is from a small set
        labels = {value for series in prometheus.query('{__name__=~"pacsnode_.+"}')
                  for name, value in series["metric"].items()
                  if name not in ("__name__", "instance", "job")}  # Prometheus's own
        assert not [v for v in labels if v.count(".") > 2], labels  # no UID
        assert labels <= {"0x0000", "accepted", "released", "stow", "other", "200", "none",
                          "default", "urgent", "live", "batch", "queued", "running",
                          "failed", "positive", "negative", "not_analysed"} | \
            {v for v in labels if v.replace(".", "").replace("+Inf", "").isdigit()
             or v == "+Inf"}, labels  # the statuses, states and buckets, nothing else
    finally:
        prometheus.stop()


def test_a_worker_process_records_into_the_nodes_metrics(
        tmp_path: Path, redis_url_factory: Any) -> None:
    node = make_node(tmp_path / "node", broker_url=redis_url_factory(), stable_seconds=1.0)
    node.start(with_worker=True)
    files = two_view_study_files(tmp_path / "synth", size=256)
    assert c_store(node, files) == [0, 0]

    def inferred() -> float:
        text = http_get(node, "/metrics").text
        return metric(text, 'pacsnode_inference_duration_seconds_count{model="demo"}') or \
            sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("pacsnode_inference_duration_seconds_count{"))

    wait_for(inferred, timeout=240, what="the worker's inference to reach /metrics")
    assert node.worker is not None
    folder = Path(node.workdir / "metrics")
    assert any(f.name.endswith(f"_{node.worker.pid}.db") for f in folder.iterdir()), \
        "the worker wrote no metrics file of its own"
    text = http_get(node, "/metrics").text
    assert metric(text, 'pacsnode_cstore_instances_total{status="0x0000"}') == 2
    ready = http_get(node, "/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["broker"]["ok"]


# -- the free-space watermark ----------------------------------------------------------


def _mount_tmpfs(folder: Path, size_mib: int) -> None:
    folder.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755",
                           "tmpfs", str(folder)], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a small tmpfs for the watermark test (it needs root and "
                    f"CAP_SYS_ADMIN): {done.stderr.strip()}")


def _free(folder: Path) -> int:
    import shutil

    return shutil.disk_usage(folder).free


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_below_the_watermark_ingest_stops_and_resumes(tmp_path: Path) -> None:
    small = tmp_path / "small"
    _mount_tmpfs(small, 40)
    watermark = 16 * 1024 * 1024
    node = make_node(tmp_path / "node", stable_seconds=600, extra={
        "storage": {"root": str(small / "store"), "min_free_bytes": watermark},
        "metrics": {"multiprocess_dir": str(tmp_path / "node" / "metrics")}})
    try:
        # Other data on the same disk; freed at the end.
        ballast = small / "other-data"
        ballast.write_bytes(b"\0" * (8 * 1024 * 1024))
        node.start()
        store = small / "store"
        statuses: list[int] = []
        sent: list[Path] = []
        while not statuses or statuses[-1] == 0:  # fill the store until it refuses
            assert len(statuses) < 10, "the store never refused"
            sent.append(rg3_copy(tmp_path / "sent"))
            statuses.extend(c_store(node, sent[-1:]))
        assert statuses[-1] == 0xA700 and len(statuses) >= 2, statuses
        accepted = len(statuses) - 1
        assert _free(small) - dataset_bytes(sent[-1]) < watermark <= _free(small) + 1
        # nothing partial: every file in the store is an indexed instance, no temp file
        stored = _files(store)
        assert len(stored) == accepted, stored
        assert all(p.suffix == ".dcm" and ".tmp-" not in p.name for p in stored)
        assert index_rows(node, "SELECT COUNT(*) FROM instances")[0][0] == accepted

        # Another writer takes the disk below the watermark: everything refuses, and
        # /readyz says why.
        more = small / "more-data"
        more.write_bytes(b"\0" * (_free(small) - watermark + 1024 * 1024))
        ready = http_get(node, "/readyz")
        assert ready.status_code == 503
        storage = ready.json()["checks"]["storage"]
        assert not storage["ok"] and "below storage.min_free_bytes" in storage["detail"]
        refused = stow(node, [sent[-1]])
        assert refused.status_code == 503
        assert "storage.min_free_bytes" in refused.json()["detail"]
        assert c_store(node, [sent[-1]]) == [0xA700]
        assert len(_files(store)) == accepted

        # Space is freed: ingest resumes, no restart.
        ballast.unlink()
        more.unlink()
        assert http_get(node, "/readyz").status_code == 200
        assert c_store(node, [sent[-1]]) == [0]
        assert len(_files(store)) == accepted + 1
        text = http_get(node, "/metrics").text
        assert metric(text, 'pacsnode_cstore_instances_total{status="0xA700"}') == 2
        assert "0xA700" in node.log()
    finally:
        node.stop()
        subprocess.run(["umount", str(small)], capture_output=True, timeout=60)
