"""Ingest throughput: pacs-node versus dcmtk storescp, one storescu association, loopback.

    .venv/bin/python benchmarks/ingest.py --small 200 --large 20 --reps 3

Small = 512x512 16-bit CR (~0.5 MB), large = 2500x2000 16-bit (~10 MB), explicit VR little
endian, one study per class. Runs itself in a private network namespace (``unshare -n``,
loopback only: dcmtk 3.6.7 storescp cannot bind to 127.0.0.1 alone), so it needs root.
Every dcmtk process runs with env TCP_NODELAY=1 (without it dcmtk stalls ~45 ms per C-STORE).
Each rep, each receiver is started fresh on an empty store, so every instance is new to it:
the node never answers a duplicate without writing (which would flatter it). Runs are
interleaved node, storescp, node, storescp...; medians, min/max and ratios are printed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parents[1]
NODE_BIN = REPO / ".venv" / "bin" / "pacs-node"
NS_FLAG = "PACS_NODE_BENCH_NETNS"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
NODE_AE, SCP_AE, NODE_PDU = "BENCHNODE", "STORESCP", 131072


def in_private_netns() -> None:
    """Re-execute this script inside ``unshare -n`` with only loopback up."""
    if os.environ.get(NS_FLAG) == "1":
        return
    os.environ[NS_FLAG] = "1"
    cmd = ["unshare", "-n", "bash", "-c", 'ip link set lo up && exec "$@"', "bash",
           sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]]
    os.execvp("unshare", cmd)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_dataset(tmp: Path) -> pydicom.Dataset:
    """One synthetic 512x512 16-bit CR from models.synth."""
    from models.synth import generate_dataset

    generate_dataset(tmp / "synth", studies=1, seed=11, size=512)
    ds = pydicom.dcmread(next(iter(sorted((tmp / "synth").rglob("*.dcm")))))
    shutil.rmtree(tmp / "synth")
    return ds


def write_class(ds: pydicom.Dataset, out: Path, n: int, shape: tuple[int, int] | None) -> int:
    """``n`` copies of ``ds`` in one new study/series with new SOP Instance UIDs; with
    ``shape``, new noise pixel data of that size. Returns the total bytes written."""
    out.mkdir(parents=True)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(prefix=None), generate_uid(prefix=None)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    rng = np.random.default_rng(5)
    if shape is not None:
        ds.Rows, ds.Columns = shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    for i in range(n):
        if shape is not None:  # fresh noise per file: nothing repeats across instances
            ds.PixelData = rng.integers(0, 4096, size=shape, dtype=np.uint16).tobytes()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(prefix=None)
        ds.InstanceNumber = i + 1
        ds.save_as(out / f"{i:05d}.dcm", enforce_file_format=True)
    return sum(p.stat().st_size for p in out.iterdir())


def echo_ok(ae: str, port: int) -> bool:
    r = subprocess.run(["echoscu", "-aec", ae, "127.0.0.1", str(port)], env=DCMTK_ENV,
                       capture_output=True, timeout=30)
    return r.returncode == 0


def start(cmd: list[str], log: Path, ae: str, port: int, env: dict[str, str]) -> subprocess.Popen:
    """Start a receiver and wait until it answers C-ECHO."""
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{cmd[0]} exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        if echo_ok(ae, port):
            return proc
        time.sleep(0.3)
    stop(proc)
    sys.exit(f"{cmd[0]} did not answer C-ECHO within 120 s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()  # SIGTERM to this PID only
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_node(work: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    (work / "config.yaml").write_text(
        f"node: {{ae_title: {NODE_AE}, dimse_host: 127.0.0.1, dimse_port: {port},\n"
        f"       http_host: 127.0.0.1, http_port: {free_port()}, max_pdu_bytes: {NODE_PDU}}}\n"
        f"storage: {{root: '{work / 'store'}', database_url: 'sqlite:///{work / 'index.db'}'}}\n"
        "queue: {broker_url: 'memory://'}\nstudy: {stable_seconds: 3600}\ndestinations: []\n")
    cmd = [str(NODE_BIN), "serve", "--config", str(work / "config.yaml")]
    return start(cmd, work / "node.log", NODE_AE, port, dict(os.environ)), port


def start_storescp(work: Path, pdu: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    (work / "out").mkdir()
    pdu_args = ["--max-pdu", str(pdu)] if pdu > 0 else []
    cmd = ["storescp", "-aet", SCP_AE, "-od", str(work / "out"), *pdu_args, str(port)]
    return start(cmd, work / "storescp.log", SCP_AE, port, DCMTK_ENV), port


def held(receiver: str, work: Path) -> tuple[int, int]:
    """Instances (files; for the node also index rows) and bytes the receiver holds."""
    if receiver == "storescp":
        files = list((work / "out").iterdir())
        return len(files), sum(p.stat().st_size for p in files)
    files = [p for p in (work / "store").rglob("*.dcm") if not p.name.startswith(".")]
    with sqlite3.connect(work / "index.db") as db:
        rows = db.execute("SELECT count(*) FROM instances").fetchone()[0]
    return min(len(files), rows), sum(p.stat().st_size for p in files)


def push(ae: str, port: int, data: Path) -> float:
    cmd = ["storescu", "-aec", ae, "-aet", "BENCHSCU", "127.0.0.1", str(port), "+sd", str(data)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=DCMTK_ENV, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"storescu to {ae} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return seconds


def run_once(receiver: str, data: Path, n: int, total: int, tmp: Path, pdu: int) -> float:
    """Fresh receiver on an empty store, one push, check it holds ``n`` whole instances."""
    work = Path(tempfile.mkdtemp(prefix=f"{receiver}-", dir=tmp))
    proc, port = start_node(work) if receiver == "node" else start_storescp(work, pdu)
    try:
        seconds = push(NODE_AE if receiver == "node" else SCP_AE, port, data)
        count, size = held(receiver, work)
    finally:
        stop(proc)
    if count != n or abs(size - total) > 0.01 * total:
        sys.exit(f"{receiver} holds {count} instances, {size} bytes; sent {n}, {total} bytes")
    shutil.rmtree(work)
    return seconds


def dcmtk_version() -> str:
    out = subprocess.run(["storescp", "--version"], capture_output=True, text=True).stdout
    m = re.search(r"storescp v(\S+)", out)
    return m.group(1) if m else "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=200, help="512x512 instances (~0.5 MB)")
    ap.add_argument("--large", type=int, default=20, help="2500x2000 instances (~10 MB)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--storescp-pdu", type=int, default=NODE_PDU,
                    help="storescp max receive PDU; default: the node's; 0: dcmtk's 16384")
    ap.add_argument("--note", default="", help="printed with the machine line")
    args = ap.parse_args()
    in_private_netns()
    import pynetdicom

    print(f"machine: nproc={os.cpu_count()}, 1-min load average {os.getloadavg()[0]:.2f} "
          "at start (other processes compete for CPU)" + (f"; note: {args.note}" * bool(args.note)))
    print(f"dcmtk storescp {dcmtk_version()}, "
          f"pynetdicom {pynetdicom.__version__}, pydicom {pydicom.__version__}, "
          f"python {sys.version.split()[0]}")
    print(f"node max PDU {NODE_PDU}, storescp max PDU {args.storescp_pdu or 16384}; "
          "node: fsync file + dir + SQLite commit, INFO log per instance; storescp: no fsync")
    print("each rep: fresh receiver, empty store, same files (no duplicates); "
          "timed: wall clock of one storescu association; env TCP_NODELAY=1 for dcmtk\n")
    tmp = Path(tempfile.mkdtemp(prefix="ingest-bench-", dir="/var/tmp"))
    try:
        base = base_dataset(tmp)
        classes = []
        for name, n, shape in (("small", args.small, None), ("large", args.large, (2500, 2000))):
            if n > 0:
                total = write_class(base.copy(), tmp / name, n, shape)
                classes.append((name, n, total))
        for name, n, total in classes:
            for p in (tmp / name).iterdir():  # warm the page cache for both receivers
                p.read_bytes()
            times: dict[str, list[float]] = {"node": [], "storescp": []}
            for _ in range(args.reps):
                for receiver in times:
                    seconds = run_once(receiver, tmp / name, n, total, tmp, args.storescp_pdu)
                    times[receiver].append(seconds)
            print(f"{name}: {n} instances, {total / n / 1e6:.2f} MB each, "
                  f"{total / 1e6:.1f} MB per push, {args.reps} reps")
            for receiver, ts in times.items():
                med = statistics.median(ts)
                print(f"  {receiver:9s} {n / med:8.1f} inst/s  {total / 1e6 / med:7.1f} MB/s  "
                      f"(median; inst/s min {n / max(ts):.1f} max {n / min(ts):.1f}; "
                      f"seconds {', '.join(f'{t:.2f}' for t in ts)})")
            ratio = statistics.median(times["storescp"]) / statistics.median(times["node"])
            paired = [s / t for s, t in zip(times["storescp"], times["node"], strict=True)]
            print(f"  node/storescp throughput: {ratio:.2f} (ratio of medians; per rep "
                  f"{', '.join(f'{r:.2f}' for r in paired)})\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
