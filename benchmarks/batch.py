"""Re-processing batches: studies/hour of one batch, embedded runner vs Celery workers.

    .venv/bin/python benchmarks/batch.py
    .venv/bin/python benchmarks/batch.py --studies 48 --workers 1,2,4 --tiny

Orthanc 1.10 (Debian's, started here on free loopback ports, the PACS the batch pulls
from) holds ``--studies`` synthetic studies (models.synth, ``--image-size`` px, uploaded
over its REST API). Then, for each configuration, a fresh node (its own temporary folder,
SQLite index, or with ``--postgres`` a fresh PostgreSQL database made and dropped here):

``embedded``: ``queue.broker_url: memory://``, ``pacs-node serve`` runs the jobs itself
(one thread);
``celery-K`` for each K of ``--workers``: ``redis://127.0.0.1:6379/DB`` (that db flushed
before each run) and ``pacs-node worker --concurrency K`` beside ``pacs-node serve``.

Each runs one ``pacs-node batch create --remote pacs --from 19000101 --to 20991231
--max-retrieves R --model demo --deliver none`` (C-FIND at Orthanc, C-MOVE of each study to
the node, one job per study in the batch lane; ``batch.max_queued`` is max(8, 2K)). Timed:
the batch's ``created_at`` to ``finished_at`` in the index (also the wall clock from
launching the create command until the index says done). Every item must be done with one
done job, and ``batch show --json`` must agree. Printed per configuration: studies,
seconds, studies/hour, ratios to celery-1 and embedded; then where the time went, from the
index: per study retrieve (first instance received -> job created, the settle), queue wait
(job created -> started) and run (started -> finished) seconds, and the CPU seconds of the
node's processes (also per study) and of Orthanc against the cores the run had.

The node runs from this working tree (``.venv/bin/pacs-node``). Every process started here
is stopped by its PID in ``finally``; a configuration's logs stay in its folder, printed
when it fails (``--keep`` keeps them all).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # tests.e2e.conftest: Orthanc and node configs as the tests do
    sys.path.insert(0, str(REPO))

from tests.e2e.conftest import (  # noqa: E402
    PACS_NODE,
    Orthanc,
    echo,
    make_node,
    start_orthanc,
    stop_process,
    wait_for,
)

PG_SOCKET = "/var/run/postgresql"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
FINAL = ("done", "failed", "cancelled")
TICK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A configuration did not complete as it must; the message says why."""


# -- machine, processes ------------------------------------------------------------------------

def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(fields[:8])
    idle = fields[3] + fields[4]  # idle + iowait
    return (total - idle) / TICK, total / TICK


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # fields from "state" on


def children(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (a scan of /proc)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None:
                parent[int(entry.name)] = int(fields[1])
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out.extend(kids)
        frontier.extend(kids)
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` (and of their children they waited for)."""
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:  # utime stime cutime cstime: fields 14-17 of stat
            total += sum(int(v) for v in fields[11:15])
    return total / TICK


def stop_all(processes: list[subprocess.Popen[bytes]], extra: list[int]) -> None:
    """Stop ``processes`` by PID (SIGTERM, then SIGKILL after 30 s), then any PID of
    ``extra`` (a worker's pool children) that is still a ``pacs-node worker``."""
    for process in reversed(processes):
        stop_process(process)
    for pid in extra:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"pacs-node" in cmdline and b"worker" in cmdline:
            os.kill(pid, 15)


# -- Orthanc, PostgreSQL, Redis ----------------------------------------------------------------

def upload(orthanc: Orthanc, root: Path, studies: int, seed: int, size: int) -> tuple[int, int]:
    """Generate the synthetic studies under ``root`` and post every file to Orthanc;
    (studies, instances) Orthanc then holds."""
    from models.synth import generate_dataset, read_manifest

    generate_dataset(root, studies=studies, seed=seed, size=size)
    for entry in read_manifest(root):
        request = urllib.request.Request(
            f"http://127.0.0.1:{orthanc.http_port}/instances",
            data=(root / entry["path"]).read_bytes(), method="POST",
            headers={"Content-Type": "application/dicom"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            answer.read()
    stats = orthanc.get("/statistics")
    return int(stats["CountStudies"]), int(stats["CountInstances"])


def psql(sql: str) -> None:
    r = subprocess.run(["psql", "-h", PG_SOCKET, "-U", "postgres", "-d", "postgres", "-tA",
                        "-v", "ON_ERROR_STOP=1", "-c", sql],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise BenchError(f"psql {sql[:60]!r} failed: {r.stderr.strip()}")


def flush_redis(db: int) -> None:
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
    try:
        client.flushdb()
    finally:
        client.close()


# -- one configuration -------------------------------------------------------------------------

@dataclass
class Run:
    name: str
    workers: int | None  # None: embedded
    studies: int = 0
    seconds: float = 0.0  # batches.created_at -> finished_at
    wall: float = 0.0  # launching `batch create` -> the index says done
    retrieve: list[float] = field(default_factory=list)
    wait: list[float] = field(default_factory=list)
    run: list[float] = field(default_factory=list)
    first_start: float = 0.0  # batch created -> first job started
    node_cpu: float = 0.0
    orthanc_cpu: float = 0.0
    machine_busy: float = 0.0  # share of all cores busy (any process) during the batch
    load_end: str = ""

    @property
    def per_hour(self) -> float:
        return 3600.0 * self.studies / self.seconds


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    answer = subprocess.run([PACS_NODE, *args, "--config", str(config)], capture_output=True,
                            text=True, timeout=300, cwd=config.parent)
    if answer.returncode != 0:
        raise BenchError(f"pacs-node {' '.join(args)} exited with {answer.returncode}:\n"
                         f"{answer.stdout}{answer.stderr}")
    return answer


def seconds_between(a: datetime | None, b: datetime | None) -> float:
    if a is None or b is None:
        raise BenchError("a timestamp the benchmark reads is missing in the index")
    return (b - a).total_seconds()


def read_timings(url: str, batch_id: int, run: Run) -> None:
    """Per study: retrieve, queue wait and run seconds from the index."""
    from sqlalchemy import select

    from storage import Batch, BatchItem, Job, Study, create_engine_for, session_factory

    engine = create_engine_for(url)
    try:
        with session_factory(engine)() as session:
            batch = session.get(Batch, batch_id)
            if batch is None:
                raise BenchError(f"batch {batch_id} is not in the index")
            run.seconds = seconds_between(batch.created_at, batch.finished_at)
            rows = session.execute(
                select(BatchItem.state, Job.state, Job.created_at, Job.started_at,
                       Job.finished_at, Study.first_received_at)
                .join(Job, Job.id == BatchItem.job_id, isouter=True)
                .join(Study, Study.id == Job.study_id, isouter=True)
                .where(BatchItem.batch_id == batch_id)).all()
            done_jobs = session.execute(
                select(Job.study_id).where(Job.batch_id == batch_id, Job.state == "done")
            ).scalars().all()
    finally:
        engine.dispose()
    bad = [(item, job) for item, job, *_ in rows if item != "done" or job != "done"]
    if bad or len(rows) != run.studies:
        raise BenchError(f"{len(rows)} items for {run.studies} studies; not done (item state, "
                         f"job state): {bad[:10]}")
    if len(done_jobs) != len(set(done_jobs)) or len(done_jobs) != run.studies:
        raise BenchError(f"{len(done_jobs)} done jobs for {len(set(done_jobs))} studies")
    starts = []
    for _, _, created, started, finished, received in rows:
        run.retrieve.append(seconds_between(received, created))
        run.wait.append(seconds_between(created, started))
        run.run.append(seconds_between(started, finished))
        starts.append(started)
    run.first_start = seconds_between(batch.created_at, min(starts))


def batch_state(url: str, batch_id: int) -> str:
    """The batch's state, read from the index (cheaper than `batch show` every poll)."""
    from storage import Batch, create_engine_for, session_factory

    engine = create_engine_for(url)
    try:
        with session_factory(engine)() as session:
            batch = session.get(Batch, batch_id)
            return "" if batch is None else str(batch.state)
    finally:
        engine.dispose()


def run_config(name: str, workers: int | None, args: argparse.Namespace, orthanc: Orthanc,
               work: Path, model: str, studies: int, database_url: str) -> Run:
    run = Run(name, workers, studies=studies)
    broker = "memory://" if workers is None else \
        f"redis://{REDIS_HOST}:{REDIS_PORT}/{args.redis_db}"
    node = make_node(work, database_url=database_url, broker_url=broker, stable_seconds=5.0,
                     extra={"batch": {"max_queued": max(8, 2 * (workers or 1)),
                                      "max_retrieves": args.max_retrieves,
                                      "tick_seconds": args.tick_seconds}})
    node.settings["remotes"] = [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1",
                                 "port": orthanc.dicom_port, "retrieve": "c-move"}]
    node.config.write_text(yaml.safe_dump(node.settings))
    started: list[subprocess.Popen[bytes]] = []
    pool: list[int] = []
    try:
        if workers is not None:
            flush_redis(args.redis_db)
        with (work / "serve.log").open("wb") as log:
            serve = subprocess.Popen([PACS_NODE, "serve", "--config", str(node.config)],
                                     cwd=work, stdout=log, stderr=subprocess.STDOUT)
        started.append(serve)
        wait_for(lambda: serve.poll() is not None or echo(node.port), timeout=120,
                 what="the node to answer C-ECHO", interval=0.5)
        if serve.poll() is not None:
            raise BenchError(f"pacs-node serve exited with {serve.returncode}")
        orthanc.put_modality("node", "PACSNODE", node.port)
        processes = [serve]
        if workers is not None:
            with (work / "worker.log").open("wb") as log:
                worker = subprocess.Popen(
                    [PACS_NODE, "worker", "--config", str(node.config), "--concurrency",
                     str(workers)], cwd=work, stdout=log, stderr=subprocess.STDOUT)
            started.append(worker)
            processes.append(worker)
            wait_for(lambda: worker.poll() is not None
                     or " ready." in (work / "worker.log").read_text(errors="replace"),
                     timeout=180, what="the Celery worker to be ready", interval=0.5)
            if worker.poll() is not None:
                raise BenchError(f"pacs-node worker exited with {worker.returncode}")
            pool = children(worker.pid)
        pids = [p.pid for p in processes] + pool
        if orthanc.process is None:
            raise BenchError("Orthanc has no process")
        cpu0 = cpu_seconds(pids), cpu_seconds([orthanc.process.pid]), machine_cpu()
        t0 = time.perf_counter()
        answer = cli(node.config, "batch", "create", "--remote", "pacs", "--from", "19000101",
                     "--to", "20991231", "--max-retrieves", str(args.max_retrieves),
                     "--model", model, "--deliver", "none", "--name", f"bench {name}")
        batch_id = int(answer.stdout.strip().splitlines()[-1])

        def ended() -> bool:
            for process in processes:
                if process.poll() is not None:
                    raise BenchError(f"{process.args[1]} exited with {process.returncode} "
                                     "during the batch")
            return batch_state(database_url, batch_id) in FINAL
        wait_for(ended, timeout=args.timeout, what=f"batch {batch_id} to end", interval=0.5)
        run.wall = time.perf_counter() - t0
        if workers is not None:
            pool = sorted(set(pool) | set(children(processes[-1].pid)))
        pids = [p.pid for p in processes] + pool
        cpu1 = cpu_seconds(pids), cpu_seconds([orthanc.process.pid]), machine_cpu()
        run.node_cpu, run.orthanc_cpu = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
        busy, total = (b - a for a, b in zip(cpu0[2], cpu1[2], strict=True))
        run.machine_busy = busy / total
        run.load_end = load()
        shown = json.loads(cli(node.config, "batch", "show", str(batch_id), "--json").stdout)
        if shown["state"] != "done" or shown["counts"].get("done") != studies \
                or shown["total"] != studies:
            raise BenchError(f"batch show: state {shown['state']}, total {shown['total']}, "
                             f"counts {shown['counts']} (expected {studies} done)")
        read_timings(database_url, batch_id, run)
        return run
    finally:
        pool = sorted(set(pool) | {c for p in started[1:] for c in children(p.pid)})
        stop_all(started, pool)


# -- report ------------------------------------------------------------------------------------

def spread(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} / {max(values):6.2f}"


def print_table(runs: list[Run], cores: int) -> None:
    base = next((r for r in runs if r.workers == 1), None)
    embedded = next((r for r in runs if r.workers is None), None)
    print(f"{'configuration':14s} {'studies':>7s} {'seconds':>8s} {'wall s':>7s} "
          f"{'studies/h':>9s} {'x celery-1':>10s} {'x embedded':>10s}  load at end")
    for r in runs:
        vs_base = f"{r.per_hour / base.per_hour:10.2f}" if base else f"{'-':>10s}"
        vs_emb = f"{r.per_hour / embedded.per_hour:10.2f}" if embedded else f"{'-':>10s}"
        print(f"{r.name:14s} {r.studies:7d} {r.seconds:8.1f} {r.wall:7.1f} "
              f"{r.per_hour:9.0f} {vs_base} {vs_emb}  {r.load_end}")
    print()
    print("where the time went (per study, median / max seconds; from the index)")
    print(f"{'configuration':14s} {'retrieve':>15s} {'queue wait':>15s} {'job run':>15s} "
          f"{'1st job':>7s} {'jobs busy':>9s} {'node CPU':>8s} {'CPU s/study':>11s} "
          f"{'Orthanc':>7s} {'cores busy':>10s}")
    for r in runs:
        slots = r.workers or 1
        busy = sum(r.run) / (r.seconds * slots)
        print(f"{r.name:14s} {spread(r.retrieve):>15s} {spread(r.wait):>15s} "
              f"{spread(r.run):>15s} {r.first_start:7.1f} {busy:9.0%} "
              f"{r.node_cpu / r.seconds:7.2f}c {r.node_cpu / r.studies:11.2f} "
              f"{r.orthanc_cpu / r.seconds:6.2f}c "
              f"{r.machine_busy:6.0%} of {cores}")
    print("  retrieve: first instance of the study received -> its job created (the C-MOVE's "
          "end and the settle); queue wait: job created -> started; job run: started -> "
          "finished; 1st job: batch created -> first job started (model load included);")
    print("  jobs busy: sum of job run seconds / (batch seconds x job slots); node CPU and "
          "Orthanc: CPU seconds per batch second (c = cores) of serve + worker + its pool, "
          "and of Orthanc; CPU s/study: the node's CPU seconds per study (what bounds "
          "studies/h on a machine of its own: cores x 3600 / it); cores busy: the whole "
          "machine (every process) during the batch")


# -- main --------------------------------------------------------------------------------------

def workers_arg(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("comma-separated worker counts >= 1, e.g. 1,2,4")
    return values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=24, help="synthetic studies in Orthanc")
    ap.add_argument("--image-size", type=int, default=96,
                    help="synthetic image size in px (the model resizes to its input)")
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--workers", type=workers_arg, default=[1, 2, 4],
                    help="Celery --concurrency values, comma-separated (default 1,2,4)")
    ap.add_argument("--no-embedded", dest="embedded", action="store_false",
                    help="skip the embedded (memory://) configuration")
    ap.add_argument("--max-retrieves", type=int, default=2, help="batch create --max-retrieves")
    ap.add_argument("--tick-seconds", type=float, default=1.0, help="batch.tick_seconds")
    ap.add_argument("--tiny", action="store_true",
                    help="a tiny untrained 64 px checkpoint instead of the demo model")
    ap.add_argument("--redis-db", type=int, default=11, help="Redis db (flushed before each "
                    "Celery run; not 0)")
    ap.add_argument("--postgres", action="store_true", help="index in a fresh PostgreSQL "
                    f"database per configuration (Unix socket {PG_SOCKET}) instead of SQLite")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds one batch may take")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    if args.studies < 1 or args.redis_db == 0 or args.max_retrieves < 1:
        ap.error("need --studies >= 1, --redis-db != 0 and --max-retrieves >= 1")
    cores = os.cpu_count() or 1
    print(f"machine: nproc={cores}, load average {load()} (1/5/15 min) at start; other "
          "processes may compete for the CPUs", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="batch-bench-", dir="/var/tmp"))
    databases: list[str] = []
    runs: list[Run] = []
    failed = False
    orthanc: Orthanc | None = None
    try:
        if args.tiny:
            from tests.workers.test_pipeline import tiny_checkpoint

            model = str(tiny_checkpoint(tmp / "tiny.pt", threshold=1e9))
        else:
            model = "demo"
        orthanc = start_orthanc(tmp / "orthanc")
        t = time.perf_counter()
        studies, instances = upload(orthanc, tmp / "synth", args.studies, args.seed,
                                    args.image_size)
        print(f"Orthanc {orthanc.get('/system')['Version']} holds {studies} studies, "
              f"{instances} instances ({args.image_size} px; generated and uploaded in "
              f"{time.perf_counter() - t:.0f} s); model {model}; index "
              f"{'PostgreSQL' if args.postgres else 'SQLite'}; max_retrieves "
              f"{args.max_retrieves}, tick {args.tick_seconds} s; logs under {tmp}", flush=True)
        configs: list[tuple[str, int | None]] = [("embedded", None)] * args.embedded
        configs += [(f"celery-{k}", k) for k in args.workers]
        tag = secrets.token_hex(4)
        for name, workers in configs:
            work = tmp / name
            if args.postgres:
                database = f"pacsnode_batchbench_{tag}_{len(databases)}"
                psql(f'CREATE DATABASE "{database}"')
                databases.append(database)
                url = f"postgresql+psycopg://postgres@/{database}?host={PG_SOCKET}"
            else:
                url = f"sqlite:///{work / 'index.db'}"
            try:
                run = run_config(name, workers, args, orthanc, work, model, studies, url)
            except (BenchError, AssertionError) as exc:
                failed = True
                print(f"{name}: FAILED: {exc}\n  logs: {work}", flush=True)
                continue
            runs.append(run)
            print(f"  {name}: {run.seconds:.1f} s, {run.per_hour:.0f} studies/h, "
                  f"load {run.load_end}", flush=True)
        print(f"\nresults (nproc={cores}, load average at end {load()})\n")
        if runs:
            print_table(runs, cores)
    finally:
        if orthanc is not None:
            stop_process(orthanc.process)
        for database in databases:
            try:
                psql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            except BenchError as exc:
                print(f"warning: {exc}", file=sys.stderr)
        if failed or args.keep:
            print(f"\nlogs and data kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
