"""Ingest throughput: pacs-node now, pacs-node before the C-STORE completeness check,
Orthanc and dcmtk storescp, one storescu association each, loopback.

    .venv/bin/python benchmarks/ingest.py --small 200 --large 20 --reps 3
    .venv/bin/python benchmarks/ingest.py --receivers node,before --reps 5

Small = 512x512 16-bit CR (~0.5 MB), large = 2500x2000 16-bit (~10 MB), explicit VR little
endian, one study per class. Runs itself in a private network namespace (``unshare -n``,
loopback only: dcmtk 3.6.7 storescp cannot bind to 127.0.0.1 alone), so it needs root.
Every dcmtk process, Orthanc included (it is built on dcmtk), runs with env TCP_NODELAY=1
(without it dcmtk stalls ~45 ms per C-STORE).

Receivers: ``node`` is the committed HEAD, ``before`` the parent of ae628c9 ("C-STORE Success
only for a complete, well-formed data set"); each runs from its own ``git worktree`` (so
neither sees uncommitted edits in the checkout) with this venv's interpreter, and the
benchmark stops unless the node's log shows it imported ``pacs_node`` and ``storage`` from
that worktree. ``orthanc`` gets its own JSON config (fsync of its files is on by default,
like the node's). Each rep, each receiver is started fresh on an empty store, so every
instance is new to it: no receiver answers a duplicate without writing (which would flatter
it). Runs are interleaved node, before, orthanc, storescp, node...; medians, min/max and
ratios of throughput are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
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
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
NODE_AE, SCP_AE, ORTHANC_AE, NODE_PDU = "BENCHNODE", "STORESCP", "ORTHANC", 131072
RECEIVERS = ("node", "before", "orthanc", "storescp")
PAIRS = (("node", "before"), ("node", "orthanc"), ("node", "storescp"),
         ("before", "orthanc"), ("before", "storescp"))
BEFORE_REV = "ae628c9^"



def add_worktree(rev: str, path: Path) -> str:
    """Check ``rev`` out, detached, at ``path``; returns its short commit id."""
    git("worktree", "add", "--detach", str(path), rev)
    return git("-C", str(path), "rev-parse", "--short", "HEAD")


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


def start(cmd: list[str], log: Path, ae: str, port: int, env: dict[str, str],
          cwd: Path | None = None) -> subprocess.Popen:
    """Start a receiver and wait until it answers C-ECHO."""
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env,
                            cwd=cwd)
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


def start_node(work: Path, src: Path) -> tuple[subprocess.Popen, int]:
    """The node whose code is checked out at ``src``, started as ``pacs-node serve``."""
    port = free_port()
    (work / "config.yaml").write_text(
        f"node: {{ae_title: {NODE_AE}, dimse_host: 127.0.0.1, dimse_port: {port},\n"
        f"       http_host: 127.0.0.1, http_port: {free_port()}, max_pdu_bytes: {NODE_PDU}}}\n"
        f"storage: {{root: '{work / 'store'}', database_url: 'sqlite:///{work / 'index.db'}'}}\n"
        "queue: {broker_url: 'memory://'}\nstudy: {stable_seconds: 3600}\ndestinations: []\n")
    cmd = [str(PYTHON), "-c", LAUNCHER, "serve", "--config", str(work / "config.yaml")]
    log = work / "node.log"
    proc = start(cmd, log, NODE_AE, port, node_env(src), cwd=src)
    first = log.read_text().splitlines()[0].split()
    if first[0] != "bench-import" or not all(Path(f).is_relative_to(src) for f in first[1:]):
        stop(proc)
        sys.exit(f"the node started for {src} imported {first[1:]}")
    return proc, port


def start_orthanc(work: Path, pdu: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    config = {
        "Name": "ingest-bench", "DicomAet": ORTHANC_AE, "DicomPort": port,
        "HttpPort": free_port(), "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "index"), "DicomServerEnabled": True,
        "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True, "DicomModalities": {},
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "MaximumPduLength": pdu, "SyncStorageArea": True,
    }
    (work / "orthanc.json").write_text(json.dumps(config))
    cmd = ["Orthanc", str(work / "orthanc.json")]
    return start(cmd, work / "orthanc.log", ORTHANC_AE, port, DCMTK_ENV), port


def start_storescp(work: Path, pdu: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    (work / "out").mkdir()
    cmd = ["storescp", "-aet", SCP_AE, "-od", str(work / "out"), "--max-pdu", str(pdu),
           str(port)]
    return start(cmd, work / "storescp.log", SCP_AE, port, DCMTK_ENV), port


def held(receiver: str, work: Path) -> tuple[int, int]:
    """Instances (files; for the node and Orthanc also index rows) and bytes it holds."""
    if receiver == "storescp":
        files = list((work / "out").iterdir())
        return len(files), sum(p.stat().st_size for p in files)
    if receiver == "orthanc":
        http = json.loads((work / "orthanc.json").read_text())["HttpPort"]
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/statistics", timeout=30) as r:
            rows = int(json.loads(r.read())["CountInstances"])
        files = [p for p in (work / "storage").rglob("*") if p.is_file()]
        return min(len(files), rows), sum(p.stat().st_size for p in files)
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


def run_once(receiver: str, data: Path, n: int, total: int, tmp: Path, pdu: int,
             sources: dict[str, Path]) -> float:
    """Fresh receiver on an empty store, one push, check it holds ``n`` whole instances;
    the receiver is stopped before it is counted, so everything it wrote is closed."""
    work = Path(tempfile.mkdtemp(prefix=f"{receiver}-", dir=tmp))
    if receiver in sources:
        (proc, port), ae = start_node(work, sources[receiver]), NODE_AE
    elif receiver == "orthanc":
        (proc, port), ae = start_orthanc(work, pdu), ORTHANC_AE
    else:
        (proc, port), ae = start_storescp(work, pdu), SCP_AE
    try:
        seconds = push(ae, port, data)
        count, size = held(receiver, work)
    finally:
        stop(proc)
    if count != n or abs(size - total) > 0.01 * total:
        sys.exit(f"{receiver} holds {count} instances, {size} bytes; sent {n}, {total} bytes")
    shutil.rmtree(work)
    return seconds


def receivers_arg(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in RECEIVERS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown receivers {bad}; choose from {RECEIVERS}")
    return [r for r in RECEIVERS if r in names]  # always the interleaving order


def ratio_text(times: dict[str, list[float]], a: str, b: str) -> str:
    """Throughput of ``a`` over ``b``: ratio of medians, then per rep."""
    ratio = statistics.median(times[b]) / statistics.median(times[a])
    paired = ", ".join(f"{tb / ta:.2f}" for ta, tb in zip(times[a], times[b], strict=True))
    return f"{ratio:5.2f}  (per rep {paired})"


def print_summary(results: dict[str, tuple[int, int, dict[str, list[float]]]],
                  receivers: list[str]) -> None:
    names = list(results)
    print("summary (medians)   " + "".join(f"{f'{c} MB/s':>13s}{f'{c} inst/s':>15s}"
                                           for c in names))
    for receiver in receivers:
        cells = []
        for n, total, times in results.values():
            med = statistics.median(times[receiver])
            cells.append(f"{total / 1e6 / med:13.1f}{n / med:15.1f}")
        print(f"  {receiver:18s}" + "".join(cells))
    pairs = [(a, b) for a, b in PAIRS if a in receivers and b in receivers]
    if pairs:
        print("throughput ratios   " + "".join(f"{c:>13s}" for c in names))
    for a, b in pairs:
        cells = []
        for _, _, times in results.values():
            cells.append(f"{statistics.median(times[b]) / statistics.median(times[a]):13.2f}")
        print(f"  {f'{a}/{b}':18s}" + "".join(cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=200, help="512x512 instances (~0.5 MB)")
    ap.add_argument("--large", type=int, default=20, help="2500x2000 instances (~10 MB)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--receivers", type=receivers_arg, default=list(RECEIVERS),
                    help=f"comma-separated subset of {','.join(RECEIVERS)} (default: all)")
    ap.add_argument("--before", default=BEFORE_REV, help="git revision run as 'before'")
    ap.add_argument("--storescp-pdu", type=int, default=NODE_PDU,
                    help="storescp and Orthanc max receive PDU (4096..131072); default: "
                         "the node's; 0: their default 16384")
    ap.add_argument("--note", default="", help="printed with the machine line")
    args = ap.parse_args()
    pdu = args.storescp_pdu or 16384
    if not 4096 <= pdu <= 131072:
        ap.error(f"--storescp-pdu {pdu} is outside 4096..131072 (Orthanc's range)")
    in_private_netns()
    import pynetdicom

    receivers: list[str] = args.receivers
    print(f"machine: nproc={os.cpu_count()}, 1-min load average {os.getloadavg()[0]:.2f} "
          "at start (other processes compete for CPU)" + (f"; note: {args.note}" * bool(args.note)))
    scp_version = version(["storescp", "--version"], r"storescp v(\S+)")
    orthanc_version = version(["Orthanc", "--version"], r"Orthanc (\S+)")
    print(f"dcmtk storescp {scp_version}, Orthanc {orthanc_version}, "
          f"pynetdicom {pynetdicom.__version__}, pydicom {pydicom.__version__}, "
          f"python {sys.version.split()[0]}")
    print(f"node max PDU {NODE_PDU}, storescp and Orthanc max PDU {pdu}; node: fsync file + "
          "dir + SQLite commit, INFO log per instance; Orthanc: fsync file (SyncStorageArea) "
          "+ SQLite index; storescp: no fsync")
    print("each rep: fresh receiver, empty store, same files (no duplicates); "
          "timed: wall clock of one storescu association; env TCP_NODELAY=1 for dcmtk/Orthanc")
    tmp = Path(tempfile.mkdtemp(prefix="ingest-bench-", dir="/var/tmp"))
    worktrees: list[Path] = []
    try:
        sources: dict[str, Path] = {}
        for receiver, rev in (("node", "HEAD"), ("before", args.before)):
            if receiver in receivers:
                src = tmp / f"src-{receiver}"
                worktrees.append(src)
                commit = add_worktree(rev, src)
                check_imports(src, ("pacs_node", "storage", "workers", "models"))
                sources[receiver] = src
                print(f"{receiver}: {rev} = {commit}, run from a worktree at {src}")
        print()
        base = base_dataset(tmp)
        classes = []
        for name, n, shape in (("small", args.small, None), ("large", args.large, (2500, 2000))):
            if n > 0:
                total = write_class(base.copy(), tmp / name, n, shape)
                classes.append((name, n, total))
        results: dict[str, tuple[int, int, dict[str, list[float]]]] = {}
        for name, n, total in classes:
            for p in (tmp / name).iterdir():  # warm the page cache for every receiver
                p.read_bytes()
            times: dict[str, list[float]] = {r: [] for r in receivers}
            for _ in range(args.reps):
                for receiver in receivers:
                    times[receiver].append(
                        run_once(receiver, tmp / name, n, total, tmp, pdu, sources))
            results[name] = (n, total, times)
            print(f"{name}: {n} instances, {total / n / 1e6:.2f} MB each, "
                  f"{total / 1e6:.1f} MB per push, {args.reps} reps")
            for receiver, ts in times.items():
                med = statistics.median(ts)
                print(f"  {receiver:9s} {n / med:8.1f} inst/s  {total / 1e6 / med:7.1f} MB/s  "
                      f"(median; inst/s min {n / max(ts):.1f} max {n / min(ts):.1f}; "
                      f"seconds {', '.join(f'{t:.2f}' for t in ts)})")
            for a, b in PAIRS:
                if a in times and b in times:
                    print(f"  {f'{a}/{b}':16s} throughput {ratio_text(times, a, b)}")
            print()
        print_summary(results, receivers)
    finally:
        for src in worktrees:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(src)],
                           capture_output=True, timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)
        if worktrees:
            subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], capture_output=True,
                           timeout=120)


if __name__ == "__main__":
    main()
